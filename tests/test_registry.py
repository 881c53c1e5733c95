"""Membership rules, tested by calling them with a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import threading

import pytest

from bootstrap.registry import (
    EventKind,
    InvalidArgument,
    MemberRecord,
    Registry,
    ResourceExhausted,
    StoredRun,
    StoredState,
    UnknownMember,
)
from bootstrap.store import SqliteStore

TTL = 10.0


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(ttl=TTL, clock=clock)


def ids(members) -> list[str]:
    return [m.id for m in members]


def test_join_assigns_short_hex_id_and_lists_member(registry: Registry, clock: FakeClock):
    member, snapshot = registry.join("demo", "10.0.0.1:7100", labels={"zone": "a"})
    assert member.id.startswith("p-") and len(member.id) == 10
    int(member.id[2:], 16)
    assert (member.address, member.run_id, dict(member.labels)) == (
        "10.0.0.1:7100",
        "demo",
        {"zone": "a"},
    )
    assert member.joined_at == member.last_seen == clock.now
    assert snapshot.version == 1
    assert ids(snapshot.members) == [member.id]
    assert ids(registry.members("demo")) == [member.id]


def test_assigned_ids_are_unique(registry: Registry):
    members = [registry.join("demo", f"h{i}:7100")[0] for i in range(50)]
    assert len({m.id for m in members}) == 50


def test_member_labels_cannot_be_changed_behind_the_registry(registry: Registry):
    labels = {"zone": "a"}
    member, _ = registry.join("demo", "h:1", labels=labels)
    labels["zone"] = "b"
    assert member.labels["zone"] == "a"
    with pytest.raises(TypeError):
        member.labels["zone"] = "c"  # type: ignore[index]


def test_each_change_bumps_version_by_one(registry: Registry):
    a, s1 = registry.join("demo", "h1:1")
    b, s2 = registry.join("demo", "h2:1")
    assert (s1.version, s2.version) == (1, 2)
    assert registry.heartbeat("demo", a.id) == 2  # a heartbeat changes nothing
    assert registry.leave("demo", a.id) == 3
    assert registry.snapshot("demo").version == 3
    assert ids(registry.members("demo")) == [b.id]


def test_rejoin_keeps_identity_and_bumps_version_only_on_change(
    registry: Registry, clock: FakeClock
):
    member, first = registry.join("demo", "h1:7100", member_id="p-restart")
    clock.advance(3)
    same, unchanged = registry.join("demo", "h1:7100", member_id="p-restart")
    assert unchanged.version == first.version
    assert same.id == "p-restart" and same.joined_at == member.joined_at
    assert same.last_seen == clock.now

    moved, changed = registry.join("demo", "h2:7200", member_id="p-restart")
    assert changed.version == first.version + 1
    assert moved.address == "h2:7200" and moved.joined_at == member.joined_at
    assert [(m.id, m.address) for m in registry.members("demo")] == [("p-restart", "h2:7200")]

    _, relabeled = registry.join("demo", "h2:7200", member_id="p-restart", labels={"gpu": "1"})
    assert relabeled.version == changed.version + 1


def test_heartbeat_of_unknown_member_raises(registry: Registry):
    with pytest.raises(UnknownMember, match="join again"):
        registry.heartbeat("demo", "p-never")
    registry.join("demo", "h:1", member_id="p-a")
    with pytest.raises(UnknownMember):
        registry.heartbeat("demo", "p-never")


def test_expiry_happens_strictly_after_ttl(registry: Registry, clock: FakeClock):
    member, _ = registry.join("demo", "h:1")
    clock.advance(TTL)
    assert registry.expire() == []
    assert ids(registry.members("demo")) == [member.id]

    clock.advance(0.001)
    events = registry.expire()
    assert [(e.kind, e.member.id, e.version, e.members) for e in events] == [
        (EventKind.EXPIRED, member.id, 2, ())
    ]
    assert registry.members("demo") == ()
    with pytest.raises(UnknownMember):
        registry.heartbeat("demo", member.id)


def test_heartbeat_renews_the_lease(registry: Registry, clock: FakeClock):
    member, _ = registry.join("demo", "h:1")
    for _ in range(5):
        clock.advance(TTL)
        registry.heartbeat("demo", member.id)
        assert registry.expire() == []
    clock.advance(TTL + 0.001)
    assert [e.member.id for e in registry.expire()] == [member.id]


def test_lapsed_member_is_expired_before_the_sweep_notices(registry: Registry, clock: FakeClock):
    """Between sweeps nobody may see, or heartbeat, a lapsed member."""
    stale, _ = registry.join("demo", "h1:1")
    clock.advance(TTL + 1)
    fresh, _ = registry.join("demo", "h2:1")
    assert ids(registry.members("demo")) == [fresh.id]

    clock.advance(TTL + 1)
    with pytest.raises(UnknownMember):
        registry.heartbeat("demo", fresh.id)
    assert registry.members("demo") == ()


def test_expired_member_rejoins_with_its_id_and_a_new_lease(registry: Registry, clock: FakeClock):
    registry.join("demo", "h:1", member_id="p-back")
    clock.advance(TTL + 1)
    registry.expire()
    member, snapshot = registry.join("demo", "h:1", member_id="p-back")
    assert member.joined_at == clock.now
    assert ids(snapshot.members) == ["p-back"]
    assert snapshot.version == 3


def test_leave_is_idempotent(registry: Registry):
    member, _ = registry.join("demo", "h:1")
    registry.join("demo", "h:2")
    assert registry.leave("demo", member.id) == 3
    assert registry.leave("demo", member.id) == 3
    assert registry.leave("other", "p-nobody") == 3  # the highest version issued


def test_runs_are_isolated(registry: Registry, clock: FakeClock):
    a, _ = registry.join("run-a", "h:1")
    b, _ = registry.join("run-b", "h:2")
    assert ids(registry.members("run-a")) == [a.id]
    assert ids(registry.members("run-b")) == [b.id]
    with pytest.raises(UnknownMember):
        registry.heartbeat("run-b", a.id)
    registry.leave("run-b", a.id)
    assert ids(registry.members("run-a")) == [a.id]

    watch_b = registry.subscribe("run-b")
    registry.join("run-a", "h:3")
    assert watch_b.get(timeout=0) is None


def test_run_version_never_goes_back_when_a_run_empties_and_returns(registry: Registry):
    member, _ = registry.join("demo", "h:1")
    registry.join("other", "h:2")
    last = registry.leave("demo", member.id)
    assert registry.snapshot("demo").version >= last
    _, again = registry.join("demo", "h:1")
    assert again.version > last


@pytest.mark.parametrize(
    "run_id",
    ["", "x" * 129, "has space", "slash/y", "naïve", "semi;colon"],
)
def test_invalid_run_id(registry: Registry, run_id: str):
    with pytest.raises(InvalidArgument, match="run id"):
        registry.join(run_id, "h:1")


@pytest.mark.parametrize("member_id", ["x" * 129, "a b", "p:1"])
def test_invalid_member_id(registry: Registry, member_id: str):
    with pytest.raises(InvalidArgument, match="member id"):
        registry.join("demo", "h:1", member_id=member_id)
    with pytest.raises(InvalidArgument, match="member id"):
        registry.heartbeat("demo", member_id)


def test_longest_valid_names_are_accepted(registry: Registry):
    member, _ = registry.join("r" * 128, "h:1", member_id="m" * 128)
    assert member.id == "m" * 128


@pytest.mark.parametrize(
    "address",
    [
        "",
        "host",
        "host:",
        ":7100",
        "host:0",
        "host:65536",
        "host:-1",
        "host:port",
        "::1:7100",
        "[nonsense]:7100",
        "bad host:7100",
        "h" * 256 + ":7100",
        "0.0.0.0:7100",
        "[::]:7100",
    ],
)
def test_invalid_address(registry: Registry, address: str):
    with pytest.raises(InvalidArgument, match="address"):
        registry.join("demo", address)


@pytest.mark.parametrize(
    "address", ["10.0.0.1:1", "peer-1.example.org:65535", "[::1]:7100", "h" * 255 + ":7100"]
)
def test_valid_address(registry: Registry, address: str):
    assert registry.join("demo", address)[0].address == address


def test_wildcard_address_error_says_what_to_do(registry: Registry):
    with pytest.raises(InvalidArgument, match="--advertise"):
        registry.join("demo", "0.0.0.0:7100")


@pytest.mark.parametrize(
    "labels",
    [
        {f"k{i}": "v" for i in range(33)},
        {"": "v"},
        {"k" * 129: "v"},
        {"k": "v" * 257},
    ],
)
def test_invalid_labels(registry: Registry, labels: dict[str, str]):
    with pytest.raises(InvalidArgument, match="label"):
        registry.join("demo", "h:1", labels=labels)


def test_largest_valid_labels_are_accepted(registry: Registry):
    labels = {f"{i:03d}" + "k" * 125: "v" * 256 for i in range(32)}
    assert dict(registry.join("demo", "h:1", labels=labels)[0].labels) == labels


def test_cap_on_members_per_run(clock: FakeClock):
    registry = Registry(ttl=TTL, clock=clock, max_members_per_run=3)
    members = [registry.join("demo", f"h{i}:1")[0] for i in range(3)]
    with pytest.raises(ResourceExhausted, match="3 members"):
        registry.join("demo", "h9:1")
    registry.join("demo", "moved:1", member_id=members[0].id)  # a rejoin is not a new member
    registry.join("other", "h9:1")  # another run has its own room
    registry.leave("demo", members[1].id)
    registry.join("demo", "h9:1")


def test_cap_on_runs(clock: FakeClock):
    registry = Registry(ttl=TTL, clock=clock, max_runs=2)
    first, _ = registry.join("run-1", "h:1")
    registry.join("run-2", "h:1")
    with pytest.raises(ResourceExhausted, match="2 runs"):
        registry.join("run-3", "h:1")
    registry.join("run-1", "h:2")  # existing runs still grow
    registry.leave("run-1", first.id)
    with pytest.raises(ResourceExhausted):
        registry.join("run-3", "h:1")
    clock.advance(TTL + 1)
    registry.expire()  # every run emptied: their slots are free again
    registry.join("run-3", "h:1")


def test_ttl_must_be_positive():
    with pytest.raises(ValueError, match="ttl"):
        Registry(ttl=0)


def test_subscriber_gets_snapshot_then_events_in_order(registry: Registry, clock: FakeClock):
    early, _ = registry.join("demo", "h:1")
    watch = registry.subscribe("demo")
    assert (watch.snapshot.version, ids(watch.snapshot.members)) == (1, [early.id])

    late, _ = registry.join("demo", "h:2")
    registry.leave("demo", early.id)
    clock.advance(TTL + 1)
    registry.expire()

    events = [watch.get(timeout=0) for _ in range(3)]
    assert [(e.kind, e.member.id, e.version, ids(e.members)) for e in events] == [
        (EventKind.JOINED, late.id, 2, [early.id, late.id]),
        (EventKind.LEFT, early.id, 3, [late.id]),
        (EventKind.EXPIRED, late.id, 4, []),
    ]
    assert watch.get(timeout=0) is None


def test_subscriber_blocks_until_an_event_arrives(registry: Registry):
    watch = registry.subscribe("demo")
    joiner = threading.Timer(0.05, registry.join, args=("demo", "h:1"))
    joiner.start()
    event = watch.get(timeout=5)
    joiner.join()
    assert event is not None and event.kind is EventKind.JOINED


def test_closing_wakes_a_waiting_subscriber(registry: Registry):
    watch = registry.subscribe("demo")
    closer = threading.Timer(0.05, registry.close_subscriptions)
    closer.start()
    assert watch.get(timeout=5) is None
    closer.join()
    assert watch.closed and not watch.overflowed
    registry.join("demo", "h:1")
    assert watch.get(timeout=0) is None


def test_unsubscribed_watcher_gets_nothing_more(registry: Registry):
    watch = registry.subscribe("demo")
    registry.unsubscribe(watch)
    registry.join("demo", "h:1")
    assert watch.closed and watch.get(timeout=0) is None


def test_slow_subscriber_is_dropped_not_buffered_forever(clock: FakeClock):
    registry = Registry(ttl=TTL, clock=clock, max_pending_events=2)
    slow = registry.subscribe("demo")
    fast = registry.subscribe("demo")
    for i in range(3):
        registry.join("demo", f"h{i}:1")
        assert fast.get(timeout=0) is not None
    assert slow.overflowed and slow.closed
    assert slow.get(timeout=0) is None
    assert not fast.overflowed


class MemoryStore:
    """A `Store` that records the calls, to test the write-through rules."""

    def __init__(self, state: StoredState | None = None):
        self.state = state or StoredState(runs={}, high_water=0)
        self.calls: list[tuple] = []

    def load(self) -> StoredState:
        return self.state

    def put_member(self, member: MemberRecord, version: int) -> None:
        self.calls.append(("put", member.run_id, member.id, member.address, version))

    def remove_member(self, run_id: str, member_id: str, version: int) -> None:
        self.calls.append(("remove", run_id, member_id, version))


def test_every_change_is_written_to_the_store_and_heartbeats_are_not(clock: FakeClock):
    store = MemoryStore()
    registry = Registry(ttl=TTL, clock=clock, store=store)
    a, _ = registry.join("demo", "h:1", member_id="p-a")
    registry.join("demo", "h:1", member_id="p-a")
    registry.heartbeat("demo", "p-a")
    registry.join("demo", "h:2", member_id="p-b")
    registry.leave("demo", "p-b")
    clock.advance(TTL + 1)
    registry.expire()
    assert store.calls == [
        ("put", "demo", "p-a", "h:1", 1),
        ("put", "demo", "p-b", "h:2", 2),
        ("remove", "demo", "p-b", 3),
        ("remove", "demo", "p-a", 4),
    ]


def test_failed_store_write_leaves_the_registry_unchanged(clock: FakeClock):
    class FailingStore(MemoryStore):
        def put_member(self, member: MemberRecord, version: int) -> None:
            raise OSError("disk full")

    registry = Registry(ttl=TTL, clock=clock, store=FailingStore())
    watch = registry.subscribe("demo")
    with pytest.raises(OSError):
        registry.join("demo", "h:1")
    assert registry.snapshot("demo").version == 0
    assert registry.members("demo") == ()
    assert watch.get(timeout=0) is None


def test_loaded_members_get_a_fresh_lease(clock: FakeClock):
    old = MemberRecord("p-old", "h:1", "demo", {}, joined_at=5.0, last_seen=5.0)
    store = MemoryStore(StoredState(runs={"demo": StoredRun(7, (old,))}, high_water=9))
    registry = Registry(ttl=TTL, clock=clock, store=store)
    snapshot = registry.snapshot("demo")
    assert snapshot.version == 7
    assert [(m.id, m.joined_at, m.last_seen) for m in snapshot.members] == [
        ("p-old", 5.0, clock.now)
    ]
    assert registry.heartbeat("demo", "p-old") == 7
    assert registry.join("fresh", "h:2")[1].version == 10  # above the stored high water


def test_sqlite_store_round_trip(tmp_path, clock: FakeClock):
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    registry = Registry(ttl=TTL, clock=clock, store=store)
    registry.join("demo", "h:1", member_id="p-a", labels={"zone": "a"})
    registry.join("demo", "h:2", member_id="p-b")
    registry.join("demo", "moved:3", member_id="p-a", labels={"zone": "a"})
    registry.leave("demo", "p-b")
    gone, _ = registry.join("gone", "h:9")
    registry.leave("gone", gone.id)
    store.close()

    clock.advance(500)
    reopened = SqliteStore(path)
    restored = Registry(ttl=TTL, clock=clock, store=reopened)
    snapshot = restored.snapshot("demo")
    assert snapshot.version == 4
    assert [(m.id, m.address, dict(m.labels), m.last_seen) for m in snapshot.members] == [
        ("p-a", "moved:3", {"zone": "a"}, clock.now)
    ]
    assert restored.members("gone") == ()
    assert restored.join("gone", "h:9")[1].version == 7
    reopened.close()


def test_sqlite_store_refuses_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "state.db"
    path.write_text("not a database, just some text that is long enough " * 20)
    with pytest.raises(OSError, match="cannot use state file"):
        SqliteStore(path)
