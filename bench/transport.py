"""Push throughput on loopback: a float32 parameter set (default 100 MB in 5
tensors) sent peer -> peer through the real Push path, against baselines
with the same payload measured in the same run.

    .venv/bin/python bench/transport.py [--size-mb 100] [--tensors 5]
        [--pushes 20] [--repeats 3] [--chunk-kib 1024] [--json]

Each receiver is a child process, so its RSS is its own and sender and
receiver do not share one interpreter lock (as between two peers):

- push:  `rpc.start_server` (the daemon's options, interceptors, health,
         reflection) with the real `PeerServicer` and a stand-in node that
         accepts GRADIENT updates for the payload's tensor specs and counts
         delivered updates. The sender makes a new `OutboundMessage` per
         update and streams `wire_frames` over `push_method`: encode, frame,
         stream, parse, validate the header, assemble, check finiteness,
         deliver. The PushAck at the end of the stream says every update
         was delivered.
- grpc:  bare gRPC byte streaming: a stream_unary method with identity
         serializers, the same channel and server options, the payload
         pre-cut into chunks of the same size; the server only counts bytes.
- socket: one TCP connection, `sendall` of each payload and `recv_into` a
         preallocated buffer; one ack byte at the end.
- protobuf (for comparison): generated stubs with `Chunk` objects on both
         sides, as Push worked before it used `parse_chunk`/`wire_frames`.
- fan-out: one message per update sent to 3 push receivers at once (one
         sender thread each, frames made once and shared).
- fp16/bf16: the same tensors with --compression fp16/bf16; the figure of
         merit is parameters per second against raw float32.

Each variant moves `--pushes` updates per round; rounds repeat `--repeats`
times, interleaved, and the best round is reported (the machine is shared;
the best is the least disturbed). Peak RSS is the push receiver's VmHWM
after all rounds, with its VmRSS after each round to show it stays flat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dasgd.v1 import peer_pb2, peer_pb2_grpc  # noqa: E402
from peer import codec  # noqa: E402
from peer.codec import TensorSpec  # noqa: E402
from peer.strategies.base import GRADIENT  # noqa: E402
from peer.transport import (  # noqa: E402
    CODEC_TO_WIRE,
    OutboundMessage,
    PeerServicer,
    UpdateInfo,
    add_peer_service,
    push_method,
    specs_to_wire,
)
from rpc import Security, make_channel, start_server  # noqa: E402
from rpc.allocator import tune_allocator  # noqa: E402
from rpc.server import CHANNEL_OPTIONS, SERVER_OPTIONS  # noqa: E402

RUN_ID = "bench"
SENDER = "bench-sender"
BYTES_METHOD = "/bench.Bytes/Stream"


def make_specs(size_mb: float, tensors: int) -> list[TensorSpec]:
    per_tensor = int(size_mb * 1e6 / 4 / tensors)
    return [TensorSpec(f"layer{i}.weight", (per_tensor // 1000, 1000)) for i in range(tensors)]


def extra_options(pairs: list[str]) -> list[tuple[str, int | str]]:
    """`name=value` flags -> gRPC options (ints where they parse)."""
    options: list[tuple[str, int | str]] = []
    for pair in pairs:
        name, _, value = pair.partition("=")
        options.append((name, int(value) if value.lstrip("-").isdigit() else value))
    return options


# --- receivers (child processes) ---------------------------------------------------


class CountingNode:
    """What PeerServicer needs from a daemon: the model's specs, and a
    `deliver` that counts and drops (the trainer's work is not measured)."""

    def __init__(self, specs: list[TensorSpec]):
        self.run_id = RUN_ID
        self.member_id = "bench-receiver"
        self.specs = specs
        self.accepts = frozenset({GRADIENT})
        self.max_update_bytes = 4 << 30
        self.delivered = 0

    def is_member(self, member_id: str) -> bool:
        return member_id == SENDER

    def deliver(self, update) -> bool:
        self.delivered += 1
        return True

    def count_rejection(self, code: grpc.StatusCode) -> None:
        print(f"rejected: {code}", file=sys.stderr)


def serve(kind: str, args: argparse.Namespace) -> None:
    """Runs one receiver until stdin closes; prints `PORT n` when ready."""
    options = extra_options(args.option)
    if kind == "grpc-tuned":
        tune_allocator()
        kind = "grpc"
    elif kind in ("push", "protobuf") and args.tune_allocator:
        tune_allocator()  # as the peer daemon does by default
    if not args.receive_pool:
        codec.RECEIVE_POOL.max_idle_per_size = 0
    if kind == "socket":
        listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=_socket_receiver, args=(listener,), daemon=True).start()
        port = listener.getsockname()[1]
    elif kind == "grpc":

        def stream(request_iterator, context) -> bytes:
            received = 0
            for message in request_iterator:
                received += len(message)
            return struct.pack("<Q", received)

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS + options
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "bench.Bytes", {"Stream": grpc.stream_unary_rpc_method_handler(stream)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
    else:
        servicer = PeerServicer(CountingNode(make_specs(args.size_mb, args.tensors)))
        if kind == "push":
            register: Callable[[grpc.Server], list[str]] = lambda s: [  # noqa: E731
                add_peer_service(s, servicer)
            ]
        else:  # "protobuf": the generated registration, Chunk objects in

            def register(s: grpc.Server) -> list[str]:
                peer_pb2_grpc.add_PeerServicer_to_server(servicer, s)
                return ["dasgd.v1.Peer"]

        if options:
            import rpc.server

            rpc.server.SERVER_OPTIONS = SERVER_OPTIONS + options
        handle = start_server("127.0.0.1:0", Security(), register)  # kept: GC would stop it
        port = handle.port
    print(f"PORT {port}", flush=True)
    sys.stdin.read()


def _socket_receiver(listener: socket.socket) -> None:
    buffer = bytearray()  # kept across connections, as the push receivers' pool is
    while True:
        connection, _ = listener.accept()
        with connection:
            header = bytearray(8)
            while True:
                if connection.recv_into(header, 8, socket.MSG_WAITALL) < 8:
                    break
                (size,) = struct.unpack("<Q", header)
                if size == 0:
                    connection.sendall(b"k")
                    continue
                if len(buffer) != size:
                    buffer = bytearray(size)
                view = memoryview(buffer)
                received = 0
                while received < size:
                    n = connection.recv_into(view[received:], size - received)
                    if n == 0:
                        return
                    received += n


class Receiver:
    """A child process running `serve`."""

    def __init__(self, kind: str, args: argparse.Namespace):
        argv = [sys.executable, __file__, "--serve", kind, "--size-mb", str(args.size_mb)]
        argv += ["--tensors", str(args.tensors)]
        if not args.tune_allocator:
            argv.append("--no-tune-allocator")
        argv += [f"--option={o}" for o in args.option]
        if not args.receive_pool:
            argv.append("--no-receive-pool")
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{kind} receiver did not start: {line!r}")
        self.address = f"127.0.0.1:{line.split()[1]}"

    def memory_mb(self, field: str) -> float:
        """VmRSS (now) or VmHWM (peak) of the receiver, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
        raise KeyError(field)

    def _stat(self) -> list[str]:
        """/proc/PID/stat from field 3 (state) on."""
        return Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()

    def cpu_s(self) -> float:
        """User + system CPU seconds the receiver has used, all threads."""
        fields = self._stat()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def page_faults(self) -> int:
        """Minor page faults so far (fresh memory being mapped in)."""
        return int(self._stat()[7])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.process.terminate()
        self.process.wait(10)


# --- senders ---------------------------------------------------------------------


class Payload:
    def __init__(self, specs: list[TensorSpec], chunk_bytes: int):
        rng = np.random.default_rng(0)
        self.specs = specs
        self.arrays = [rng.standard_normal(s.shape, dtype=np.float32) for s in specs]
        self.nbytes = sum(a.nbytes for a in self.arrays)
        self.params = sum(a.size for a in self.arrays)
        packed = bytes(codec.encode(self.arrays))
        self.packed = memoryview(packed)
        self.chunks = [bytes(c) for c in codec.chunks(self.packed, chunk_bytes)]
        self._sequence = time.time_ns()

    def message(self, codec_name: str, recipients: int = 1) -> OutboundMessage:
        """A new update (as Outbox.send makes one) carrying the payload."""
        self._sequence += 1
        template = peer_pb2.UpdateHeader(
            run_id=RUN_ID,
            sender_id=SENDER,
            tensors=specs_to_wire(self.specs),
            codec=CODEC_TO_WIRE[codec_name],
        )
        info = UpdateInfo(GRADIENT, self._sequence, {SENDER: 1})
        return OutboundMessage(template, info, self.arrays, codec_name, recipients)


def push_round(
    channel: grpc.Channel, payload: Payload, pushes: int, codec_name: str, chunk_bytes: int
) -> float:
    push = push_method(channel)

    def requests() -> Iterator[bytes]:
        for _ in range(pushes):
            yield from payload.message(codec_name).wire_frames(chunk_bytes)

    start = time.perf_counter()
    ack = push(requests(), timeout=600)
    elapsed = time.perf_counter() - start
    assert ack.accepted == pushes, ack
    return elapsed


def protobuf_round(
    channel: grpc.Channel, payload: Payload, pushes: int, codec_name: str, chunk_bytes: int
) -> float:
    """Push as generated stubs do it: a Chunk object per piece of a packed buffer."""
    stub = peer_pb2_grpc.PeerStub(channel)

    def requests() -> Iterator[peer_pb2.Chunk]:
        for _ in range(pushes):
            header = payload.message(codec_name).header
            yield peer_pb2.Chunk(header=header)
            for piece in codec.chunks(codec.encode(payload.arrays, codec_name), chunk_bytes):
                yield peer_pb2.Chunk(data=bytes(piece))

    start = time.perf_counter()
    ack = stub.Push(requests(), timeout=600)
    elapsed = time.perf_counter() - start
    assert ack.accepted == pushes, ack
    return elapsed


def fanout_round(
    channels: list[grpc.Channel], payload: Payload, pushes: int, chunk_bytes: int
) -> float:
    messages = [payload.message(codec.RAW_F32, recipients=len(channels)) for _ in range(pushes)]
    acks: list[peer_pb2.PushAck] = []

    def send(channel: grpc.Channel) -> None:
        requests = (frame for m in messages for frame in m.wire_frames(chunk_bytes))
        acks.append(push_method(channel)(requests, timeout=600))

    threads = [threading.Thread(target=send, args=(c,)) for c in channels]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert [a.accepted for a in acks] == [pushes] * len(channels), acks
    return elapsed


def grpc_bytes_round(channel: grpc.Channel, payload: Payload, pushes: int) -> float:
    stream = channel.stream_unary(BYTES_METHOD)
    requests = (chunk for _ in range(pushes) for chunk in payload.chunks)
    start = time.perf_counter()
    received = struct.unpack("<Q", stream(requests, timeout=600))[0]
    elapsed = time.perf_counter() - start
    assert received == pushes * payload.nbytes, received
    return elapsed


def socket_round(address: str, payload: Payload, pushes: int) -> float:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        for _ in range(pushes):
            connection.sendall(struct.pack("<Q", payload.nbytes))
            connection.sendall(payload.packed)
        connection.sendall(struct.pack("<Q", 0))
        assert connection.recv(1) == b"k"
        return time.perf_counter() - start


# --- main ---------------------------------------------------------------------------


SHAPED_ENV = "DASGD_BENCH_SHAPED_GBPS"


def run_on_shaped_link(gbps: float) -> int:
    """Re-runs this command in a new network namespace whose loopback is
    shaped to `gbps` (the receivers, children of the bench, inherit it).

    The loopback of one machine moves bytes as fast as two processes can
    copy them; between machines the wire is usually slower than that, and
    a codec that halves the bytes pays off in full only there.
    """
    rate_bytes = gbps * 1e9 / 8
    burst = max(256 * 1024, int(rate_bytes / 100))  # 10 ms of traffic
    shape = (
        "ip link set lo up && "
        f"tc qdisc add dev lo root tbf rate {gbps}gbit burst {burst} latency 100ms && "
        'exec "$@"'
    )
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    command = [*unshare, "sh", "-c", shape, "sh", sys.executable, *sys.argv]
    env = dict(os.environ, **{SHAPED_ENV: str(gbps)})
    try:
        return subprocess.call(command, env=env)
    except FileNotFoundError as error:
        print(f"--link-gbps needs unshare, ip and tc: {error}", file=sys.stderr)
        return 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="parameter set size, MB")
    parser.add_argument("--tensors", type=int, default=5)
    parser.add_argument(
        "--pushes",
        type=int,
        default=20,
        help="updates per timed round (20: rounds of ~0.5 s at 4 GB/s; 5 made 0.14 s rounds, "
        "swayed by scheduling)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds per variant (best kept)")
    parser.add_argument("--chunk-kib", type=int, default=codec.DEFAULT_CHUNK_BYTES // 1024)
    parser.add_argument("--fanout", type=int, default=3, help="neighbors for the fan-out run")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra gRPC option for every channel and server (to try settings)",
    )
    parser.add_argument(
        "--receive-pool",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse receive buffers (off: a fresh buffer per update)",
    )
    parser.add_argument(
        "--tune-allocator",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply the daemon's allocator settings (rpc/allocator.py) to the sender and the "
        "push receivers (off: as before them); grpc-tuned always has them",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="leave out a variant: socket, protobuf, fp16, bf16 or fanout",
    )
    parser.add_argument(
        "--link-gbps",
        type=float,
        help="run every variant over a link of this many Gbit/s: loopback shaped with a "
        "token bucket (tc tbf) in a private network namespace (needs root or user namespaces)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.link_gbps and os.environ.get(SHAPED_ENV) != str(args.link_gbps):
        sys.exit(run_on_shaped_link(args.link_gbps))
    torch.set_num_threads(1)  # as the daemon runs it
    if args.serve:
        serve(args.serve, args)
        return
    if args.tune_allocator:
        tune_allocator()  # the sender is a peer daemon too

    chunk_bytes = args.chunk_kib * 1024
    specs = make_specs(args.size_mb, args.tensors)
    payload = Payload(specs, chunk_bytes)
    options = extra_options(args.option)
    if options:
        import rpc.server

        rpc.server.CHANNEL_OPTIONS = CHANNEL_OPTIONS + options

    variants = ["push", "grpc", "grpc-tuned", "socket", "protobuf", "fp16", "bf16", "fanout"]
    variants = [v for v in variants if v not in args.skip or v in ("push", "grpc")]
    kinds = {"push", "grpc"} | ({"grpc-tuned", "socket", "protobuf"} & set(variants))
    receivers = {k: Receiver(k, args) for k in kinds}
    if {"fp16", "bf16"} & set(variants):
        receivers["half"] = Receiver("push", args)
    fanout = [Receiver("push", args) for _ in range(args.fanout)] if "fanout" in variants else []
    channels: dict[str, grpc.Channel] = {
        k: make_channel(r.address) for k, r in receivers.items() if k != "socket"
    }
    fanout_channels = [make_channel(r.address) for r in fanout]
    load = os.getloadavg()
    rss_start = receivers["push"].memory_mb("VmRSS")
    rss_after_rounds: list[float] = []

    rounds: dict[str, Callable[[], float]] = {
        "push": lambda: push_round(
            channels["push"], payload, args.pushes, codec.RAW_F32, chunk_bytes
        ),
        "grpc": lambda: grpc_bytes_round(channels["grpc"], payload, args.pushes),
        "grpc-tuned": lambda: grpc_bytes_round(channels["grpc-tuned"], payload, args.pushes),
        "socket": lambda: socket_round(receivers["socket"].address, payload, args.pushes),
        "protobuf": lambda: protobuf_round(
            channels["protobuf"], payload, args.pushes, codec.RAW_F32, chunk_bytes
        ),
        "fp16": lambda: push_round(channels["half"], payload, args.pushes, codec.F16, chunk_bytes),
        "bf16": lambda: push_round(channels["half"], payload, args.pushes, codec.BF16, chunk_bytes),
        "fanout": lambda: fanout_round(fanout_channels, payload, args.pushes, chunk_bytes),
    }
    times: dict[str, list[float]] = {v: [] for v in variants}
    # CPU seconds of sender + receiver per round: less disturbed than wall
    # time by other work on the machine.
    cpu_receivers = {v: [r] for v, r in receivers.items() if v != "half"}
    if "half" in receivers:
        cpu_receivers.update(fp16=[receivers["half"]], bf16=[receivers["half"]])
    cpu_receivers["fanout"] = fanout
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    cpu_sender: dict[str, list[float]] = {v: [] for v in variants}
    faults: dict[str, list[int]] = {v: [] for v in variants}
    try:
        for v in variants:  # warm-up: connections, pools, first-touch of buffers
            rounds[v]()
        for _ in range(args.repeats):
            for v in variants:
                faults_before = sum(r.page_faults() for r in cpu_receivers[v])
                sent_before = time.process_time()
                before = sent_before + sum(r.cpu_s() for r in cpu_receivers[v])
                times[v].append(rounds[v]())
                sent_after = time.process_time()
                after = sent_after + sum(r.cpu_s() for r in cpu_receivers[v])
                cpu[v].append(after - before)
                cpu_sender[v].append(sent_after - sent_before)
                faults[v].append(sum(r.page_faults() for r in cpu_receivers[v]) - faults_before)
                if v == "push":
                    rss_after_rounds.append(receivers["push"].memory_mb("VmRSS"))
        peak_rss = receivers["push"].memory_mb("VmHWM")
    finally:
        for channel in [*channels.values(), *fanout_channels]:
            channel.close()
        for receiver in [*receivers.values(), *fanout]:
            receiver.close()

    moved = args.pushes * payload.nbytes

    def gbps(variant: str, copies: int = 1) -> float:
        return copies * moved / min(times[variant]) / 1e9

    def slower(variant: str, than: str) -> float:
        """Median over repeats of `variant`'s round time over the round time of
        `than` in the same repeat: how many times faster `than` went, less
        swayed by the machine's mood than best against best."""
        return float(np.median([v / t for v, t in zip(times[variant], times[than])]))

    def paired(baseline: str) -> float:
        return slower(baseline, "push")

    def params_per_s(variant: str) -> float:
        return args.pushes * payload.params / min(times[variant])

    result: dict[str, object] = {
        "model_mb": payload.nbytes / 1e6,
        "tensors": args.tensors,
        "chunk_kib": args.chunk_kib,
        "pushes_per_round": args.pushes,
        "repeats": args.repeats,
        "statistic": "best round",
        "load_avg_1m": round(load[0], 2),
        "link_gbps": args.link_gbps,
        "push_gbps": gbps("push"),
        "grpc_bytes_gbps": gbps("grpc"),
        "socket_gbps": gbps("socket") if "socket" in times else None,
        "ratio_vs_grpc": gbps("push") / gbps("grpc"),
        # Per repeat, push against the baseline round that ran next to it:
        # less swayed by the machine's mood than best against best.
        "paired_ratio_vs_grpc": paired("grpc"),
        "ratio_vs_grpc_tuned": gbps("push") / gbps("grpc-tuned") if "grpc-tuned" in times else None,
        "paired_ratio_vs_grpc_tuned": paired("grpc-tuned") if "grpc-tuned" in times else None,
        "tune_allocator": args.tune_allocator,
        "ratio_vs_socket": gbps("push") / gbps("socket") if "socket" in times else None,
        "cpu_s_per_gb": {v: min(c) / (moved / 1e9) for v, c in cpu.items()},
        "sender_cpu_s_per_gb": {v: min(c) / (moved / 1e9) for v, c in cpu_sender.items()},
        "receiver_page_faults_per_gb": {
            v: round(float(np.median(f)) / (moved / 1e9)) for v, f in faults.items()
        },
        "peak_rss_mb": peak_rss,
        "rss_start_mb": rss_start,
        "rss_after_rounds_mb": rss_after_rounds,
        "rss_limit_mb": 4 * payload.nbytes / 1e6 + 300,
    }
    if "protobuf" in times:
        result["push_protobuf_gbps"] = gbps("protobuf")
    for name in ("fp16", "bf16"):
        if name in times:
            result[f"{name}_wire_gbps"] = gbps(name) / 2
            result[f"{name}_params_ratio"] = params_per_s(name) / params_per_s("push")
            result[f"{name}_paired_params_ratio"] = slower("push", name)
    if "fanout" in times:
        result["fanout_neighbors"] = args.fanout
        result["fanout_total_gbps"] = gbps("fanout", args.fanout)
        result["fanout_ratio_vs_push"] = gbps("fanout", args.fanout) / gbps("push")
    result["rounds_s"] = {v: [round(t, 4) for t in ts] for v, ts in times.items()}
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    for key in ("cpu_s_per_gb", "sender_cpu_s_per_gb"):
        result[key] = {v: round(c, 3) for v, c in result[key].items()}
    result["rss_after_rounds_mb"] = [round(x, 1) for x in rss_after_rounds]
    if args.json:
        print(json.dumps(result))
        return
    if args.link_gbps:
        print(f"loopback shaped to {args.link_gbps:g} Gbit/s (tc tbf, private network namespace)")
    print(
        f"{payload.nbytes / 1e6:.0f} MB float32 in {args.tensors} tensors, "
        f"{args.chunk_kib} KiB chunks, {args.pushes} updates per round, best of {args.repeats}; "
        f"load average {load[0]:.2f}"
    )
    rows = [
        ("push (real Push path)", "push"),
        ("bare gRPC bytes", "grpc"),
        ("bare gRPC, allocator tuned", "grpc-tuned"),
        ("raw TCP socket", "socket"),
        ("push, protobuf Chunk objects", "protobuf"),
    ]
    for label, v in rows:
        if v in times:
            cpu_note = (
                f"   {result['cpu_s_per_gb'][v]:.2f} CPU s/GB "
                f"(sender {result['sender_cpu_s_per_gb'][v]:.2f}), "
                f"receiver {result['receiver_page_faults_per_gb'][v]} page faults/GB"
            )
            print(f"  {label:30s} {gbps(v):6.2f} GB/s{cpu_note}")
    for name in ("fp16", "bf16"):
        if name in times:
            print(
                f"  push {name:25s} {params_per_s(name) / 1e6:6.0f} M params/s "
                f"({result[f'{name}_params_ratio']:.2f}x raw float32's "
                f"{params_per_s('push') / 1e6:.0f} M/s, paired median "
                f"{result[f'{name}_paired_params_ratio']:.2f}x)   "
                f"{result['cpu_s_per_gb'][name]:.2f} CPU s/GB of float32"
            )
    if "fanout" in times:
        print(
            f"  fan-out to {args.fanout:<19d} {result['fanout_total_gbps']:6.2f} GB/s in total "
            f"({result['fanout_ratio_vs_push']:.2f}x one push)   "
            f"{result['cpu_s_per_gb']['fanout'] / args.fanout:.2f} CPU s/GB delivered"
        )
    socket_note = f", push / socket = {result['ratio_vs_socket']:.2f}" if "socket" in times else ""
    print(
        f"push / bare gRPC = {result['ratio_vs_grpc']:.2f} "
        f"(paired median {result['paired_ratio_vs_grpc']:.2f}){socket_note}"
    )
    if result["ratio_vs_grpc_tuned"] is not None:
        print(
            f"push / bare gRPC with the same allocator settings = "
            f"{result['ratio_vs_grpc_tuned']:.2f} "
            f"(paired median {result['paired_ratio_vs_grpc_tuned']:.2f})"
        )
    print(
        f"receiver RSS: {rss_start:.0f} MB at start, after each round "
        f"{', '.join(f'{x:.0f}' for x in rss_after_rounds)} MB; peak {peak_rss:.0f} MB "
        f"(limit {result['rss_limit_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
