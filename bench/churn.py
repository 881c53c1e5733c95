"""Churn: 16 peers on one host, a quarter of them killed and replaced while
training; does every peer alive at the end reach the target?

    .venv/bin/python bench/churn.py [--peers 16] [--fraction 0.25]
        [--waves 2] [--wave-every-s 3] [--target-accuracy 0.95]
        [--step-delay-ms 20] [--topology all] [--max-seconds 240] [--json]

A bootstrap and --peers real `dasgd-peer run` processes on loopback (DASGD
on digits-mlp, each on its own shard, every step padded to --step-delay-ms).
Once all are stepping, every --wave-every-s seconds a wave SIGKILLs
--fraction of the live peers, chosen at random (seeded), and starts as many
new peers on the victims' shards: late joiners with new identities, which
warm-start from a neighbor's model. No peer is warned and the dead are not
told to leave; the bootstrap (default lease, 10 s) drops them when their lease lapses. After the
last wave the run goes on until every live peer has reached the target
accuracy (from its evaluations, read over Status) or --max-seconds.

Printed: per live peer, when it started and when it reached the target,
and its accuracy before its first step (the warm start); exit 0 only if
every live peer reached the target and no live process had died.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

import grpc  # noqa: E402

from dasgd.v1 import peer_pb2, peer_pb2_grpc  # noqa: E402
from peer.local import (  # noqa: E402
    Child,
    ForkServer,
    PeerTrack,
    _read_address,
    _spawn,
    _terminate,
)


@dataclass
class Peer:
    track: PeerTrack
    shard: int
    started_at: float
    stub: peer_pb2_grpc.PeerStub | None = None
    killed_at: float | None = None

    @property
    def child(self) -> Child:
        return self.track.child

    @property
    def first_step_at(self) -> float | None:
        return self.track.first_step_at

    @property
    def reached_at(self) -> float | None:
        return self.track.reached_at

    @property
    def status(self) -> peer_pb2.StatusResponse:
        """The last Status it answered (empty if none yet)."""
        return self.track.last or peer_pb2.StatusResponse()

    @property
    def best(self) -> float:
        return max((accuracy for _, accuracy, _ in self.track.history), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--wave-every-s", type=float, default=3.0)
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    parser.add_argument("--step-delay-ms", type=float, default=20.0)
    parser.add_argument("--topology", default="all")
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    n = args.peers
    run_id = f"churn-{uuid.uuid4().hex[:6]}"
    log_dir = Path(tempfile.mkdtemp(prefix="dasgd-churn-"))
    launch = time.time()
    children: list[Child] = []
    fork_server = None
    pool = ThreadPoolExecutor(8)
    try:
        boot = _spawn(
            "bootstrap",
            [sys.executable, "-m", "bootstrap.cli", "run", "--listen", "127.0.0.1:0"],
            log_dir,
        )
        children.append(boot)
        fork_server = ForkServer(log_dir)
        boot.address = _read_address(boot, "listening on", 30)
        count = 0

        def start(shard: int) -> Peer:
            nonlocal count
            argv = [
                "run",
                "--bootstrap",
                boot.address,
                "--listen",
                "127.0.0.1:0",
                "--run-id",
                run_id,
                "--workload",
                "digits-mlp",
                "--strategy",
                "dasgd",
                "--topology",
                args.topology,
                "--shard",
                f"{shard}/{n}",
                "--step-delay-ms",
                str(args.step_delay_ms),
                "--eval-every-s",
                "0.5",
            ]
            child = fork_server.spawn(f"peer{count}", argv)
            count += 1
            children.append(child)
            return Peer(PeerTrack(child, 1.0), shard, time.time())

        def connect(peer: Peer) -> None:
            peer.child.address = _read_address(peer.child, "listening on", 60)
            peer.stub = peer_pb2_grpc.PeerStub(grpc.insecure_channel(peer.child.address))

        live = [start(i) for i in range(n)]
        for peer in live:
            connect(peer)
        dead: list[Peer] = []

        def sweep() -> None:
            # Concurrently: one loaded peer's slow answer must not delay the rest.
            target = args.target_accuracy
            list(pool.map(lambda p: p.track.poll(p.stub, target, launch, False), live))

        while not all(p.first_step_at for p in live):
            sweep()
            time.sleep(0.2)
        # When the last one took its first step, by its own clock (polling 16
        # loaded peers one after another is seconds late).
        all_stepping = max(p.first_step_at for p in live)
        waves_done = 0
        deadline = launch + args.max_seconds
        while time.time() < deadline:
            if (
                waves_done < args.waves
                and time.time() >= all_stepping + (waves_done + 1) * args.wave_every_s
            ):
                accuracies = sorted(p.status.accuracy for p in live)
                victims = rng.sample(live, max(1, round(args.fraction * len(live))))
                for victim in victims:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(victim.child.process.pid, signal.SIGKILL)
                    victim.killed_at = time.time()
                    live.remove(victim)
                    dead.append(victim)
                newcomers = [start(v.shard) for v in victims]
                for peer in newcomers:
                    connect(peer)
                live += newcomers
                waves_done += 1
                print(
                    f"[{time.time() - launch:6.1f}s] wave {waves_done}: killed "
                    f"{', '.join(v.child.name for v in victims)}; started "
                    f"{', '.join(p.child.name for p in newcomers)} (accuracy of the live "
                    f"peers before it: {accuracies[0]:.3f}-{accuracies[-1]:.3f})",
                    flush=True,
                )
            sweep()
            if waves_done == args.waves and all(p.reached_at for p in live):
                break
            time.sleep(0.3)
        crashed = [p.child.name for p in live if p.child.process.poll() is not None]
        rows = [
            {
                "peer": p.child.name,
                "shard": p.shard,
                "started_s": round(p.started_at - launch, 1),
                "reached_s": round(p.reached_at - launch, 1) if p.reached_at else None,
                "initial_accuracy": round(p.status.initial_accuracy, 3),
                "warm_started_from": p.status.warm_started_from,
                "accuracy": round(p.status.accuracy, 4),
                "best_accuracy": round(p.best, 4),
            }
            for p in live
        ]
        reached = all(p.reached_at for p in live) and not crashed
        result = {
            "peers": n,
            "killed": len(dead),
            "waves": waves_done,
            "all_stepping_s": round(all_stepping - launch, 1),
            "reached_target": reached,
            "time_to_target_s": round(max(p.reached_at for p in live) - launch, 1)
            if reached
            else None,
            "crashed": crashed,
            "live": rows,
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"{'peer':<8}{'shard':>6}{'started_s':>10}{'initial_acc':>12}{'reached_s':>10}"
                f"{'best_acc':>10}{'last_acc':>10}"
            )
            for r in rows:
                print(
                    f"{r['peer']:<8}{r['shard']:>6}{r['started_s']:>10}"
                    f"{r['initial_accuracy']:>12.3f}{r['reached_s'] or '-':>10}"
                    f"{r['best_accuracy']:>10.3f}{r['accuracy']:>10.3f}"
                )
            verdict = "every live peer reached" if reached else "NOT every live peer reached"
            print(
                f"\n{n} peers, {len(dead)} killed and replaced in {waves_done} waves "
                f"({args.fraction:.0%} each): {verdict} {args.target_accuracy:.0%}"
                + (f" by {result['time_to_target_s']}s" if reached else "")
                + f" (all stepping at {result['all_stepping_s']}s); logs in {log_dir}"
            )
        return 0 if reached else 1
    finally:
        pool.shutdown(wait=False)
        _terminate([c for c in children if c.name != "bootstrap"])
        _terminate([c for c in children if c.name == "bootstrap"])
        if fork_server is not None:
            fork_server.close()


if __name__ == "__main__":
    sys.exit(main())
