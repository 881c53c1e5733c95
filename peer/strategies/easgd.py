"""Synchronous EASGD (Zhang, Choromanska & LeCun, 2015), without a server.

Every τ local steps the peers exchange their models x_j for round r (see
rounds.py). Every peer keeps a center replica c and, when the round closes,
applies exactly the published rule with α = lr·ρ (ρ default 5):

    x_i ← x_i − α(x_i − c)            the model is pulled toward the center
    c   ← c + α·Σ_j (x_j − c)         the center toward the round's models

both from the values before the round (the own x_i included in the sum).
With the `all` topology every replica sees the same round's models, so the
replicas stay equal (with fp16/bf16, each takes its own model into the
center as the others decoded it).

The center moves by β = p·α times the distance to the round's mean (p
models in the round). The paper picks α = β/p for its many-worker runs; with
α = lr·ρ fixed, β grows with the peers and past 1 the center overshoots the
mean (past 2 it diverges: 9 peers at the defaults). So α is lr·ρ but at most
1/p: the center moves at most to the mean, whatever the number of peers.
"""

from __future__ import annotations

import numpy as np

from peer import codec
from peer.strategies.center import CenterReplicaStrategy
from peer.strategies.rounds import RoundStrategy

# Same window as aeasgd, so the two are comparable.
DEFAULT_WINDOW = 4


class EASGD(RoundStrategy, CenterReplicaStrategy):
    name = "easgd"

    def __init__(self, context, window: int = 0, rho: float = 5.0, round_timeout_s: float = 2.0):
        super().__init__(context, window or DEFAULT_WINDOW, round_timeout_s)
        if rho <= 0:
            raise ValueError(f"--rho must be > 0, got {rho}")
        self.alpha = np.float32(self.learning_rate() * rho)

    def round_alpha(self, models: int) -> np.float32:
        """α for a round of `models` models: lr·ρ, at most 1/models (β ≤ 1)."""
        return np.float32(min(float(self.alpha), 1.0 / models))

    def close_round(self, own: list[np.ndarray], others: list[list[np.ndarray]]) -> None:
        alpha = self.round_alpha(1 + len(others))
        # The center takes the own model as the others decoded it (fp16/bf16),
        # so every replica adds the same values; the model keeps its own.
        sent = codec.round_trip(own, self.context.wire_codec)
        new_model, new_center = [], []
        for center, x_own, x_sent, *x_others in zip(self.center_replica, own, sent, *others):
            new_model.append(x_own - alpha * (x_own - center))
            pull = sum(x - center for x in (x_sent, *x_others))
            new_center.append(center + alpha * pull)
        self.set_model(new_model)
        self.center_replica = new_center
