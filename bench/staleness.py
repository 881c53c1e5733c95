"""The paper's claim made visible: the cost of asynchrony tracks the average
staleness S_avg, not the maximum S_max.

DASGD, 4 peers on digits-mlp, 20 ms emulated step, peer 0 slowed 1x, 2x, 4x
and 8x (`--slowdowns F,1,1,1`). For each factor: S_avg, S_max (and the slow
peer's own S_avg) from the vector clocks, and the time until every peer
reaches 95%. The bound of Tosi & Theobald (arXiv:2309.03754) grows with S_avg;
a straggler drives S_max up in proportion to its slowdown, but the updates it
sends are few, so S_avg should move much less, and with it the time. Writes a
table and a verdict into bench/RESULTS.md (section "## Staleness") and a plot.

    .venv/bin/python bench/staleness.py                 # factors 1,2,4,8, ~4 min
    .venv/bin/python bench/staleness.py --repeats 3     # medians of 3 runs each
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from strategies import RESULTS, ROOT, local_command, pretty_command, replace_section, run_cluster

EMULATION_NOTE = (
    "How a slow peer is emulated matters here. `--step-delay-ms` stands for compute "
    "time: the gradient is computed, the delay passes while arriving updates are "
    "applied, then the gradient is applied and sent with the vector clock of the model "
    "it was computed on. A slowed peer's updates are therefore stale in proportion to "
    "its slowdown, as a slow device's would be. \"slow peer's S_avg\" is the staleness "
    "of the updates the slow peer applied."
)


# How close (log ratio) time's growth must be to a staleness figure's to
# say it grows like it.
TRACKS = math.log(1.15)


def correlation(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def measure(factor: float, args: argparse.Namespace, workdir: Path) -> dict:
    runs = []
    for repeat in range(args.repeats):
        path = workdir / f"dasgd-{factor:g}-{repeat}.json"
        slowdowns = ",".join([f"{factor:g}"] + ["1"] * (args.peers - 1))
        command = local_command("dasgd", args.peers, slowdowns, args.target, args.max_seconds, path)
        runs.append(run_cluster(command, path, timeout=args.max_seconds + 90))
    summaries = [r.summary for r in runs]
    times = [s["time_to_target_from_all_stepping_s"] for s in summaries]
    reached = [t for t in times if t is not None]
    return {
        "slowdown": factor,
        "reached": len(reached),
        "runs": len(runs),
        "time_to_target_s": round(statistics.median(reached), 2) if reached else None,
        "staleness_avg": round(statistics.median(s["staleness"]["avg"] for s in summaries), 2),
        "staleness_max": statistics.median(s["staleness"]["max"] for s in summaries),
        "staleness_p95": statistics.median(s["staleness"]["p95"] for s in summaries),
        "slow_peer_staleness_avg": round(
            statistics.median(s["staleness"]["per_peer"][0]["avg"] for s in summaries), 2
        ),
        "steps": summaries[-1]["steps"],
        "command": pretty_command(runs[-1].command),
    }


def verdict(rows: list[dict]) -> str:
    """Compares how time, S_avg and S_max grow from the first factor to the last."""
    timed = [r for r in rows if r["time_to_target_s"] is not None]
    if len(timed) < 2:
        return "Too few runs reached the target to compare."
    first, last = timed[0], timed[-1]

    def growth(key: str) -> float:
        return last[key] / first[key] if first[key] else float("inf")

    g_time, g_avg, g_max = (
        growth(k) for k in ("time_to_target_s", "staleness_avg", "staleness_max")
    )
    summary = (
        f"From {first['slowdown']:g}x to {last['slowdown']:g}x: time to target "
        f"x{g_time:.2f}, S_avg x{g_avg:.2f}, S_max x{g_max:.2f}."
    )
    times = [r["time_to_target_s"] for r in timed]
    r_avg = correlation([r["staleness_avg"] for r in timed], times)
    r_max = correlation([float(r["staleness_max"]) for r in timed], times)
    if r_avg is not None and r_max is not None:
        summary += (
            f" Correlation with time to target over {len(timed)} factors: "
            f"S_avg {r_avg:+.2f}, S_max {r_max:+.2f}."
        )
    if g_max <= 1.25:
        return summary + (
            " S_max did not grow with the slowdown, so these runs cannot tell whether "
            "cost follows S_avg or S_max; they only show that a straggler costs little."
        )
    off_avg, off_max = abs(math.log(g_time / g_avg)), abs(math.log(g_time / g_max))
    if off_avg < min(off_max, TRACKS):
        return summary + " Time grows like S_avg, not like S_max, as the bound predicts."
    if off_max < min(off_avg, TRACKS):
        return summary + (
            " Time grows about as much as S_max: the bound's claim is not visible here."
        )
    return summary + (
        f" Neither grows within {math.exp(TRACKS) - 1:.0%} of time's growth. A slower peer"
        " also contributes fewer gradients, which these runs do not separate from staleness."
    )


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| slow peer | S_avg | S_max | p95 | slow peer's S_avg | to 95% (s) | steps per peer |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        time = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        if r["runs"] > 1:
            time += f" ({r['reached']}/{r['runs']} reached)"
        lines.append(
            f"| {r['slowdown']:g}x | {r['staleness_avg']:.2f} | {r['staleness_max']:g} "
            f"| {r['staleness_p95']:g} | {r['slow_peer_staleness_avg']:.2f} | {time} "
            f"| {', '.join(map(str, r['steps']))} |"
        )
    return "\n".join(lines)


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = [r["slowdown"] for r in rows]
    fig, left = plt.subplots(figsize=(7, 4.2))
    times = [r["time_to_target_s"] or float("nan") for r in rows]
    left.plot(factors, times, "o-", color="black", label="time to 95% (s)")
    left.set_xscale("log", base=2)
    left.set_xticks(factors, [f"{f:g}x" for f in factors])
    left.set_xlabel("slowdown of peer 0")
    left.set_ylabel("seconds to 95% (all peers)")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(factors, [r["staleness_avg"] for r in rows], "s--", color="tab:blue", label="S_avg")
    right.plot(factors, [r["staleness_max"] for r in rows], "^--", color="tab:red", label="S_max")
    right.set_ylabel("staleness (updates)")
    right.set_ylim(bottom=0)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles=handles, loc="upper left", fontsize=8)
    left.set_title("DASGD, 4 peers, one straggler: time vs staleness")
    left.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", default="1,2,4,8")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md and PNG alone")
    parser.add_argument("--plot", default=str(ROOT / "bench" / "staleness.png"))
    args = parser.parse_args(argv)
    rows = []
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-staleness-") as tmp:
        for factor in (float(f) for f in args.factors.split(",")):
            rows.append(measure(factor, args, Path(tmp)))
            r = rows[-1]
            print(
                f"{factor:g}x: S_avg {r['staleness_avg']}, S_max {r['staleness_max']}, "
                f"to target {r['time_to_target_s']} s",
                file=sys.stderr,
                flush=True,
            )
    conclusion = verdict(rows)
    if args.json:
        print(json.dumps({"rows": rows, "verdict": conclusion}, indent=2))
    else:
        print(markdown_table(rows))
        print("\n" + conclusion)
    if not args.no_write:
        write_plot(rows, Path(args.plot))
        invocation = shlex.join(
            [
                ".venv/bin/python",
                "bench/staleness.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        )
        body = (
            f"`{invocation}`: DASGD, {args.peers} peers on digits-mlp, 20 ms emulated step, "
            f"peer 0 slowed by the factor; time counted from the moment every peer steps; "
            f"{args.repeats} run(s) per factor (medians). Each run is\n\n"
            f"```\n{rows[-1]['command']}\n```\n\n"
            f"{markdown_table(rows)}\n\n{conclusion}\n\n{EMULATION_NOTE}\n\n"
            f"Plot: `{Path(args.plot).relative_to(ROOT)}`. Load average when it started: "
            f"{load_at_start:.1f} on {os.cpu_count()} cores."
        )
        replace_section(RESULTS, "Staleness", body)
        print(f"wrote {RESULTS.relative_to(ROOT)} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
