"""Scale-out: aggregate samples/s of N peers against N times one peer.

    .venv/bin/python bench/scale.py [--ns 1,2,4,8,16] [--seconds 30]
        [--step-delay-ms 20] [--topology all] [--broadcast-every 1] [--json]

Each N is one `dasgd-peer local` run (a bootstrap and N real peer
processes on loopback, DASGD on digits-mlp, every step padded to
--step-delay-ms as a slower device would take) that trains for --seconds
after every peer is stepping; the summary's `samples_per_s` is the sum of
each peer's samples/s over that window (from its Status). One peer alone is
the baseline, measured in the same run; the ratio is aggregate / (N x one),
target >= 0.9. Also printed: the CPU cores the whole cluster used (its
processes' user+system time over the run's wall time), which says whether
the machine's cores, rather than the protocol, were the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    summary_path = workdir / f"scale-{n}.json"
    # Setup (forking N peers, joining, warm start) comes before the window.
    max_seconds = args.seconds + 5 + 0.75 * n
    argv = [
        sys.executable,
        "-m",
        "peer.cli",
        "local",
        "--peers",
        str(n),
        "--workload",
        args.workload,
        "--strategy",
        "dasgd",
        "--step-delay-ms",
        str(args.step_delay_ms),
        "--topology",
        args.topology,
        "--broadcast-every",
        str(args.broadcast_every),
        "--max-seconds",
        str(max_seconds),
        # Never stop at a target: train for the whole window.
        "--target-accuracy",
        "0",
        "--quiet",
        "--log-dir",
        str(workdir / f"logs-{n}"),
        "--summary-json",
        str(summary_path),
    ]
    cpu_before, started = children_cpu_s(), time.monotonic()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=max_seconds + 120)
    wall = time.monotonic() - started
    summary = json.loads(summary_path.read_text())
    per_peer = summary["samples_per_s_per_peer"]
    return {
        "peers": n,
        "samples_per_s": summary["samples_per_s"],
        "per_peer_min": min(per_peer),
        "per_peer_max": max(per_peer),
        "window_s": round(summary["wall_s"] - (summary["setup_s"] or 0.0), 1),
        "setup_s": summary["setup_s"],
        "updates_applied": summary["updates_applied"],
        "staleness": summary["staleness"]["avg"],
        "cores_used": round((children_cpu_s() - cpu_before) / wall, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ns", default="1,2,4,8,16", help="peer counts (1 is the baseline)")
    parser.add_argument("--seconds", type=float, default=30.0, help="window once all step")
    parser.add_argument("--step-delay-ms", type=float, default=20.0)
    parser.add_argument("--workload", default="digits-mlp")
    parser.add_argument("--topology", default="all")
    parser.add_argument("--broadcast-every", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    ns = sorted({1, *(int(x) for x in args.ns.split(","))})
    with tempfile.TemporaryDirectory(prefix="dasgd-scale-") as tmp:
        rows = [run(n, args, Path(tmp)) for n in ns]
    one = rows[0]["samples_per_s"]
    for row in rows:
        row["ratio"] = round(row["samples_per_s"] / (row["peers"] * one), 3) if one else 0.0
    if args.json:
        print(json.dumps({"one_peer_samples_per_s": one, "rows": rows}, indent=2))
        return 0
    print(
        f"DASGD on {args.workload}, {args.step_delay_ms:g} ms step, topology {args.topology}, "
        f"k={args.broadcast_every}, {args.seconds:g} s window; {os.cpu_count()} CPUs"
    )
    print(
        f"{'N':>3}{'samples/s':>11}{'ratio':>7}{'per peer':>15}{'applied':>9}"
        f"{'staleness':>10}{'cores':>7}{'setup_s':>9}{'window_s':>10}"
    )
    for r in rows:
        print(
            f"{r['peers']:>3}{r['samples_per_s']:>11.0f}{r['ratio']:>7.2f}"
            f"{r['per_peer_min']:>8.0f}-{r['per_peer_max']:<6.0f}{r['updates_applied']:>9}"
            f"{r['staleness']:>10.1f}{r['cores_used']:>7.2f}{r['setup_s']:>9}{r['window_s']:>10}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
