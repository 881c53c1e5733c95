"""Checkpoints: atomic files, resume with the same identity after SIGKILL,
a final checkpoint on SIGTERM, and warm start of late joiners."""

import signal

import pytest
import torch

from peer import checkpoint
from tests.conftest import peer_status, start_peer, wait_until


def sample_state(step: int) -> dict:
    return {
        "member_id": "p-1",
        "run_id": "r",
        "workload": "w",
        "strategy": "s",
        "step": step,
        "clock": {"p-1": step},
        "model": {"w": torch.full((2, 2), float(step))},
        "optimizer": {},
        "strategy_state": {"center": [torch.ones(2).numpy()]},
    }


def test_save_and_load_roundtrip_keeps_previous_and_leaves_no_temp_files(tmp_path):
    checkpoint.save(tmp_path, sample_state(1))
    checkpoint.save(tmp_path, sample_state(2))
    loaded = checkpoint.load(tmp_path)
    assert loaded["step"] == 2 and torch.equal(loaded["model"]["w"], torch.full((2, 2), 2.0))
    assert loaded["strategy_state"]["center"][0].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.prev"]


def test_torn_checkpoint_falls_back_to_previous_and_garbage_is_an_error(tmp_path):
    checkpoint.save(tmp_path, sample_state(1))
    checkpoint.save(tmp_path, sample_state(2))
    current = tmp_path / checkpoint.FILENAME
    current.write_bytes(current.read_bytes()[:100])  # as if cut mid-write by a bad disk
    assert checkpoint.load(tmp_path)["step"] == 1
    (tmp_path / (checkpoint.FILENAME + ".prev")).write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint"):
        checkpoint.load(tmp_path)
    assert checkpoint.load(tmp_path / "empty") is None


def training_status(address: str):
    """Status once the peer trains: it prints its address before it has
    waited for members and warm-started."""
    return wait_until(lambda: (status := peer_status(address)).state == "TRAINING" and status, 60)


def run_peer(spawn, bootstrap, ckpt_dir, *extra):
    return start_peer(
        spawn,
        bootstrap,
        "ckpt",
        "--checkpoint-dir",
        str(ckpt_dir),
        "--checkpoint-every-steps",
        "20",
        "--step-delay-ms",
        "5",
        *extra,
    )


@pytest.mark.slow
def test_sigkill_then_restart_resumes_same_identity_and_sigterm_saves_final(spawn, tmp_path):
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "2").address()
    first = run_peer(spawn, bootstrap, tmp_path / "a")
    peer_id = first.wait_for_line("listening on").split()[1]
    address = first.address()
    saved = wait_until(
        lambda: peer_status(address).checkpoint_step >= 60 and peer_status(address).checkpoint_step,
        60,
    )
    first.signal(signal.SIGKILL)
    first.process.wait(10)
    on_disk = checkpoint.load(tmp_path / "a")
    assert on_disk["member_id"] == peer_id and on_disk["step"] >= saved

    second = run_peer(spawn, bootstrap, tmp_path / "a")
    assert second.wait_for_line("listening on").split()[1] == peer_id
    resumed = training_status(second.address())
    assert resumed.resumed_step == on_disk["step"]
    assert resumed.step >= on_disk["step"]
    assert resumed.initial_accuracy > 0.5  # the trained model came back, not a fresh init
    wait_until(lambda: peer_status(second.address()).step > on_disk["step"] + 20, 60)

    second.signal(signal.SIGTERM)
    assert second.process.wait(10) == 0
    final = checkpoint.load(tmp_path / "a")
    assert final["step"] > on_disk["step"] + 20  # written at shutdown, not only periodically


@pytest.mark.slow
def test_late_joiner_warm_starts_from_a_neighbor(spawn, tmp_path):
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "3").address()
    # A step delay keeps the early peers from taking both cores from the late one's start.
    early = [
        start_peer(spawn, bootstrap, "warm", "--shard", f"{i}/3", "--step-delay-ms", "5")
        for i in range(2)
    ]
    early_address = early[0].address()
    early[1].address()
    wait_until(lambda: peer_status(early_address).accuracy >= 0.9, 120)
    late = start_peer(
        spawn,
        bootstrap,
        "warm",
        "--shard",
        "2/3",
    )
    late_status = training_status(late.address())
    assert late_status.warm_started_from in {
        peer_status(early_address).id,
        peer_status(early[1].address()).id,
    }
    # A fresh model scores ~0.1; one pulled from the network is already trained.
    assert late_status.initial_accuracy >= 0.85
