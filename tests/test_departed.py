"""A member the bootstrap drops (its lease lapsed: a peer too loaded to
heartbeat in time) is no longer sent to, but its updates are still taken for
one lease: it is about to join again, and a gradient refused is lost for
good. After that it is a stranger again."""

import time

import grpc

from bootstrap.service import BootstrapDaemon
from dasgd.v1 import membership_pb2, membership_pb2_grpc
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from tests.conftest import wait_until

TTL_S = 3.0


def test_dropped_member_is_taken_from_for_one_lease_then_refused():
    bootstrap = BootstrapDaemon("127.0.0.1:0", ttl=TTL_S).start()
    daemon = PeerDaemon(PeerConfig(bootstrap=bootstrap.address, run_id="gr", step_delay_ms=5))
    try:
        daemon.start()
        with grpc.insecure_channel(bootstrap.address) as channel:
            membership_pb2_grpc.MembershipStub(channel).Join(
                membership_pb2.JoinRequest(run_id="gr", member_id="bob", address="127.0.0.1:9"),
                timeout=5,
            )
        wait_until(lambda: "bob" in {m.id for m in daemon.members()}, 10)
        assert daemon.is_member("bob")

        # No heartbeats from bob: the bootstrap drops it after its lease.
        wait_until(lambda: "bob" not in {m.id for m in daemon.members()}, 3 * TTL_S)
        dropped_at = time.monotonic()
        assert daemon.is_member("bob")  # still taken from...
        assert "bob" not in {n.id for n in daemon.status().neighbors if n.sending}  # not sent to
        wait_until(lambda: not daemon.is_member("bob"), 3 * TTL_S)
        assert time.monotonic() - dropped_at > TTL_S / 2
        assert not daemon.is_member("stranger")
    finally:
        daemon.shutdown()
        bootstrap.stop()


def member(member_id: str) -> membership_pb2.Member:
    return membership_pb2.Member(id=member_id, run_id="st", address="127.0.0.1:9")


def test_a_stale_member_list_does_not_bring_back_a_member_that_left():
    """Lists reach the daemon from several threads; a refresh answered at
    version 5 may land after the watch applied version 6, where M left."""
    daemon = PeerDaemon(PeerConfig(bootstrap="127.0.0.1:1", run_id="st", step_delay_ms=5))
    daemon.member_id = "me"
    daemon._on_members([member("me"), member("A"), member("M")], 5)
    daemon._on_members([member("me"), member("A")], 6)  # M left
    daemon._on_members([member("me"), member("A"), member("M")], 5)  # the stale answer
    assert {m.id for m in daemon.members()} == {"me", "A"}
    # A join after a bootstrap restart (versions start over) is taken.
    daemon._on_members([member("me"), member("B")], 1, True)
    assert {m.id for m in daemon.members()} == {"me", "B"}
