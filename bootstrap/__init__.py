"""The bootstrap daemon: keeps the member list of each run and nothing else.

`registry` holds the rules (leases, versions, caps) as plain Python,
`store` persists them in SQLite, `service` serves them over gRPC and
`cli` is `dasgd-bootstrap`.
"""

from bootstrap.registry import (
    DEFAULT_TTL_S,
    EventKind,
    InvalidArgument,
    MemberEvent,
    MemberRecord,
    Registry,
    RegistryError,
    ResourceExhausted,
    Snapshot,
    Subscription,
    UnknownMember,
)
from bootstrap.service import BootstrapDaemon, MembershipServicer
from bootstrap.store import SqliteStore

__all__ = [
    "DEFAULT_TTL_S",
    "BootstrapDaemon",
    "EventKind",
    "InvalidArgument",
    "MemberEvent",
    "MemberRecord",
    "MembershipServicer",
    "Registry",
    "RegistryError",
    "ResourceExhausted",
    "Snapshot",
    "SqliteStore",
    "Subscription",
    "UnknownMember",
]
