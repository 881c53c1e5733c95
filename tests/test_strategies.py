"""Every strategy's update rule on deterministic in-process schedules, against
numbers computed by hand (no sockets, no threads).

Each peer is a Trainer around Linear(2 -> 1, no bias) starting at w = [1, -1]
with SGD lr 0.1 and the loss out * 1 on one fixed input x, so every local step
is exactly w <- w - 0.1 * x whatever w is. Messages go from one peer's `sent`
list to the others' `Trainer.apply`, so vector clocks and staleness are the
real ones.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from peer import checkpoint, codec
from peer.codec import TensorSpec
from peer.strategies import REGISTRY, Incoming, Outgoing, StrategyContext, make_strategy
from peer.strategies.base import (
    CENTER,
    CENTER_COMMIT,
    GOSSIP_MODEL,
    GOSSIP_REPLY,
    MODEL,
    ROUND_MODEL,
)
from peer.trainer import Trainer
from peer.workloads import Workload

START = [1.0, -1.0]


class Peer:
    def __init__(
        self,
        name: str,
        strategy: str,
        gradient: list[float],
        neighbors: list[str],
        loss=None,
        **options,
    ):
        self.name = name
        model = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([START]))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        batch = (torch.tensor([gradient]), torch.tensor([[1.0]]))
        workload = Workload(
            name="constant-gradient",
            model=model,
            optimizer=optimizer,
            next_batch=lambda: batch,
            loss_fn=loss or (lambda out, target: (out * target).sum()),
            evaluate=lambda: (0.0, 0.0),
            batch_size=1,
            learning_rate=0.1,
        )
        context = StrategyContext(
            name, model, optimizer, neighbors=list(neighbors), members=list(neighbors)
        )
        self.strategy = make_strategy(strategy, context, **options)
        self.sent: list[tuple[Outgoing, dict[str, int]]] = []
        self.trainer = Trainer(
            name, workload, self.strategy, send=lambda m, clock: self.sent.append((m, clock))
        )

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            assert self.strategy.ready_to_step()
            self.trainer.local_step()

    def take_sent(self) -> list[tuple[Outgoing, dict[str, int]]]:
        sent, self.sent = self.sent, []
        return sent

    def receive(self, sent: tuple[Outgoing, dict[str, int]], sender: str) -> bool:
        message, clock = sent
        return self.trainer.apply(
            Incoming(
                message.kind,
                sender,
                [a.copy() for a in message.arrays],
                dict(clock),
                message.clock_ticks,
                message.round,
            )
        )

    def weights(self) -> torch.Tensor:
        return self.trainer.workload.model.weight.detach().flatten().clone()

    def center(self) -> torch.Tensor:
        return torch.from_numpy(self.strategy.center_replica[0].flatten().copy())


def network(strategy: str, gradients: dict[str, list[float]], **options) -> dict[str, Peer]:
    names = sorted(gradients)
    return {
        n: Peer(n, strategy, gradients[n], [m for m in names if m != n], **options) for n in names
    }


def deliver_all(peers: dict[str, Peer], senders: list[str] | None = None) -> None:
    """Hands every queued message to its recipients, sender by sender in order."""
    for name in senders or sorted(peers):
        for item in peers[name].take_sent():
            message = item[0]
            for other in sorted(peers):
                if other != name and message.to in (None, other):
                    peers[other].receive(item, name)


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected))


def test_registry_has_every_strategy_and_published_defaults():
    assert set(REGISTRY) == {
        "dasgd",
        "average",
        "easgd",
        "aeasgd",
        "downpour",
        "adag",
        "dynsgd",
        "gossip",
    }
    windows = {
        name: network(name, {"A": [1.0, 0.0]})["A"].strategy.window
        for name in ("average", "easgd", "aeasgd", "downpour", "adag", "dynsgd")
    }
    assert windows == {
        "average": 5,
        "easgd": 4,
        "aeasgd": 4,
        "downpour": 5,
        "adag": 12,
        "dynsgd": 5,
    }
    # alpha = lr * rho with rho = 5 by default
    assert network("easgd", {"A": [1.0, 0.0]})["A"].strategy.alpha == pytest.approx(0.5)
    assert network("aeasgd", {"A": [1.0, 0.0]}, rho=2.0)["A"].strategy.alpha == pytest.approx(0.2)


# --- the parameter-server family -------------------------------------------------


def test_downpour_commits_delta_then_pulls_the_center_replica():
    peers = network("downpour", {"A": [1.0, 0.0], "B": [0.0, 2.0]}, window=2)
    a, b = peers["A"], peers["B"]
    a.step()
    assert a.sent == []  # not before lambda steps
    a.step()
    b.step(2)
    ((commit, clock),) = a.sent
    assert commit.kind == CENTER_COMMIT and clock == {"A": 1}  # own clock: one per commit
    close(torch.from_numpy(commit.arrays[0].flatten()), [-0.2, 0.0])  # W - W_at_last_pull
    close(a.center(), [0.8, -1.0])  # own commit in own replica
    close(a.weights(), [0.8, -1.0])  # pulled
    deliver_all(peers)
    close(a.center(), [0.8, -1.4])
    close(b.center(), [0.8, -1.4])
    close(b.weights(), [1.0, -1.4])  # B pulled before A's commit arrived
    a.step(2)  # W = [0.6, -1], delta from last pull [0.8, -1] is [-0.2, 0]
    close(a.center(), [0.6, -1.4])
    close(a.weights(), [0.6, -1.4])


def test_adag_commits_delta_divided_by_the_window():
    peers = network("adag", {"A": [1.0, 0.0], "B": [0.0, 2.0]}, window=2)
    a, b = peers["A"], peers["B"]
    a.step(2)
    b.step(2)
    close(torch.from_numpy(a.sent[0][0].arrays[0].flatten()), [-0.1, 0.0])  # [-0.2, 0] / 2
    close(a.weights(), [0.9, -1.0])
    deliver_all(peers)
    close(a.center(), [0.9, -1.2])
    close(b.center(), [0.9, -1.2])


def test_dynsgd_damps_a_commit_by_the_commits_its_replica_took_since_the_pull():
    peers = network("dynsgd", {"A": [1.0, 0.0], "B": [0.0, 1.0]}, window=1)
    a, b = peers["A"], peers["B"]
    a.step()
    b.step()
    # Nothing reached either replica between its pull and its commit: both
    # count fully, in both replicas (the receivers still see them cross).
    deliver_all(peers)
    close(a.center(), [0.9, -1.1])
    close(b.center(), [0.9, -1.1])
    assert a.trainer.staleness.overall.summary().max == 1
    a.step()  # W [0.9, -1] -> [0.8, -1]; commit [-0.1, 0]
    # B's commit reached A's replica after A's pull: staleness 1, so A's
    # commit is sent at half weight and A's replica adds that too.
    close(torch.from_numpy(a.sent[0][0].arrays[0].flatten()), [-0.05, 0.0])
    close(a.center(), [0.85, -1.1])
    close(a.weights(), [0.85, -1.1])
    deliver_all(peers)
    close(b.center(), [0.85, -1.1])
    assert b.trainer.staleness.by_sender["A"].summary().count == 2


@pytest.mark.parametrize("strategy", ["dynsgd", "downpour", "adag", "aeasgd"])
def test_replicas_that_took_the_same_commits_hold_the_same_center(strategy):
    """Commits in any order and interleaving: every replica adds the same
    commit with the same weight, so once all are delivered the centers agree,
    as the one center of a parameter server would. Before, DynSGD's receivers
    each damped a commit by their own count of its staleness, its committer by
    another, and two peers' replicas drifted apart (on digits-mlp, two
    replicas ended 70% of a replica's norm apart; accuracies 0.58-0.84)."""
    gradients = {"A": [1.0, 0.0], "B": [0.0, 1.0], "C": [1.0, 1.0]}
    peers = network(strategy, gradients, window=1)
    for rounds in range(4):
        for name in ("A", "B", "C")[: rounds + 1]:
            peers[name].step()
        deliver_all(peers, ["B"])  # some commits cross, some arrive before a pull
        peers["C"].step()
        deliver_all(peers, ["A", "C"])
    deliver_all(peers)
    centers = [peers[name].center() for name in sorted(peers)]
    assert not torch.equal(centers[0], torch.tensor(START))  # they did move
    for other in centers[1:]:
        close(other, centers[0].tolist())
    if strategy == "dynsgd":  # and some commits were damped
        undamped = network("downpour", gradients, window=1)
        for rounds in range(4):
            for name in ("A", "B", "C")[: rounds + 1]:
                undamped[name].step()
            deliver_all(undamped, ["B"])
            undamped["C"].step()
            deliver_all(undamped, ["A", "C"])
        deliver_all(undamped)
        moved = (centers[0] - torch.tensor(START)).abs().sum()
        assert moved < (undamped["A"].center() - torch.tensor(START)).abs().sum()


