"""Neighbor choice. Recomputed whenever the member list changes; every peer
computes it from the same sorted list, so choices agree without talking."""

from __future__ import annotations

import random
from collections.abc import Sequence

TOPOLOGIES = ("all", "ring", "random-k", "exponential")


def neighbors(
    topology: str, me: str, members: Sequence[str], fanout: int = 2, seed: int = 0
) -> list[str]:
    """Member ids this peer sends to (receivers accept from any member)."""
    ring = sorted(set(members) | {me})
    others = [m for m in ring if m != me]
    if topology == "all" or len(others) <= 1:
        return others
    position = ring.index(me)
    size = len(ring)
    if topology == "ring":
        return sorted({ring[(position + 1) % size], ring[(position - 1) % size]})
    if topology == "exponential":
        chosen = set()
        hop = 1
        while hop < size:
            chosen.add(ring[(position + hop) % size])
            hop *= 2
        return sorted(chosen)
    if topology == "random-k":
        rng = random.Random(f"{seed}:{me}:{','.join(ring)}")
        return sorted(rng.sample(others, min(fanout, len(others))))
    raise ValueError(f"unknown topology {topology!r}: choose one of {', '.join(TOPOLOGIES)}")
