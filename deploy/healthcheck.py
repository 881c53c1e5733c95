#!/usr/bin/env python3
"""`dasgd-healthcheck [--server-name NAME] HOST:PORT [SERVICE]`: exit 0 if
the daemon there answers grpc.health.v1 with SERVING, 1 otherwise, 2 for a
usage error.

For Docker HEALTHCHECK and compose, which have no gRPC probe of their own
(Kubernetes uses its built-in `grpc:` probe instead). Health needs no token.

TLS follows the daemon's own environment, so the check works in the same
container without arguments of its own:
- DASGD_TLS_CERT set: connect with TLS, trusting DASGD_TLS_CA, or without it
  the daemon's certificate itself (a self-signed one);
- DASGD_TLS_CERT/DASGD_TLS_KEY are also presented as the client certificate,
  which mutual TLS (DASGD_TLS_CA on the daemon) requires;
- the certificate must name the HOST dialled (e.g. IP:127.0.0.1), or give the
  name it holds with --server-name or DASGD_HEALTHCHECK_SERVER_NAME.
A daemon given TLS on its command line (--tls-cert) rather than through
these variables is checked in plaintext, which fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

USAGE = "usage: dasgd-healthcheck [--server-name NAME] HOST:PORT [SERVICE]"


def _channel(address: str, environ: Mapping[str, str], server_name: str) -> grpc.Channel:
    cert = environ.get("DASGD_TLS_CERT")
    if not cert:
        return grpc.insecure_channel(address)
    key, ca = environ.get("DASGD_TLS_KEY"), environ.get("DASGD_TLS_CA")
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca or cert).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if key else None,
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, creds, options=options)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    server_name = environ.get("DASGD_HEALTHCHECK_SERVER_NAME", "")
    if args[:1] == ["--server-name"] and len(args) > 1:
        server_name, args = args[1], args[2:]
    if len(args) not in (1, 2) or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    address, service = args[0], (args[1] if len(args) == 2 else "")
    try:
        channel = _channel(address, environ, server_name)
    except OSError as error:
        print(f"{address}: cannot read TLS file: {error}", file=sys.stderr)
        return 1
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name} {error.details() or ''}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
