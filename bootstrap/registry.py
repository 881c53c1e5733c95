"""Membership rules of the bootstrap: who is in which run, leases, versions.

Plain Python with an injectable clock, so the rules (expiry at the TTL
boundary, versions, run isolation, caps) are tested by calling them, without
sockets or sleeping. The gRPC servicer only translates to and from this.

Leases: a member stays listed while `last_seen + ttl >= now`; Join and
Heartbeat renew `last_seen`. A member past its lease is removed with an
EXPIRED event, by the periodic `expire()` sweep or as soon as an operation on
its run notices, so a listing never shows a member whose lease has run out.

Versions: every change to a run (join, address change, leave, expiry) gets
the next version. A run that empties is forgotten, freeing its slot; when it
comes back it continues above every version issued before, so nobody ever
sees a run's version go backwards.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 10.0
MAX_RUNS = 256
MAX_MEMBERS_PER_RUN = 1024
MAX_PENDING_EVENTS = 1024
MAX_LABELS = 32
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 256
MAX_HOST = 255

_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HOST = re.compile(r"[A-Za-z0-9._-]+")
_WILDCARD_HOSTS = {"0.0.0.0", "::"}


class RegistryError(Exception):
    """A request the registry refuses; the message says what to change."""


class InvalidArgument(RegistryError):
    """Malformed run id, member id, address or labels."""


class UnknownMember(RegistryError):
    """The member is not in the run: its lease expired or it never joined."""


class ResourceExhausted(RegistryError):
    """A cap on runs or members per run would be exceeded."""


class EventKind(enum.Enum):
    JOINED = "joined"
    LEFT = "left"
    EXPIRED = "expired"


@dataclass(frozen=True)
class MemberRecord:
    """One member of a run. Shared between snapshots and events, hence
    immutable (labels are a read-only mapping)."""

    id: str
    address: str
    run_id: str
    labels: Mapping[str, str]
    joined_at: float
    last_seen: float


@dataclass(frozen=True)
class Snapshot:
    """A run's member list at one version, taken atomically."""

    version: int
    members: tuple[MemberRecord, ...]


@dataclass(frozen=True)
class MemberEvent:
    """One change to a run and the whole member list right after it, so a
    watcher that missed earlier events still ends up with the right list."""

    kind: EventKind
    member: MemberRecord
    version: int
    members: tuple[MemberRecord, ...]


@dataclass(frozen=True)
class StoredRun:
    version: int
    members: tuple[MemberRecord, ...]


@dataclass(frozen=True)
class StoredState:
    runs: Mapping[str, StoredRun]
    high_water: int


class Store(Protocol):
    """Where the registry writes each change before applying it in memory.

    Heartbeats are not written: on load every member gets a fresh lease, so
    `last_seen` never needs to survive a restart.
    """

    def load(self) -> StoredState: ...

    def put_member(self, member: MemberRecord, version: int) -> None: ...

    def remove_member(self, run_id: str, member_id: str, version: int) -> None: ...


class Subscription:
    """The queue of one watcher of one run.

    Bounded: a watcher more than `limit` events behind is closed as
    overflowed instead of growing memory without end; it watches again and
    starts over from a fresh snapshot.
    """

    def __init__(self, run_id: str, snapshot: Snapshot, limit: int):
        self.run_id = run_id
        self.snapshot = snapshot
        self._limit = limit
        self._events: deque[MemberEvent] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._overflowed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def overflowed(self) -> bool:
        return self._overflowed

    def get(self, timeout: float) -> MemberEvent | None:
        """Next event in order; None after `timeout` or once closed, so the
        caller can check whether its client is still there."""
        with self._ready:
            self._ready.wait_for(lambda: self._events or self._closed, timeout)
            if self._closed or not self._events:
                return None
            return self._events.popleft()

    def close(self) -> None:
        """Wakes the waiting reader; safe from any thread, any number of times."""
        with self._ready:
            self._closed = True
            self._events.clear()
            self._ready.notify_all()

    def deliver(self, event: MemberEvent) -> None:
        """Called by the registry with its lock held, so it never blocks:
        a full queue closes the subscription instead of waiting for room."""
        with self._ready:
            if self._closed:
                return
            if len(self._events) >= self._limit:
                self._overflowed = True
                self._closed = True
                self._events.clear()
            else:
                self._events.append(event)
            self._ready.notify_all()


@dataclass
class _Run:
    version: int
    members: dict[str, MemberRecord] = field(default_factory=dict)


