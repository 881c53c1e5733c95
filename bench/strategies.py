"""Every strategy on the same local cluster, homogeneous and with a straggler.

For each strategy: 4 peers on digits-mlp with a 20 ms emulated step
(`dasgd-peer local --step-delay-ms 20`), once with equal peers and once with
peer 0 four times slower (`--slowdowns 4,1,1,1`). Records the time until every
peer reaches 95% test accuracy (from launch, and from the moment all peers
step), the accuracy 30 s after all peers step, staleness (overall and the
straggler's) and bytes sent. Writes a table into bench/RESULTS.md (section
"## Strategies", with the commands) and a PNG of the accuracy curves.

    .venv/bin/python bench/strategies.py                      # everything (~15 min)
    .venv/bin/python bench/strategies.py --strategies dasgd,gossip --scenarios straggler
    .venv/bin/python bench/strategies.py --json --no-write    # rows only

Accuracy curves come from the live progress lines of `dasgd-peer local`
(one per second). Accuracy at 30 s (counted, like the times, from the moment
all peers step) is read from the curve when the run lasted that long; a run
that reached the target sooner is repeated with no target (0) and a
time limit just past that point.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
ALL_STRATEGIES = ["dasgd", "average", "easgd", "aeasgd", "downpour", "adag", "dynsgd", "gossip"]
SCENARIOS = {"homogeneous": "", "straggler": "4,1,1,1"}
PROGRESS = re.compile(r"^\[\s*([\d.]+)s\]")
CELL = re.compile(r"p(\d+)\s+(\d+)\s+([\d.]+)\s+S")


@dataclass
class ClusterRun:
    command: list[str]
    summary: dict
    # seconds since launch -> accuracy of each peer that reported by then
    curve: list[tuple[float, list[float]]] = field(default_factory=list)


def local_command(
    strategy: str,
    peers: int,
    slowdowns: str,
    target: float,
    max_seconds: float,
    summary_path: Path,
    step_delay_ms: float = 20.0,
    extra: list[str] | None = None,
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "peer.cli",
        "local",
        "--peers",
        str(peers),
        "--workload",
        "digits-mlp",
        "--strategy",
        strategy,
        "--step-delay-ms",
        f"{step_delay_ms:g}",
        "--target-accuracy",
        f"{target:g}",
        "--max-seconds",
        f"{max_seconds:g}",
        "--summary-json",
        str(summary_path),
    ]
    if slowdowns:
        command += ["--slowdowns", slowdowns]
    return command + (extra or [])


def run_cluster(command: list[str], summary_path: Path, timeout: float) -> ClusterRun:
    """Runs `dasgd-peer local` and keeps its summary and per-second accuracies."""
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if not summary_path.exists():
        raise RuntimeError(
            f"{shlex.join(command)} wrote no summary (exit {completed.returncode}):\n"
            f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}"
        )
    run = ClusterRun(command, json.loads(summary_path.read_text()))
    for line in completed.stdout.splitlines():
        match = PROGRESS.match(line)
        if match:
            accuracies = [float(acc) for _, _, acc in CELL.findall(line)]
            if accuracies:
                run.curve.append((float(match.group(1)), accuracies))
    return run


def accuracy_at(run: ClusterRun, seconds: float) -> list[float] | None:
    """The peers' accuracies `seconds` after all of them step, if the run lasted that long."""
    setup = run.summary.get("setup_s")
    if setup is None or run.summary["wall_s"] < setup + seconds:
        return None
    before = [accuracies for t, accuracies in run.curve if t <= setup + seconds]
    return before[-1] if before else None


def pretty_command(command: list[str]) -> str:
    words = ["dasgd-peer", *command[3:]]
    return shlex.join(w if not w.endswith(".json") else "out.json" for w in words)


def measure(
    strategy: str, scenario: str, args: argparse.Namespace, workdir: Path
) -> tuple[dict, ClusterRun]:
    slowdowns = SCENARIOS[scenario]
    summary_path = workdir / f"{strategy}-{scenario}.json"
    command = local_command(
        strategy,
        args.peers,
        slowdowns,
        args.target,
        args.max_seconds,
        summary_path,
        extra=args.extra,
    )
    run = run_cluster(command, summary_path, timeout=args.max_seconds + 90)
    accuracies = accuracy_at(run, args.accuracy_at)
    if accuracies is None and not args.quick:
        # The run stopped at the target sooner: run again with none.
        short_path = workdir / f"{strategy}-{scenario}-short.json"
        limit = (run.summary["setup_s"] or 10.0) + args.accuracy_at + 5.0
        short = run_cluster(
            local_command(
                strategy, args.peers, slowdowns, 0.0, limit, short_path, extra=args.extra
            ),
            short_path,
            timeout=limit + 90,
        )
        accuracies = accuracy_at(short, args.accuracy_at) or [
            a for a in short.summary["final_accuracy"] if a is not None
        ]
    summary = run.summary
    per_peer = summary["staleness"].get("per_peer") or [{}]
    row = {
        "strategy": strategy,
        "scenario": scenario,
        "reached": summary["reached_target"],
        "time_to_target_from_all_stepping_s": summary.get("time_to_target_from_all_stepping_s"),
        "time_to_target_s": summary["time_to_target_s"],
        "setup_s": summary["setup_s"],
        "accuracy_at_30s_mean": round(sum(accuracies) / len(accuracies), 4) if accuracies else None,
        "accuracy_at_30s_min": round(min(accuracies), 4) if accuracies else None,
        "staleness_avg": summary["staleness"]["avg"],
        "staleness_max": summary["staleness"]["max"],
        "straggler_staleness_avg": per_peer[0].get("avg") if slowdowns else None,
        "mb_sent": round(summary["bytes_sent"] / 1e6, 1),
        "final_accuracy": summary["final_accuracy"],
        "command": pretty_command(command),
    }
    return row, run


