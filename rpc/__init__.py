"""gRPC plumbing shared by both daemons: server/channel options, health,
reflection, the auth token and TLS. Knows nothing of training or membership."""

from rpc.server import (
    CHANNEL_OPTIONS,
    SERVER_OPTIONS,
    Security,
    ServerHandle,
    make_channel,
    start_server,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "SERVER_OPTIONS",
    "Security",
    "ServerHandle",
    "make_channel",
    "start_server",
]
