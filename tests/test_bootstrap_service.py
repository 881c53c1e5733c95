"""The bootstrap over real gRPC on loopback: in-process daemons, and one real
`dasgd-bootstrap run` process stopped with SIGTERM."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bootstrap.cli import main, parse_args
from bootstrap.service import SERVICE_NAME, BootstrapDaemon
from dasgd.v1 import membership_pb2 as pb
from dasgd.v1 import membership_pb2_grpc
from rpc import Security, make_channel

Event = pb.MembershipEvent

StartDaemon = Callable[..., BootstrapDaemon]
Connect = Callable[..., membership_pb2_grpc.MembershipStub]


@pytest.fixture
def start_daemon() -> Iterator[StartDaemon]:
    daemons: list[BootstrapDaemon] = []

    def start(**options) -> BootstrapDaemon:
        daemon = BootstrapDaemon("127.0.0.1:0", **options).start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop(grace=0.2)


@pytest.fixture
def channels() -> Iterator[Callable[..., grpc.Channel]]:
    opened: list[grpc.Channel] = []

    def open_channel(address: str, security: Security | None = None) -> grpc.Channel:
        channel = make_channel(address, security)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        channel.close()


@pytest.fixture
def connect(channels) -> Connect:
    def stub(daemon: BootstrapDaemon, security: Security | None = None):
        return membership_pb2_grpc.MembershipStub(channels(daemon.address, security))

    return stub


def health_status(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_join_then_list_members(start_daemon: StartDaemon, connect: Connect):
    daemon = start_daemon(ttl=30)
    stub = connect(daemon)
    joined = stub.Join(
        pb.JoinRequest(run_id="demo", address="127.0.0.1:7100", labels={"zone": "a"}), timeout=5
    )
    assert joined.member.id.startswith("p-")
    assert joined.ttl_s == 30
    assert joined.version == 1
    assert [m.id for m in joined.members] == [joined.member.id]

    second = stub.Join(
        pb.JoinRequest(run_id="demo", address="127.0.0.1:7101", member_id="p-two"), timeout=5
    )
    listed = stub.ListMembers(pb.ListMembersRequest(run_id="demo"), timeout=5)
    assert listed.version == second.version == 2
    assert [(m.id, m.address, m.run_id, dict(m.labels)) for m in listed.members] == [
        (joined.member.id, "127.0.0.1:7100", "demo", {"zone": "a"}),
        ("p-two", "127.0.0.1:7101", "demo", {}),
    ]
    assert all(m.joined_at > 0 and m.last_seen >= m.joined_at for m in listed.members)

    beat = stub.Heartbeat(pb.HeartbeatRequest(run_id="demo", member_id="p-two"), timeout=5)
    assert (beat.ttl_s, beat.version) == (30, 2)
    left = stub.Leave(pb.LeaveRequest(run_id="demo", member_id="p-two"), timeout=5)
    assert left.version == 3
    listed = stub.ListMembers(pb.ListMembersRequest(run_id="demo"), timeout=5)
    assert [m.id for m in listed.members] == [joined.member.id]
    assert stub.ListMembers(pb.ListMembersRequest(run_id="other"), timeout=5).members == []


def test_watch_gets_snapshot_then_joined_then_expired(start_daemon: StartDaemon, connect: Connect):
    daemon = start_daemon(ttl=0.5)
    stub = connect(daemon)
    stream = stub.WatchMembers(pb.WatchMembersRequest(run_id="demo"), timeout=10)
    try:
        snapshot = next(stream)
        assert (snapshot.kind, snapshot.version, list(snapshot.members)) == (Event.SNAPSHOT, 0, [])

        joined_at = time.monotonic()
        stub.Join(pb.JoinRequest(run_id="demo", address="h:2", member_id="p-late"), timeout=5)
        joined = next(stream)
        assert (joined.kind, joined.member.id, joined.member.address) == (
            Event.JOINED,
            "p-late",
            "h:2",
        )
        assert (joined.version, [m.id for m in joined.members]) == (1, ["p-late"])

        expired = next(stream)
        waited = time.monotonic() - joined_at
    finally:
        stream.cancel()
    assert (expired.kind, expired.member.id, expired.version) == (Event.EXPIRED, "p-late", 2)
    assert list(expired.members) == []
    assert 0.5 <= waited < 3
    assert stub.ListMembers(pb.ListMembersRequest(run_id="demo"), timeout=5).members == []


def test_heartbeat_of_unknown_member_is_not_found(start_daemon: StartDaemon, connect: Connect):
    stub = connect(start_daemon())
    with pytest.raises(grpc.RpcError) as raised:
        stub.Heartbeat(pb.HeartbeatRequest(run_id="demo", member_id="p-ghost"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "join again" in raised.value.details()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.Join(pb.JoinRequest(run_id="demo", address="no-port"), timeout=5),
        lambda s: s.Join(pb.JoinRequest(run_id="bad run", address="h:1"), timeout=5),
        lambda s: s.Join(pb.JoinRequest(run_id="demo", address="0.0.0.0:7100"), timeout=5),
        lambda s: s.Join(
            pb.JoinRequest(run_id="demo", address="h:1", labels={"k": "v" * 300}), timeout=5
        ),
        lambda s: s.Heartbeat(pb.HeartbeatRequest(run_id="demo", member_id=""), timeout=5),
        lambda s: s.Leave(pb.LeaveRequest(run_id="", member_id="p-a"), timeout=5),
        lambda s: s.ListMembers(pb.ListMembersRequest(run_id="x" * 200), timeout=5),
        lambda s: next(s.WatchMembers(pb.WatchMembersRequest(run_id="a/b"), timeout=5)),
    ],
    ids=["address", "run-id", "wildcard", "label", "heartbeat", "leave", "list", "watch"],
)
def test_bad_input_is_invalid_argument(start_daemon: StartDaemon, connect: Connect, call):
    stub = connect(start_daemon())
    with pytest.raises(grpc.RpcError) as raised:
        call(stub)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details()


def test_health_is_serving_for_server_and_service(start_daemon: StartDaemon, channels):
    channel = channels(start_daemon().address)
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING


def test_health_turns_not_serving_when_shutdown_begins(start_daemon: StartDaemon, channels):
    daemon = start_daemon()
    updates = health_pb2_grpc.HealthStub(channels(daemon.address)).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    try:
        assert next(updates).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=daemon.stop, kwargs={"grace": 1.0})
        stopper.start()
        assert next(updates).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        updates.cancel()
    stopper.join(5)
    assert not stopper.is_alive()


def test_token_is_required_except_for_health(start_daemon: StartDaemon, channels):
    daemon = start_daemon(security=Security(token="s3cret"))
    anonymous = membership_pb2_grpc.MembershipStub(channels(daemon.address))
    with pytest.raises(grpc.RpcError) as raised:
        anonymous.ListMembers(pb.ListMembersRequest(run_id="demo"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = membership_pb2_grpc.MembershipStub(channels(daemon.address, Security(token="guess")))
    with pytest.raises(grpc.RpcError) as raised:
        wrong.Join(pb.JoinRequest(run_id="demo", address="h:1"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert daemon.registry.members("demo") == ()

    assert health_status(channels(daemon.address)) == health_pb2.HealthCheckResponse.SERVING
    member = membership_pb2_grpc.MembershipStub(channels(daemon.address, Security(token="s3cret")))
    joined = member.Join(pb.JoinRequest(run_id="demo", address="h:1"), timeout=5)
    assert [m.id for m in joined.members] == [joined.member.id]


def test_state_file_keeps_members_across_restart(
    start_daemon: StartDaemon, connect: Connect, tmp_path: Path
):
    state = str(tmp_path / "bootstrap.db")
    first = start_daemon(state_path=state)
    joined = connect(first).Join(
        pb.JoinRequest(run_id="demo", address="10.0.0.5:7100", member_id="p-keep"), timeout=5
    )
    first.stop(grace=0.2)

    second = start_daemon(state_path=state)
    stub = connect(second)
    listed = stub.ListMembers(pb.ListMembersRequest(run_id="demo"), timeout=5)
    assert [(m.id, m.address) for m in listed.members] == [("p-keep", "10.0.0.5:7100")]
    assert listed.version == joined.version
    beat = stub.Heartbeat(pb.HeartbeatRequest(run_id="demo", member_id="p-keep"), timeout=5)
    assert beat.version == joined.version


def test_watch_ends_when_the_daemon_stops(start_daemon: StartDaemon, connect: Connect):
    daemon = start_daemon()
    stream = connect(daemon).WatchMembers(pb.WatchMembersRequest(run_id="demo"), timeout=10)
    assert next(stream).kind == Event.SNAPSHOT
    started = time.monotonic()
    daemon.stop(grace=5)
    assert time.monotonic() - started < 3, "stop waited for the watch to time out"
    with pytest.raises((StopIteration, grpc.RpcError)):
        next(stream)


def test_cancelled_watches_end_and_free_their_threads(start_daemon: StartDaemon, connect: Connect):
    daemon = start_daemon(max_workers=4)
    stub = connect(daemon)
    for _ in range(3):
        stream = stub.WatchMembers(pb.WatchMembersRequest(run_id="demo"), timeout=10)
        assert next(stream).kind == Event.SNAPSHOT
        stream.cancel()
    deadline = time.monotonic() + 3
    while daemon.registry.watcher_count("demo"):
        assert time.monotonic() < deadline, "cancelled watches are still running"
        time.sleep(0.02)
    stub.Join(pb.JoinRequest(run_id="demo", address="h:1"), timeout=5)


def test_environment_gives_defaults_and_flags_win():
    environ = {
        "DASGD_BOOTSTRAP_LISTEN": "127.0.0.1:7000",
        "DASGD_TTL": "3",
        "DASGD_BOOTSTRAP_STATE": "/tmp/s.db",
        "DASGD_INSECURE": "true",
        "DASGD_LOG_LEVEL": "debug",
    }
    args = parse_args(["run"], environ)
    assert (args.listen, args.ttl, args.state, args.insecure, args.log_level) == (
        "127.0.0.1:7000",
        3.0,
        "/tmp/s.db",
        True,
        "DEBUG",
    )
    args = parse_args(["run", "--listen", "127.0.0.1:9", "--ttl", "5"], environ)
    assert (args.listen, args.ttl) == ("127.0.0.1:9", 5.0)
    assert parse_args(["run", "--listen", "h:1"], {}).ttl == 10.0


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["run"], {}),
        (["run", "--listen", "h:1", "--ttl", "0"], {}),
        (["run", "--listen", "h:1"], {"DASGD_INSECURE": "maybe"}),
    ],
)
def test_bad_configuration_is_a_usage_error(argv, environ, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, environ)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_insecure_listen_beyond_loopback_exits_2_without_traceback(capsys):
    assert main(["run", "--listen", "0.0.0.0:0"]) == 2
    captured = capsys.readouterr()
    assert "refusing to listen on 0.0.0.0:0 without TLS" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_real_daemon_serves_health_and_exits_0_on_sigterm(spawn, channels):
    daemon = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "2")
    line = daemon.wait_for_line("listening on", timeout=30)
    assert re.fullmatch(r"bootstrap listening on 127\.0\.0\.1:[1-9][0-9]*", line), line
    channel = channels(daemon.address())
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING

    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=10) == 0, daemon.log()
    assert daemon.lines == [line]  # nothing else on stdout
    assert "Traceback" not in daemon.log()
