"""Shared fixtures: daemons as real processes, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemons import ROOT, Daemon


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """spawn("peer", "run", ...) or spawn("bootstrap", "run", ...): a daemon
    from this checkout, stopped (SIGTERM, then SIGKILL) when the test ends."""
    daemons: list[Daemon] = []

    def start(program: str, *args: str) -> Daemon:
        module = {"peer": "peer.cli", "bootstrap": "bootstrap.cli"}[program]
        daemon = Daemon(
            [sys.executable, "-m", module, *args], tmp_path / f"{program}-{len(daemons)}.log"
        )
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in reversed(daemons):
        daemon.stop()


def health_status(address: str, service: str = "", timeout: float = 2.0) -> str:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> object:
    """Polls until `predicate()` is truthy; returns its value or fails with the last one."""
    end = time.monotonic() + timeout
    value = None
    while time.monotonic() < end:
        with contextlib.suppress(grpc.RpcError):
            value = predicate()
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


def peer_status(address: str):
    from dasgd.v1 import peer_pb2, peer_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return peer_pb2_grpc.PeerStub(channel).Status(peer_pb2.StatusRequest(), timeout=5)


def member_ids(bootstrap: str, run_id: str) -> set[str]:
    """Ids the bootstrap lists for `run_id`."""
    from dasgd.v1 import membership_pb2, membership_pb2_grpc

    with grpc.insecure_channel(bootstrap) as channel:
        response = membership_pb2_grpc.MembershipStub(channel).ListMembers(
            membership_pb2.ListMembersRequest(run_id=run_id), timeout=5
        )
    return {m.id for m in response.members}


def start_peer(spawn: Callable[..., Daemon], bootstrap: str, run_id: str, *extra: str) -> Daemon:
    """`dasgd-peer run` on 127.0.0.1:0 in `run_id` (digits-mlp, dasgd unless `extra` says)."""
    return spawn(
        "peer",
        "run",
        "--bootstrap",
        bootstrap,
        "--listen",
        "127.0.0.1:0",
        "--run-id",
        run_id,
        *extra,
    )


def peer_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`dasgd-peer ARGS` from this checkout, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "peer.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_local(*args: str, timeout: float) -> tuple[int, str]:
    """`dasgd-peer local ARGS` to the end: (exit code, stdout and stderr).
    It runs in its own process group, so a run cut short takes the bootstrap
    and every peer with it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "peer.cli", "local", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    return process.returncode, output


def applied_from(address: str, sender: str) -> int:
    """Updates from `sender` that the peer at `address` has applied."""
    return {n.id: n.updates_applied for n in peer_status(address).neighbors}.get(sender, 0)