def deliver_decoded(peers: dict[str, Peer], wire: str) -> None:
    """deliver_all, with every message's arrays as `wire` (fp16/bf16) decodes them."""
    for name in sorted(peers):
        for message, clock in peers[name].take_sent():
            specs = [TensorSpec(str(i), a.shape) for i, a in enumerate(message.arrays)]
            scale = codec.f16_scale(message.arrays) if wire == "fp16" else 1.0
            encoded = codec.encode(message.arrays, wire, scale)
            message.arrays = codec.decode(encoded, specs, wire, scale)
            for other in sorted(peers):
                if other != name and message.to in (None, other):
                    peers[other].receive((message, clock), name)


@pytest.mark.parametrize("wire", ["fp16", "bf16"])
@pytest.mark.parametrize("strategy", ["downpour", "dynsgd", "aeasgd", "easgd"])
def test_with_compression_replicas_add_the_values_their_receivers_decode(strategy, wire):
    # Before: a committer added its exact commit (EASGD: its exact model) to
    # its own replica, the receivers the one decoded from fp16/bf16, and the
    # replicas drifted apart by the rounding (2 peers, bf16, 20 s: 2e-4 of a
    # replica's norm with equal clocks; EASGD 1.6e-3).
    peers = network(strategy, {"A": [1.0, 0.0], "B": [0.0, 1.0]}, window=1)
    for peer in peers.values():
        peer.strategy.context.wire_codec = wire
    for _ in range(3):
        for name in sorted(peers):
            peers[name].step()
            if strategy != "easgd":  # commits: one peer's arrives before the other steps
                deliver_decoded(peers, wire)
        deliver_decoded(peers, wire)  # easgd: the round closes
    assert torch.equal(peers["A"].center(), peers["B"].center())
    assert not torch.equal(peers["A"].center(), torch.tensor(START))


