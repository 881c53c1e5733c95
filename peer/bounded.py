"""Per-member state that does not grow with membership churn."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Members remembered per table: far more than any peer's neighbors; a run
# with churn meets new member ids for as long as it lives.
MAX_MEMBERS = 1024


def put_recent(table: dict[K, V], key: K, value: V, limit: int = MAX_MEMBERS) -> None:
    """table[key] = value, the key now the most recent; beyond `limit` keys
    the least recently put goes (dicts keep insertion order)."""
    table.pop(key, None)
    table[key] = value
    while len(table) > limit:
        del table[next(iter(table))]
