"""DOWNPOUR (Dean et al., 2012, as in Hermans' dist-keras), without a server.

Every λ local steps (default 5) a peer commits Δ = W − W_at_last_pull: it adds
Δ to its center replica and sends it to all neighbors, who add it to theirs.
Then it pulls: W ← its center replica, so it continues from everything the
network has committed that reached it.
"""

from __future__ import annotations

import numpy as np

from peer.strategies.center import CommitStrategy, copy_arrays


class Downpour(CommitStrategy):
    name = "downpour"
    default_window = 5

    def __init__(self, context, window: int = 0):
        super().__init__(context, window or self.default_window)
        self.model_at_last_pull = self.model_arrays()

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

    def pull(self) -> None:
        self.set_model(self.center_replica)
        self.model_at_last_pull = self.model_arrays()

    def load_model(self, model: list[np.ndarray], center: list[np.ndarray] | None) -> None:
        super().load_model(model, center)
        self.model_at_last_pull = self.model_arrays()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "model_at_last_pull": copy_arrays(self.model_at_last_pull)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "model_at_last_pull" in state:
            self.model_at_last_pull = copy_arrays(state["model_at_last_pull"])
