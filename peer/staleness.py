"""Vector clocks and the staleness statistics of the DASGD bound.

Each peer keeps V[k] = number of peer k's updates it has applied (its own
included). An update carries its sender's V from when it was computed. When
peer i applies it, its staleness is

    s = sum_k max(0, V_i[k] - V_msg[k])

the updates the receiver had applied that the sender's computation did not
see. The convergence bound of decentralized ASGD depends on the average of s,
so the average is the number to watch; max and percentiles show the tail.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from peer.bounded import put_recent


class VectorClock:
    def __init__(self, owner: str, entries: Mapping[str, int] | None = None):
        self.owner = owner
        self.entries: dict[str, int] = dict(entries or {})

    def tick(self, member: str, count: int = 1) -> None:
        self.entries[member] = self.entries.get(member, 0) + count

    def snapshot(self) -> dict[str, int]:
        return dict(self.entries)

    def staleness_of(self, sender_clock: Mapping[str, int]) -> int:
        """Updates applied here that a computation at `sender_clock` did not see."""
        return sum(
            max(0, applied - sender_clock.get(member, 0))
            for member, applied in self.entries.items()
        )


@dataclass(frozen=True)
class StalenessSummary:
    count: int = 0
    avg: float = 0.0
    max: int = 0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "avg": self.avg,
            "max": self.max,
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
        }


class StalenessWindow:
    """Exact count/avg/max over all samples; percentiles over the last `window`.

    Written by the training thread, read by RPC threads: `list(deque)` copies
    atomically under the GIL, so readers need no lock.
    """

    def __init__(self, window: int = 4096):
        self._recent: deque[int] = deque(maxlen=window)
        self._count = 0
        self._total = 0
        self._max = 0

    def record(self, staleness: int) -> None:
        self._recent.append(staleness)
        self._count += 1
        self._total += staleness
        self._max = max(self._max, staleness)

    def summary(self) -> StalenessSummary:
        if not self._count:
            return StalenessSummary()
        p50, p95, p99 = np.percentile(np.array(list(self._recent)), [50, 95, 99])
        return StalenessSummary(
            count=self._count,
            avg=self._total / self._count,
            max=self._max,
            p50=float(p50),
            p95=float(p95),
            p99=float(p99),
        )


class StalenessTracker:
    """Overall and per-sender staleness of applied updates."""

    def __init__(self, window: int = 4096):
        self._window = window
        self.overall = StalenessWindow(window)
        self.by_sender: dict[str, StalenessWindow] = {}

    def record(self, sender: str, staleness: int) -> None:
        self.overall.record(staleness)
        per_sender = self.by_sender.get(sender) or StalenessWindow(self._window)
        # The senders heard from most recently (members come and go).
        put_recent(self.by_sender, sender, per_sender)
        per_sender.record(staleness)
