"""Bootstrap outage: peers keep training with the neighbors they know, a new
peer finds the network through a seed peer (peer exchange), and everyone
re-registers when the bootstrap comes back."""

import signal
import subprocess
import sys

import grpc
import pytest

from dasgd.v1 import membership_pb2, membership_pb2_grpc, peer_pb2, peer_pb2_grpc
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.slow


def status(address: str) -> peer_pb2.StatusResponse:
    with grpc.insecure_channel(address) as channel:
        return peer_pb2_grpc.PeerStub(channel).Status(peer_pb2.StatusRequest(), timeout=5)


def applied_from(address: str, sender: str) -> int:
    return {n.id: n.updates_applied for n in status(address).neighbors}.get(sender, 0)


def test_training_and_discovery_go_on_without_the_bootstrap(spawn):
    boot = spawn("bootstrap", "run", "--listen", "127.0.0.1:0", "--ttl", "2")
    boot_address = boot.address()

    def start_peer(shard: str, *extra: str):
        return spawn(
            "peer",
            "run",
            "--bootstrap",
            boot_address,
            "--listen",
            "127.0.0.1:0",
            "--run-id",
            "outage",
            "--shard",
            shard,
            "--step-delay-ms",
            "10",
            *extra,
        )

    a, b = start_peer("0/3"), start_peer("1/3")
    a_addr, b_addr = a.address(), b.address()
    a_id, b_id = status(a_addr).id, status(b_addr).id
    wait_until(lambda: applied_from(a_addr, b_id) > 10, 30)

    boot.signal(signal.SIGKILL)
    boot.process.wait(10)
    applied_before = applied_from(a_addr, b_id)
    wait_until(lambda: applied_from(a_addr, b_id) > applied_before + 50, 30)

    c = start_peer("2/3", "--seed-peers", a_addr, "--join-timeout-s", "1")
    c_addr = c.address()
    c_id = status(c_addr).id
    # C learned of B through A, and B of C through peer exchange; all exchange updates.
    wait_until(lambda: applied_from(c_addr, a_id) > 10 and applied_from(c_addr, b_id) > 10, 30)
    wait_until(lambda: applied_from(b_addr, c_id) > 10, 30)
    listed = subprocess.run(
        [sys.executable, "-m", "peer.cli", "peers", "--peer", b_addr],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert c_id in listed.stdout, listed.stdout + listed.stderr

    spawn("bootstrap", "run", "--listen", boot_address, "--ttl", "2").address()

    def registered():
        with grpc.insecure_channel(boot_address) as channel:
            members = (
                membership_pb2_grpc.MembershipStub(channel)
                .ListMembers(membership_pb2.ListMembersRequest(run_id="outage"), timeout=5)
                .members
            )
        return {m.id for m in members}

    assert wait_until(lambda: registered() == {a_id, b_id, c_id}, 30)
