"""Partition: a peer cut off keeps training alone; once the cut heals, the
models converge again. The cut is injected in the transport
(--fault-partition-file): nothing is sent over a cut link, so updates wait in
the bounded queue (gradients summed) exactly as they would behind a dead route."""

import time

import grpc
import numpy as np
import pytest

from peer.codec import TensorSpec
from peer.transport import pull_model
from tests.conftest import health_status, peer_status, start_peer, wait_until

pytestmark = pytest.mark.slow
SPECS = [
    TensorSpec("0.weight", (128, 64)),
    TensorSpec("0.bias", (128,)),
    TensorSpec("2.weight", (10, 128)),
    TensorSpec("2.bias", (10,)),
]


def model(address: str) -> np.ndarray:
    with grpc.insecure_channel(address) as channel:
        arrays, _ = pull_model(channel, "cut", "tester", SPECS)
    return np.concatenate([a.ravel() for a in arrays])


def distance(a: str, b: str) -> float:
    return float(np.linalg.norm(model(a) - model(b)))


def test_cut_peer_keeps_training_and_models_reconverge_after_heal(spawn, tmp_path):
    boot = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "5").address()
    faults = [tmp_path / "a.cut", tmp_path / "b.cut"]
    peers = [
        start_peer(
            spawn,
            boot,
            "cut",
            "--shard",
            f"{i}/2",
            "--step-delay-ms",
            "10",
            "--fault-partition-file",
            str(faults[i]),
        )
        for i in range(2)
    ]
    a, b = (p.address() for p in peers)
    wait_until(
        lambda: peer_status(a).updates_applied > 30 and peer_status(b).updates_applied > 30, 30
    )
    joined = distance(a, b)

    for fault in faults:
        fault.write_text("*")
    time.sleep(0.5)
    applied_at_cut = peer_status(a).updates_applied
    steps_at_cut = (peer_status(a).step, peer_status(b).step)
    time.sleep(4)
    cut = distance(a, b)
    assert peer_status(a).updates_applied <= applied_at_cut + 2  # nothing crosses the cut
    assert peer_status(a).step > steps_at_cut[0] + 50 and peer_status(b).step > steps_at_cut[1] + 50
    assert health_status(a) == "SERVING" and health_status(b) == "SERVING"
    assert cut > 3 * joined, (joined, cut)  # each trained on its own shard only

    for fault in faults:
        fault.unlink()
    wait_until(lambda: peer_status(a).updates_applied > applied_at_cut + 20, 20)
    healed = wait_until(lambda: (d := distance(a, b)) < cut / 3 and d, 20)
    assert healed < cut / 3, (joined, cut, healed)
    assert abs(peer_status(a).accuracy - peer_status(b).accuracy) < 0.05
