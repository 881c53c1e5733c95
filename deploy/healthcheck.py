#!/usr/bin/env python3
"""`dasgd-healthcheck HOST:PORT [SERVICE]`: exit 0 if the daemon there
answers grpc.health.v1 with SERVING, 1 otherwise.

For Docker HEALTHCHECK and compose, which have no gRPC probe of their own
(Kubernetes uses its built-in `grpc:` probe instead). Health needs no token,
so only the plaintext case is handled: containers on a private network.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2):
        print("usage: dasgd-healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    address, service = args[0], (args[1] if len(args) == 2 else "")
    with grpc.insecure_channel(address) as channel:
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
