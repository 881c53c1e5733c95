"""The replicated center variable of the parameter-server family.

There is no parameter server: every peer holds a center replica, and a commit
is a delta that its author adds to its own replica and broadcasts to its
neighbors, who add it to theirs. Addition commutes, so replicas that have
received the same commits hold the same center; with the `all` topology that
is what a parameter server would hold once the messages are delivered.
"""

from __future__ import annotations

import numpy as np

from peer import codec
from peer.strategies.base import (
    CENTER,
    CENTER_COMMIT,
    Arrays,
    Clock,
    Incoming,
    Outgoing,
    Strategy,
)


def copy_arrays(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [np.array(a, dtype=np.float32, copy=True) for a in arrays]


class CenterReplicaStrategy(Strategy):
    """Holds a center replica: served by Pull, adopted on warm start, checkpointed."""

    def __init__(self, context):
        super().__init__(context)
        # Every peer builds the same initial model, so replicas start equal.
        self.center_replica = self.model_arrays()
        self.commits_applied = 0

    def apply_commit(self, delta: list[np.ndarray], scale: float = 1.0) -> None:
        for center, change in zip(self.center_replica, delta):
            center += np.float32(scale) * change
        self.commits_applied += 1

    def snapshot(self, kind: str) -> list[np.ndarray] | None:
        if kind == CENTER:
            return copy_arrays(self.center_replica)
        return super().snapshot(kind)

    def load_model(self, model: Arrays, center: Arrays | None, clock: Clock | None = None) -> None:
        """A joiner adopts the network's center too; without one, its model is the best guess."""
        super().load_model(model, center, clock if center is not None else None)
        self.center_replica = copy_arrays(center if center is not None else model)

    def state_dict(self) -> dict:
        return {"center_replica": copy_arrays(self.center_replica)}

    def load_state_dict(self, state: dict) -> None:
        if "center_replica" in state:
            self.center_replica = copy_arrays(state["center_replica"])


class CommitStrategy(CenterReplicaStrategy):
    """Every `window` local steps: compute a commit, add it here, send it to all.

    Subclasses say what the commit is (`make_commit`) and may do more after it
    (DOWNPOUR's pull). The own clock advances once per commit sent.
    """

    accepts = frozenset({CENTER_COMMIT})
    clock_per_step = False

    def __init__(self, context, window: int):
        super().__init__(context)
        if window < 1:
            raise ValueError(f"--window must be >= 1 for {self.name}, got {window}")
        self.window = window
        self.steps_since_commit = 0

    def make_commit(self) -> list[np.ndarray]:
        raise NotImplementedError

    def commit_clock(self) -> dict[str, int] | None:
        """The clock the commit was computed from; None: the one at commit time."""
        return None

    def after_local_step(self, step: int) -> list[Outgoing]:
        self.steps_since_commit += 1
        if self.steps_since_commit < self.window:
            return []
        self.steps_since_commit = 0
        commit = codec.round_trip(self.make_commit(), self.context.wire_codec)
        self.apply_commit(commit)
        return [Outgoing(CENTER_COMMIT, commit, clock=self.commit_clock())]

    def apply(self, update: Incoming) -> bool:
        if self.already_included(update):
            return False
        self.apply_commit(update.arrays)
        return True