def _cell(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| strategy | scenario | to 95% from all stepping (s) | to 95% from launch (s) "
        "| acc. at 30 s, mean (min) | S_avg | S_max | straggler S_avg | MB sent |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        accuracy = (
            f"{r['accuracy_at_30s_mean']:.3f} ({r['accuracy_at_30s_min']:.3f})"
            if r["accuracy_at_30s_mean"] is not None
            else "–"
        )
        reached = "" if r["reached"] else " (not reached)"
        lines.append(
            f"| {r['strategy']} | {r['scenario']} "
            f"| {_cell(r['time_to_target_from_all_stepping_s'])}{reached} "
            f"| {_cell(r['time_to_target_s'])} | {accuracy} "
            f"| {_cell(r['staleness_avg'], 2)} | {_cell(r['staleness_max'])} "
            f"| {_cell(r['straggler_staleness_avg'], 2)} | {_cell(r['mb_sent'])} |"
        )
    return "\n".join(lines)


def replace_section(path: Path, heading: str, body: str) -> None:
    """Rewrites one `## heading` section of a markdown file, leaving the rest alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def write_plot(runs: dict[tuple[str, str], ClusterRun], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({s for _, s in runs}, key=list(SCENARIOS).index)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 4.5), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for (strategy, s), run in runs.items():
            if s != scenario or not run.curve:
                continue
            setup = run.summary["setup_s"] or 0.0
            xs = [t - setup for t, _ in run.curve]
            ys = [min(accuracies) for _, accuracies in run.curve]
            ax.plot(xs, ys, label=strategy, linewidth=1.4)
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(left=0)
        ax.set_ylim(0, 1)
        ax.set_xlabel("seconds since all peers step")
        ax.set_ylabel("test accuracy of the worst peer")
        ax.set_title(
            f"{scenario}" + (f" (slowdowns {SCENARIOS[scenario]})" if SCENARIOS[scenario] else "")
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(ALL_STRATEGIES))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--accuracy-at", type=float, default=30.0)
    parser.add_argument(
        "--quick", action="store_true", help="no extra run for the accuracy at 30 s"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md and PNG alone")
    parser.add_argument("--plot", default=str(ROOT / "bench" / "strategies.png"))
    parser.add_argument(
        "extra", nargs="*", help="after --: more flags for every `dasgd-peer local`"
    )
    args = parser.parse_args(argv)
    rows, runs = [], {}
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-strategies-") as tmp:
        for strategy in args.strategies.split(","):
            for scenario in args.scenarios.split(","):
                row, run = measure(strategy, scenario, args, Path(tmp))
                rows.append(row)
                runs[(strategy, scenario)] = run
                print(
                    f"{strategy:>9} {scenario:<12} to target "
                    f"{_cell(row['time_to_target_from_all_stepping_s'])} s, acc@30s "
                    f"{_cell(row['accuracy_at_30s_mean'], 3)}, S_avg {row['staleness_avg']}",
                    file=sys.stderr,
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(markdown_table(rows))
    if not args.no_write:
        write_plot(runs, args.target, Path(args.plot))
        invocation = shlex.join(
            [
                ".venv/bin/python",
                "bench/strategies.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        )
        example = next((r["command"] for r in rows), "")
        body = (
            f"`{invocation}`: {args.peers} peers on digits-mlp, 20 ms emulated step, "
            f"target {args.target:.0%}, limit {args.max_seconds:g} s; each row is one "
            f"`dasgd-peer local` run such as\n\n```\n{example}\n```\n\n"
            "Times to target count from launch and from the moment every peer takes steps; "
            '"straggler" slows peer 0 by 4x (`--slowdowns 4,1,1,1`), whose own S_avg is '
            "shown. Accuracy 30 s after all peers step is the mean (and minimum) over peers. "
            f"Curves (worst peer per strategy): `{Path(args.plot).relative_to(ROOT)}`. "
            f"Load average when it started: {load_at_start:.1f} on {os.cpu_count()} cores.\n\n"
            + markdown_table(rows)
        )
        replace_section(RESULTS, "Strategies", body)
        print(f"wrote {RESULTS.relative_to(ROOT)} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
