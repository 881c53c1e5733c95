"""Memory soak: is every peer's RSS flat over a long run?

    .venv/bin/python bench/soak.py [--minutes 10] [--peers 4]
        [--workload digits-wide] [--strategy dasgd] [--every-s 10] [--json]
        [any `dasgd-peer local` flag, e.g. --inbox-mb 100]

One `dasgd-peer local` cluster (real processes on loopback, no step delay,
so updates flow as fast as the peers make them) trains for --minutes;
every --every-s seconds the bench reads the resident set size of each of
its processes from /proc. Reported per peer: RSS after the first minute
(warm-up: buffers, pools and gRPC's arenas reach their working size), at
the end, and the largest seen; the verdict is the largest growth from the
first minute to the end, against the model size (a leak of one update per
minute would show as several model sizes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_MB = {"digits-mlp": 0.04, "digits-wide": 40.0}


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (the fork server's peers included)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def is_peer(pid: int) -> bool:
    """A peer daemon: a fork of the fork server (forks keep its command
    line), or a `peer.cli run` of its own (--spawn exec)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    if "bootstrap.cli" in cmdline:
        return False
    if "peer.forkserver" in cmdline:
        # The fork server and its forks share a command line; the forks are
        # the ones whose parent is the fork server.
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        try:
            parent_cmd = Path(f"/proc/{parent}/cmdline").read_bytes()
        except OSError:
            return False
        return b"peer.forkserver" in parent_cmd
    return "peer.cli" in cmdline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--workload", default="digits-wide")
    parser.add_argument("--strategy", default="dasgd")
    parser.add_argument("--every-s", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args, local_flags = parser.parse_known_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="dasgd-soak-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        local = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peer.cli",
                "local",
                "--peers",
                str(args.peers),
                "--workload",
                args.workload,
                "--strategy",
                args.strategy,
                "--max-seconds",
                str(seconds),
                "--target-accuracy",
                "0",  # never stop early
                "--quiet",
                "--summary-json",
                str(summary_path),
                *local_flags,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        samples: dict[int, list[tuple[float, float]]] = {}
        start = time.monotonic()
        while local.poll() is None:
            now = time.monotonic() - start
            for pid in descendants(local.pid):
                if is_peer(pid) and (rss := rss_mb(pid)) is not None:
                    samples.setdefault(pid, []).append((now, rss))
            time.sleep(args.every_s)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    rows = []
    for pid, series in sorted(samples.items()):
        after_warmup = [rss for t, rss in series if t >= 60] or [series[-1][1]]
        halfway = [rss for t, rss in series if t >= seconds / 2] or [series[-1][1]]
        rows.append(
            {
                "pid": pid,
                "first_minute_mb": round(after_warmup[0], 1),
                "halfway_mb": round(halfway[0], 1),
                "end_mb": round(series[-1][1], 1),
                "max_mb": round(max(rss for _, rss in series), 1),
                "growth_mb": round(series[-1][1] - after_warmup[0], 1),
                "samples": len(series),
            }
        )
    result = {
        "minutes": args.minutes,
        "workload": args.workload,
        "model_mb": MODEL_MB.get(args.workload),
        "steps": summary.get("steps"),
        "updates_applied": summary.get("updates_applied"),
        "bytes_sent": summary.get("bytes_sent"),
        "peers": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{args.peers} peers, {args.strategy} on {args.workload} for {args.minutes:g} min; "
        f"{result['updates_applied']} updates applied, "
        f"{(result['bytes_sent'] or 0) / 1e9:.1f} GB sent"
    )
    print(f"{'pid':>8}{'RSS at 1 min':>14}{'halfway':>9}{'at end':>9}{'max':>9}{'growth':>9}")
    for r in rows:
        print(
            f"{r['pid']:>8}{r['first_minute_mb']:>14.1f}{r['halfway_mb']:>9.1f}{r['end_mb']:>9.1f}"
            f"{r['max_mb']:>9.1f}{r['growth_mb']:>+9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
