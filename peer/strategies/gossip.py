"""Pairwise gossip averaging, AD-PSGD (Lian et al., 2018).

After each local step a peer i with no exchange outstanding sends its model
x_i (GOSSIP_MODEL) to one random neighbor j. Peer j sets x_j ← ½(x_j + x_i)
and replies with its model from before (GOSSIP_REPLY); i then sets
x_i ← x_i − ½(x_i_sent − x_j): the average of the pair exchanged plus the
steps i took while the reply was on its way, in full (AD-PSGD averages
atomically and applies concurrent gradients whole; averaging the current x_i
instead would halve those steps). Both sides average the same pair, so the
sum of the models is conserved; one exchange at a time keeps a peer from
mixing in many stale copies, and a timeout keeps a lost reply from stopping
it for good.

A reply can only travel to a neighbor, so a peer starts exchanges with
neighbors that have it as a neighbor too (on `ring` and `all`, every one),
and declines a request it could not answer, leaving both models as they were.

Vector clocks: the own clock advances per local step; a message to j carries
the steps taken since the last message to j, so j's entry for i counts the
steps of i that reached j.
"""

from __future__ import annotations

import logging
import random

import numpy as np

from peer.strategies.base import GOSSIP_MODEL, GOSSIP_REPLY, Incoming, Outgoing, Strategy
from peer.topology import neighbors as topology_neighbors

log = logging.getLogger(__name__)


def average(mine: list[np.ndarray], theirs: list[np.ndarray]) -> list[np.ndarray]:
    half = np.float32(0.5)
    return [half * (a + b) for a, b in zip(mine, theirs)]


class Gossip(Strategy):
    name = "gossip"
    accepts = frozenset({GOSSIP_MODEL, GOSSIP_REPLY})

    def __init__(
        self,
        context,
        round_timeout_s: float = 2.0,
        topology: str = "all",
        fanout: int = 2,
        seed: int | None = None,
    ):
        super().__init__(context)
        if round_timeout_s <= 0:
            raise ValueError(f"--round-timeout-s must be > 0, got {round_timeout_s}")
        self.reply_timeout_s = round_timeout_s
        self.topology = topology
        self.fanout = fanout
        self._rng = random.Random(seed)
        self.partner: str | None = None  # the outstanding exchange
        # The model sent in the last exchange started, and to whom.
        self._sent: tuple[str, list[np.ndarray]] | None = None
        self._deadline: float | None = None
        self._steps = 0
        self._steps_reported: dict[str, int] = {}
        self.exchanges = 0
        self.timeouts = 0
        self.declined = 0

    def partners(self) -> list[str]:
        """Neighbors that have us as a neighbor too: only they can reply."""
        me = self.context.member_id
        everyone = [*self.context.members, me]
        mutual = [
            n
            for n in self.context.neighbors
            if me in topology_neighbors(self.topology, n, everyone, fanout=self.fanout)
        ]
        return mutual or list(self.context.neighbors)

    def _message(self, kind: str, arrays: list[np.ndarray], to: str) -> Outgoing:
        ticks = max(1, self._steps - self._steps_reported.get(to, 0))
        self._steps_reported[to] = self._steps
        return Outgoing(kind, arrays, clock_ticks=ticks, to=to)

    def after_local_step(self, step: int) -> list[Outgoing]:
        self._steps += 1
        if self.partner is not None:
            return []
        candidates = self.partners()
        if not candidates:
            return []
        self.partner = self._rng.choice(candidates)
        self._deadline = None  # set by the next on_idle, which knows the time
        model = self.model_arrays()  # a copy: nobody changes it
        self._sent = (self.partner, model)
        return [self._message(GOSSIP_MODEL, model, self.partner)]

    def on_idle(self, now: float) -> list[Outgoing]:
        if self.partner is not None:
            if self._deadline is None:
                self._deadline = now + self.reply_timeout_s
            elif now >= self._deadline:
                log.info(
                    "no gossip reply from %s in %.1fs; moving on",
                    self.partner,
                    self.reply_timeout_s,
                )
                self.timeouts += 1
                self.partner = None
        return []

    def apply(self, update: Incoming) -> bool:
        if update.kind == GOSSIP_MODEL:
            if update.sender not in self.context.neighbors:
                self.declined += 1
                return False
            mine = self.model_arrays()
            self.set_model(average(mine, update.arrays))
            self.replies.append(self._message(GOSSIP_REPLY, mine, update.sender))
            return True
        # The other half of an exchange we started (even one we stopped waiting for).
        mine = self.model_arrays()
        if self._sent is not None and self._sent[0] == update.sender:
            half = np.float32(0.5)
            sent = self._sent[1]
            self.set_model([x - half * (s - y) for x, s, y in zip(mine, sent, update.arrays)])
            self._sent = None
        else:  # a reply to an older exchange: what we sent then is gone
            self.set_model(average(mine, update.arrays))
        if update.sender == self.partner:
            self.partner = None
            self.exchanges += 1
        return True
