"""The DASGD rule on a deterministic in-process schedule of two peers,
against weights computed by hand; vector clocks and staleness with it."""

import torch

from peer.strategies import Incoming, StrategyContext, make_strategy
from peer.trainer import Trainer
from peer.workloads import Workload


def tiny_peer(member_id: str, x, y, broadcast_every: int = 1):
    """Linear(2 -> 1, no bias) from w = [1, -1], squared error, SGD lr 0.1."""
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.tensor([x]), torch.tensor([[y]]))
    workload = Workload(
        name="tiny",
        model=model,
        optimizer=optimizer,
        next_batch=lambda: batch,
        loss_fn=lambda out, target: ((out - target) ** 2).mean(),
        evaluate=lambda: (0.0, 0.0),
        batch_size=1,
        learning_rate=0.1,
    )
    strategy = make_strategy(
        "dasgd", StrategyContext(member_id, model, optimizer), broadcast_every=broadcast_every
    )
    sent = []
    trainer = Trainer(member_id, workload, strategy, send=lambda m, clock: sent.append((m, clock)))
    return trainer, sent


def deliver(message_and_clock, sender: str) -> Incoming:
    message, clock = message_and_clock
    return Incoming(
        message.kind, sender, [a.copy() for a in message.arrays], clock, message.clock_ticks
    )


def weights(trainer: Trainer) -> list[float]:
    return trainer.workload.model.weight.detach().flatten().tolist()


def test_two_peers_apply_each_others_gradients_exactly():
    # A: out = 1*1 - 1*2 = -1, y = 0 -> grad 2*(-1)*[1, 2] = [-2, -4]
    # B: out = 1*2 - 1*0 =  2, y = 1 -> grad 2*( 1)*[2, 0] = [ 4,  0]
    a, sent_a = tiny_peer("A", [1.0, 2.0], 0.0)
    b, sent_b = tiny_peer("B", [2.0, 0.0], 1.0)
    a.local_step()
    b.local_step()
    torch.testing.assert_close(torch.tensor(weights(a)), torch.tensor([1.2, -0.6]))  # w - 0.1gA
    torch.testing.assert_close(torch.tensor(weights(b)), torch.tensor([0.6, -1.0]))  # w - 0.1gB
    (msg_a, clock_a), (msg_b, clock_b) = sent_a[0], sent_b[0]
    assert msg_a.kind == "GRADIENT" and msg_a.arrays[0].tolist() == [[-2.0, -4.0]]
    assert msg_b.arrays[0].tolist() == [[4.0, 0.0]]
    assert clock_a == {"A": 1} and clock_b == {"B": 1}

    assert a.apply(deliver(sent_b[0], "B"))
    assert b.apply(deliver(sent_a[0], "A"))
    # w - 0.1 * (gA + gB) on both, up to float32 rounding of the order of adds.
    expected = torch.tensor([0.8, -0.6])
    torch.testing.assert_close(torch.tensor(weights(a)), expected)
    torch.testing.assert_close(torch.tensor(weights(b)), expected)
    # Each had applied its own step, which the other's gradient did not see.
    assert a.staleness.overall.summary().avg == 1
    assert b.staleness.by_sender["A"].summary().max == 1
    assert a.clock.snapshot() == {"A": 1, "B": 1}


def test_broadcast_every_k_sends_the_sum_of_k_gradients():
    a, sent = tiny_peer("A", [1.0, 2.0], 0.0, broadcast_every=2)
    a.local_step()  # grad [-2, -4]; w -> [1.2, -0.6]
    assert sent == []
    a.local_step()  # out = 1.2 - 1.2 = 0 -> grad 0
    # second gradient at w = [1.2, -0.6]: out = 1.2*1 - 0.6*2 = 0.0 -> zero gradient
    ((message, clock),) = sent
    assert message.clock_ticks == 2 and clock == {"A": 2}
    torch.testing.assert_close(torch.from_numpy(message.arrays[0]), torch.tensor([[-2.0, -4.0]]))


def test_staleness_counts_updates_the_sender_had_not_seen():
    a, _ = tiny_peer("A", [1.0, 2.0], 0.0)
    for _ in range(3):
        a.local_step()
    zero = [torch.zeros(1, 2).numpy()]
    # C had seen 1 of A's 3 steps and nothing else: staleness 2.
    assert a.apply(Incoming("GRADIENT", "C", zero, {"A": 1, "C": 5}, 1))
    # D had seen all of A's and C's: staleness 0.
    assert a.apply(Incoming("GRADIENT", "D", zero, {"A": 3, "C": 1, "D": 1}, 1))
    summary = a.staleness.overall.summary()
    assert (summary.count, summary.max, summary.avg) == (2, 2, 1.0)


def test_emulated_slow_step_applies_arrivals_first_and_sends_the_compute_time_clock():
    # A computes gA = [-2, -4] at w = [1, -1]; while its (emulated) device is
    # busy, B's gradient [4, 0] arrives and is applied; then gA is applied.
    a, sent = tiny_peer("A", [1.0, 2.0], 0.0)
    a.step_delay_s = 0.05
    a.inbox.put(Incoming("GRADIENT", "B", [torch.tensor([[4.0, 0.0]]).numpy()], {"B": 1}, 1))
    a.local_step()
    torch.testing.assert_close(torch.tensor(weights(a)), torch.tensor([0.8, -0.6]))
    ((message, clock),) = sent
    assert message.arrays[0].tolist() == [[-2.0, -4.0]]  # computed before B's update
    assert clock == {"A": 1}  # so receivers count B's update as staleness
    assert a.clock.snapshot() == {"A": 1, "B": 1}


def test_a_sent_gradient_is_not_changed_by_later_steps_or_applied_updates():
    """The strategy sends the step's own gradient tensors (no copy): later
    backward passes, received updates and the next window's sums must not
    write into a message already handed to the transport."""
    for k in (1, 2):
        a, sent = tiny_peer("A", [1.0, 2.0], 0.0, broadcast_every=k)
        for _ in range(k):
            a.local_step()
        ((first, _),) = sent
        snapshot = [x.copy() for x in first.arrays]
        assert a.apply(Incoming("GRADIENT", "B", [torch.ones(1, 2).numpy()], {"B": 1}))
        for _ in range(2 * k):
            a.local_step()
        assert len(sent) == 3
        assert [x.tolist() for x in first.arrays] == [x.tolist() for x in snapshot]
        # The later messages are gradients of their own steps, not aliases.
        assert not any(
            x.__array_interface__["data"][0] == y.__array_interface__["data"][0]
            for (m, _), (n, _) in zip(sent, sent[1:])
            for x, y in zip(m.arrays, n.arrays)
        )
