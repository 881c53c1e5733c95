"""DOWNPOUR (Dean et al., 2012, as in Hermans' dist-keras), without a server.

Every λ local steps (default 5) a peer commits Δ = W − W_at_last_pull: it adds
Δ to its center replica and sends it to all neighbors, who add it to theirs.
Then it pulls: W ← its center replica, so it continues from everything the
network has committed that reached it.

Δ was computed from the center at the last pull, so a commit carries the
vector clock of that pull: commits that reached this peer's replica after it
count toward the commit's staleness (as a parameter server counts the
versions between a worker's fetch and its push), which DynSGD damps by.
"""

from __future__ import annotations

import numpy as np

from peer.strategies.base import Arrays, Clock
from peer.strategies.center import CommitStrategy, copy_arrays


class Downpour(CommitStrategy):
    name = "downpour"
    default_window = 5

    def __init__(self, context, window: int = 0):
        super().__init__(context, window or self.default_window)
        self.model_at_last_pull = self.model_arrays()
        self.clock_at_last_pull: dict[str, int] = {}  # the initial model saw nothing

    def commit_scale(self) -> float:
        return 1.0

    def make_commit(self) -> list[np.ndarray]:
        scale = np.float32(self.commit_scale())
        return [
            (now - then) * scale for now, then in zip(self.model_arrays(), self.model_at_last_pull)
        ]

    def after_local_step(self, step: int) -> list:
        messages = super().after_local_step(step)
        if messages:
            self.pull()
        return messages

    def commit_clock(self) -> dict[str, int]:
        return dict(self.clock_at_last_pull)

    def _now(self) -> dict[str, int]:
        clock = self.context.clock
        return clock.snapshot() if clock is not None else {}

    def pull(self) -> None:
        self.set_model(self.center_replica)
        self.model_at_last_pull = self.model_arrays()
        self.clock_at_last_pull = self._now()

    def load_model(self, model: Arrays, center: Arrays | None, clock: Clock | None = None) -> None:
        super().load_model(model, center, clock)
        self.model_at_last_pull = self.model_arrays()
        self.clock_at_last_pull = self._now()

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "model_at_last_pull": copy_arrays(self.model_at_last_pull),
            "clock_at_last_pull": dict(self.clock_at_last_pull),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "model_at_last_pull" in state:
            self.model_at_last_pull = copy_arrays(state["model_at_last_pull"])
        saved = state.get("clock_at_last_pull")
        self.clock_at_last_pull = (
            {member: int(count) for member, count in saved.items()}
            if saved is not None
            else self._now()  # a checkpoint from before it was kept
        )