@pytest.mark.parametrize("strategy", ["dynsgd", "downpour", "adag"])
def test_a_commit_is_as_stale_as_the_pull_it_started_from(strategy):
    """Commits that reached the committer after its pull are ones its delta
    did not see, as a parameter server counts versions between fetch and push."""
    peers = network(strategy, {"A": [1.0, 0.0], "B": [0.0, 1.0]}, window=2)
    a, b = peers["A"], peers["B"]
    b.step()  # B works from the initial center
    a.step(2)  # A commits and pulls
    deliver_all(peers, ["A"])  # A's commit reaches B's replica, not B's model
    b.step()  # B's delta never saw A's commit
    deliver_all(peers, ["B"])
    assert a.trainer.staleness.by_sender["B"].summary().max == 1
    if strategy == "dynsgd":  # damped by 1/(1 + 1)
        close(a.center(), [0.8, -1.1])


def test_a_commits_pull_clock_survives_a_checkpoint(tmp_path):
    peers = network("dynsgd", {"A": [1.0, 0.0], "B": [0.0, 1.0]}, window=1)
    a, b = peers["A"], peers["B"]
    b.step()
    deliver_all(peers)
    a.step()  # pulls after B's commit reached it
    state = a.strategy.state_dict()
    assert state["clock_at_last_pull"]["B"] == 1
    path = checkpoint.save(tmp_path, {"strategy_state": state})
    fresh = network("dynsgd", {"A": [1.0, 0.0]}, window=1)["A"].strategy
    fresh.load_state_dict(checkpoint.load(path.parent)["strategy_state"])
    assert fresh.commit_clock() == a.strategy.commit_clock()


def test_a_dasgd_sum_is_as_stale_as_its_oldest_gradient():
    peers = network("dasgd", {"A": [1.0, 0.0], "B": [0.0, 1.0]}, broadcast_every=2)
    a, b = peers["A"], peers["B"]
    a.step()  # A's first gradient: computed before B's arrive
    b.step(2)
    deliver_all(peers, ["B"])
    a.step()  # the sum of both goes out
    deliver_all(peers, ["A"])
    # B had applied 2 of its own steps that A's first gradient did not see.
    assert b.trainer.staleness.by_sender["A"].summary().max == 2


