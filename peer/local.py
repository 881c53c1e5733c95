"""`dasgd-peer local`: the one-command cluster. A bootstrap and N peer
processes on 127.0.0.1 (real processes, real sockets), live progress, a
summary table, a JSON summary and a plot. Children run in their own process
groups and are always cleaned up, Ctrl-C and errors included."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc

from dasgd.v1 import peer_pb2, peer_pb2_grpc
from peer.config import PeerConfig, load_config
from peer.forkserver import die_with_parent
from rpc import Security, make_channel

# Flags of `local` that are not passed to each `run` as they are.
LOCAL_ONLY = {"run_id", "log_level", "min_members"}


def last_error(log_path: Path) -> str:
    """Why a peer stopped, from its log: the training loop's failure, else
    the last ERROR line (its message only), or ""."""
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - 64 * 1024))
            tail = log_file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    errors = [line.split(": ", 1)[-1].strip() for line in tail if " ERROR " in line]
    failed = [e for e in errors if e.startswith("training loop failed")]
    return (failed or errors or [""])[-1]


class ForkedProcess:
    """The Popen calls `local` needs, for a process the fork server started
    (not our child: the fork server reaps it, so "gone" means exited)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = -1  # the exit status went to the fork server
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode


@dataclass
class Child:
    name: str
    process: subprocess.Popen | ForkedProcess
    log_path: Path
    out_path: Path
    address: str = ""
    member_id: str = ""


