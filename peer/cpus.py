"""A core of its own for the training thread (`--training-cpus`).

On a machine with few cores, the communication threads (senders, gRPC's
pollers and handlers, the membership client) wake up thousands of times a
second and the scheduler often runs them on the training thread's core,
which then waits; measured with bench/overlap.py on 2 cores, the training
thread of a peer exchanging 10 M parameters waits for a core ~7% of the
time. Pinning separates the two: the training thread runs only on
`--training-cpus`, every other thread of the daemon only on the rest. Off
by default: peers sharing one machine (the local cluster) would otherwise
all pin themselves to the same cores.
"""

from __future__ import annotations

import os


def parse_cpu_list(text: str) -> set[int]:
    """'0', '0-3', '0,2,4-5' -> CPU numbers (the kernel's cpu-list syntax)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last) if dash else int(first)
        except ValueError:
            raise ValueError(f"--training-cpus {text!r}: expected a list like 0 or 0-3,6") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"--training-cpus {text!r}: bad range {part!r}")
        cpus.update(range(lo, hi + 1))
    if not cpus:
        raise ValueError(f"--training-cpus {text!r}: no CPU given")
    return cpus


def split_cpus(text: str) -> tuple[set[int], set[int]]:
    """(training CPUs, CPUs for everything else), both within the CPUs this
    process may use; raises ValueError saying why a split is impossible."""
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("--training-cpus needs an OS with sched_setaffinity (Linux)")
    training = parse_cpu_list(text)
    allowed = os.sched_getaffinity(0)
    outside = sorted(training - allowed)
    if outside:
        raise ValueError(
            f"--training-cpus {text!r}: CPU {outside[0]} is not available to this process "
            f"(available: {format_cpus(allowed)})"
        )
    rest = allowed - training
    if not rest:
        raise ValueError(
            f"--training-cpus {text!r} leaves no CPU for communication "
            f"(available: {format_cpus(allowed)})"
        )
    return training, rest


def format_cpus(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def pin_all_threads(cpus: set[int]) -> None:
    """Restricts every thread of this process (and those they start) to `cpus`."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass  # the thread ended meanwhile


def pin_this_thread(cpus: set[int]) -> None:
    os.sched_setaffinity(0, cpus)  # 0: the calling thread
