"""Real daemons on real sockets, as a user would run them by hand."""

import json
import signal
import socket

import pytest

from tests.conftest import (
    applied_from,
    health_status,
    member_ids,
    peer_cli,
    peer_status,
    start_peer,
    wait_until,
)

pytestmark = pytest.mark.slow


def run_peer(spawn, bootstrap: str, shard: str, *extra: str):
    return start_peer(
        spawn,
        bootstrap,
        "e2e",
        "--workload",
        "digits-mlp",
        "--strategy",
        "dasgd",
        "--shard",
        shard,
        "--step-delay-ms",
        "5",
        *extra,
    )


def test_two_peers_exchange_survive_a_kill_and_stop_cleanly(spawn):
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "2").address()
    a = run_peer(spawn, bootstrap, "0/2")
    b = run_peer(spawn, bootstrap, "1/2")
    a_addr, b_addr = a.address(), b.address()
    a_id, b_id = (
        a.wait_for_line("listening on").split()[1],
        b.wait_for_line("listening on").split()[1],
    )
    for address in (bootstrap, a_addr, b_addr):
        assert wait_until(lambda address=address: health_status(address) == "SERVING", 30)

    assert wait_until(lambda: applied_from(a_addr, b_id) > 20, 30)
    assert wait_until(lambda: applied_from(b_addr, a_id) > 20, 30)
    cli = peer_cli("status", "--peer", a_addr, "--json")
    assert cli.returncode == 0, cli.stderr
    shown = json.loads(cli.stdout)
    assert shown["id"] == a_id and shown["updatesApplied"] > 0
    assert "avg" in shown["staleness"]

    assert b_id in {n.id for n in peer_status(a_addr).neighbors if n.sending}
    b.signal(signal.SIGKILL)
    b.process.wait(10)
    step_at_kill = peer_status(a_addr).step
    # The bootstrap expires the dead member after its TTL ...
    assert wait_until(lambda: member_ids(bootstrap, "e2e") == {a_id}, 15)
    # ... the survivor stops sending to it, and keeps training and serving.
    assert wait_until(
        lambda: b_id not in {n.id for n in peer_status(a_addr).neighbors if n.sending}, 15
    )
    assert wait_until(lambda: peer_status(a_addr).step > step_at_kill + 50, 30)
    assert health_status(a_addr) == "SERVING"
    assert a.process.poll() is None

    a.signal(signal.SIGTERM)
    assert a.process.wait(10) == 0
    assert wait_until(lambda: member_ids(bootstrap, "e2e") == set(), 5)  # it said Leave


def test_health_is_not_serving_until_the_peer_has_joined(spawn):
    with socket.socket() as s:  # a free port for a bootstrap that starts later
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    peer = run_peer(spawn, f"127.0.0.1:{port}", "0/1", "--listen", "127.0.0.1:0")
    # The server is up (it answers health) but the peer has not joined.
    wait_until(lambda: health_status(peer_address_from_log(peer)) == "NOT_SERVING", 30)
    spawn("bootstrap", "run", "--listen", f"127.0.0.1:{port}", "--ttl", "5").address()
    assert wait_until(lambda: health_status(peer.address()) == "SERVING", 30)


def peer_address_from_log(daemon) -> str:
    for line in daemon.log().splitlines():
        if "rpc.server: listening on" in line:
            return line.split("listening on ")[1].split()[0]
    return ""


def test_leave_command_drains_and_exits_cleanly(spawn):
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "5").address()
    peer = run_peer(spawn, bootstrap, "0/1")
    address = peer.address()
    wait_until(lambda: peer_status(address).step > 10, 30)
    cli = peer_cli("leave", "--peer", address)
    assert cli.returncode == 0 and "is leaving" in cli.stdout, cli.stderr
    assert peer.process.wait(10) == 0
    assert member_ids(bootstrap, "e2e") == set()
    assert "stopped" in peer.log()