def test_aeasgd_moves_model_and_center_by_the_elastic_difference():
    peers = network("aeasgd", {"A": [1.0, 0.0], "B": [0.0, 1.0]}, window=1, rho=2.0)
    a, b = peers["A"], peers["B"]
    a.step()  # W = [0.9, -1]; E = 0.2 (W - c) = [-0.02, 0]
    b.step()  # W = [1, -1.1];  E = [0, -0.02]
    close(a.weights(), [0.92, -1.0])
    close(a.center(), [0.98, -1.0])
    close(b.weights(), [1.0, -1.08])
    deliver_all(peers)
    close(a.center(), [0.98, -1.02])
    close(b.center(), [0.98, -1.02])
    a.step()  # W = [0.82, -1]; E = 0.2 ([0.82, -1] - [0.98, -1.02]) = [-0.032, 0.004]
    close(a.weights(), [0.852, -1.004])
    close(a.center(), [0.948, -1.016])
    close(torch.from_numpy(a.sent[-1][0].arrays[0].flatten()), [-0.032, 0.004])


def squared_error(x: list[float], y: float):
    target = torch.tensor([[y]])
    return lambda out, _: ((out - target) ** 2).sum(), torch.tensor([x])


def assert_float32_close(actual: torch.Tensor, reference: np.ndarray) -> None:
    """float32 replicas against a float64 reference: equal up to rounding."""
    torch.testing.assert_close(actual.double(), torch.from_numpy(reference), rtol=1e-5, atol=1e-6)


def ps_reference(data: dict[str, tuple[list[float], float]], window: int, scale: float, steps):
    """A parameter server and its workers as a plain loop: commit, then pull."""
    center = np.array(START)
    models = {n: center.copy() for n in data}
    at_pull = {n: center.copy() for n in data}
    counts = dict.fromkeys(data, 0)
    for name in steps:
        x, y = np.array(data[name][0]), data[name][1]
        models[name] -= 0.1 * 2.0 * (models[name] @ x - y) * x
        counts[name] += 1
        if counts[name] % window == 0:
            center += (models[name] - at_pull[name]) * scale
            models[name] = center.copy()
            at_pull[name] = center.copy()
    return center, models


@pytest.mark.parametrize("strategy", ["downpour", "adag"])
def test_replicated_center_equals_a_parameter_server(strategy):
    data = {"A": ([1.0, 2.0], 0.0), "B": ([2.0, 0.0], 1.0), "C": ([-1.0, 1.0], 0.5)}
    window = 3

    def build() -> dict[str, Peer]:
        peers = {}
        for name, (x, y) in data.items():
            loss, _ = squared_error(x, y)
            peers[name] = Peer(
                name, strategy, x, [m for m in data if m != name], loss=loss, window=window
            )
        return peers

    scale = 1.0 if strategy == "downpour" else 1.0 / window
    schedule = random.Random(7).choices("ABC", k=60)

    # Commits delivered at once: every replica is the PS's center at every point,
    # and every peer's model is what the PS's worker would have.
    peers = build()
    for i, name in enumerate(schedule):
        peers[name].step()
        deliver_all(peers, [name])
        center, models = ps_reference(data, window, scale, schedule[: i + 1])
        for other, peer in peers.items():
            assert_float32_close(peer.center(), center)
            assert_float32_close(peer.weights(), models[other])

    # Commits delayed and delivered out of step (each link in order, as a stream is):
    # once all are delivered, every replica equals the PS that summed the same commits.
    peers = build()
    in_flight: list[tuple[str, str, tuple]] = []
    server = np.array(START, dtype=np.float64)
    rng = random.Random(11)
    for name in schedule:
        peers[name].step()
        for item in peers[name].take_sent():
            server += item[0].arrays[0].flatten()
            in_flight += [(name, other, item) for other in data if other != name]
        while in_flight and rng.random() < 0.4:
            sender, receiver, item = in_flight.pop(0)
            peers[receiver].receive(item, sender)
    assert in_flight, "the schedule should leave commits in flight"
    for sender, receiver, item in in_flight:
        peers[receiver].receive(item, sender)
    for peer in peers.values():
        assert_float32_close(peer.center(), server)


