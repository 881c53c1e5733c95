"""What sending costs the training thread, in one process, against bare gRPC.

    .venv/bin/python bench/sender_cost.py [--seconds 8] [--repeats 2] [--json]

A training thread pinned to core 0 takes small torch steps (an MLP the size
of digits-mlp's) and, after each, hands a gradient to the senders; 3
receivers (processes on core 1, with the rest of this process) accept every
Push. Variants, in the same run:

- `alone`: no sending, the baseline;
- `grpc`: a bare gRPC client stream per receiver, fed 100 messages/s in all
  from a queue (what any sync-gRPC sender costs at least);
- `outbox`: the real `peer.transport.Outbox` (default send rate, 100
  updates/s shared by the 3 streams), a gradient handed over every step.

For each: steps/s, the ratio to `alone`, messages sent per second, and how
often the training thread blocked per message ("blocks/msg", its voluntary
context switches: each is a hand-over of the interpreter lock to one of the
process's other threads, ~60 us of training lost on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from peer.codec import TensorSpec  # noqa: E402
from peer.strategies.base import GRADIENT  # noqa: E402
from peer.transport import PUSH_METHOD, Outbox  # noqa: E402

RECEIVERS = 3
RATE = 100.0  # messages/s in all, as the Outbox's default
SPECS = [
    TensorSpec("w1", (128, 64)),
    TensorSpec("b1", (128,)),
    TensorSpec("w2", (10, 128)),
    TensorSpec("b2", (10,)),
]


def serve() -> None:
    """A receiver: accepts any Push stream and reads it to the end."""

    def push(request_iterator, context):
        for _ in request_iterator:
            pass
        return b""

    service, method = PUSH_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.stream_unary_rpc_method_handler(push)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    server.start()
    server.wait_for_termination()


def voluntary_switches(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as status:
        return int(status.read().split("\nvoluntary_ctxt_switches:")[1].split()[0])


class BareStreams:
    """One gRPC client stream per receiver; each takes at most one message
    per RECEIVERS / RATE s from its queue (one at a time)."""

    def __init__(self, addresses: list[str]):
        self.channels = [grpc.insecure_channel(a) for a in addresses]
        self.queues: list[queue.Queue] = [queue.Queue(1) for _ in addresses]
        self.sent = 0
        interval = len(addresses) / RATE
        self.payload = bytes(4 * sum(s.numel for s in SPECS))  # the receivers only count

        def requests(q: queue.Queue):
            while True:
                started = time.monotonic()
                item = q.get()
                if item is None:
                    return
                yield item
                self.sent += 1
                pause = started + interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)

        self.calls = [
            channel.stream_unary(PUSH_METHOD).future(requests(q))
            for channel, q in zip(self.channels, self.queues)
        ]

    def send(self) -> None:
        for q in self.queues:
            if q.empty():
                q.put_nowait(self.payload)

    def close(self) -> None:
        for q in self.queues:
            q.put(None)
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


class RealOutbox:
    def __init__(self, addresses: list[str]):
        self.outbox = Outbox("bench", "me", "127.0.0.1:1", grpc.insecure_channel, SPECS)
        self.outbox.set_neighbors({f"r{i}": a for i, a in enumerate(addresses)})
        rng = np.random.default_rng(0)
        self.gradient = [rng.standard_normal(s.shape).astype(np.float32) for s in SPECS]
        self.step = 0

    @property
    def sent(self) -> int:
        return sum(s.stats.sent for s in self.outbox.senders())

    def send(self) -> None:
        self.step += 1
        self.outbox.send(GRADIENT, self.gradient, {"me": self.step})

    def close(self) -> None:
        self.outbox.close()


def measure(variant: str, addresses: list[str], seconds: float) -> dict[str, float]:
    sender = {"alone": None, "grpc": BareStreams, "outbox": RealOutbox}[variant]
    sending = sender(addresses) if sender else None
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, targets = torch.randn(32, 64), torch.randint(0, 10, (32,))
    result: dict[str, float] = {}

    def train() -> None:
        os.sched_setaffinity(0, {0})  # this thread: core 0 to itself
        me = threading.get_native_id()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
            if sending:
                sending.send()

        for _ in range(300):  # warm up, and let the streams open
            step()
        sent0, blocks0, start = (
            (sending.sent if sending else 0),
            voluntary_switches(me),
            time.monotonic(),
        )
        steps = 0
        while time.monotonic() - start < seconds:
            step()
            steps += 1
        elapsed = time.monotonic() - start
        sent = (sending.sent if sending else 0) - sent0
        blocks = voluntary_switches(me) - blocks0
        result.update(
            steps_per_s=steps / elapsed,
            messages_per_s=sent / elapsed,
            blocks_per_s=blocks / elapsed,
            blocks_per_message=blocks / sent if sent else 0.0,
        )

    trainer = threading.Thread(target=train)
    trainer.start()
    trainer.join()
    if sending:
        sending.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all variants")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve()
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {1})  # gRPC's threads, and the receivers, on core 1
    receivers = [
        subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
        for _ in range(RECEIVERS)
    ]
    try:
        addresses = [f"127.0.0.1:{int(r.stdout.readline())}" for r in receivers]
        runs: dict[str, list[dict[str, float]]] = {"alone": [], "grpc": [], "outbox": []}
        for _ in range(args.repeats):
            for variant in runs:
                runs[variant].append(measure(variant, addresses, args.seconds))
    finally:
        for r in receivers:
            r.kill()
            r.wait()
    alone = statistics.median(r["steps_per_s"] for r in runs["alone"])
    summary = {
        variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
        | {"ratio_vs_alone": statistics.median(r["steps_per_s"] for r in results) / alone}
        for variant, results in runs.items()
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{'variant':<8}{'steps/s':>9}{'ratio':>7}{'msgs/s':>8}{'blocks/s':>10}{'blocks/msg':>12}"
    )
    for variant, row in summary.items():
        print(
            f"{variant:<8}{row['steps_per_s']:>9.0f}{row['ratio_vs_alone']:>7.2f}"
            f"{row['messages_per_s']:>8.0f}{row['blocks_per_s']:>10.0f}"
            f"{row['blocks_per_message']:>12.1f}"
        )
    print(
        "(medians of",
        args.repeats,
        "runs each; steps alone per run:",
        ", ".join(f"{r['steps_per_s']:.0f}" for r in runs["alone"]) + ")",
    )


if __name__ == "__main__":
    main()
