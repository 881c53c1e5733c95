"""Only members of the run get in: shared token, TLS, mutual TLS, and the
refusal to serve plaintext beyond loopback.

Daemons run in-process on 127.0.0.1 with certificates made for the test by
the openssl CLI (see certs.py); the command-line refusals run the real CLIs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bootstrap.service import BootstrapDaemon
from dasgd.v1 import membership_pb2, membership_pb2_grpc, peer_pb2, peer_pb2_grpc
from peer.cli import build_parser
from peer.config import PeerConfig, load_config
from peer.daemon import PeerDaemon
from rpc import Security, make_channel, start_server
from rpc.server import InsecureListenError, check_listen_address
from tests.certs import Pki, make_pki
from tests.conftest import ROOT, wait_until

RUN_ID = "secure"
TOKEN = "correct-horse-battery-staple"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "token"
    path.write_text(TOKEN + "\n")
    return path


def client(pki: Pki | None = None, token: str | None = TOKEN, **tls: bytes | None) -> Security:
    """Client credentials: the run's CA and client certificate when `pki` is
    given (each overridable through `tls`), plus `token`."""
    values: dict[str, bytes | None] = {}
    if pki is not None:
        values = dict(tls_ca=pki.ca.cert_pem, tls_cert=pki.client.cert_pem,
                      tls_key=pki.client.key_pem)  # fmt: skip
    values.update(tls)
    return Security(token=token, **values)


def health(address: str, security: Security | None = None) -> str:
    """Health needs no token, but does need TLS where the daemon has it."""
    security = replace(security or Security(), token=None)
    with make_channel(address, security) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


@dataclass
class Network:
    """A bootstrap and its peers, all with the same security settings."""

    config: PeerConfig  # template for every peer; bootstrap filled in
    bootstrap: BootstrapDaemon
    member_client: Security  # what a legitimate client of this network presents
    peers: list[PeerDaemon] = field(default_factory=list)

    def add_peer(self) -> PeerDaemon:
        config = replace(self.config, shard=f"{len(self.peers)}/2")
        peer = PeerDaemon(config)
        self.peers.append(peer)
        peer.start()
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.shutdown(flush_timeout_s=0)
        self.bootstrap.stop(grace=0.2)


def start_network(token_file: Path, pki: Pki | None) -> Network:
    tls = {}
    if pki is not None:
        tls = dict(tls_cert=str(pki.daemon.cert), tls_key=str(pki.daemon.key),
                   tls_ca=str(pki.ca.cert))  # fmt: skip
    config = PeerConfig(
        listen="127.0.0.1:0",
        run_id=RUN_ID,
        token_file=str(token_file),
        step_delay_ms=20,
        eval_every=1000,
        warm_start=False,
        min_members_timeout_s=0,
        join_timeout_s=10,
        **tls,
    )
    security = Security.from_files(
        config.token_file, config.tls_cert or None, config.tls_key or None, config.tls_ca or None
    )
    bootstrap = BootstrapDaemon("127.0.0.1:0", security=security, ttl=60).start()
    network = Network(replace(config, bootstrap=bootstrap.address), bootstrap, client(pki))
    try:
        network.add_peer()
    except BaseException:
        network.close()
        raise
    return network


@pytest.fixture(scope="module")
def token_network(token_file: Path) -> Iterator[Network]:
    network = start_network(token_file, pki=None)
    yield network
    network.close()


@pytest.fixture(scope="module")
def mtls_network(token_file: Path, pki: Pki) -> Iterator[Network]:
    network = start_network(token_file, pki)
    yield network
    network.close()


# --- token -------------------------------------------------------------------------

Call = Callable[[grpc.Channel], object]

MEMBERSHIP_CALLS: dict[str, Call] = {
    "Join": lambda ch: membership_pb2_grpc.MembershipStub(ch).Join(
        membership_pb2.JoinRequest(run_id=RUN_ID, member_id="intruder", address="127.0.0.1:9"),
        timeout=5,
    ),
    "Heartbeat": lambda ch: membership_pb2_grpc.MembershipStub(ch).Heartbeat(
        membership_pb2.HeartbeatRequest(run_id=RUN_ID, member_id="intruder"), timeout=5
    ),
    "Leave": lambda ch: membership_pb2_grpc.MembershipStub(ch).Leave(
        membership_pb2.LeaveRequest(run_id=RUN_ID, member_id="intruder"), timeout=5
    ),
    "ListMembers": lambda ch: membership_pb2_grpc.MembershipStub(ch).ListMembers(
        membership_pb2.ListMembersRequest(run_id=RUN_ID), timeout=5
    ),
    "WatchMembers": lambda ch: next(
        membership_pb2_grpc.MembershipStub(ch).WatchMembers(
            membership_pb2.WatchMembersRequest(run_id=RUN_ID), timeout=5
        )
    ),
}

PEER_CALLS: dict[str, Call] = {
    "Status": lambda ch: peer_pb2_grpc.PeerStub(ch).Status(peer_pb2.StatusRequest(), timeout=5),
    "Pull": lambda ch: list(
        peer_pb2_grpc.PeerStub(ch).Pull(peer_pb2.PullRequest(run_id=RUN_ID), timeout=5)
    ),
    "Push": lambda ch: peer_pb2_grpc.PeerStub(ch).Push(
        iter([peer_pb2.Chunk(header=peer_pb2.UpdateHeader(run_id=RUN_ID))]), timeout=5
    ),
    "ListPeers": lambda ch: peer_pb2_grpc.PeerStub(ch).ListPeers(
        peer_pb2.ListPeersRequest(run_id=RUN_ID), timeout=5
    ),
    "Leave": lambda ch: peer_pb2_grpc.PeerStub(ch).Leave(peer_pb2.LeaveNowRequest(), timeout=5),
}

BAD_TOKENS = {
    "missing": (None, "missing auth token"),
    "wrong": ("guess", "wrong auth token"),
    "prefix": (TOKEN[:-1], "wrong auth token"),
    "longer": (TOKEN + "x", "wrong auth token"),
}


def all_calls(network: Network) -> list[tuple[str, str, Call]]:
    bootstrap, peer = network.bootstrap.address, network.peers[0].address
    return [
        *((bootstrap, f"Membership.{name}", call) for name, call in MEMBERSHIP_CALLS.items()),
        *((peer, f"Peer.{name}", call) for name, call in PEER_CALLS.items()),
    ]


def assert_refused(network: Network, security: Security, code: grpc.StatusCode, *parts: str):
    """Every RPC of both daemons fails with `code`; nothing changed."""
    peer = network.peers[0]
    applied = peer.trainer.stats.updates_applied
    for address, name, call in all_calls(network):
        with make_channel(address, security) as channel, pytest.raises(grpc.RpcError) as raised:
            call(channel)
        assert raised.value.code() == code, f"{name}: {raised.value.details()}"
        for part in parts:
            assert part in raised.value.details(), f"{name}: {raised.value.details()}"
    # Leave was refused on both daemons, Join added no one, nothing was applied.
    members = list_members(network.bootstrap.address, network.member_client).members
    assert sorted(m.id for m in members) == sorted(p.member_id for p in network.peers)
    assert peer.state == "TRAINING" and not peer._leave_requested.is_set()
    assert peer.trainer.stats.updates_applied == applied


@pytest.mark.parametrize("token, message", BAD_TOKENS.values(), ids=BAD_TOKENS)
def test_token_is_checked_on_every_rpc_of_both_daemons(
    token_network: Network, token: str | None, message: str
):
    assert_refused(token_network, client(token=token), UNAUTHENTICATED, message, "--token-file")
    for address in (token_network.bootstrap.address, token_network.peers[0].address):
        assert health(address) == "SERVING"


def test_token_without_bearer_prefix_is_refused(token_network: Network):
    with grpc.insecure_channel(token_network.peers[0].address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            peer_pb2_grpc.PeerStub(channel).Status(
                peer_pb2.StatusRequest(), metadata=[("authorization", TOKEN)], timeout=5
            )
    assert raised.value.code() == UNAUTHENTICATED


def test_right_token_is_let_in(token_network: Network):
    security = token_network.member_client
    with make_channel(token_network.peers[0].address, security) as channel:
        status = PEER_CALLS["Status"](channel)
    assert status.run_id == RUN_ID
    with make_channel(token_network.bootstrap.address, security) as channel:
        assert len(MEMBERSHIP_CALLS["ListMembers"](channel).members) == len(token_network.peers)


# --- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_bootstrap(pki: Pki) -> Iterator[BootstrapDaemon]:
    """Server-side TLS only: any client that trusts the CA may connect."""
    security = Security(tls_cert=pki.daemon.cert_pem, tls_key=pki.daemon.key_pem)
    daemon = BootstrapDaemon("127.0.0.1:0", security=security).start()
    yield daemon
    daemon.stop(grace=0.2)


def list_members(address: str, security: Security) -> membership_pb2.ListMembersResponse:
    with make_channel(address, security) as channel:
        return MEMBERSHIP_CALLS["ListMembers"](channel)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_client_that_trusts_the_ca_gets_in(tls_bootstrap: BootstrapDaemon, pki: Pki, host):
    address = f"{host}:{tls_bootstrap.port}"
    list_members(address, Security(tls_ca=pki.ca.cert_pem))
    assert health(address, Security(tls_ca=pki.ca.cert_pem)) == "SERVING"


def _system_roots_channel(address: str) -> grpc.Channel:
    return grpc.secure_channel(address, grpc.ssl_channel_credentials())


UNTRUSTING_CLIENTS: dict[str, Callable[[Pki, str], grpc.Channel]] = {
    "system-roots": lambda pki, address: _system_roots_channel(address),
    "other-ca": lambda pki, address: make_channel(address, Security(tls_ca=pki.other_ca.cert_pem)),
    "plaintext": lambda pki, address: make_channel(address, Security()),
}


@pytest.mark.parametrize("make", UNTRUSTING_CLIENTS.values(), ids=UNTRUSTING_CLIENTS)
def test_tls_client_that_does_not_trust_the_ca_fails(tls_bootstrap: BootstrapDaemon, pki, make):
    with make(pki, tls_bootstrap.address) as channel, pytest.raises(grpc.RpcError) as raised:
        MEMBERSHIP_CALLS["ListMembers"](channel)
    assert raised.value.code() == UNAVAILABLE
    assert health(tls_bootstrap.address, Security(tls_ca=pki.ca.cert_pem)) == "SERVING"


def test_tls_certificate_for_another_name_fails(tls_bootstrap: BootstrapDaemon, pki: Pki):
    """The daemon's certificate names 127.0.0.1 and localhost only."""
    options = (("grpc.ssl_target_name_override", "peer.example.org"),)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    with grpc.secure_channel(tls_bootstrap.address, credentials, options) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            MEMBERSHIP_CALLS["ListMembers"](channel)
    assert raised.value.code() == UNAVAILABLE