def test_center_replica_is_pulled_checkpointed_and_adopted():
    a = network("downpour", {"A": [1.0, 0.0]}, window=1)["A"]
    a.step()
    assert a.strategy.snapshot(CENTER)[0].flatten().tolist() == pytest.approx([0.9, -1.0])
    assert a.strategy.snapshot(MODEL)[0].flatten().tolist() == pytest.approx([0.9, -1.0])
    state = a.strategy.state_dict()
    joiner = network("downpour", {"J": [1.0, 0.0]}, window=1)["J"]
    joiner.strategy.load_model([np.array([[0.5, 0.5]], np.float32)], state["center_replica"])
    close(joiner.center(), [0.9, -1.0])
    joiner.step()  # commit [-0.1, 0] from the adopted model, then pull
    close(joiner.center(), [0.8, -1.0])
    restored = network("downpour", {"R": [1.0, 0.0]}, window=1)["R"]
    restored.strategy.load_state_dict(state)
    close(restored.center(), [0.9, -1.0])


def test_a_dasgd_joiner_does_not_apply_twice_a_gradient_its_pulled_model_held():
    peers = network("dasgd", {"A": [1.0, 0.0], "J": [0.0, 1.0]})
    a, joiner = peers["A"], peers["J"]
    a.step()  # its gradient is on its way to J
    joiner.strategy.load_model(a.strategy.snapshot(MODEL), None, a.trainer.clock.snapshot())
    joiner.trainer.clock.entries.update(a.trainer.clock.snapshot())
    deliver_all(peers)
    close(joiner.weights(), a.weights().tolist())
    assert joiner.trainer.stats.updates_discarded == 1
    a.step()
    deliver_all(peers)
    close(joiner.weights(), a.weights().tolist())  # the next one is applied


@pytest.mark.parametrize("strategy", ["downpour", "dynsgd", "aeasgd"])
def test_a_joiner_does_not_add_twice_a_commit_its_pulled_replica_held(strategy):
    # Before: the commit that reached the joiner's inbox while it pulled the
    # replica (which already held it) was added again, and the two replicas
    # stayed apart for the rest of the run (2 DOWNPOUR peers: 0.09 apart;
    # 0.000 with --no-warm-start).
    peers = network(strategy, {"A": [1.0, 0.0], "J": [0.0, 1.0]}, window=1)
    a, joiner = peers["A"], peers["J"]
    a.step()  # its commit is on its way to J
    joiner.strategy.load_model(
        a.strategy.snapshot(MODEL), a.strategy.snapshot(CENTER), a.trainer.clock.snapshot()
    )
    joiner.trainer.clock.entries.update(a.trainer.clock.snapshot())
    deliver_all(peers)
    close(joiner.center(), a.center().tolist())
    assert joiner.trainer.stats.updates_discarded == 1
    a.step()
    joiner.step()
    deliver_all(peers)
    assert joiner.trainer.stats.updates_discarded == 1  # later commits count
    close(joiner.center(), a.center().tolist())
    assert not torch.equal(a.center(), torch.tensor(START))


# --- synchronous rounds --------------------------------------------------------------


def test_average_waits_for_the_round_and_averages_all_models():
    peers = network("average", {"A": [1.0, 0.0], "B": [0.0, 1.0], "C": [1.0, 1.0]}, window=2)
    for peer in peers.values():
        peer.step(2)
        assert not peer.strategy.ready_to_step()  # waiting for round 1
        assert peer.sent[0][0].round == 1
    deliver_all(peers)
    # [0.8, -1], [1, -1.2], [0.8, -1.2] -> mean
    for peer in peers.values():
        assert peer.strategy.ready_to_step()
        close(peer.weights(), [2.6 / 3, -3.4 / 3])
        assert peer.trainer.clock.snapshot() == {"A": 1, "B": 1, "C": 1}


