"""Synchronous model averaging: every λ local steps (default 5) the peers
exchange their models for round r and each sets W ← the mean of its own and
those that arrived before the round's deadline (see rounds.py)."""

from __future__ import annotations

import numpy as np

from peer.strategies.rounds import RoundStrategy

DEFAULT_WINDOW = 5


class ModelAveraging(RoundStrategy):
    name = "average"

    def __init__(self, context, window: int = 0, round_timeout_s: float = 2.0):
        super().__init__(context, window or DEFAULT_WINDOW, round_timeout_s)

    def close_round(self, own: list[np.ndarray], others: list[list[np.ndarray]]) -> None:
        models = [own, *others]
        self.set_model([sum(tensors) / np.float32(len(models)) for tensors in zip(*models)])
