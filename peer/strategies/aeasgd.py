"""Asynchronous EASGD (Zhang, Choromanska & LeCun, 2015), without a server.

Every τ local steps a peer computes the elastic difference E = α(W − c_i)
against its center replica c_i (α = lr·ρ), moves its model toward the center,
W ← W − E, and commits E: it adds E to its own replica and sends it to all
neighbors, who add it to theirs. The center is thus pulled toward the models
by the same force that pulls each model toward it.
"""

from __future__ import annotations

import numpy as np

from peer.strategies.center import CommitStrategy

# dist-keras uses τ = 32 with lr 0.1; on small models a shorter window keeps
# the models from drifting apart between commits.
DEFAULT_WINDOW = 4


class AsynchronousEASGD(CommitStrategy):
    name = "aeasgd"

    def __init__(self, context, window: int = 0, rho: float = 5.0):
        super().__init__(context, window or DEFAULT_WINDOW)
        if rho <= 0:
            raise ValueError(f"--rho must be > 0, got {rho}")
        self.alpha = np.float32(self.learning_rate() * rho)

    def make_commit(self) -> list[np.ndarray]:
        model = self.model_arrays()
        elastic = [self.alpha * (w - c) for w, c in zip(model, self.center_replica)]
        self.set_model([w - e for w, e in zip(model, elastic)])
        return elastic