def test_round_closes_at_its_deadline_and_a_late_model_is_discarded():
    peers = network(
        "average",
        {"A": [1.0, 0.0], "B": [0.0, 1.0], "C": [1.0, 1.0]},
        window=1,
        round_timeout_s=2.0,
    )
    a, b, c = peers["A"], peers["B"], peers["C"]
    for peer in (a, b, c):
        peer.step()  # A [0.9, -1], B [1, -1.1], C [0.9, -1.1]
    deliver_all(peers, ["A", "B"])  # C's round-1 model is slow
    c_round_1 = c.take_sent()
    close(c.weights(), [2.8 / 3, -3.2 / 3])  # C had everything
    a.strategy.on_idle(100.0)  # deadline 102
    a.strategy.on_idle(101.9)
    assert not a.strategy.ready_to_step()
    a.strategy.on_idle(102.0)
    assert a.strategy.ready_to_step()
    close(a.weights(), [0.95, -1.05])  # the mean of what arrived: A and B
    assert a.strategy.missing_by_peer == {"C": 1}
    assert a.strategy.rounds_incomplete == 1

    (late,) = c_round_1
    assert not a.receive(late, "C")  # round 1 is over: not applied
    close(a.weights(), [0.95, -1.05])
    assert a.strategy.late_discarded == 1
    assert a.trainer.stats.updates_discarded == 1

    # Round 2: B's model arrives before A opens the round and waits for it;
    # the stale round-1 model of C has no part in it.
    b.strategy.on_idle(100.0)
    b.strategy.on_idle(102.0)
    b.step()
    deliver_all(peers, ["B"])
    a.step()
    c.step()
    deliver_all(peers, ["A", "C"])
    assert a.strategy.ready_to_step() and a.strategy.round == 2
    expected = (
        np.array([0.95, -1.05]) + np.array([0.95, -1.05]) + np.array([2.8 / 3, -3.2 / 3])
    ) / 3 - np.array([2.0, 2.0]) * 0.1 / 3
    close(a.weights(), expected.tolist())


def test_a_peer_behind_jumps_to_the_networks_round():
    peers = network("average", {"A": [1.0, 0.0], "B": [0.0, 1.0]}, window=1)
    a, b = peers["A"], peers["B"]
    b.strategy.round = 41  # B has been running; A just joined
    b.step()
    deliver_all(peers)
    a.step()
    assert a.sent[0][0].round == 42
    deliver_all(peers)
    close(a.weights(), [0.95, -1.05])
    close(b.weights(), [0.95, -1.05])


def test_easgd_applies_the_elastic_rule_after_each_round():
    peers = network("easgd", {"A": [1.0, 0.0], "B": [0.0, 1.0]}, window=1, rho=2.0)
    a, b = peers["A"], peers["B"]  # alpha = 0.1 * 2 = 0.2
    a.step()  # x_A = [0.9, -1]
    b.step()  # x_B = [1, -1.1]
    deliver_all(peers)
    close(a.weights(), [0.92, -1.0])  # x - 0.2 (x - c), c = [1, -1]
    close(b.weights(), [1.0, -1.08])
    for peer in (a, b):  # c + 0.2 ((x_A - c) + (x_B - c))
        close(peer.center(), [0.98, -1.02])
    a.step()  # [0.82, -1]
    b.step()  # [1, -1.18]
    deliver_all(peers)
    close(a.weights(), [0.852, -1.004])
    close(b.weights(), [0.996, -1.148])
    for peer in (a, b):
        close(peer.center(), [0.952, -1.048])


@pytest.mark.parametrize("peers", [2, 4, 8, 12, 32])
def test_easgd_center_moves_at_most_to_the_mean_whatever_the_number_of_peers(peers):
    """alpha = lr * rho = 0.5 here: with p models the center would move by
    p * alpha times its distance to their mean (12 peers: 6x, diverging)."""
    strategy = network("easgd", {"A": [1.0, 0.0]}, window=1)["A"].strategy
    strategy.center_replica = [np.zeros_like(a) for a in strategy.center_replica]
    models = [np.ones_like(a) for a in strategy.center_replica]
    distances = []
    for _ in range(5):
        strategy.close_round(models, [models] * (peers - 1))
        distances.append(float(np.abs(1.0 - strategy.center_replica[0]).max()))
    assert all(0.0 <= d <= 1.0 for d in distances)
    assert distances == sorted(distances, reverse=True)  # monotone, no overshoot


# --- gossip ------------------------------------------------------------------------


def test_gossip_averages_pairwise_on_both_sides():
    peers = network("gossip", {"A": [1.0, 0.0], "B": [0.0, 1.0]})
    a, b = peers["A"], peers["B"]
    a.step()  # A [0.9, -1] -> GOSSIP_MODEL to B
    ((request, _),) = a.sent
    assert request.kind == GOSSIP_MODEL and request.to == "B"
    a.step()  # A [0.8, -1]; no second exchange while one is outstanding
    assert len(a.sent) == 1
    deliver_all(peers, ["A"])
    close(b.weights(), [0.95, -1.0])  # 1/2 ([1, -1] + [0.9, -1])
    ((reply, _),) = b.sent
    assert reply.kind == GOSSIP_REPLY and reply.to == "A"
    close(torch.from_numpy(reply.arrays[0].flatten()), [1.0, -1.0])  # B's model from before
    deliver_all(peers, ["B"])
    # 1/2 ([0.9, -1] sent + [1, -1]) and the step A took meanwhile, whole:
    # the sum of the models is the start's less the 2 local steps.
    close(a.weights(), [0.85, -1.0])
    close(a.weights() + b.weights(), [1.8, -2.0])
    assert a.strategy.partner is None and a.strategy.exchanges == 1
    a.step()
    assert a.sent[-1][0].kind == GOSSIP_MODEL
    # A's clock counts its 3 steps; B has seen the 1 that came with the request.
    assert a.trainer.clock.snapshot()["A"] == 3
    assert b.trainer.clock.snapshot()["A"] == 1


