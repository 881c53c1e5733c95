"""Synchronous rounds for model averaging and EASGD, with a deadline.

Every `window` local steps a peer opens round r: it sends its model (kind
ROUND_MODEL, round r) to its neighbors and stops stepping (`ready_to_step`
is False) until the round's models from all of them arrived or the round's
deadline passed; then the subclass combines what arrived. A slow or dead
peer costs at most the deadline per round, and it is logged and counted.

Messages for a later round are kept until that round opens (one per sender,
its newest; a faster peer may already be there); messages for a round that
is closed are discarded, so a late model is never mixed into the wrong round.
A peer that finds the network rounds ahead (it joined late, or its rounds
timed out) jumps to the newest round it has seen.

The set waited for is the neighbor list: use a symmetric topology (`all`,
`ring`), where whoever we send to also sends to us.
"""

from __future__ import annotations

import logging

import numpy as np

from peer.strategies.base import ROUND_MODEL, Incoming, Outgoing, Strategy

log = logging.getLogger(__name__)


class RoundStrategy(Strategy):
    accepts = frozenset({ROUND_MODEL})
    clock_per_step = False

    def __init__(self, context, window: int, round_timeout_s: float):
        super().__init__(context)
        if window < 1:
            raise ValueError(f"--window must be >= 1 for {self.name}, got {window}")
        if round_timeout_s <= 0:
            raise ValueError(f"--round-timeout-s must be > 0, got {round_timeout_s}")
        self.window = window
        self.round_timeout_s = round_timeout_s
        self.round = 0  # the open round, or the last one closed
        self.round_open = False
        self.steps_since_round = 0
        self._deadline: float | None = None
        self._expected: set[str] = set()
        self._own_model: list[np.ndarray] = []
        self._arrived: dict[int, dict[str, list[np.ndarray]]] = {}
        self.rounds_closed = 0
        self.rounds_incomplete = 0
        self.late_discarded = 0
        self.missing_by_peer: dict[str, int] = {}

    def close_round(self, own: list[np.ndarray], others: list[list[np.ndarray]]) -> None:
        """Combines the own round model with the neighbors' that arrived in time."""
        raise NotImplementedError

    def ready_to_step(self) -> bool:
        return not self.round_open

    def after_local_step(self, step: int) -> list[Outgoing]:
        self.steps_since_round += 1
        if self.steps_since_round < self.window:
            return []
        self.steps_since_round = 0
        self.round = max([self.round + 1, *self._arrived])
        for stale in [r for r in self._arrived if r < self.round]:
            self.late_discarded += len(self._arrived.pop(stale))
        self.round_open = True
        self._deadline = None  # set by the next on_idle, which knows the time
        self._expected = set(self.context.neighbors)
        self._own_model = self.model_arrays()
        message = Outgoing(ROUND_MODEL, self._own_model, round=self.round)
        self._close_if_complete()
        return [message]

    def apply(self, update: Incoming) -> bool:
        if update.round < self.round or (update.round == self.round and not self.round_open):
            self.late_discarded += 1
            log.info(
                "discarded %s's model for round %d: this peer is past it (round %d)",
                update.sender,
                update.round,
                self.round,
            )
            return False
        # One model kept per sender: its newest (a sender rounds ahead, or
        # one sending ever higher rounds, must not pile up models here).
        for other in [r for r, models in self._arrived.items() if update.sender in models]:
            if other != update.round:
                del self._arrived[other][update.sender]
                self.late_discarded += 1
                if not self._arrived[other]:
                    del self._arrived[other]
        self._arrived.setdefault(update.round, {})[update.sender] = update.arrays
        if self.round_open:
            self._close_if_complete()
        return True

    def on_idle(self, now: float) -> list[Outgoing]:
        if self.round_open:
            if self._deadline is None:
                self._deadline = now + self.round_timeout_s
            if now >= self._deadline:
                self._close()
            else:  # a neighbor may have left the network since the round opened
                self._close_if_complete()
        return []

    def _close_if_complete(self) -> None:
        arrived = self._arrived.get(self.round, {})
        still_members = self._expected & set(self.context.neighbors)
        if still_members <= arrived.keys():
            self._close()

    def _close(self) -> None:
        arrived = self._arrived.pop(self.round, {})
        missing = sorted(self._expected - arrived.keys())
        if missing:
            self.rounds_incomplete += 1
            for member in missing:
                self.missing_by_peer[member] = self.missing_by_peer.get(member, 0) + 1
            log.warning(
                "round %d closed without %s (deadline %.1fs or left); combining %d of %d models",
                self.round,
                ", ".join(missing),
                self.round_timeout_s,
                len(arrived) + 1,
                len(self._expected) + 1,
            )
        self.close_round(self._own_model, list(arrived.values()))
        self.round_open = False
        self.rounds_closed += 1
        self._own_model = []
