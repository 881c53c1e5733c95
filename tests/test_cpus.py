"""--training-cpus: the training thread alone on its CPUs, every other thread
of the daemon on the rest."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from peer.cpus import format_cpus, parse_cpu_list, split_cpus
from tests.conftest import peer_cli, peer_status, start_peer, wait_until


def test_cpu_lists_parse_like_the_kernels():
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0-3") == {0, 1, 2, 3}
    assert parse_cpu_list("1, 4-5,7") == {1, 4, 5, 7}


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "0-"])
def test_bad_cpu_lists_are_refused(text):
    with pytest.raises(ValueError, match="--training-cpus"):
        parse_cpu_list(text)


def test_a_split_must_leave_a_cpu_and_stay_within_the_allowed_ones():
    allowed = os.sched_getaffinity(0)
    with pytest.raises(ValueError, match="leaves no CPU for communication"):
        split_cpus(format_cpus(allowed))
    with pytest.raises(ValueError, match="CPU 100000 is not available"):
        split_cpus("100000")


def thread_cpus(pid: int) -> dict[int, str]:
    """Thread id -> Cpus_allowed_list, for each thread of process `pid`."""
    lists = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists[int(task.name)] = line.split(":", 1)[1].strip()
    return lists


def kernel_list(cpus: set[int]) -> set[str]:
    """Ways the kernel may write `cpus` in Cpus_allowed_list."""
    ordered = sorted(cpus)
    written = {",".join(map(str, ordered))}
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        written.add(f"{ordered[0]}-{ordered[-1]}")
    return written


def test_training_thread_gets_its_cpu_and_the_rest_gets_the_others(spawn):
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        # One CPU cannot be split: the daemon must say so at start.
        cli = peer_cli("run", "--training-cpus", str(allowed[0]))
        assert cli.returncode == 2 and "leaves no CPU for communication" in cli.stderr
        return
    training = allowed[0]
    rest = set(allowed[1:])
    bootstrap = spawn("bootstrap", "run", "--listen", "127.0.0.1:0").address()
    peer = start_peer(spawn, bootstrap, "cpus", "--training-cpus", str(training))
    address = peer.address()
    wait_until(lambda: peer_status(address).step >= 20, 60)
    found = re.search(rf"training thread \((\d+)\) on CPU {training}$", peer.log(), re.M)
    assert found, peer.log()
    lists = thread_cpus(peer.process.pid)
    assert lists[int(found.group(1))] == str(training)
    # Everything else (main, gRPC's threads, senders, membership) is on the
    # rest; only what the training thread itself starts (a native helper of
    # torch's) may share its CPU.
    assert lists[peer.process.pid] in kernel_list(rest)
    on_rest = [tid for tid, cpus in lists.items() if cpus in kernel_list(rest)]
    on_training = [tid for tid, cpus in lists.items() if cpus == str(training)]
    assert len(on_rest) >= 5 and len(on_training) <= 2, lists
    assert len(on_rest) + len(on_training) == len(lists), lists
