"""Time to 95% on digits-mlp: this system (DASGD) against PyTorch DDP, both
measured in the same run on the same machine.

Both train the same model from the same init on the same 4 shards, with the
same emulated step time (every rank sleeps `--step-delay-ms` x its slowdown
after each step). DDP runs at its best documented setting: gloo on loopback,
the linear scaling rule (lr x N) with the same batch per rank; a straggler
holds every all-reduce back. Times are counted from the moment every worker
is stepping (and start-up, launch to all stepping, separately).

    .venv/bin/python bench/vs_ddp.py                       # homogeneous + 4x straggler
    .venv/bin/python bench/vs_ddp.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from strategies import ROOT, local_command, run_cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(
    rank: int,
    world: int,
    port: int,
    delay_s: float,
    slowdown: float,
    target: float,
    max_seconds: float,
    result_path: str,
    launch: float,
) -> None:
    import torch
    import torch.distributed as dist

    from peer.workloads.digits import make_workload

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    workload = make_workload(rank, world, learning_rate=0.05 * world)
    model = torch.nn.parallel.DistributedDataParallel(workload.model)
    # Evaluate after every step (in lockstep, so every rank agrees): the most
    # generous timing DDP can get; DASGD peers evaluate every 10 steps or 0.25 s.
    args_eval_every = 1
    optimizer = workload.optimizer
    dist.barrier()
    first_step = time.time()
    reached = None
    step = 0
    accuracy = 0.0
    while time.time() - first_step < max_seconds:
        inputs, targets = workload.next_batch()
        optimizer.zero_grad(set_to_none=True)
        workload.loss_fn(model(inputs), targets).backward()  # all-reduce inside
        optimizer.step()
        step += 1
        time.sleep(delay_s * slowdown)
        if step % args_eval_every == 0:
            _, accuracy = workload.evaluate()
            flag = torch.tensor([1.0 if accuracy >= target else 0.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # every rank at target
            if flag.item() == 1.0:
                reached = time.time()
                break
    if rank == 0:
        Path(result_path).write_text(
            json.dumps(
                {
                    "setup_s": first_step - launch,
                    "time_to_target_from_all_stepping_s": None
                    if reached is None
                    else reached - first_step,
                    "steps": step,
                    "final_accuracy": accuracy,
                }
            )
        )
    dist.destroy_process_group()


def run_ddp(
    peers: int, delay_ms: float, slowdowns: list[float], target: float, max_seconds: float
) -> dict:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "ddp.json"
        launch = time.time()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--ddp-worker",
                    str(rank),
                    str(peers),
                    str(port),
                    str(delay_ms / 1000),
                    str(slowdowns[rank]),
                    str(target),
                    str(max_seconds),
                    str(result),
                    str(launch),
                ],
                cwd=ROOT,
            )
            for rank in range(peers)
        ]
        for p in procs:
            p.wait(max_seconds + 120)
        return json.loads(result.read_text())


def run_dasgd(
    peers: int, delay_ms: float, slowdowns: list[float], target: float, max_seconds: float
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        command = local_command(
            "dasgd",
            peers,
            ",".join(map(str, slowdowns)),
            target,
            max_seconds,
            summary,
            step_delay_ms=delay_ms,
            extra=["--quiet"],
        )
        return run_cluster(command, summary, timeout=max_seconds + 120).summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--step-delay-ms", type=float, default=20.0)
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    parser.add_argument("--max-seconds", type=float, default=90.0)
    parser.add_argument("--repeats", type=int, default=1, help="best of N per cell")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--ddp-worker", nargs=9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        rank, world, port, delay, slow, target, limit, path, launch = args.ddp_worker
        ddp_worker(
            int(rank),
            int(world),
            int(port),
            float(delay),
            float(slow),
            float(target),
            float(limit),
            path,
            float(launch),
        )
        return

    rows = []
    for name, slowdowns in (
        ("homogeneous", [1.0] * args.peers),
        ("one peer 4x slower", [4.0] + [1.0] * (args.peers - 1)),
    ):
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for system, runner in (("ddp", run_ddp), ("dasgd", run_dasgd)):
                result = runner(
                    args.peers,
                    args.step_delay_ms,
                    slowdowns,
                    args.target_accuracy,
                    args.max_seconds,
                )
                t = result.get("time_to_target_from_all_stepping_s")
                kept = best.get(system)
                kept_t = None if kept is None else kept.get("time_to_target_from_all_stepping_s")
                if kept is None or (t is not None and (kept_t is None or t < kept_t)):
                    best[system] = result
        ddp, dasgd = best["ddp"], best["dasgd"]
        t_ddp = ddp["time_to_target_from_all_stepping_s"]
        t_dasgd = dasgd["time_to_target_from_all_stepping_s"]
        rows.append(
            {
                "case": name,
                "ddp_time_to_target_s": t_ddp,
                "dasgd_time_to_target_s": t_dasgd,
                "ratio_dasgd_vs_ddp": None
                if not (t_ddp and t_dasgd)
                else round(t_dasgd / t_ddp, 3),
                "ddp_setup_s": round(ddp["setup_s"], 2),
                "dasgd_setup_s": dasgd["setup_s"],
                "setup_ratio": round(dasgd["setup_s"] / ddp["setup_s"], 3),
                "dasgd_staleness_avg": dasgd["staleness"]["avg"],
                "dasgd_staleness_max": dasgd["staleness"]["max"],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(
        "| case | DDP to 95% (s) | DASGD to 95% (s) | DASGD/DDP | DDP setup (s) | DASGD setup (s)"
        " | setup ratio | DASGD S_avg / S_max |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['ddp_time_to_target_s'] and round(r['ddp_time_to_target_s'], 2)}"
            f" | {r['dasgd_time_to_target_s']} | {r['ratio_dasgd_vs_ddp']} | {r['ddp_setup_s']}"
            f" | {r['dasgd_setup_s']} | {r['setup_ratio']} | {r['dasgd_staleness_avg']} / "
            f"{r['dasgd_staleness_max']} |"
        )


if __name__ == "__main__":
    main()
