"""Following the run's member list: Join, heartbeats, WatchMembers.

The bootstrap is a convenience, not a dependency: while it is unreachable
the peer keeps the last list it had (and what neighbors tell it through
ListPeers), and re-joins with backoff, under the same identity, when it
comes back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc

from dasgd.v1 import membership_pb2, membership_pb2_grpc

log = logging.getLogger(__name__)

# (members, the run's membership version, whether the list starts a new
# session with the bootstrap: a join, after which versions may have restarted)
OnChange = Callable[[Sequence[membership_pb2.Member], int, bool], None]
# The lease assumed until the bootstrap says (its own default).
DEFAULT_TTL_S = 10.0
# A failed heartbeat is tried again after this, then twice as long each time.
RETRY_FIRST_S = 0.2


class MembershipClient:
    def __init__(
        self,
        channel: grpc.Channel,
        run_id: str,
        address: str,
        member_id: str,
        on_change: OnChange,
        labels: dict[str, str] | None = None,
    ):
        self._stub = membership_pb2_grpc.MembershipStub(channel)
        self._channel = channel
        self.run_id = run_id
        self.address = address
        self.member_id = member_id
        self.labels = labels or {}
        self._on_change = on_change
        self.ttl_s = DEFAULT_TTL_S
        self.version = 0
        self.joined = threading.Event()
        # Whether the last call to the bootstrap got through; if not, since
        # when (unix seconds) and why (a status code): Status shows both, so
        # a peer training alone for a mistyped --bootstrap is seen as such.
        self.connected = False
        self.unreachable_since = 0.0
        self.last_error = ""
        self._stop = threading.Event()
        self._watch_call: grpc.Future | None = None
        self._threads: list[threading.Thread] = []

    def join(self, timeout: float = 10.0) -> membership_pb2.JoinResponse:
        response = self._stub.Join(
            membership_pb2.JoinRequest(
                run_id=self.run_id,
                member_id=self.member_id,
                address=self.address,
                labels=self.labels,
            ),
            timeout=timeout,
        )
        self.member_id = response.member.id
        self.ttl_s = response.ttl_s or self.ttl_s
        self.version = response.version
        self._reached()
        self.joined.set()
        self._on_change(response.members, response.version, True)
        return response

    def join_with_retry(self, deadline_s: float | None = None) -> bool:
        """Joins, retrying with backoff; False if `deadline_s` passed first."""
        backoff = 0.1
        end = None if deadline_s is None else time.monotonic() + deadline_s
        while not self._stop.is_set():
            try:
                self.join()
                return True
            except grpc.RpcError as error:
                if error.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    raise
                self._missed(error)
                log.info(
                    "bootstrap not reachable (%s); retrying in %.1fs", error.code().name, backoff
                )
            if end is not None and time.monotonic() + backoff > end:
                return False
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        return False

    def start(self) -> None:
        """Background heartbeats and watch; call after the first successful join
        (or to keep trying to join)."""
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._watch_loop, "watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _heartbeat_loop(self) -> None:
        """A heartbeat every third of the lease, each allowed the rest of
        the lease to get through; one that fails is tried again soon (0.2 s,
        backing off). A third of the lease as deadline, then another third
        of waiting, left a single retry before the lease ran out: a loaded
        host's bootstrap dropped peers that were alive."""
        renewed = time.monotonic()  # the last heartbeat (or join) that got through
        wait, retry = self.ttl_s / 3, RETRY_FIRST_S
        while not self._stop.wait(wait):
            wait = self.ttl_s / 3
            if not self.joined.is_set():
                self.join_with_retry()
                renewed = time.monotonic()
                continue
            left = renewed + self.ttl_s - time.monotonic()
            try:
                response = self._stub.Heartbeat(
                    membership_pb2.HeartbeatRequest(run_id=self.run_id, member_id=self.member_id),
                    timeout=max(1.0, self.ttl_s / 3, left),
                )
                renewed = time.monotonic()
                retry = RETRY_FIRST_S
                self.ttl_s = response.ttl_s or self.ttl_s
                if not self.connected:
                    log.info("bootstrap reachable again")
                self._reached()
            except grpc.RpcError as error:
                if self._stop.is_set():
                    return
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    # Expired, or a bootstrap restarted without state: join again.
                    log.info("bootstrap forgot us (%s); joining again", error.details())
                    self.join_with_retry()
                    renewed = time.monotonic()
                else:
                    if self.connected:
                        log.warning(
                            "heartbeat failed: %s; keeping known neighbors", error.code().name
                        )
                    self._missed(error)
                    # Soon, backing off to the usual pace (a bootstrap that is
                    # down fails every call at once).
                    wait, retry = retry, min(retry * 2, self.ttl_s / 3)

    def _reached(self) -> None:
        self.connected, self.unreachable_since, self.last_error = True, 0.0, ""

    def _missed(self, error: grpc.RpcError) -> None:
        if self.connected or not self.unreachable_since:
            self.unreachable_since = time.time()
        self.connected = False
        self.last_error = error.code().name  # as its callers log it

    def _watch_loop(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            if not self.joined.wait(0.5):
                continue
            try:
                self._watch_call = self._stub.WatchMembers(
                    membership_pb2.WatchMembersRequest(run_id=self.run_id)
                )
                for event in self._watch_call:
                    backoff = 0.2
                    self.version = event.version
                    self._on_change(event.members, event.version, False)
            except grpc.RpcError as error:
                if self._stop.is_set():
                    return
                log.debug("watch ended: %s", error.code().name)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def leave(self, timeout: float = 2.0) -> None:
        try:
            self._stub.Leave(
                membership_pb2.LeaveRequest(run_id=self.run_id, member_id=self.member_id),
                timeout=timeout,
            )
        except grpc.RpcError as error:
            log.info("leave not delivered: %s", error.code().name)

    def list_members(self, timeout: float = 5.0) -> membership_pb2.ListMembersResponse:
        return self._stub.ListMembers(
            membership_pb2.ListMembersRequest(run_id=self.run_id), timeout=timeout
        )

    def refresh(self, timeout: float = 5.0) -> None:
        """Asks for the member list now and hands it to `on_change`."""
        response = self.list_members(timeout)
        self._on_change(response.members, response.version, False)

    def cancel_join(self) -> None:
        """Stops `join_with_retry` (at its next wait); the channel stays open for `leave`."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._watch_call is not None:
            self._watch_call.cancel()
        for thread in self._threads:
            thread.join(2.0)
        self._channel.close()
