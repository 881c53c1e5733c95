"""Do the center replicas of the commit strategies agree?

Without a parameter server every peer of `downpour`, `adag`, `dynsgd` and
`aeasgd` holds its own replica of the center and adds every commit to it;
replicas that took the same commits must hold the same center. This bench
runs `dasgd-peer local` (2 peers on digits-mlp by default, 5 ms emulated
step), pulls the CENTER from every peer every few seconds while they train,
and prints the largest distance between two replicas relative to a
replica's norm, with DOWNPOUR's in the same run as the baseline. Replicas
whose vector clocks are equal have taken the same commits: their distance
("same commits", over the samples where some pair had equal clocks) must be
rounding only.

    .venv/bin/python bench/replicas.py
    .venv/bin/python bench/replicas.py --strategies downpour,dynsgd -- --no-warm-start
    .venv/bin/python bench/replicas.py --peers 3 --restart   # one peer killed, restarted
    .venv/bin/python bench/replicas.py --cut-every 2   # connections to one peer reset

Commits still in flight when the pulls are made show up as a small
difference; one that stays or grows is a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peer.codec import TensorSpec  # noqa: E402
from peer.transport import pull_model  # noqa: E402
from peer.workloads import load_workload, trainable_parameters  # noqa: E402
from rpc import Security, make_channel  # noqa: E402
from tests.daemons import Daemon  # noqa: E402
from tests.netfault import CuttableProxy  # noqa: E402

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


@contextlib.contextmanager
def local_cluster(strategy: str, run_id: str, args: argparse.Namespace) -> Iterator[list[str]]:
    """`dasgd-peer local`: the peers' addresses."""
    with tempfile.TemporaryDirectory(prefix="dasgd-replicas-") as tmp:
        log_dir = Path(tmp)
        command = [
            sys.executable, "-m", "peer.cli", "local", "--peers", str(args.peers),
            "--workload", "digits-mlp", "--strategy", strategy, "--run-id", run_id,
            "--target-accuracy", "0", "--max-seconds", str(args.seconds + 60),
            "--step-delay-ms", "5", "--log-dir", str(log_dir), "--quiet", *args.extra,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            yield addresses(log_dir, args.peers)
        finally:
            process.terminate()
            process.wait(60)


@contextlib.contextmanager
def restarted_cluster(strategy: str, run_id: str, args: argparse.Namespace) -> Iterator[list[str]]:
    """A bootstrap and N `dasgd-peer run` with checkpoints; the last peer is
    killed (SIGKILL) after the warm-up and started again on its checkpoint
    directory (it resumes, then warm-starts from a neighbor).

    With `--cut-every S` instead, nobody is killed: the others reach the last
    peer through a proxy that resets every connection through it each S
    seconds, as a network blip would (what a Push stream carried when its
    connection went may or may not have arrived)."""
    with tempfile.TemporaryDirectory(prefix="dasgd-replicas-") as tmp:
        daemons: list[Daemon] = []
        stack = contextlib.ExitStack()

        def spawn(module: str, *flags: str) -> Daemon:
            daemon = Daemon(
                [sys.executable, "-m", module, *flags], Path(tmp) / f"{len(daemons)}.log"
            )
            daemons.append(daemon)
            return daemon

        try:
            bootstrap = spawn("bootstrap.cli", "run", "--listen", "127.0.0.1:0", "--ttl", "2")

            def peer(i: int, *flags: str) -> Daemon:
                return spawn(
                    "peer.cli", "run", "--bootstrap", bootstrap.address(),
                    "--listen", "127.0.0.1:0", "--run-id", run_id, "--strategy", strategy,
                    "--shard", f"{i}/{args.peers}", "--step-delay-ms", "5",
                    "--checkpoint-dir", str(Path(tmp) / f"checkpoint-{i}"),
                    "--checkpoint-every-steps", "50", *flags, *args.extra,
                )  # fmt: skip

            if args.cut_every:
                proxy = CuttableProxy()
                stack.callback(proxy.close)
                peers = [peer(i) for i in range(args.peers - 1)]
                # It listens on a port of its own and advertises the proxy's
                # (its "listening on" line names the advertised address).
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    proxy.target = f"127.0.0.1:{probe.getsockname()[1]}"
                last = ["--listen", proxy.target, "--advertise", proxy.address]
                peers.append(peer(args.peers - 1, *last))
                found = [p.address() for p in peers[:-1]] + [proxy.target]
                peers[-1].address()
                stack.enter_context(cutting(proxy, args.cut_every))
                yield found
                return
            peers = [peer(i) for i in range(args.peers)]
            found = [p.address() for p in peers]
            time.sleep(args.warmup)
            peers[-1].signal(signal.SIGKILL)
            peers[-1].process.wait(10)
            time.sleep(3)  # others train on meanwhile; commits to it are lost
            found[-1] = peer(args.peers - 1).address()
            yield found
        finally:
            stack.close()
            for daemon in reversed(daemons):
                daemon.stop()


@contextlib.contextmanager
def cutting(proxy: CuttableProxy, every: float) -> Iterator[None]:
    """Resets every connection through `proxy` each `every` seconds."""
    stop = threading.Event()

    def cut() -> None:
        while not stop.wait(every):
            proxy.cut()

    thread = threading.Thread(target=cut, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def measure(
    strategy: str, args: argparse.Namespace, specs: list[TensorSpec]
) -> tuple[list[float], list[float]]:
    """Per sample, the largest replica distance / replica norm over all pairs
    of peers, and over the pairs whose replicas had taken the same commits
    (equal vector clocks; nan if none): those must agree but for rounding."""
    run_id = f"replicas-{strategy}"
    cluster = restarted_cluster if args.restart or args.cut_every else local_cluster
    with cluster(strategy, run_id, args) as peers:
        time.sleep(args.warmup)
        samples, same = [], []
        for _ in range(max(1, int(args.seconds / args.every))):
            pulled = []
            for address in peers:
                with make_channel(address, Security()) as channel:
                    arrays, clock = pull_model(channel, run_id, "bench", specs, "CENTER")
                pulled.append((np.concatenate([a.ravel() for a in arrays]), clock))
            norm = float(np.linalg.norm(pulled[0][0]))
            pairs = [(a, b) for i, a in enumerate(pulled) for b in pulled[i + 1 :]]
            distance = [float(np.linalg.norm(a[0] - b[0])) / norm for a, b in pairs]
            samples.append(max(distance))
            equal = [d for d, (a, b) in zip(distance, pairs) if a[1] == b[1]]
            same.append(max(equal) if equal else float("nan"))
            time.sleep(args.every)
        return samples, same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(COMMIT_STRATEGIES))
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="sampling time")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=4.0, help="after the peers listen")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="`dasgd-peer run` peers with checkpoints; the last is killed and restarted",
    )
    parser.add_argument(
        "--cut-every",
        type=float,
        default=0.0,
        help="`dasgd-peer run` peers; connections to the last are reset every this many seconds",
    )
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
    print(f"{'strategy':<10} {'largest':>8} {'last':>8} {'same commits':>13} {'pairs':>6}  samples")
    for strategy, (samples, same) in results.items():
        series = " ".join(f"{s:.4f}" for s in samples)
        taken = [x for x in same if x == x]
        worst_same = f"{max(taken):.2e}" if taken else "-"
        print(
            f"{strategy:<10} {max(samples):>8.4f} {samples[-1]:>8.4f} {worst_same:>13} "
            f"{len(taken):>6}  {series}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
