"""Workloads beyond digits-mlp: frozen and unused parameters are handled,
and a training loop that fails ends the peer (exit 1, last good checkpoint
kept) and the local cluster (at once, naming the error)."""

import json
import time

import pytest

from peer import checkpoint
from tests.conftest import peer_status, run_local, start_peer, wait_until
from tests.odd_workloads import FAIL_AT_STEP

pytestmark = pytest.mark.slow


def test_frozen_and_unused_parameters_train_to_the_target(tmp_path):
    # Before: a trainable parameter the loss never reaches has no gradient,
    # and the peer's training thread died on its first step.
    summary_path = tmp_path / "summary.json"
    returncode, output = run_local(
        "--peers", "2", "--workload", "tests.odd_workloads:frozen_and_unused",
        "--strategy", "dasgd", "--target-accuracy", "0.9", "--max-seconds", "60",
        "--step-delay-ms", "5", "--quiet", "--summary-json", str(summary_path),
        timeout=120,
    )  # fmt: skip
    assert returncode == 0, output[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["reached_target"]  # every peer reached 90%
    assert summary["updates_applied"] > 0  # they did exchange updates


def test_local_stops_when_every_peer_has_failed_and_says_why(tmp_path):
    # Before: the launcher polled dead peers until --max-seconds.
    started = time.monotonic()
    returncode, output = run_local(
        "--peers", "2", "--workload", "tests.odd_workloads:fails_at_step_150",
        "--strategy", "dasgd", "--max-seconds", "120", "--step-delay-ms", "5", "--quiet",
        timeout=150,
    )  # fmt: skip
    assert returncode == 1, output[-3000:]
    assert time.monotonic() - started < 60, output[-3000:]
    assert "every peer has exited" in output
    assert "exited: training loop failed: RuntimeError('the data source went away')" in output


def test_a_failed_training_loop_exits_1_and_saves_no_checkpoint(spawn, tmp_path):
    # Before: the peer logged the traceback, wrote its final checkpoint from a
    # model in an unknown state, and exited 0.
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0").address()
    peer = start_peer(
        spawn, bootstrap, "fails", "--workload", "tests.odd_workloads:fails_at_step_150",
        "--step-delay-ms", "5", "--checkpoint-dir", str(tmp_path / "ckpt"),
        "--checkpoint-every-steps", "100000", "--checkpoint-every-s", "100000",
    )  # fmt: skip
    assert peer.process.wait(60) == 1
    log = peer.log()
    assert "dasgd-peer: training loop failed: RuntimeError('the data source went away')" in log
    assert f"stopped at step {FAIL_AT_STEP - 1}" in log
    assert checkpoint.load(tmp_path / "ckpt") is None


def test_a_late_joiner_takes_its_neighbors_batchnorm_statistics(spawn, tmp_path):
    # Before: it took the parameters only; with its fresh running statistics
    # (mean 0, variance 1) the pulled model scored ~0.1 on this workload.
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "3").address()
    workload = ("--workload", "tests.odd_workloads:batchnorm", "--step-delay-ms", "5")
    early = start_peer(spawn, bootstrap, "bn", "--shard", "0/2", *workload).address()
    wait_until(lambda: peer_status(early).accuracy >= 0.9, 120)
    late = start_peer(spawn, bootstrap, "bn", "--shard", "1/2", *workload).address()
    status = wait_until(lambda: (s := peer_status(late)).state == "TRAINING" and s, 60)
    assert status.warm_started_from == peer_status(early).id
    assert status.initial_accuracy >= 0.85
