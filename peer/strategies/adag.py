"""ADAG, the accumulated gradient normalized by the communication window
(Hermans, dist-keras): DOWNPOUR whose commit is Δ/λ (λ default 12).

Dividing by λ makes a commit the average step of the window rather than its
sum, so many peers committing at once do not overshoot the center.
"""

from __future__ import annotations

from peer.strategies.downpour import Downpour


class ADAG(Downpour):
    name = "adag"
    default_window = 12

    def commit_scale(self) -> float:
        return 1.0 / self.window