def test_gossip_gives_up_on_a_lost_reply_and_declines_what_it_cannot_answer():
    a = network("gossip", {"A": [1.0, 0.0], "B": [0.0, 1.0]}, round_timeout_s=1.0)["A"]
    a.step()
    a.strategy.on_idle(50.0)
    a.step()
    assert len(a.sent) == 1
    a.strategy.on_idle(51.0)
    assert a.strategy.timeouts == 1
    a.step()
    assert len(a.sent) == 2
    stranger = Incoming(GOSSIP_MODEL, "Z", [np.array([[5.0, 5.0]], np.float32)], {"Z": 1})
    before = a.weights()
    assert not a.trainer.apply(stranger)  # Z is no neighbor: no reply could reach it
    torch.testing.assert_close(a.weights(), before)
    assert a.sent[-1][0].kind == GOSSIP_MODEL  # and nothing was sent to it


def test_gossip_picks_partners_that_can_reply_on_an_asymmetric_topology():
    members = ["p0", "p1", "p2", "p3"]
    model = torch.nn.Linear(2, 1, bias=False)
    context = StrategyContext(
        "p0",
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        neighbors=["p1", "p2"],  # exponential: hops 1 and 2
        members=members[1:],
    )
    gossip = make_strategy("gossip", context, topology="exponential")
    # p1 sends to p2 and p3, never to p0; p2 sends to p3 and p0.
    assert gossip.partners() == ["p2"]


def test_round_does_not_wait_for_a_neighbor_that_left():
    peers = network("average", {"A": [1.0, 0.0], "B": [0.0, 1.0], "C": [1.0, 1.0]}, window=1)
    a, b = peers["A"], peers["B"]
    a.step()
    b.step()
    deliver_all(peers, ["B"])
    a.strategy.on_idle(0.0)
    assert not a.strategy.ready_to_step()
    a.strategy.context.neighbors = ["B"]  # C left; the daemon updates the list
    a.strategy.on_idle(0.1)
    assert a.strategy.ready_to_step()
    close(a.weights(), [0.95, -1.05])
    assert a.strategy.missing_by_peer == {"C": 1}


def test_dasgd_checkpoints_the_gradients_it_has_not_sent_yet(tmp_path):
    a = network("dasgd", {"A": [1.0, 0.0]}, broadcast_every=3)["A"]
    a.step(2)  # applied here, not sent
    assert a.take_sent() == []
    path = checkpoint.save(tmp_path, {"strategy_state": a.strategy.state_dict()})
    resumed = network("dasgd", {"A": [1.0, 0.0]}, broadcast_every=3)["A"]
    resumed.strategy.load_state_dict(checkpoint.load(path.parent)["strategy_state"])
    resumed.step()
    ((message, _),) = resumed.take_sent()
    assert message.clock_ticks == 3
    close(torch.from_numpy(message.arrays[0].flatten()), [3.0, 0.0])  # all three gradients


def test_a_resumed_trainer_reports_its_first_step_and_samples_per_second():
    a = network("dasgd", {"A": [1.0, 0.0]})["A"]
    a.trainer.stats.step = 1359  # as restored from a checkpoint
    a.step(3)
    assert a.trainer.stats.first_step_at > 0
    assert a.trainer.samples_per_s() > 0


def test_a_round_strategy_keeps_one_model_per_sender_ahead_of_it():
    a = network("average", {"A": [1.0, 0.0], "B": [0.0, 1.0]}, window=5)["A"]
    for future in range(5, 105):  # ever higher rounds from one sender
        a.receive((Outgoing(ROUND_MODEL, [np.ones((1, 2), np.float32)], round=future), {}), "B")
    assert list(a.strategy._arrived) == [104]
