"""The Membership gRPC service and the daemon that runs it.

The servicer only translates between protobuf and the registry, and registry
errors into gRPC status codes. The daemon orders start and stop so that
health tells the truth: SERVING only once the registry, the server and the
expiry sweep all run; NOT_SERVING as soon as shutdown begins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from bootstrap.registry import (
    DEFAULT_TTL_S,
    EventKind,
    InvalidArgument,
    MemberRecord,
    Registry,
    RegistryError,
    ResourceExhausted,
    UnknownMember,
)
from bootstrap.store import SqliteStore
from dasgd.v1 import membership_pb2, membership_pb2_grpc
from rpc import Security, ServerHandle, start_server

log = logging.getLogger(__name__)

SERVICE_NAME = membership_pb2.DESCRIPTOR.services_by_name["Membership"].full_name

# Each open WatchMembers stream holds a server thread, and every peer keeps
# one open: room for a few hundred peers before watches are refused (the
# peer then falls back to polling ListMembers).
DEFAULT_MAX_WORKERS = 256

# How long a watch blocks before checking that its client is still there.
WATCH_POLL_S = 1.0

_STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownMember: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_EVENT_KIND = {
    EventKind.JOINED: membership_pb2.MembershipEvent.JOINED,
    EventKind.LEFT: membership_pb2.MembershipEvent.LEFT,
    EventKind.EXPIRED: membership_pb2.MembershipEvent.EXPIRED,
}


def member_to_proto(member: MemberRecord) -> membership_pb2.Member:
    return membership_pb2.Member(
        id=member.id,
        address=member.address,
        run_id=member.run_id,
        labels=dict(member.labels),
        joined_at=member.joined_at,
        last_seen=member.last_seen,
    )


@contextmanager
def _registry_errors(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except RegistryError as error:
        context.abort(_STATUS[type(error)], str(error))


class MembershipServicer(membership_pb2_grpc.MembershipServicer):
    """Membership RPCs on top of a `Registry`."""

    def __init__(self, registry: Registry, watch_poll_s: float = WATCH_POLL_S):
        self._registry = registry
        self._watch_poll_s = watch_poll_s

    def Join(self, request, context):
        with _registry_errors(context):
            member, snapshot = self._registry.join(
                request.run_id,
                request.address,
                member_id=request.member_id or None,
                labels=dict(request.labels),
            )
        return membership_pb2.JoinResponse(
            member=member_to_proto(member),
            ttl_s=self._registry.ttl,
            version=snapshot.version,
            members=[member_to_proto(m) for m in snapshot.members],
        )

    def Heartbeat(self, request, context):
        with _registry_errors(context):
            version = self._registry.heartbeat(request.run_id, request.member_id)
        return membership_pb2.HeartbeatResponse(ttl_s=self._registry.ttl, version=version)

    def Leave(self, request, context):
        with _registry_errors(context):
            version = self._registry.leave(request.run_id, request.member_id)
        return membership_pb2.LeaveResponse(version=version)

    def ListMembers(self, request, context):
        with _registry_errors(context):
            snapshot = self._registry.snapshot(request.run_id)
        return membership_pb2.ListMembersResponse(
            members=[member_to_proto(m) for m in snapshot.members], version=snapshot.version
        )

    def WatchMembers(self, request, context):
        """SNAPSHOT first, then each event as it happens, until the client
        goes away or the server stops. Waits are bounded so a vanished
        client frees its thread within `watch_poll_s`."""
        with _registry_errors(context):
            subscription = self._registry.subscribe(request.run_id)
        context.add_callback(subscription.close)
        log.debug(
            "watch of run %s opened (%d watching)",
            request.run_id,
            self._registry.watcher_count(request.run_id),
        )
        try:
            snapshot = subscription.snapshot
            yield membership_pb2.MembershipEvent(
                kind=membership_pb2.MembershipEvent.SNAPSHOT,
                version=snapshot.version,
                members=[member_to_proto(m) for m in snapshot.members],
            )
            while context.is_active() and not subscription.closed:
                event = subscription.get(timeout=self._watch_poll_s)
                if event is not None:
                    yield membership_pb2.MembershipEvent(
                        kind=_EVENT_KIND[event.kind],
                        member=member_to_proto(event.member),
                        version=event.version,
                        members=[member_to_proto(m) for m in event.members],
                    )
        finally:
            self._registry.unsubscribe(subscription)
            log.debug(
                "watch of run %s closed (%d watching)",
                request.run_id,
                self._registry.watcher_count(request.run_id),
            )
        if subscription.overflowed:
            context.abort(
                grpc.StatusCode.ABORTED,
                "this watch fell too many events behind and was dropped: "
                "call WatchMembers again to start over from a snapshot",
            )


class BootstrapDaemon:
    """Registry, optional state file, gRPC server and expiry sweep, started
    and stopped in the order that keeps health truthful."""

    def __init__(
        self,
        listen: str,
        security: Security | None = None,
        ttl: float = DEFAULT_TTL_S,
        state_path: str | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ):
        if ttl <= 0:
            raise ValueError(f"--ttl must be positive, got {ttl}")
        self._listen = listen
        self._security = security or Security()
        self._ttl = ttl
        self._state_path = state_path
        self._max_workers = max_workers
        self._store: SqliteStore | None = None
        self._registry: Registry | None = None
        self._handle: ServerHandle | None = None
        self._stopping = threading.Event()
        self._expiry_thread: threading.Thread | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("the daemon has not been started")
        return self._registry

    @property
    def port(self) -> int:
        if self._handle is None:
            raise RuntimeError("the daemon has not been started")
        return self._handle.port

    @property
    def address(self) -> str:
        """HOST:PORT a client on this machine can dial."""
        if self._handle is None:
            raise RuntimeError("the daemon has not been started")
        return self._handle.address

    def start(self) -> BootstrapDaemon:
        """Binds and serves. Raises InsecureListenError (a ValueError) for a
        non-loopback listen without TLS or --insecure, OSError when the port
        or the state file cannot be used."""
        if self._state_path:
            self._store = SqliteStore(self._state_path)
        try:
            self._registry = Registry(ttl=self._ttl, store=self._store)
            servicer = MembershipServicer(self._registry)

            def register(server: grpc.Server) -> list[str]:
                membership_pb2_grpc.add_MembershipServicer_to_server(servicer, server)
                return [SERVICE_NAME]

            self._handle = start_server(
                self._listen, self._security, register, max_workers=self._max_workers
            )
        except BaseException:
            if self._store is not None:
                self._store.close()
            raise
        self._expiry_thread = threading.Thread(
            target=self._expire_periodically, name="bootstrap-expiry", daemon=True
        )
        self._expiry_thread.start()
        self._handle.set_serving(True)
        log.info(
            "bootstrap ready: ttl=%.1fs state=%s %s",
            self._ttl,
            self._state_path or "(in memory)",
            self._security.describe(),
        )
        return self

    def stop(self, grace: float = 2.0) -> None:
        """NOT_SERVING first, so probes and load balancers look elsewhere
        while open watches end and in-flight calls finish."""
        if self._handle is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._handle.set_serving(False)
        if self._expiry_thread is not None:
            self._expiry_thread.join()
        self.registry.close_subscriptions()
        self._handle.stop(grace)
        if self._store is not None:
            self._store.close()
        log.info("bootstrap stopped")

    def __enter__(self) -> BootstrapDaemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _expire_periodically(self) -> None:
        interval = min(1.0, self._ttl / 4)
        while not self._stopping.wait(interval):
            try:
                self.registry.expire()
            except Exception:
                log.exception("expiry sweep failed; trying again in %.2fs", interval)
