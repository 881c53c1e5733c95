"""The contract between the training loop and a strategy.

The trainer owns the model and calls, from its one thread:
  after_local_step(step)  right after the optimizer applied a local gradient;
                          returns the messages to send;
  apply(update)           for each received update, before the next step;
  on_idle(now)            between steps, so synchronous strategies can close
                          a round whose deadline passed; returns messages;
  ready_to_step()         before each local step: False while a synchronous
                          strategy waits for a round (the trainer then only
                          applies updates and calls on_idle).
A strategy that must answer a received update (gossip) appends to
`self.replies`; the trainer sends those right after `apply`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from peer.staleness import VectorClock
from peer.workloads import floating_buffers, trainable_parameters

Arrays = list[np.ndarray]
Clock = dict[str, int]  # member id -> how many of its updates (a vector clock)

# Update kinds, as named on the wire (dasgd.v1.UpdateKind).
GRADIENT = "GRADIENT"
DELTA = "DELTA"
MODEL = "MODEL"
CENTER_COMMIT = "CENTER_COMMIT"
CENTER = "CENTER"
ROUND_MODEL = "ROUND_MODEL"
GOSSIP_MODEL = "GOSSIP_MODEL"
GOSSIP_REPLY = "GOSSIP_REPLY"
BUFFERS = "BUFFERS"  # Pull only: the model's floating-point buffers


@dataclass
class Outgoing:
    kind: str
    arrays: list[np.ndarray]
    # How many of the sender's own clock units this message carries (e.g. the
    # number of local gradients summed into it).
    clock_ticks: int = 1
    round: int = 0
    # None: every neighbor; otherwise the member id to send to.
    to: str | None = None
    # The vector clock its content was computed from, when that is not the
    # sender's clock as it sends (a sum of gradients: its oldest part's; a
    # commit: the one at the pull it started from). The trainer sets the
    # sender's own entry.
    clock: dict[str, int] | None = None


@dataclass
class Incoming:
    kind: str
    sender: str
    arrays: list[np.ndarray]
    clock: dict[str, int] = field(default_factory=dict)
    clock_ticks: int = 1
    round: int = 0
    staleness: int = 0  # filled in by the trainer from the vector clocks


@dataclass
class StrategyContext:
    member_id: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    # Ids of the current neighbors (whom we send to) and of all other members;
    # the daemon replaces these lists when membership changes.
    neighbors: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    # Set by the trainer: its vector clock, and the clock the last local
    # gradient was computed from (before `after_local_step`).
    clock: VectorClock | None = None
    step_clock: dict[str, int] | None = None
    # How updates travel (peer.codec: raw, fp16, bf16): a commit strategy
    # adds to its own replica what its receivers will decode.
    wire_codec: str = "raw"


class Strategy:
    name = "base"
    # Kinds this strategy accepts from the wire; others are rejected on receipt.
    accepts: frozenset[str] = frozenset()
    # True: the peer's own clock advances once per local step (its gradients
    # are the updates); False: once per message it sends (commits, rounds).
    clock_per_step = True

    def __init__(self, context: StrategyContext):
        self.context = context
        self.params = [p for _, p in trainable_parameters(context.model)]
        self.buffers = [b for _, b in floating_buffers(context.model)]
        self.replies: list[Outgoing] = []
        # Per member, how many of its clock units what a warm start loaded
        # (the model, or the center replica) already held: updates that
        # were on their way here meanwhile are not applied twice.
        self.included: dict[str, int] = {}

    def after_local_step(self, step: int) -> list[Outgoing]:
        return []

    def apply(self, update: Incoming) -> bool:
        """Applies a received update; returns False if it was discarded."""
        raise NotImplementedError

    def on_idle(self, now: float) -> list[Outgoing]:
        return []

    def ready_to_step(self) -> bool:
        """False while waiting for others; the loop keeps applying updates meanwhile."""
        return True

    def state_dict(self) -> dict:
        """Extra state to checkpoint (center replica, accumulators)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def snapshot(self, kind: str) -> list[np.ndarray] | None:
        """What a Pull of `kind` returns: the model, its buffers, or the center replica."""
        if kind == BUFFERS:
            return [b.detach().float().numpy().copy() for b in self.buffers]
        return self.model_arrays() if kind == MODEL else None

    def load_model(self, model: Arrays, center: Arrays | None, clock: Clock | None = None) -> None:
        """Warm start: adopt a neighbor's model (and center replica, if any)
        and the vector clock of what the adopted state holds."""
        self.set_model(model)
        self.included = dict(clock or {})

    def already_included(self, update: Incoming) -> bool:
        """An update that state loaded at warm start already held: the update
        carries its sender's own count, that state's clock how many of the
        sender's units it held. (Found on 2 DOWNPOUR peers: the joiner added
        its neighbor's first commit twice and the replicas stayed apart for
        the rest of the run.)"""
        held = self.included.get(update.sender)
        if held is None:
            return False
        if update.clock.get(update.sender, 0) <= held:
            return True
        # A sender's updates arrive in order: no more of the held ones will
        # come (and a sender restarted with its clock set back is not refused).
        del self.included[update.sender]
        return False

    def set_buffers(self, arrays: list[np.ndarray]) -> None:
        """Warm start: adopt a neighbor's running statistics (BatchNorm's)."""
        with torch.no_grad():
            for b, a in zip(self.buffers, arrays):
                b.copy_(torch.from_numpy(np.asarray(a)))

    # Helpers shared by strategies.
    def set_model(self, arrays: list[np.ndarray]) -> None:
        with torch.no_grad():
            for p, a in zip(self.params, arrays):
                p.copy_(torch.from_numpy(np.asarray(a)))

    def model_arrays(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.params]

    def learning_rate(self) -> float:
        return float(self.context.optimizer.param_groups[0]["lr"])

    def step_with_gradient(self, gradients: list[np.ndarray]) -> None:
        """Runs the optimizer with `gradients` as if they were computed here."""
        optimizer = self.context.optimizer
        for p, g in zip(self.params, gradients):
            p.grad = torch.from_numpy(g)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
