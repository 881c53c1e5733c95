"""Server and channel construction with the options chosen on purpose.

Options (both daemons):
- message size: data travels in ~1 MiB chunks (`--chunk-kib`; a chunk must
  fit one message), so 16 MiB per message is plenty and bounds what a
  hostile client can make us allocate per message;
- keepalive: a ping every 30 s on idle connections finds dead peers behind
  NATs and half-open TCP without waiting for the kernel's 2-hour timer;
- flow control: gRPC's BDP probing sizes HTTP/2 windows dynamically;
- compression: none — float tensors barely compress, and gzip would cost
  more CPU per byte than gRPC's whole transfer;
- SO_REUSEPORT off: two daemons must never silently share a port;
- concurrency: at most `max_workers` RPCs at once, more are refused with
  RESOURCE_EXHAUSTED instead of queueing behind long-lived streams.

Transfer-speed options were measured with 100 MB of float32 over loopback
(`bench/transport.py --option NAME=VALUE`, bare gRPC byte streaming and the
real Push path, interleaved rounds on this shared 2-core machine) and left
at gRPC's defaults: grpc.http2.max_frame_size=16M,
grpc.http2.write_buffer_size=8M, BDP probing off with a 16 MB lookahead, and
larger TCP reads (grpc.experimental.tcp_{min,max}_read_chunk_size 4M/16M)
all stayed within the run-to-run noise of about ±20%, and none beat the
defaults consistently. Chunk sizes from 256 KiB to 4 MiB did no better than
1 MiB either.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_COMMON_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = _COMMON_OPTIONS + [
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]
CHANNEL_OPTIONS = _COMMON_OPTIONS + [
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

# Probes (Kubernetes grpc:, grpc_health_probe) and grpcurl's listing cannot
# send a token; these methods reveal nothing but liveness and the schema.
UNAUTHENTICATED_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class InsecureListenError(ValueError):
    """A daemon was asked to listen beyond loopback without TLS."""


@dataclass(frozen=True)
class Security:
    """Auth token and TLS material, loaded once from files."""

    token: str | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_ca: bytes | None = None
    insecure: bool = False

    @classmethod
    def from_files(
        cls,
        token_file: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        insecure: bool = False,
    ) -> Security:
        token = _read(token_file, "token file").decode().strip() if token_file else None
        if token_file and not token:
            raise ValueError(f"token file {token_file} is empty")
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        security = cls(
            token=token,
            tls_cert=_read(tls_cert, "TLS certificate") if tls_cert else None,
            tls_key=_read(tls_key, "TLS key") if tls_key else None,
            tls_ca=_read(tls_ca, "TLS CA bundle") if tls_ca else None,
            insecure=insecure,
        )
        if tls_cert and tls_key:
            check_tls_files(tls_cert, tls_key, security.tls_cert, security.tls_key)
        if tls_ca:
            check_tls_ca(tls_ca)
        return security

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def describe(self) -> str:
        parts = ["token" if self.token else "no token"]
        if self.tls:
            parts.append("mTLS" if self.tls_ca else "TLS")
        else:
            parts.append("plaintext")
        return ", ".join(parts)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise OSError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _no_password() -> bytes:
    return b""  # gRPC cannot use an encrypted key; never prompt on a terminal


def check_tls_files(cert: str, key: str, cert_pem: bytes, key_pem: bytes) -> None:
    """Fails with a sentence naming the files when `key` is not the private
    key of `cert`, or either is not PEM (their contents: `cert_pem`,
    `key_pem`), instead of gRPC's later "bind" error."""
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise ValueError(f"TLS certificate {cert} is not a PEM certificate")
    if b"PRIVATE KEY-----" not in key_pem:
        raise ValueError(f"TLS key {key} is not a PEM private key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"TLS key {key} does not match certificate {cert}") from None
        raise ValueError(
            f"cannot load TLS certificate {cert} with key {key} "
            f"(PEM, unencrypted key expected): {error.reason or error}"
        ) from None


def check_tls_ca(ca: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca)
    except ssl.SSLError as error:
        raise ValueError(
            f"TLS CA bundle {ca} holds no usable PEM certificate: {error.reason or error}"
        ) from None


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def advertise_address(listen: str, port: int, toward: str) -> str:
    """The address others should dial for a server bound to `listen`.

    A specific host is its own answer. For a wildcard (0.0.0.0, ::) it is the
    local address the kernel would send from to reach `toward` (the
    bootstrap): loopback for a bootstrap on this machine, the outward
    interface for one elsewhere. Nothing is sent; 127.0.0.1 if no route."""
    host, _ = split_host_port(listen)
    if host not in WILDCARD_HOSTS:
        return join_host_port(host, port)
    try:
        target_host, target_port = split_host_port(toward)
        family, _, _, _, sockaddr = socket.getaddrinfo(
            target_host, target_port, type=socket.SOCK_DGRAM
        )[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(sockaddr)  # UDP: picks a route and a source, sends nothing
            source = probe.getsockname()[0]
    except (OSError, ValueError, IndexError):
        source = "127.0.0.1"
    return join_host_port(source, port)


def check_listen_address(address: str, security: Security) -> None:
    host, _ = split_host_port(address)
    if not is_loopback(host) and not security.tls and not security.insecure:
        raise InsecureListenError(
            f"refusing to listen on {address} without TLS: traffic would be readable and "
            "forgeable by anyone on the network. Give --tls-cert/--tls-key (and --tls-ca for "
            "mutual TLS), listen on 127.0.0.1, or pass --insecure if the network is trusted."
        )


def _cannot_listen(address: str, error: OSError) -> OSError:
    if error.errno == errno.EADDRINUSE:
        reason = "address already in use (another process listens on that port)"
    elif error.errno == errno.EADDRNOTAVAIL:
        reason = "not an address of this machine"
    elif error.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need privileges)"
    else:
        reason = error.strerror or str(error)
    failure = OSError(f"cannot listen on {address}: {reason}")
    failure.errno = error.errno
    return failure


def check_can_bind(address: str) -> None:
    """Binds (and releases) a socket on `address` the way gRPC will, so a
    taken port or a foreign address fails with its reason before gRPC tries;
    gRPC itself only reports "Failed to bind". Passes if any of the
    addresses the host resolves to can be bound, as gRPC does."""
    host, port = split_host_port(address)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        reason = f"cannot resolve {host!r} ({error.strerror})"
        raise OSError(f"cannot listen on {address}: {reason}") from None
    first: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
                return
        except OSError as error:
            first = first or error
    if first is not None:
        raise _cannot_listen(address, first)


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(_request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Checks `authorization: Bearer <token>` on every RPC but health/reflection."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        presented = metadata.get("authorization", "")
        if isinstance(presented, str):
            presented = presented.encode()
        if not hmac.compare_digest(presented, self._expected):
            reason = "missing" if not presented else "wrong"
            return _abort_handler(
                handler, f"{reason} auth token: pass the run's shared secret (--token-file)"
            )
        return handler


def _message_name(deserializer: Callable[[bytes], object]) -> str:
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request")


class StrictParsingInterceptor(grpc.ServerInterceptor):
    """Parses requests inside the handler, so bytes that are not the expected
    message get INVALID_ARGUMENT naming that message, instead of gRPC's
    INTERNAL "Exception deserializing request!" that blames the server."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer
        expected = _message_name(deserialize)

        def parse(raw: bytes, context: grpc.ServicerContext):
            try:
                return deserialize(raw)
            except Exception as error:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request is not a valid {expected} message: {error}",
                )

        if handler.request_streaming:
            name = "stream_stream" if handler.response_streaming else "stream_unary"
            behavior = getattr(handler, name)

            def parsed(request_iterator, context):
                return behavior((parse(raw, context) for raw in request_iterator), context)

        else:
            name = "unary_stream" if handler.response_streaming else "unary_unary"
            behavior = getattr(handler, name)

            def parsed(raw, context):
                return behavior(parse(raw, context), context)

        return handler._replace(request_deserializer=None, **{name: parsed})


class _TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str):
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or ()) + [self._metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def make_channel(target: str, security: Security | None = None) -> grpc.Channel:
    security = security or Security()
    if security.tls or security.tls_ca:
        creds = grpc.ssl_channel_credentials(
            root_certificates=security.tls_ca,
            private_key=security.tls_key,
            certificate_chain=security.tls_cert,
        )
        channel = grpc.secure_channel(target, creds, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    if security.token:
        channel = grpc.intercept_channel(channel, _TokenClientInterceptor(security.token))
    return channel


@dataclass
class ServerHandle:
    server: grpc.Server
    port: int
    address: str
    health: health.HealthServicer
    services: list[str]

    def set_serving(self, serving: bool) -> None:
        """Sets the whole server ("") and each of its services."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.services]:
            self.health.set(name, status)

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1.0)


def start_server(
    listen: str,
    security: Security,
    register: Callable[[grpc.Server], Sequence[str]],
    max_workers: int = 64,
) -> ServerHandle:
    """Bind, register services (`register` returns their full names), add
    health (NOT_SERVING until the caller says otherwise) and reflection."""
    check_listen_address(listen, security)
    check_can_bind(listen)
    # The token check runs first: a caller without the token learns nothing,
    # not even whether its bytes parsed.
    interceptors: list[grpc.ServerInterceptor] = (
        [TokenAuthInterceptor(security.token)] if security.token else []
    )
    interceptors.append(StrictParsingInterceptor())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=max_workers,
    )
    service_names = list(register(server))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    # grpcio returns 0 for a failed bind in some versions and raises
    # RuntimeError("Failed to bind ...") in others (1.85): both become OSError.
    try:
        if security.tls:
            creds = grpc.ssl_server_credentials(
                [(security.tls_key, security.tls_cert)],
                root_certificates=security.tls_ca,
                require_client_auth=security.tls_ca is not None,
            )
            port = server.add_secure_port(listen, creds)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        server.stop(None)
        what = " with the TLS certificate and key given" if security.tls else ""
        raise OSError(
            f"cannot listen on {listen}{what}: address already in use "
            "(or not an address of this machine)"
        )
    server.start()
    host, _ = split_host_port(listen)
    address = join_host_port(host if host not in WILDCARD_HOSTS else "127.0.0.1", port)
    log.info("listening on %s (%s)", join_host_port(host, port), security.describe())
    return ServerHandle(server, port, address, health_servicer, service_names)