# --- mutual TLS ---------------------------------------------------------------------------


def test_mtls_client_with_a_run_certificate_and_token_gets_in(mtls_network: Network):
    security = mtls_network.member_client
    list_members(mtls_network.bootstrap.address, security)
    with make_channel(mtls_network.peers[0].address, security) as channel:
        assert PEER_CALLS["Status"](channel).state == "TRAINING"


MTLS_OUTSIDERS: dict[str, Callable[[Pki], Security]] = {
    "no-certificate": lambda pki: client(pki, tls_cert=None, tls_key=None),
    "other-ca-certificate": lambda pki: client(
        pki, tls_cert=pki.other_client.cert_pem, tls_key=pki.other_client.key_pem
    ),
    "not-trusting-the-ca": lambda pki: client(pki, tls_ca=pki.other_ca.cert_pem),
    "plaintext": lambda pki: client(),
}


@pytest.mark.parametrize("outsider", MTLS_OUTSIDERS.values(), ids=MTLS_OUTSIDERS)
def test_mtls_refuses_clients_without_a_run_certificate(mtls_network: Network, pki, outsider):
    assert_refused(mtls_network, outsider(pki), UNAVAILABLE)
    for address in (mtls_network.bootstrap.address, mtls_network.peers[0].address):
        assert health(address, client(pki)) == "SERVING"


