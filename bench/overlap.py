"""Does sending overlap training? Samples/s of one peer training alone
against the same peer while it exchanges DASGD gradients with 3 neighbors.

    .venv/bin/python bench/overlap.py [--workloads digits-mlp,digits-wide]
        [--ks 1,10] [--window-s 8] [--cycles 3] [--json]

For each workload and k (`--broadcast-every`), one measured peer P runs
(real `dasgd-peer run` processes on loopback, with a real bootstrap):

    alone -> 3 neighbors join -> with neighbors -> they leave -> alone -> ...

for --cycles rounds; each round's ratio is samples/s with neighbors over the
mean of the alone windows either side (cancelling slow drift), and the
median ratio is reported. Samples/s is P's step count times the batch size
over a window, read from its Status RPC; evaluation is switched off
(--eval-every huge, --eval-every-s 0) so a window is all training.

What the ratio means on this 2-core machine: four peers would fight for
the same two cores, so the neighbors stand in for peers on other machines.
They are pinned to core 1 (with the bootstrap) and sleep after each step
(--neighbor-delay-ms; by default as long as 20 of P's steps, at least
200 ms), so they use little CPU; they still receive, decode and
apply everything P sends, and send their own gradients (same k) that P
receives, decodes and applies. P may use both cores (default), as a peer
would on its own machine: its trainer runs torch on one thread, and its
sender threads and gRPC can run beside it; --peer-cores 0 confines P to one
core, so every cycle of communication comes out of training;
--training-cpus 0 gives P's training thread core 0 to itself and puts P's
other threads on core 1 (the daemon's --training-cpus). The ratio thus
measures the cost of P's own communication — encoding and pushing its
updates to 3 neighbors, taking in theirs — not of computing more updates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

import grpc  # noqa: E402

from dasgd.v1 import peer_pb2, peer_pb2_grpc  # noqa: E402
from tests.daemons import Daemon  # noqa: E402

BATCH_SIZE = 32  # both digits workloads


def start(argv: list[str], cores: str | None, log: Path) -> Daemon:
    """`python -m ARGV` as a daemon in its own process group, optionally
    pinned to `cores`."""
    prefix = ["taskset", "-c", cores] if cores else []
    return Daemon([*prefix, sys.executable, "-m", *argv], log)


def status(address: str) -> peer_pb2.StatusResponse:
    with grpc.insecure_channel(address) as channel:
        return peer_pb2_grpc.PeerStub(channel).Status(peer_pb2.StatusRequest(), timeout=10)


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(grpc.RpcError):
            if predicate():
                return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def thread_times(pid: int) -> dict[int, tuple[float, float, int]]:
    """tid -> (seconds on a core, seconds runnable but waiting for a core,
    times it blocked: voluntary context switches)."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            on_core, waiting, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            blocked = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
            times[int(tid)] = (int(on_core) / 1e9, int(waiting) / 1e9, blocked)
    return times


def window(address: str, pid: int, seconds: float) -> dict[str, float]:
    """P's rates over `seconds`: samples/s, bytes and updates sent per s, ...,
    and where its training thread spent the time (from the scheduler)."""
    threads_before = thread_times(pid)
    first, t0 = status(address), time.monotonic()
    time.sleep(seconds)
    last, t1 = status(address), time.monotonic()
    threads_after = thread_times(pid)
    elapsed = t1 - t0
    deltas = {
        tid: tuple(now - then for now, then in zip(times, threads_before.get(tid, (0.0, 0.0, 0))))
        for tid, times in threads_after.items()
    }
    # The training thread is the one that ran most.
    trainer_on_core, trainer_waiting, trainer_blocks = max(deltas.values())
    samples_per_s = (last.step - first.step) * BATCH_SIZE / elapsed

    def sent(s: peer_pb2.StatusResponse, field: str) -> int:
        return sum(getattr(n, field) for n in s.neighbors if n.sending)

    return {
        "samples_per_s": samples_per_s,
        # As if the trainer had had a core whenever it could run: the part of
        # the slowdown that other processes on the machine, not P, caused is
        # taken out.
        "samples_per_s_given_a_core": samples_per_s * elapsed / (elapsed - trainer_waiting),
        "trainer_on_core": trainer_on_core / elapsed,
        "trainer_waiting_for_core": trainer_waiting / elapsed,
        "trainer_blocked": 1 - (trainer_on_core + trainer_waiting) / elapsed,
        # Each is a wait, in practice for the interpreter lock another thread
        # took while a torch op had let go of it.
        "trainer_blocks_per_s": trainer_blocks / elapsed,
        "process_cores": sum(d[0] for d in deltas.values()) / elapsed,
        "sent_mb_per_s": (last.bytes_sent - first.bytes_sent) / elapsed / 1e6,
        "updates_sent_per_s": (sent(last, "updates_sent") - sent(first, "updates_sent")) / elapsed,
        "coalesced_per_s": (sent(last, "coalesced") - sent(first, "coalesced")) / elapsed,
        "dropped_per_s": (sent(last, "dropped") - sent(first, "dropped")) / elapsed,
        "applied_per_s": (last.updates_applied - first.updates_applied) / elapsed,
        "received_mb_per_s": (last.bytes_received - first.bytes_received) / elapsed / 1e6,
    }


