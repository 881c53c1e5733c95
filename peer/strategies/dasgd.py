"""Decentralized asynchronous SGD (Tosi & Theobald, arXiv:2309.03754).

Each peer applies its own gradient at once, sums gradients, and every
`broadcast_every` steps sends the sum to its neighbors, who apply it through
their own optimizer before their next step. No locks, rounds or central copy.
"""

from __future__ import annotations

import numpy as np

from peer.strategies.base import GRADIENT, Incoming, Outgoing, Strategy, StrategyContext


class DASGD(Strategy):
    name = "dasgd"
    accepts = frozenset({GRADIENT})

    def __init__(self, context: StrategyContext, broadcast_every: int = 1):
        super().__init__(context)
        if broadcast_every < 1:
            raise ValueError("--broadcast-every must be >= 1")
        self.broadcast_every = broadcast_every
        self._accumulated: list[np.ndarray] | None = None
        self._window_clock: dict[str, int] | None = None
        self._steps_accumulated = 0

    def after_local_step(self, step: int) -> list[Outgoing]:
        # The optimizer already applied p.grad locally; keep it for the
        # neighbors. The strategy takes the gradient tensors over instead of
        # copying them (a 40 MB copy per broadcast on a 10 M model, on the
        # training thread): the parameters let go of them, so the next
        # backward pass makes new ones and nothing else writes these.
        # A parameter this step's loss did not reach has no gradient: zeros.
        grads = [
            np.zeros(p.shape, np.float32) if p.grad is None else p.grad.detach().numpy()
            for p in self.params
        ]
        for p in self.params:
            p.grad = None
        if self._accumulated is None:
            self._accumulated = grads
            # The sum is as stale as its oldest part (as when the transport
            # sums queued gradients): it carries the first step's clock.
            step_clock = self.context.step_clock
            self._window_clock = None if step_clock is None else dict(step_clock)
        else:
            for acc, g in zip(self._accumulated, grads):
                acc += g
        self._steps_accumulated += 1
        if self._steps_accumulated < self.broadcast_every:
            return []
        message = Outgoing(
            GRADIENT,
            self._accumulated,
            clock_ticks=self._steps_accumulated,
            clock=self._window_clock,
        )
        self._accumulated, self._steps_accumulated = None, 0
        return [message]

    def apply(self, update: Incoming) -> bool:
        if self.already_included(update):
            return False
        self.step_with_gradient(update.arrays)
        return True

    def state_dict(self) -> dict:
        """The gradients summed since the last broadcast: applied here, not
        yet sent, so neighbors get them after a restart too."""
        if self._accumulated is None:
            return {}
        return {
            "accumulated": [np.array(a, copy=True) for a in self._accumulated],
            "steps_accumulated": self._steps_accumulated,
            "window_clock": dict(self._window_clock or {}),
        }

    def load_state_dict(self, state: dict) -> None:
        if "accumulated" not in state:
            return
        self._accumulated = [np.array(a, dtype=np.float32, copy=True) for a in state["accumulated"]]
        self._steps_accumulated = int(state["steps_accumulated"])
        self._window_clock = {m: int(c) for m, c in state.get("window_clock", {}).items()}
