"""`dasgd-bootstrap run`: the membership daemon.

Every option also reads a `DASGD_*` environment variable (named in --help),
so systemd units and containers can configure it without building command
lines; a flag given on the command line wins over the variable.

Exit status: 0 after SIGTERM/SIGINT and a clean stop; 2 for a configuration
the daemon refuses (a bad flag value, plaintext beyond loopback); 1 when it
cannot start with what it was given (a file it cannot read, a port it
cannot bind).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from bootstrap.registry import DEFAULT_TTL_S
from bootstrap.service import BootstrapDaemon
from rpc import Security

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dasgd-bootstrap",
        description="Membership service of a DASGD peer network: keeps who is in each run.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="serve the Membership gRPC service",
        description="Serve Membership, grpc.health.v1 and reflection until SIGTERM/SIGINT.",
    )
    run.add_argument(
        "--listen",
        default=environ.get("DASGD_BOOTSTRAP_LISTEN"),
        metavar="HOST:PORT",
        help="address to bind; port 0 lets the system pick [env DASGD_BOOTSTRAP_LISTEN]",
    )
    run.add_argument(
        "--ttl",
        type=float,
        default=environ.get("DASGD_TTL", str(DEFAULT_TTL_S)),
        metavar="SECONDS",
        help="lease of a member without heartbeats (default %(default)s) [env DASGD_TTL]",
    )
    run.add_argument(
        "--state",
        default=environ.get("DASGD_BOOTSTRAP_STATE"),
        metavar="PATH",
        help="SQLite file that keeps the member list across restarts "
        "(default: memory only) [env DASGD_BOOTSTRAP_STATE]",
    )
    run.add_argument(
        "--token-file",
        default=environ.get("DASGD_TOKEN_FILE"),
        metavar="F",
        help="file holding the run's shared secret, required from every client "
        "[env DASGD_TOKEN_FILE]",
    )
    run.add_argument(
        "--tls-cert",
        default=environ.get("DASGD_TLS_CERT"),
        metavar="F",
        help="PEM certificate chain [env DASGD_TLS_CERT]",
    )
    run.add_argument(
        "--tls-key",
        default=environ.get("DASGD_TLS_KEY"),
        metavar="F",
        help="PEM private key [env DASGD_TLS_KEY]",
    )
    run.add_argument(
        "--tls-ca",
        default=environ.get("DASGD_TLS_CA"),
        metavar="F",
        help="PEM CA bundle; clients must then present a certificate it signed "
        "(mutual TLS) [env DASGD_TLS_CA]",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow plaintext on a non-loopback address, for trusted networks [env DASGD_INSECURE]",
    )
    run.add_argument(
        "--log-level",
        default=environ.get("DASGD_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="(default %(default)s) [env DASGD_LOG_LEVEL]",
    )
    args = parser.parse_args(argv)
    if args.insecure is None:
        flag = environ.get("DASGD_INSECURE", "").strip().lower()
        if flag not in _TRUE | _FALSE:
            run.error(f"DASGD_INSECURE={flag!r} is not a boolean (use 1/0, true/false)")
        args.insecure = flag in _TRUE
    if not args.listen:
        run.error("--listen HOST:PORT is required (or set DASGD_BOOTSTRAP_LISTEN)")
    if args.ttl <= 0:
        run.error(f"--ttl must be positive, got {args.ttl}")
    return args


def _serve(args: argparse.Namespace) -> int:
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            security = Security.from_files(
                token_file=args.token_file,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                tls_ca=args.tls_ca,
                insecure=args.insecure,
            )
            daemon = BootstrapDaemon(
                args.listen, security=security, ttl=args.ttl, state_path=args.state
            ).start()
        except (ValueError, OSError) as error:  # exit 2 for any start-up error, as the peer
            print(f"dasgd-bootstrap: {error}", file=sys.stderr)
            return 2
        host = args.listen.rpartition(":")[0]
        print(f"bootstrap listening on {host}:{daemon.port}", flush=True)
        stop_requested.wait()
        daemon.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, os.environ)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