def peer_argv(bootstrap: str, run_id: str, workload: str, k: int, shard: str) -> list[str]:
    return [
        "peer.cli",
        "run",
        "--bootstrap",
        bootstrap,
        "--listen",
        "127.0.0.1:0",
        "--run-id",
        run_id,
        "--workload",
        workload,
        "--strategy",
        "dasgd",
        "--broadcast-every",
        str(k),
        "--shard",
        shard,
        "--eval-every",
        "100000000",
        "--eval-every-s",
        "0",  # else received updates trigger evaluations P alone never makes
        "--no-warm-start",
        "--log-level",
        "WARNING",
    ]


def measure(
    bootstrap: str, workload: str, k: int, args: argparse.Namespace, logs: Path
) -> dict[str, object]:
    """alone, (with neighbors, alone) x cycles; ratio per cycle against the
    mean of the alone windows either side."""
    run_id = f"overlap-{uuid.uuid4().hex[:8]}"
    pinning = ["--training-cpus", args.training_cpus] if args.training_cpus else []
    measured = start(
        peer_argv(bootstrap, run_id, workload, k, "0/4") + pinning, args.peer_cores, logs / "p.log"
    )
    neighbors: list[Daemon] = []
    alone: list[dict[str, float]] = []
    together: list[dict[str, float]] = []
    try:
        address = measured.address()
        wait_for(lambda: status(address).step > 0, 60, "the measured peer to step")
        time.sleep(3 * args.settle_s)  # past start-up's slow first steps
        pid = measured.process.pid
        alone.append(window(address, pid, args.window_s))
        step_ms = 1000 * BATCH_SIZE / alone[0]["samples_per_s"]
        delay_ms = args.neighbor_delay_ms or max(200.0, 20 * step_ms)
        for _ in range(args.cycles):
            neighbors = [
                start(
                    peer_argv(bootstrap, run_id, workload, k, f"{i}/4")
                    + ["--step-delay-ms", f"{delay_ms:.0f}"],
                    args.neighbor_cores,
                    logs / f"n{i}.log",
                )
                for i in (1, 2, 3)
            ]
            for n in neighbors:
                n.address()

            def exchanging() -> bool:
                s = status(address)
                sending = [n for n in s.neighbors if n.sending and n.updates_sent > 0]
                return len(sending) == 3 and s.updates_applied > 0

            wait_for(exchanging, 90, "the neighbors to exchange with the measured peer")
            time.sleep(args.settle_s)
            together.append(window(address, pid, args.window_s))
            for n in neighbors:
                n.stop()
            neighbors = []
            wait_for(
                lambda: not [n for n in status(address).neighbors if n.sending],
                30,
                "the measured peer to drop its neighbors",
            )
            time.sleep(args.settle_s)
            alone.append(window(address, pid, args.window_s))
    finally:
        for p in [*neighbors, measured]:
            p.stop()

    def ratios(key: str) -> list[float]:
        return [w[key] / ((alone[i][key] + alone[i + 1][key]) / 2) for i, w in enumerate(together)]

    def medians(windows: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(w[key] for w in windows) for key in windows[0]}

    return {
        "workload": workload,
        "k": k,
        "ratio": statistics.median(ratios("samples_per_s")),
        "ratios": ratios("samples_per_s"),
        "ratio_given_a_core": statistics.median(ratios("samples_per_s_given_a_core")),
        "neighbor_delay_ms": round(delay_ms),
        "alone_samples_per_s": [w["samples_per_s"] for w in alone],
        "with_neighbors_samples_per_s": [w["samples_per_s"] for w in together],
        "alone": medians(alone),
        "with_neighbors": medians(together),
    }


