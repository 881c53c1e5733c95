"""How much does work on another core slow a training step on this machine,
with no communication at all? The floor under bench/overlap.py's ratio.

    .venv/bin/python bench/contention.py [--workloads digits-mlp,digits-wide]
        [--window-s 3] [--repeats 5] [--json]

A workload trains in this process with torch on one thread, its thread
pinned to core 0 (as `dasgd-peer run --training-cpus 0` pins a trainer),
while core 1 is idle or runs one of these stand-ins for what a peer's
sender threads and co-located neighbors do there:

- spin: a pure-Python loop (the core busy, next to no memory traffic);
- wake: sleeps of 100 us in a loop (a thread woken ~5,000 times a second,
  as gRPC's and the senders' threads are woken per message);
- copy: copies a 40 MB array in a loop (memory traffic, as receiving and
  applying 40 MB updates makes).

Conditions are interleaved and each repeat's steps/s is divided by the
idle window next to it; the median over repeats is printed. On a virtual
machine whose two vCPUs share a physical core or its caches, even `spin`
costs the trainer, and `overlap.py` cannot then reach 1.0 whatever the
transport does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

import torch  # noqa: E402

from peer.workloads import BUILTIN  # noqa: E402

STAND_INS = {
    "spin": "while True: pass",
    "wake": "import time\nwhile True: time.sleep(100e-6)",
    "copy": (
        "import numpy as np\n"
        "a = np.ones(10_000_000, np.float32); b = np.empty_like(a)\n"
        "while True: np.copyto(b, a)"
    ),
}


def steps_per_s(workload, seconds: float) -> float:
    steps, end = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        inputs, targets = workload.next_batch()
        workload.optimizer.zero_grad(set_to_none=True)
        loss = workload.loss_fn(workload.model(inputs), targets)
        loss.backward()
        workload.optimizer.step()
        loss.item()
        steps += 1
    return steps / (time.perf_counter() - start)


def window(workload, seconds: float, stand_in: str | None, other_core: int) -> float:
    process = None
    if stand_in is not None:
        process = subprocess.Popen(
            ["taskset", "-c", str(other_core), sys.executable, "-c", STAND_INS[stand_in]]
        )
        time.sleep(0.3)  # past its start-up
    try:
        return steps_per_s(workload, seconds)
    finally:
        if process is not None:
            process.kill()
            process.wait()


def measure(name: str, args: argparse.Namespace) -> dict[str, object]:
    workload = BUILTIN[name](0, 4)
    steps_per_s(workload, 1.0)  # warm-up
    ratios: dict[str, list[float]] = {s: [] for s in STAND_INS}
    idle: list[float] = []
    for _ in range(args.repeats):
        for stand_in in STAND_INS:
            alone = window(workload, args.window_s, None, args.other_core)
            beside = window(workload, args.window_s, stand_in, args.other_core)
            idle.append(alone)
            ratios[stand_in].append(beside / alone)
    return {
        "workload": name,
        "idle_steps_per_s": statistics.median(idle),
        **{f"{s}_ratio": statistics.median(r) for s, r in ratios.items()},
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="digits-mlp,digits-wide")
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        parser.error("needs two cores")
    args.other_core = cores[1]
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {cores[0]})
    load = os.getloadavg()[0]
    results = [measure(name, args) for name in args.workloads.split(",")]
    if args.json:
        print(json.dumps({"load_avg_1m_before": round(load, 2), "results": results}))
        return
    print(f"trainer on core {cores[0]}, stand-ins on core {cores[1]}; load average {load:.2f}")
    for r in results:
        spread = "; ".join(f"{s} {min(v):.2f}-{max(v):.2f}" for s, v in r["ratios"].items())
        print(
            f"{r['workload']:12s} idle {r['idle_steps_per_s']:7.1f} steps/s; beside "
            + ", ".join(f"{s} {r[f'{s}_ratio']:.2f}x" for s in STAND_INS)
            + f"  (range {spread})"
        )


if __name__ == "__main__":
    main()