def _shown(value: object, limit: int = 64) -> str:
    """`repr(value)`, cut short: an error that echoed a huge field back would
    exceed the client's metadata limit and arrive as RESOURCE_EXHAUSTED."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def validate_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidArgument(
            f"{what} {_shown(value)} is invalid: use 1 to 128 characters of A-Z a-z 0-9 . _ -"
        )


def validate_address(address: str) -> None:
    """An address other peers will dial, so a wildcard is refused too."""
    shown = _shown(address)
    host, sep, port = address.rpartition(":")
    # ASCII digits only and at most 5 of them: int() refuses "²" and numbers
    # of more than 4300 digits with a ValueError, not an InvalidArgument.
    digits = port.isascii() and port.isdigit() and len(port) <= 5
    if not sep or not host or not digits or not 1 <= int(port) <= 65535:
        raise InvalidArgument(f"address {shown} is not HOST:PORT with a port from 1 to 65535")
    if len(host) > MAX_HOST:
        raise InvalidArgument(f"host of address {shown} is longer than {MAX_HOST} characters")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"{host} in address {shown} is not an IPv6 address") from None
        bare = host[1:-1]
    elif ":" in host:
        raise InvalidArgument(f"address {shown}: put an IPv6 host in brackets, [::1]:7100")
    elif not _HOST.fullmatch(host):
        raise InvalidArgument(f"host {host!r} in address {shown} is not a host name or IP")
    else:
        bare = host
    if bare in _WILDCARD_HOSTS:
        raise InvalidArgument(
            f"address {shown} is a wildcard that other peers cannot dial: "
            "advertise a reachable HOST:PORT (--advertise)"
        )


def validate_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    labels = dict(labels or {})
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{len(labels)} labels given, at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_LABEL_KEY:
            raise InvalidArgument(
                f"label key {_shown(key)} must be 1 to {MAX_LABEL_KEY} characters"
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"value of label {key!r} must be a string of at most {MAX_LABEL_VALUE} characters"
            )
    return MappingProxyType(labels)


class Registry:
    """Members of every run, with leases, versions and change subscribers.

    One lock guards all state; the store, when given, is written inside it
    before memory changes, so a failed write leaves the registry unchanged.
    """

    def __init__(
        self,
        ttl: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
        max_runs: int = MAX_RUNS,
        max_members_per_run: int = MAX_MEMBERS_PER_RUN,
        max_pending_events: int = MAX_PENDING_EVENTS,
    ):
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._ttl = ttl
        self._clock = clock
        self._store = store
        self._max_runs = max_runs
        self._max_members = max_members_per_run
        self._max_pending = max_pending_events
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._high_water = 0
        if store is not None:
            self._restore(store.load())

    @property
    def ttl(self) -> float:
        return self._ttl

    def join(
        self,
        run_id: str,
        address: str,
        member_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> tuple[MemberRecord, Snapshot]:
        """Adds a member, or renews one that joins again under its id (a
        restarted peer keeps its identity); the version moves only if its
        address or labels changed."""
        validate_name("run id", run_id)
        if member_id:
            validate_name("member id", member_id)
        validate_address(address)
        labels = validate_labels(labels)
        with self._lock:
            now = self._clock()
            self._expire_run_locked(run_id, now)
            run = self._runs.get(run_id)
            existing = run.members.get(member_id) if run and member_id else None
            if existing is not None:
                renewed = replace(existing, address=address, labels=labels, last_seen=now)
                if existing.address == address and existing.labels == labels:
                    run.members[existing.id] = renewed
                    return renewed, self._snapshot_locked(run_id)
                self._commit_locked(EventKind.JOINED, renewed)
                return renewed, self._snapshot_locked(run_id)
            if run is None and len(self._runs) >= self._max_runs:
                raise ResourceExhausted(
                    f"the bootstrap already holds {self._max_runs} runs; "
                    f"run {run_id!r} cannot start until one ends"
                )
            if run is not None and len(run.members) >= self._max_members:
                raise ResourceExhausted(
                    f"run {run_id!r} already has {self._max_members} members, the most allowed"
                )
            record = MemberRecord(
                id=member_id or self._new_id_locked(run),
                address=address,
                run_id=run_id,
                labels=labels,
                joined_at=now,
                last_seen=now,
            )
            self._commit_locked(EventKind.JOINED, record)
            return record, self._snapshot_locked(run_id)

    def heartbeat(self, run_id: str, member_id: str) -> int:
        """Renews the lease and returns the run's version. Raises
        UnknownMember when the lease is gone, which tells the peer to join
        again rather than keep heartbeating into the void."""
        validate_name("run id", run_id)
        validate_name("member id", member_id)
        with self._lock:
            now = self._clock()
            run = self._runs.get(run_id)
            member = run.members.get(member_id) if run else None
            if member is not None and self._is_expired(member, now):
                self._commit_locked(EventKind.EXPIRED, member)
                member = None
            if member is None:
                raise UnknownMember(
                    f"member {member_id!r} is not in run {run_id!r} (its lease expired or it "
                    "never joined): join again with the same member id to keep it"
                )
            run.members[member_id] = replace(member, last_seen=now)
            return run.version

    def leave(self, run_id: str, member_id: str) -> int:
        """Removes the member and returns the run's version. Leaving twice,
        or after the lease expired, is not an error: a peer shutting down
        late must still be able to exit cleanly."""
        validate_name("run id", run_id)
        validate_name("member id", member_id)
        with self._lock:
            run = self._runs.get(run_id)
            member = run.members.get(member_id) if run else None
            if member is not None:
                self._commit_locked(EventKind.LEFT, member)
            return self._snapshot_locked(run_id).version

    def snapshot(self, run_id: str) -> Snapshot:
        validate_name("run id", run_id)
        with self._lock:
            self._expire_run_locked(run_id, self._clock())
            return self._snapshot_locked(run_id)

    def members(self, run_id: str) -> tuple[MemberRecord, ...]:
        return self.snapshot(run_id).members

    def expire(self) -> list[MemberEvent]:
        """Removes every member of every run whose lease ran out."""
        with self._lock:
            now = self._clock()
            events: list[MemberEvent] = []
            for run_id in list(self._runs):
                events.extend(self._expire_run_locked(run_id, now))
            return events

    def subscribe(self, run_id: str) -> Subscription:
        """A queue of the run's future events, together with the snapshot
        they follow, taken under the same lock so no event falls between."""
        validate_name("run id", run_id)
        with self._lock:
            self._expire_run_locked(run_id, self._clock())
            subscription = Subscription(run_id, self._snapshot_locked(run_id), self._max_pending)
            self._subscribers.setdefault(run_id, set()).add(subscription)
            return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            watchers = self._subscribers.get(subscription.run_id)
            if watchers is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self._subscribers[subscription.run_id]
        subscription.close()

    def watcher_count(self, run_id: str) -> int:
        with self._lock:
            return len(self._subscribers.get(run_id, ()))

    def close_subscriptions(self) -> None:
        """Ends every watch at once, for a server that is shutting down."""
        with self._lock:
            watchers = [s for subs in self._subscribers.values() for s in subs]
            self._subscribers.clear()
        for subscription in watchers:
            subscription.close()

    def _restore(self, state: StoredState) -> None:
        """Loaded members get a fresh lease: they could not heartbeat while
        the bootstrap was down."""
        now = self._clock()
        self._high_water = state.high_water
        for run_id, stored in state.runs.items():
            if not stored.members:
                continue
            members = {m.id: replace(m, last_seen=now) for m in stored.members}
            self._runs[run_id] = _Run(stored.version, members)
            self._high_water = max(self._high_water, stored.version)

    def _is_expired(self, member: MemberRecord, now: float) -> bool:
        return member.last_seen + self._ttl < now

    def _expire_run_locked(self, run_id: str, now: float) -> list[MemberEvent]:
        run = self._runs.get(run_id)
        if run is None:
            return []
        expired = [m for m in run.members.values() if self._is_expired(m, now)]
        return [self._commit_locked(EventKind.EXPIRED, member) for member in expired]

    def _snapshot_locked(self, run_id: str) -> Snapshot:
        run = self._runs.get(run_id)
        if run is None:
            return Snapshot(self._high_water, ())
        return Snapshot(run.version, tuple(run.members.values()))

    def _new_id_locked(self, run: _Run | None) -> str:
        while True:
            member_id = f"p-{secrets.token_hex(4)}"
            if run is None or member_id not in run.members:
                return member_id

    def _commit_locked(self, kind: EventKind, member: MemberRecord) -> MemberEvent:
        """Store first, then memory, then subscribers: one change, one version."""
        run = self._runs.get(member.run_id)
        version = (run.version if run else self._high_water) + 1
        if self._store is not None:
            if kind is EventKind.JOINED:
                self._store.put_member(member, version)
            else:
                self._store.remove_member(member.run_id, member.id, version)
        if run is None:
            run = self._runs[member.run_id] = _Run(version)
        if kind is EventKind.JOINED:
            run.members[member.id] = member
        else:
            del run.members[member.id]
        run.version = version
        self._high_water = max(self._high_water, version)
        if not run.members:
            del self._runs[member.run_id]
        event = MemberEvent(kind, member, version, tuple(run.members.values()))
        for subscription in self._subscribers.get(member.run_id, ()):
            subscription.deliver(event)
        log.info(
            "run %s v%d: %s %s at %s (%d members)",
            member.run_id,
            version,
            member.id,
            kind.value,
            member.address,
            len(event.members),
        )
        return event
