"""DynSGD (Jiang et al., 2017): DOWNPOUR with staleness-aware damping.

A receiver adds a commit scaled by 1/(staleness + 1), where staleness is the
number of updates it had applied that the committer's computation had not
seen (from the vector clocks; the trainer fills it in before `apply`). The
own commit has staleness 0. Replicas see different staleness for the same
commit, so unlike DOWNPOUR's they need not stay equal.
"""

from __future__ import annotations

from peer.strategies.base import Incoming
from peer.strategies.downpour import Downpour


class DynSGD(Downpour):
    name = "dynsgd"

    def apply(self, update: Incoming) -> bool:
        self.apply_commit(update.arrays, scale=1.0 / (update.staleness + 1))
        return True
