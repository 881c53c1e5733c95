"""DynSGD (Jiang et al., 2017): DOWNPOUR with staleness-aware damping.

A parameter server adds a worker's push scaled by 1/(staleness + 1), where
staleness counts the pushes it applied between that worker's pull and this
push. Without a server, the committer is the one that can count this for its
own commit: the commits of others that reached its replica since the pull its
delta started from (from the vector clocks). It scales the commit by
1/(S + 1) before adding it to its replica and sending it, and every replica
adds the same scaled commit. Addition commutes, so replicas that have taken
the same commits hold the same center, as in DOWNPOUR.

Letting each receiver damp a commit by its own count instead made the
replicas drift apart without bound: a receiver also counts its own commits
still in flight to the committer, so the same commit weighed 1 in one replica
and 1/2 in another. On two peers of digits-mlp the replicas ended 70% of a
replica's norm apart, and each peer's deltas, made from its replica, moved
the other's from the wrong place: accuracies 0.58-0.84, 95% not reached.
Receivers still measure every commit's staleness (shown in Status); commits
that crossed in flight are not damped, as a server would damp one of them.
"""

from __future__ import annotations

from peer.strategies.downpour import Downpour


class DynSGD(Downpour):
    name = "dynsgd"

    def commit_scale(self) -> float:
        """1/(S + 1), S: commits of others this replica took since the pull."""
        clock = self.context.clock
        if clock is None:
            return 1.0
        me = self.context.member_id
        seen = {**self.clock_at_last_pull, me: clock.entries.get(me, 0)}
        return 1.0 / (clock.staleness_of(seen) + 1)
