"""Per-member tables stay bounded however many members come and go."""

from peer import bounded
from peer.bounded import put_recent
from peer.staleness import StalenessTracker


def test_the_least_recently_put_key_goes_first():
    table: dict[str, int] = {}
    for key in "abcd":
        put_recent(table, key, 1, limit=3)
    put_recent(table, "b", 2, limit=3)  # b is recent again
    put_recent(table, "e", 1, limit=3)
    assert list(table) == ["d", "b", "e"] and table["b"] == 2


def test_staleness_per_sender_keeps_the_senders_heard_from_most_recently(monkeypatch):
    monkeypatch.setattr(bounded, "MAX_MEMBERS", 3)
    monkeypatch.setattr(put_recent, "__defaults__", (3,))
    tracker = StalenessTracker()
    for i in range(10):  # ten members in turn, as churn brings them
        tracker.record(f"m{i}", i)
    assert sorted(tracker.by_sender) == ["m7", "m8", "m9"]
    assert tracker.overall.summary().count == 10  # the overall figures keep everything
