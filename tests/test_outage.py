"""Bootstrap outage: peers keep training with the neighbors they know, a new
peer finds the network through a seed peer (peer exchange), and everyone
re-registers when the bootstrap comes back."""

import signal

import pytest

from tests.conftest import (
    applied_from,
    member_ids,
    peer_cli,
    peer_status,
    start_peer,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_training_and_discovery_go_on_without_the_bootstrap(spawn):
    boot = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "2")
    boot_address = boot.address()

    def run_peer(shard: str, *extra: str):
        return start_peer(
            spawn,
            boot_address,
            "outage",
            "--shard",
            shard,
            "--step-delay-ms",
            "10",
            *extra,
        )

    a, b = run_peer("0/3"), run_peer("1/3")
    a_addr, b_addr = a.address(), b.address()
    a_id, b_id = peer_status(a_addr).id, peer_status(b_addr).id
    wait_until(lambda: applied_from(a_addr, b_id) > 10, 30)

    boot.signal(signal.SIGKILL)
    boot.process.wait(10)
    applied_before = applied_from(a_addr, b_id)
    wait_until(lambda: applied_from(a_addr, b_id) > applied_before + 50, 30)

    c = run_peer("2/3", "--seed-peers", a_addr, "--join-timeout-s", "1")
    c_addr = c.address()
    c_id = peer_status(c_addr).id
    # C learned of B through A, and B of C through peer exchange; all exchange updates.
    wait_until(lambda: applied_from(c_addr, a_id) > 10 and applied_from(c_addr, b_id) > 10, 30)
    wait_until(lambda: applied_from(b_addr, c_id) > 10, 30)
    listed = peer_cli("peers", "--peer", b_addr)
    assert c_id in listed.stdout, listed.stdout + listed.stderr

    spawn("bootstrap", "run", "--listen", boot_address, "--ttl", "2").address()

    assert wait_until(lambda: member_ids(boot_address, "outage") == {a_id, b_id, c_id}, 30)
