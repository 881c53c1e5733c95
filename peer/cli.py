"""`dasgd-peer`: run a peer, ask a running one, or start a local cluster."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from dasgd.v1 import peer_pb2, peer_pb2_grpc
from peer.config import add_flags, load_config
from rpc import Security, make_channel
from rpc.server import InsecureListenError, check_listen_address

_WIDE_INTS = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def as_plain_dict(message) -> dict:
    """`MessageToDict` with every field shown and 64-bit integers as JSON
    numbers. The proto3 JSON mapping writes those as strings (for
    JavaScript's doubles); someone piping `status --json` into jq or a
    script wants `"step": 1234`, and every count here is far below 2**53."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    _wide_ints_to_numbers(message.DESCRIPTOR, data)
    return data


def _wide_ints_to_numbers(descriptor: Descriptor, data: dict) -> None:
    for field in descriptor.fields:
        if field.json_name not in data:
            continue
        value = data[field.json_name]
        kind = field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            entry = kind.fields_by_name["value"]
            if entry.type in _WIDE_INTS:
                data[field.json_name] = {k: int(v) for k, v in value.items()}
            elif entry.message_type is not None:
                for item in value.values():
                    _wide_ints_to_numbers(entry.message_type, item)
        elif kind is not None:
            for item in value if field.is_repeated else [value]:
                _wide_ints_to_numbers(kind, item)
        elif field.type in _WIDE_INTS:
            data[field.json_name] = [int(v) for v in value] if field.is_repeated else int(value)


def _client_security_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer", required=True, help="HOST:PORT of a running peer")
    parser.add_argument("--token-file", default="", help="file holding the run's shared secret")
    parser.add_argument(
        "--tls-cert", default="", help="client certificate, for a peer that requires one (mTLS)"
    )
    parser.add_argument("--tls-key", default="", help="the client certificate's key")
    parser.add_argument("--tls-ca", default="", help="CA to verify the peer (enables TLS)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")


def _client_channel(args: argparse.Namespace) -> grpc.Channel:
    security = Security.from_files(
        args.token_file or None, args.tls_cert or None, args.tls_key or None, args.tls_ca or None
    )
    return make_channel(args.peer, security)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
        security = Security.from_files(
            config.token_file or None,
            config.tls_cert or None,
            config.tls_key or None,
            config.tls_ca or None,
            config.insecure,
        )
        check_listen_address(config.listen, security)
    except (ValueError, OSError) as error:
        print(f"dasgd-peer: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger(__name__).info("config:\n%s", config.describe())
    from peer.daemon import PeerDaemon  # imports torch: only once the config is valid

    # From here on, SIGTERM/SIGINT/SIGHUP mean "leave cleanly", also while
    # the daemon loads its workload, joins or waits for other members.
    leave = threading.Event()
    started: list[PeerDaemon] = []

    def on_signal(signum, frame):
        leave.set()
        for daemon in started:
            daemon.request_leave()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        daemon = PeerDaemon(config, security)
        started.append(daemon)
        if leave.is_set():
            daemon.request_leave()
        daemon.start(
            announce=lambda: print(
                f"peer {daemon.member_id} listening on {daemon.address}", flush=True
            )
        )
    except (InsecureListenError, ValueError, OSError) as error:
        print(f"dasgd-peer: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"dasgd-peer: bootstrap refused us: {error.details()}", file=sys.stderr)
        return 2
    daemon.wait()
    daemon.shutdown()
    if daemon.trainer.failure is not None:
        print(f"dasgd-peer: training loop failed: {daemon.trainer.failure!r}", file=sys.stderr)
        return 1
    return 0


def _format_status(status: peer_pb2.StatusResponse) -> str:
    s = status.staleness
    if status.resumed_step:
        origin = f"resumed from its checkpoint at step {status.resumed_step}"
    elif status.warm_started_from:
        origin = f"warm-started from {status.warm_started_from}"
    else:
        origin = "started from the initial model"
    checkpoint = (
        f"; last checkpoint at step {status.checkpoint_step}" if status.checkpoint_step else ""
    )
    lines = [
        f"peer      {status.id}  run {status.run_id}  at {status.address}  ({status.state})",
        f"start     {origin}, accuracy {status.initial_accuracy:.4f} before its first step"
        f"{checkpoint}",
        f"training  {status.workload} / {status.strategy}: step {status.step}, "
        f"loss {status.loss:.4f}, accuracy {status.accuracy:.4f}, "
        f"{status.samples_per_s:.0f} samples/s",
        f"updates   applied {status.updates_applied}, rejected {status.updates_rejected}, "
        f"discarded {status.updates_discarded}; "
        f"bytes sent {status.bytes_sent}, received {status.bytes_received}",
        f"staleness avg {s.avg:.2f}  max {s.max}  p50 {s.p50:.1f}  p95 {s.p95:.1f}  "
        f"p99 {s.p99:.1f}  (n={s.count})",
        _format_bootstrap(status),
        "",
        f"{'neighbor':<14}{'address':<22}{'queue':>6}{'sent':>8}{'applied':>9}"
        f"{'dropped':>9}{'coalesced':>10}{'errors':>8}{'resent':>8}{'stale avg':>10}{'max':>6}",
    ]
    for n in status.neighbors:
        lines.append(
            f"{n.id:<14}{n.address:<22}{n.queue_depth:>6}{n.updates_sent:>8}"
            f"{n.updates_applied:>9}{n.dropped:>9}{n.coalesced:>10}{n.send_errors:>8}{n.resent:>8}"
            f"{n.staleness.avg:>10.2f}{n.staleness.max:>6}"
        )
    return "\n".join(lines)


def _format_bootstrap(status: peer_pb2.StatusResponse, now: float | None = None) -> str:
    line = f"bootstrap {status.bootstrap or '-'}"
    if status.bootstrap_reachable:
        return f"{line} reachable (membership version {status.membership_version})"
    if status.state == "STARTING" and not status.bootstrap_unreachable_since:
        return f"{line} not asked yet"
    since = time.time() if now is None else now
    gone = since - status.bootstrap_unreachable_since if status.bootstrap_unreachable_since else 0
    why = f" ({status.bootstrap_error})" if status.bootstrap_error else ""
    hint = (
        "training with the neighbors it knows, joining when it answers"
        if status.bootstrap_ever_joined
        else "never reached since start: is --bootstrap right? training with the peers it "
        "can find meanwhile"
    )
    return f"{line} UNREACHABLE for {gone:.0f} s{why}: {hint}"


def cmd_status(args: argparse.Namespace) -> int:
    with _client_channel(args) as channel:
        status = peer_pb2_grpc.PeerStub(channel).Status(
            peer_pb2.StatusRequest(), timeout=args.timeout
        )
    if args.json:
        print(json.dumps(as_plain_dict(status), indent=2))
    else:
        print(_format_status(status))
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    with _client_channel(args) as channel:
        response = peer_pb2_grpc.PeerStub(channel).ListPeers(
            peer_pb2.ListPeersRequest(), timeout=args.timeout
        )
    if args.json:
        print(json.dumps([as_plain_dict(m) for m in response.members], indent=2))
    else:
        for m in sorted(response.members, key=lambda m: m.id):
            print(f"{m.id:<14}{m.address:<24}{m.run_id}")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    with _client_channel(args) as channel:
        peer_pb2_grpc.PeerStub(channel).Leave(peer_pb2.LeaveNowRequest(), timeout=args.timeout)
    print(f"{args.peer} is leaving")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from peer.local import run_local

    return run_local(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dasgd-peer", description="Decentralized training peer (no parameter server)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a peer daemon")
    add_flags(run)
    run.set_defaults(func=cmd_run)

    for name, func, help_text in (
        ("status", cmd_status, "show a running peer's status"),
        ("peers", cmd_peers, "list the members a running peer knows"),
        ("leave", cmd_leave, "ask a running peer to shut down gracefully"),
    ):
        p = sub.add_parser(name, help=help_text)
        _client_security_flags(p)
        if name in ("status", "peers"):
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)

    local = sub.add_parser(
        "local", help="start a bootstrap and N peers on loopback and train to a target"
    )
    local.add_argument("--peers", type=int, default=4, help="peer processes (default 4)")
    local.add_argument(
        "--target-accuracy",
        type=float,
        default=0.95,
        help="stop once every peer reached this test accuracy (default 0.95; 0: no target, "
        "train until --max-seconds)",
    )
    local.add_argument(
        "--max-seconds", type=float, default=120.0, help="stop after this long (default 120)"
    )
    local.add_argument("--summary-json", default="", help="write the summary here")
    local.add_argument("--plot", default="", help="write a PNG of accuracy over time here")
    local.add_argument("--slowdowns", default="", help="per-peer step-delay factors, e.g. 4,1,1,1")
    local.add_argument("--ttl", type=float, default=5.0, help="bootstrap lease TTL")
    local.add_argument("--quiet", action="store_true", help="no live progress")
    local.add_argument("--log-dir", default="", help="keep each daemon's log here")
    local.add_argument(
        "--spawn",
        choices=("fork", "exec"),
        default="fork" if hasattr(os, "fork") else "exec",
        help="fork: peers are forked from one process that imported torch once (fast "
        "start-up); exec: each peer is a fresh interpreter",
    )
    add_flags(
        local,
        exclude=(
            "bootstrap",
            "listen",
            "advertise",
            "shard",
            "slowdown",
            "member_id",
            "metrics_port",
        ),
    )
    local.set_defaults(func=cmd_local)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except grpc.RpcError as error:
        print(f"dasgd-peer: {error.code().name}: {error.details()}", file=sys.stderr)
        hint = _hint(error.code(), args)
        if hint:
            print(f"dasgd-peer: {hint}", file=sys.stderr)
        return 1


def _hint(code: grpc.StatusCode, args: argparse.Namespace) -> str:
    """What to try next when a client command (status, peers, leave) fails."""
    if not hasattr(args, "peer"):  # `local` or `run`: no --peer to point at
        return ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "the peer wants the run's token: pass --token-file"
    if code == grpc.StatusCode.UNAVAILABLE:
        if not args.tls_ca:
            return (
                f"is a peer running at {args.peer}? If it uses TLS, pass --tls-ca "
                "(and --tls-cert/--tls-key if it requires client certificates)"
            )
        if not args.tls_cert:
            return (
                f"is a peer running at {args.peer}, with a certificate from that CA whose "
                "name matches the host? If it requires client certificates (mutual TLS), "
                "pass --tls-cert/--tls-key"
            )
    return ""


if __name__ == "__main__":
    threading.current_thread().name = "main"
    sys.exit(main())