class ForkServer:
    """Forks peers from one process that imported torch once (peer.forkserver)."""

    def __init__(self, log_dir: Path):
        self._log_dir = log_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "peer.forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log_dir / "forkserver.log", "wb"),  # noqa: SIM115
            start_new_session=True,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=partial(die_with_parent, os.getpid()),
        )
        if json.loads(self.process.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError(f"fork server did not start; see {log_dir / 'forkserver.log'}")

    def spawn(self, name: str, argv: list[str]) -> Child:
        out_path, log_path = self._log_dir / f"{name}.out", self._log_dir / f"{name}.log"
        request = {"argv": argv, "stdout": str(out_path), "stderr": str(log_path)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = json.loads(self.process.stdout.readline())["pid"]
        return Child(name, ForkedProcess(pid), log_path, out_path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class PeerTrack:
    child: Child
    slowdown: float
    history: list[tuple[float, float, int]] = field(default_factory=list)  # (t, acc, step)
    reached_at: float | None = None
    first_step_at: float | None = None
    last: peer_pb2.StatusResponse | None = None
    # (time, samples) at the first poll once every peer was stepping, and
    # at the last poll.
    window_start: tuple[float, int] | None = None
    window_end: tuple[float, int] | None = None

    def poll(
        self, stub: peer_pb2_grpc.PeerStub, target: float, launch: float, in_window: bool
    ) -> peer_pb2.StatusResponse | None:
        """Asks the peer for its Status and takes in what is new: evaluations
        since the last poll (history, times from `launch`), the first one to
        reach `target`, the first step, and, `in_window`, the end of the
        throughput window. None if it did not answer in time."""
        since = self.history[-1][0] + launch if self.history else launch - 3600
        try:
            status = stub.Status(peer_pb2.StatusRequest(evaluations_since=since), timeout=2.0)
        except grpc.RpcError:
            return None
        self.last = status
        if in_window:
            self.window_end = (time.time(), status.samples)
            self.window_start = self.window_start or self.window_end
        self.child.member_id = status.id
        if status.first_step_at and self.first_step_at is None:
            self.first_step_at = status.first_step_at
        for evaluation in status.evaluations:
            self.history.append((evaluation.at - launch, evaluation.accuracy, evaluation.step))
            if target and self.reached_at is None and evaluation.accuracy >= target:
                self.reached_at = evaluation.at
        return status

    def samples_per_s(self) -> float | None:
        """None when the window held fewer than two polls (a very short run)."""
        if self.window_start is None or self.window_end is None:
            return None
        (t0, s0), (t1, s1) = self.window_start, self.window_end
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None


def _passthrough_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for f in dataclasses.fields(PeerConfig):
        if f.name in LOCAL_ONLY or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    if getattr(args, "config", None):
        flags += ["--config", args.config]
    return flags


def _spawn(name: str, argv: list[str], log_dir: Path) -> Child:
    out_path, log_path = log_dir / f"{name}.out", log_dir / f"{name}.log"
    process = subprocess.Popen(
        argv,
        stdout=open(out_path, "wb"),  # noqa: SIM115 (owned by the child)
        stderr=open(log_path, "wb"),  # noqa: SIM115
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        # Own session (a terminal's Ctrl-C reaches us, not them), but gone
        # with us even if we are killed outright.
        preexec_fn=partial(die_with_parent, os.getpid()),
    )
    return Child(name, process, log_path, out_path)


def _read_address(child: Child, marker: str, timeout: float) -> str:
    """Waits for the child's `... listening on HOST:PORT` line."""
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            for line in child.out_path.read_text().splitlines():
                if marker in line:
                    return line.split()[-1]
        if child.process.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited during start-up; log: {child.log_path}\n"
                f"{_tail(child.log_path)}"
            )
        if time.monotonic() > end:
            raise RuntimeError(
                f"{child.name} did not start within {timeout:.0f}s; log: {child.log_path}"
            )
        time.sleep(0.02)


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _terminate(children: list[Child], timeout: float = 10.0) -> None:
    for child in children:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    for child in children:
        remaining = max(0.1, end - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait(5)


def _summary(tracks: list[PeerTrack], args: argparse.Namespace, launch: float, end: float) -> dict:
    statuses = [t.last for t in tracks if t.last is not None]
    counts = [s.staleness.count for s in statuses]
    total = sum(counts)
    target = args.target_accuracy or None  # 0: none, train until --max-seconds
    reached = all(t.reached_at is not None for t in tracks) if target else None
    all_stepping = (
        max(t.first_step_at for t in tracks) if all(t.first_step_at for t in tracks) else None
    )
    reached_at = max(t.reached_at for t in tracks) if reached else None
    rates = [t.samples_per_s() for t in tracks]
    return {
        "strategy": args.strategy,
        "workload": args.workload,
        "peers": len(tracks),
        "target_accuracy": target,
        "reached_target": reached,
        "setup_s": None if all_stepping is None else round(all_stepping - launch, 3),
        "time_to_target_s": None if reached_at is None else round(reached_at - launch, 3),
        "time_to_target_from_all_stepping_s": (
            None
            if reached_at is None or all_stepping is None
            else round(reached_at - all_stepping, 3)
        ),
        "final_accuracy": [round(t.last.accuracy, 4) if t.last else None for t in tracks],
        "steps": [t.last.step if t.last else 0 for t in tracks],
        "slowdowns": [t.slowdown for t in tracks],
        "staleness": {
            "avg": round(sum(s.staleness.avg * s.staleness.count for s in statuses) / total, 3)
            if total
            else 0.0,
            "max": max((s.staleness.max for s in statuses), default=0),
            "p95": round(max((s.staleness.p95 for s in statuses), default=0.0), 3),
            "per_peer": [
                {
                    "avg": round(s.staleness.avg, 3),
                    "max": s.staleness.max,
                    "p95": round(s.staleness.p95, 3),
                }
                for s in statuses
            ],
        },
        # Aggregate throughput from the moment every peer was stepping.
        "samples_per_s": None if None in rates else round(sum(rates), 1),
        "samples_per_s_per_peer": [None if r is None else round(r, 1) for r in rates],
        "bytes_sent": sum(s.bytes_sent for s in statuses),
        "updates_applied": sum(s.updates_applied for s in statuses),
        "wall_s": round(end - launch, 3),
    }


def _print_table(tracks: list[PeerTrack], summary: dict, launch: float) -> None:
    print()
    print(
        f"{'peer':<6}{'id':<13}{'slow':>5}{'steps':>8}{'accuracy':>10}{'reached_s':>11}"
        f"{'stale_avg':>10}{'stale_max':>10}{'applied':>9}{'sent_MB':>9}"
    )
    for i, t in enumerate(tracks):
        s = t.last
        if s is None:
            print(f"p{i:<5}(no status)")
            continue
        reached = f"{t.reached_at - launch:.1f}" if t.reached_at else "-"
        print(
            f"p{i:<5}{s.id:<13}{t.slowdown:>5g}{s.step:>8}{s.accuracy:>10.4f}{reached:>11}"
            f"{s.staleness.avg:>10.2f}{s.staleness.max:>10}{s.updates_applied:>9}"
            f"{s.bytes_sent / 1e6:>9.1f}"
        )
    if summary["target_accuracy"] is None:
        verdict = "trained with no target "
    else:
        verdict = ("reached " if summary["reached_target"] else "did NOT reach ") + (
            f"{summary['target_accuracy']:.2%} "
        )
    print(
        f"\n{summary['peers']} peers, {summary['strategy']} on {summary['workload']}: {verdict}"
        + (f"in {summary['time_to_target_s']:.1f}s " if summary["reached_target"] else "")
        + (
            f"(setup {summary['setup_s']}s, "
            if summary["setup_s"] is not None
            else "(not every peer took a step, "
        )
        + f"wall {summary['wall_s']:.1f}s); staleness avg "
        f"{summary['staleness']['avg']}, max {summary['staleness']['max']}, "
        f"p95 {summary['staleness']['p95']}; "
        + (
            f"{summary['samples_per_s']:.0f} samples/s in all"
            if summary["samples_per_s"] is not None
            else "samples/s not measured (too short)"
        )
    )


def write_plot(tracks: list[PeerTrack], summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, t in enumerate(tracks):
        if t.history:
            xs, ys, _ = zip(*t.history)
            label = f"p{i} ({t.last.id if t.last else '?'})" + (
                f", {t.slowdown:g}x slower" if t.slowdown != 1 else ""
            )
            ax.plot(xs, ys, label=label, linewidth=1.5)
    if summary["target_accuracy"] is not None:
        ax.axhline(
            summary["target_accuracy"],
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"target {summary['target_accuracy']:.0%}",
        )
    ax.set_xlabel("seconds since launch")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.0)
    ax.set_title(
        f"{summary['strategy']} on {summary['workload']}, {summary['peers']} peers "
        f"(staleness avg {summary['staleness']['avg']}, max "
        f"{summary['staleness']['max']})"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _prepare_workload(name: str) -> None:
    """Builds shared caches once here instead of in every child."""
    if name.startswith("digits-"):
        from peer.workloads.digits import load_split

        load_split()


def parse_slowdowns(text: str, peers: int) -> list[float]:
    """`--slowdowns 4,1,1,1`: one factor > 0 per peer (all 1 when empty)."""
    if not text:
        return [1.0] * peers
    try:
        factors = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--slowdowns {text!r}: give numbers, e.g. 4,1,1,1") from None
    if len(factors) != peers:
        raise ValueError(f"--slowdowns has {len(factors)} factors for {peers} peers")
    if not all(f > 0 for f in factors):  # also refuses nan
        raise ValueError(f"--slowdowns {text!r}: every factor must be > 0")
    return factors


def run_local(args: argparse.Namespace) -> int:
    launch = time.time()
    n = args.peers
    if n < 1:
        print("dasgd-peer local: --peers must be >= 1", file=sys.stderr)
        return 2
    try:
        slowdowns = parse_slowdowns(args.slowdowns, n)
        if not 0 <= args.target_accuracy <= 1:
            raise ValueError(
                f"--target-accuracy {args.target_accuracy}: a fraction in [0, 1] (0.95 for "
                "95%; 0 for none: train until --max-seconds)"
            )
        if not args.max_seconds > 0:
            raise ValueError(f"--max-seconds {args.max_seconds}: must be > 0")
    except ValueError as error:
        print(f"dasgd-peer local: {error}", file=sys.stderr)
        return 2
    workload = getattr(args, "workload", "digits-mlp")
    args.workload = workload
    args.strategy = getattr(args, "strategy", "dasgd")
    try:
        load_config(args)  # the peers' flags, checked before any process starts
    except (ValueError, OSError) as error:
        print(f"dasgd-peer local: {error}", file=sys.stderr)
        return 2
    run_id = getattr(args, "run_id", None) or f"local-{uuid.uuid4().hex[:6]}"
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="dasgd-local-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    fork_server: ForkServer | None = None
    interrupted = threading.Event()

    def on_signal(signum, frame):
        interrupted.set()

    previous = {
        s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    security = Security.from_files(getattr(args, "token_file", None) or None)
    try:
        bootstrap = _spawn(
            "bootstrap",
            [
                sys.executable,
                "-m",
                "bootstrap.cli",
                "run",
                "--listen",
                "127.0.0.1:0",
                "--ttl",
                str(args.ttl),
            ]
            + (["--token-file", args.token_file] if getattr(args, "token_file", "") else []),
            log_dir,
        )
        children.append(bootstrap)
        if args.spawn == "fork":
            fork_server = ForkServer(log_dir)
        else:
            _prepare_workload(workload)
        bootstrap.address = _read_address(bootstrap, "listening on", 30)
        common = [
            "run",
            "--bootstrap",
            bootstrap.address,
            "--listen",
            "127.0.0.1:0",
            "--run-id",
            run_id,
            "--log-level",
            getattr(args, "log_level", "INFO"),
            "--min-members",
            str(n),
        ]
        common += _passthrough_flags(args)
        peers = []
        for i in range(n):
            peer_args = common + ["--shard", f"{i}/{n}", "--slowdown", str(slowdowns[i])]
            if fork_server is not None:
                child = fork_server.spawn(f"peer{i}", peer_args)
            else:
                child = _spawn(f"peer{i}", [sys.executable, "-m", "peer.cli", *peer_args], log_dir)
            children.append(child)
            peers.append(child)
        for child in peers:
            child.address = _read_address(child, "listening on", 60)
        tracks = [PeerTrack(child, slowdowns[i]) for i, child in enumerate(peers)]
        if not args.quiet:
            print(
                f"{n} peers of run {run_id} up ({time.time() - launch:.1f}s); logs in {log_dir}",
                flush=True,
            )
        stubs = [peer_pb2_grpc.PeerStub(make_channel(c.address, security)) for c in peers]
        end = launch + args.max_seconds
        last_print = 0.0
        exited: set[str] = set()
        all_stepping = False
        while time.time() < end and not interrupted.is_set():
            all_stepping = all_stepping or all(t.first_step_at for t in tracks)
            for track, stub in zip(tracks, stubs):
                track.poll(stub, args.target_accuracy, launch, all_stepping)
            if not args.quiet and time.time() - last_print >= 1.0:
                last_print = time.time()
                cells = []
                for i, t in enumerate(tracks):
                    s = t.last
                    cells.append(
                        f"p{i} {s.step:>5} {s.accuracy:.3f} S{s.staleness.avg:.1f}"
                        if s
                        else f"p{i}   ..."
                    )
                print(f"[{time.time() - launch:6.1f}s] " + " | ".join(cells), flush=True)
            for t in tracks:
                if t.child.name not in exited and t.child.process.poll() is not None:
                    exited.add(t.child.name)
                    why = last_error(t.child.log_path)
                    why = f": {why}" if why else ""
                    print(f"{t.child.name} exited{why}; log: {t.child.log_path}", file=sys.stderr)
            if args.target_accuracy and all(t.reached_at is not None for t in tracks):
                break
            if len(exited) == len(tracks):
                print("every peer has exited", file=sys.stderr)
                break
            time.sleep(0.2)
        finished = time.time()
        summary = _summary(tracks, args, launch, finished)
        _print_table(tracks, summary, launch)
        if args.summary_json:
            Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
            print(f"summary: {args.summary_json}")
        if args.plot:
            write_plot(tracks, summary, args.plot)
            print(f"plot:    {args.plot}")
        if interrupted.is_set():
            print("interrupted", file=sys.stderr)
            return 130
        if summary["target_accuracy"] is None:
            return 1 if exited else 0  # no target: a peer that died is the failure
        return 0 if summary["reached_target"] else 1
    except RuntimeError as error:
        print(f"dasgd-peer local: {error}", file=sys.stderr)
        return 1
    finally:
        _terminate([c for c in children if c.name != "bootstrap"])
        _terminate([c for c in children if c.name == "bootstrap"])
        if fork_server is not None:
            fork_server.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
