"""ListPeers peer exchange may add members only while the bootstrap is away:
with the bootstrap up, a caller cannot make itself a member by naming itself."""

import grpc
import pytest

from bootstrap.service import BootstrapDaemon
from dasgd.v1 import membership_pb2, peer_pb2, peer_pb2_grpc
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from tests.conftest import wait_until

EVE = membership_pb2.Member(id="eve", address="127.0.0.1:9", run_id="px")


@pytest.fixture
def peer_and_bootstrap():
    bootstrap = BootstrapDaemon("127.0.0.1:0", ttl=1.0).start()
    daemon = PeerDaemon(PeerConfig(bootstrap=bootstrap.address, run_id="px", step_delay_ms=5))
    try:
        daemon.start()
        yield daemon, bootstrap
    finally:
        daemon.shutdown()
        bootstrap.stop()


def list_peers(address: str, known) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        response = peer_pb2_grpc.PeerStub(channel).ListPeers(
            peer_pb2.ListPeersRequest(run_id="px", known=known), timeout=5
        )
    return {m.id for m in response.members}


def test_list_peers_cannot_inject_a_member_while_the_bootstrap_answers(peer_and_bootstrap):
    daemon, _ = peer_and_bootstrap
    assert "eve" not in list_peers(daemon.address, [EVE])
    assert not daemon.is_member("eve")
    assert "eve" not in {n.id for n in daemon.status().neighbors if n.sending}


def test_list_peers_teaches_members_while_the_bootstrap_is_away(peer_and_bootstrap):
    daemon, bootstrap = peer_and_bootstrap
    bootstrap.stop()
    wait_until(lambda: not daemon.membership.connected, 10)
    assert "eve" in list_peers(daemon.address, [EVE])
    assert daemon.is_member("eve")
