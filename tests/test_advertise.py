"""The address a peer gives the bootstrap when it listens on every interface."""

import socket

import pytest

from rpc.server import advertise_address
from tests.conftest import member_ids, peer_status, start_peer, wait_until


def outward_ipv4() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # TEST-NET: a route, no packet
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_a_specific_host_is_advertised_as_it_is():
    assert advertise_address("127.0.0.3:0", 7100, "10.0.0.1:7000") == "127.0.0.3:7100"
    assert advertise_address("[::1]:0", 7100, "10.0.0.1:7000") == "[::1]:7100"


def test_a_wildcard_with_a_bootstrap_on_this_machine_is_loopback():
    assert advertise_address("0.0.0.0:0", 7100, "127.0.0.1:7000") == "127.0.0.1:7100"


def test_a_wildcard_is_advertised_as_the_address_that_reaches_the_bootstrap(spawn):
    outward = outward_ipv4()
    if outward is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    assert advertise_address("0.0.0.0:0", 7100, f"{outward}:7000") == f"{outward}:7100"
    # A real peer: listening everywhere, its bootstrap reached over that interface.
    bootstrap = spawn("bootstrap", "run", "--listen", "0.0.0.0:0", "--insecure")
    port = bootstrap.address().rsplit(":", 1)[1]
    peer = spawn(
        "peer",
        "run",
        "--bootstrap",
        f"{outward}:{port}",
        "--listen",
        "0.0.0.0:0",
        "--insecure",
        "--run-id",
        "wide",
    )
    address = peer.address()
    assert address.startswith(f"{outward}:")
    wait_until(lambda: member_ids(f"127.0.0.1:{port}", "wide"), 30)
    assert peer_status(address).address == address


@pytest.mark.slow
def test_two_peers_with_one_member_id_are_reported(spawn):
    # Before: both trained, each alone (the bootstrap kept the second's
    # address under the shared id), and nothing said so.
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0").address()
    same = ("--member-id", "p-same", "--step-delay-ms", "10")
    first = start_peer(spawn, bootstrap, "dup", *same)
    first_address = first.address()
    wait_until(lambda: peer_status(first_address).step > 0, 60)
    second_address = start_peer(spawn, bootstrap, "dup", *same).address()
    wait_until(
        lambda: (
            f"lists this peer's id p-same at {second_address}, not at {first_address}"
            in first.log()
        ),
        30,
    )