def rates(values: list[float]) -> str:
    return ", ".join(f"{x:.0f}" for x in values)


def report(result: dict) -> None:
    a, w = result["alone"], result["with_neighbors"]
    print(
        f"{result['workload']:12s} k={result['k']:<3d} ratio {result['ratio']:.2f} "
        f"(median of {', '.join(f'{r:.2f}' for r in result['ratios'])}); "
        f"given a core {result['ratio_given_a_core']:.2f}\n"
        f"    samples/s alone {rates(result['alone_samples_per_s'])}; "
        f"with 3 neighbors {rates(result['with_neighbors_samples_per_s'])}\n"
        f"    sent {w['sent_mb_per_s']:.0f} MB/s in {w['updates_sent_per_s']:.0f} updates/s "
        f"({w['coalesced_per_s']:.0f} coalesced/s), applied {w['applied_per_s']:.0f}/s; "
        f"neighbors sleep {result['neighbor_delay_ms']} ms a step\n"
        f"    training thread on a core / waiting for one / blocked: alone "
        f"{a['trainer_on_core']:.2f}/{a['trainer_waiting_for_core']:.2f}/"
        f"{a['trainer_blocked']:.2f}, with neighbors {w['trainer_on_core']:.2f}/"
        f"{w['trainer_waiting_for_core']:.2f}/{w['trainer_blocked']:.2f}; "
        f"it blocked {a['trainer_blocks_per_s']:.0f} then {w['trainer_blocks_per_s']:.0f} "
        f"times/s; P used {a['process_cores']:.2f} then {w['process_cores']:.2f} cores",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="digits-mlp,digits-wide")
    parser.add_argument("--ks", default="1,10", help="--broadcast-every values")
    parser.add_argument("--window-s", type=float, default=8.0, help="length of each window")
    parser.add_argument("--settle-s", type=float, default=2.0, help="wait before a window")
    parser.add_argument("--cycles", type=int, default=3, help="with/alone cycles per setting")
    parser.add_argument(
        "--neighbor-delay-ms",
        type=float,
        default=0.0,
        help="neighbors sleep this long after each step (default: 20 of P's steps, "
        "at least 200 ms)",
    )
    parser.add_argument("--peer-cores", default="", help="taskset cores for P (default: any)")
    parser.add_argument("--neighbor-cores", default="1", help="taskset cores for the others")
    parser.add_argument(
        "--training-cpus",
        default="",
        help="P's --training-cpus: its training thread alone on these, its other threads on "
        "the rest (default: not pinned)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    args.peer_cores = args.peer_cores or None
    args.neighbor_cores = args.neighbor_cores or None

    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="overlap-") as tmp:
        logs = Path(tmp)
        boot = start(
            ["bootstrap.cli", "run", "--listen", "127.0.0.1:0", "--ttl", "3"],
            args.neighbor_cores,
            logs / "bootstrap.log",
        )
        try:
            bootstrap = boot.address()
            for workload in args.workloads.split(","):
                for k in (int(x) for x in args.ks.split(",")):
                    result = measure(bootstrap, workload, k, args, logs)
                    results.append(result)
                    if not args.json:
                        report(result)
        finally:
            boot.stop()
    summary = {
        "load_avg_1m_before": round(load_before[0], 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "peer_cores": args.peer_cores or "any",
        "neighbor_cores": args.neighbor_cores or "any",
        "training_cpus": args.training_cpus or "not pinned",
        "window_s": args.window_s,
        "results": results,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"load average {summary['load_avg_1m_before']} before, "
            f"{summary['load_avg_1m_after']} after"
        )


if __name__ == "__main__":
    main()
