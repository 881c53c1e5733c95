"""Do the center replicas of the commit strategies agree?

Without a parameter server every peer of `downpour`, `adag`, `dynsgd` and
`aeasgd` holds its own replica of the center and adds every commit to it;
replicas that took the same commits must hold the same center. This bench
runs `dasgd-peer local` (2 peers on digits-mlp by default, 5 ms emulated
step), pulls the CENTER from every peer every few seconds while they train,
and prints the largest distance between two replicas relative to a
replica's norm, against DOWNPOUR's in the same run as the baseline.

    .venv/bin/python bench/replicas.py
    .venv/bin/python bench/replicas.py --strategies downpour,dynsgd -- --no-warm-start

Commits still in flight when the pulls are made show up as a small
difference; one that stays or grows is a bug.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peer.codec import TensorSpec  # noqa: E402
from peer.transport import pull_model  # noqa: E402
from peer.workloads import load_workload, trainable_parameters  # noqa: E402
from rpc import Security, make_channel  # noqa: E402

COMMIT_STRATEGIES = ["downpour", "adag", "dynsgd", "aeasgd"]


def addresses(log_dir: Path, peers: int, timeout: float = 60.0) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = []
        for i in range(peers):
            path = log_dir / f"peer{i}.log"
            match = re.search(r"listening on (\S+)", path.read_text()) if path.exists() else None
            if match:
                found.append(match.group(1))
        if len(found) == peers:
            return found
        time.sleep(0.2)
    raise RuntimeError(f"peers did not start; logs in {log_dir}")


def measure(strategy: str, args: argparse.Namespace, specs: list[TensorSpec]) -> list[float]:
    """Largest replica distance / replica norm at each sample."""
    run_id = f"replicas-{strategy}"
    with tempfile.TemporaryDirectory(prefix="dasgd-replicas-") as tmp:
        log_dir = Path(tmp)
        command = [
            sys.executable, "-m", "peer.cli", "local", "--peers", str(args.peers),
            "--workload", "digits-mlp", "--strategy", strategy, "--run-id", run_id,
            "--target-accuracy", "1.01", "--max-seconds", str(args.seconds + 30),
            "--step-delay-ms", "5", "--log-dir", str(log_dir), "--quiet", *args.extra,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            peers = addresses(log_dir, args.peers)
            time.sleep(args.warmup)
            samples = []
            for _ in range(max(1, int(args.seconds / args.every))):
                centers = []
                for address in peers:
                    with make_channel(address, Security()) as channel:
                        arrays, _ = pull_model(channel, run_id, "bench", specs, "CENTER")
                    centers.append(np.concatenate([a.ravel() for a in arrays]))
                norm = float(np.linalg.norm(centers[0]))
                worst = max(
                    float(np.linalg.norm(a - b)) for a in centers for b in centers if a is not b
                )
                samples.append(worst / norm)
                time.sleep(args.every)
            return samples
        finally:
            process.terminate()
            process.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(COMMIT_STRATEGIES))
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="sampling time")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=4.0, help="after the peers listen")
    parser.add_argument("extra", nargs="*", help="after --: more flags for `dasgd-peer local`")
    args = parser.parse_args(argv)
    workload = load_workload("digits-mlp")
    specs = [
        TensorSpec(name, tuple(p.shape), "float32")
        for name, p in trainable_parameters(workload.model)
    ]
    strategies = args.strategies.split(",")
    if "downpour" not in strategies:
        strategies.insert(0, "downpour")  # the baseline
    results = {s: measure(s, args, specs) for s in strategies}
    baseline = max(results["downpour"])
    print(f"{'strategy':<10} {'max rel. distance':>18} {'last':>8} {'x downpour':>11}  samples")
    for strategy, samples in results.items():
        ratio = max(samples) / baseline if baseline else float("inf")
        series = " ".join(f"{s:.4f}" for s in samples)
        print(f"{strategy:<10} {max(samples):>18.4f} {samples[-1]:>8.4f} {ratio:>11.2f}  {series}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