def test_mtls_still_requires_the_token(mtls_network: Network, pki: Pki):
    assert_refused(mtls_network, client(pki, token=None), UNAUTHENTICATED, "missing auth token")


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("network_name", ["token_network", "mtls_network"])
def test_two_peers_exchange_updates(request: pytest.FixtureRequest, network_name: str):
    network: Network = request.getfixturevalue(network_name)
    first = network.peers[0]
    second = network.add_peer()

    def exchanged() -> bool:
        return (
            first.trainer.applied_by_sender.get(second.member_id, 0) > 0
            and second.trainer.applied_by_sender.get(first.member_id, 0) > 0
        )

    wait_until(exchanged, timeout=30)
    assert first.rejected == {} and second.rejected == {}
    assert all(s.stats.errors == 0 for p in (first, second) for s in p.outbox.senders())


# --- plaintext beyond loopback --------------------------------------------------------------

REFUSED = ["0.0.0.0:7000", "[::]:7000", ":7000", "10.1.2.3:7000", "peer.example.org:7000"]
ALLOWED = ["127.0.0.1:0", "127.9.9.9:7000", "localhost:7000", "[::1]:7000"]


@pytest.mark.parametrize("address", REFUSED)
def test_plaintext_beyond_loopback_is_refused(address: str):
    with pytest.raises(InsecureListenError, match="without TLS") as raised:
        check_listen_address(address, Security())
    assert "--insecure" in str(raised.value) and "--tls-cert" in str(raised.value)
    check_listen_address(address, Security(insecure=True))
    check_listen_address(address, Security(tls_cert=b"cert", tls_key=b"key"))


