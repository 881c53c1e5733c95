"""Churn: SIGKILL two of five peers and the bootstrap mid-run, restart them;
survivors keep training, everyone reaches the target, checkpoints load."""

import signal

import pytest

from peer import checkpoint
from tests.conftest import health_status, peer_status, start_peer, wait_until

pytestmark = pytest.mark.slow
PEERS = 5


def test_kill_two_peers_and_bootstrap_then_restart_all_reach_target(spawn, tmp_path):
    state = tmp_path / "members.db"
    boot = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "2", "--state", str(state))
    boot_address = boot.address()

    def run_peer(i: int):
        return start_peer(
            spawn,
            boot_address,
            "churn",
            "--shard",
            f"{i}/{PEERS}",
            "--step-delay-ms",
            "10",
            "--checkpoint-dir",
            str(tmp_path / f"peer{i}"),
            "--checkpoint-every-steps",
            "20",
            "--min-members",
            str(PEERS),
        )

    peers = [run_peer(i) for i in range(PEERS)]
    addresses = [p.address() for p in peers]
    ids = [p.wait_for_line("listening on").split()[1] for p in peers]
    wait_until(lambda: all(peer_status(a).checkpoint_step >= 20 for a in addresses), 120)

    for victim in (peers[3], peers[4], boot):
        victim.signal(signal.SIGKILL)
        victim.process.wait(10)
    survivors = addresses[:3]
    before = [peer_status(a).step for a in survivors]
    wait_until(lambda: all(peer_status(a).step > s + 30 for a, s in zip(survivors, before)), 60)
    assert all(health_status(a) == "SERVING" for a in survivors)

    boot = spawn("bootstrap", "run", "--listen", boot_address, "--ttl", "2", "--state", str(state))
    assert boot.address() == boot_address
    for i in (3, 4):
        peers[i] = run_peer(i)
        addresses[i] = peers[i].address()
        assert peers[i].wait_for_line("listening on").split()[1] == ids[i]  # same identity
        assert peer_status(addresses[i]).resumed_step >= 20

    wait_until(lambda: all(peer_status(a).accuracy >= 0.95 for a in addresses), 150, interval=0.5)
    assert all(p.process.poll() is None for p in peers)
    for i in range(PEERS):
        assert checkpoint.load(tmp_path / f"peer{i}")["member_id"] == ids[i]
