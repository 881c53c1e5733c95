"""Heartbeats against a bootstrap that is slow or fails once: the lease must
not run out while the peer is alive."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from dasgd.v1 import membership_pb2, membership_pb2_grpc
from peer.membership import MembershipClient

TTL_S = 9.0  # heartbeats every 3 s


class FlakyBootstrap(membership_pb2_grpc.MembershipServicer):
    """Answers Join; the first Heartbeat misbehaves as `first` says."""

    def __init__(self, first: str):
        self.first = first
        self.beats: list[float] = []  # arrival times
        self.answered: list[float] = []
        self.lock = threading.Lock()

    def Join(self, request, context):
        member = membership_pb2.Member(id="p1", address=request.address, run_id=request.run_id)
        return membership_pb2.JoinResponse(member=member, members=[member], ttl_s=TTL_S)

    def Heartbeat(self, request, context):
        with self.lock:
            self.beats.append(time.monotonic())
            first = len(self.beats) == 1
        if first and self.first == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded")
        if first and self.first == "slow":
            time.sleep(4.5)  # longer than a third of the lease, well within it
        self.answered.append(time.monotonic())
        return membership_pb2.HeartbeatResponse(ttl_s=TTL_S, version=1)

    def WatchMembers(self, request, context):
        while context.is_active():
            time.sleep(0.1)
        return iter(())


@pytest.fixture
def bootstrap(request):
    servicer = FlakyBootstrap(request.param)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    membership_pb2_grpc.add_MembershipServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = MembershipClient(channel, "run", "127.0.0.1:9", "", on_change=lambda *change: None)
    client.join()
    client.start()
    yield servicer, client
    client.stop()
    server.stop(0).wait(5)


@pytest.mark.parametrize("bootstrap", ["unavailable"], indirect=True)
def test_a_failed_heartbeat_is_tried_again_soon(bootstrap):
    servicer, client = bootstrap
    deadline = time.monotonic() + 3 * TTL_S
    while len(servicer.answered) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    first, second = servicer.beats[:2]
    # Not a third of the lease later (3 s): that left one retry per lease.
    assert second - first < 1.5, second - first
    assert client.connected


@pytest.mark.parametrize("bootstrap", ["slow"], indirect=True)
def test_a_slow_heartbeat_within_the_lease_gets_through(bootstrap):
    servicer, client = bootstrap
    deadline = time.monotonic() + 3 * TTL_S
    while not servicer.answered and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the client's side of the answer
    assert len(servicer.beats) == 1  # answered, not timed out and tried again
    assert client.connected