@pytest.mark.parametrize("address", ALLOWED)
def test_plaintext_on_loopback_is_allowed(address: str):
    check_listen_address(address, Security())


def test_start_server_refuses_before_binding_and_binds_with_insecure():
    with pytest.raises(InsecureListenError):
        start_server("0.0.0.0:0", Security(), lambda server: [])
    handle = start_server("0.0.0.0:0", Security(insecure=True), lambda server: [])
    try:
        handle.set_serving(True)
        assert health(f"127.0.0.1:{handle.port}") == "SERVING"
    finally:
        handle.stop(grace=0.2)


def run_cli(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def test_cli_refuses_plaintext_beyond_loopback():
    """Both daemons exit 2 with the reason on stderr, not a traceback."""
    processes = [
        run_cli("peer.cli", "run", "--listen", "0.0.0.0:0", "--bootstrap", "127.0.0.1:1"),
        run_cli("bootstrap.cli", "run", "--listen", "0.0.0.0:0"),
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 2, stderr
        assert "refusing to listen on 0.0.0.0:0 without TLS" in stderr
        assert "--insecure" in stderr
        assert "Traceback" not in stderr


def test_cli_accepts_plaintext_beyond_loopback_with_insecure(spawn):
    """The bootstrap as a real process; the peer from the same command line,
    in-process (a second interpreter importing torch costs seconds)."""
    bootstrap = spawn("bootstrap", "run", "--listen", "0.0.0.0:0", "--insecure", "--ttl", "30")
    port = bootstrap.address().rpartition(":")[2]
    assert health(f"127.0.0.1:{port}") == "SERVING"
    args = build_parser().parse_args(
        ["run", "--listen", "0.0.0.0:0", "--insecure", "--bootstrap", f"127.0.0.1:{port}",
         "--run-id", "cli", "--no-warm-start", "--min-members-timeout-s", "0"]
    )  # fmt: skip
    peer = PeerDaemon(load_config(args, environ={}))
    peer.trainer.pause(True)
    try:
        peer.start()
        assert peer.address.startswith("127.0.0.1:")
        assert health(peer.address) == "SERVING"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert [m.id for m in MEMBERSHIP_CALLS["ListMembers"](channel).members] == []
            members = membership_pb2_grpc.MembershipStub(channel).ListMembers(
                membership_pb2.ListMembersRequest(run_id="cli"), timeout=5
            )
        assert [m.address for m in members.members] == [peer.address]
    finally:
        peer.shutdown(flush_timeout_s=0)
