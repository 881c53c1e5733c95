"""SQLite persistence of the member list (`--state PATH`).

Without it a restarted bootstrap forgets every run, and each peer finds out
only when its next heartbeat is refused and it joins again. With it the
members are back at once and keep their ids and the run keeps counting
versions where it stopped.

One transaction per change, WAL journal: a crash loses at most the change
being written and never leaves a half-written one. `synchronous=NORMAL`
keeps a change across a crash of the process; a power loss may drop the last
few, which peers repair by joining again.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import MappingProxyType

from bootstrap.registry import MemberRecord, StoredRun, StoredState

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    run_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    address TEXT NOT NULL,
    labels TEXT NOT NULL,
    joined_at REAL NOT NULL,
    PRIMARY KEY (run_id, member_id)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class SqliteStore:
    """The registry's `Store` in one SQLite file.

    Only called with the registry's lock held, so one connection shared by
    the RPC and expiry threads is safe.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            found = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if found not in (0, SCHEMA_VERSION):
                raise OSError(
                    f"state file {self.path} has schema version {found}, this bootstrap "
                    f"reads {SCHEMA_VERSION}: use another --state file"
                )
            with self._conn:
                self._conn.executescript(_SCHEMA)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as error:
            raise OSError(f"cannot use state file {self.path}: {error}") from error

    def load(self) -> StoredState:
        runs: dict[str, list[MemberRecord]] = {}
        rows = self._conn.execute(
            "SELECT run_id, member_id, address, labels, joined_at FROM members "
            "ORDER BY run_id, rowid"
        )
        for run_id, member_id, address, labels, joined_at in rows:
            runs.setdefault(run_id, []).append(
                MemberRecord(
                    id=member_id,
                    address=address,
                    run_id=run_id,
                    labels=MappingProxyType(json.loads(labels)),
                    joined_at=joined_at,
                    last_seen=joined_at,
                )
            )
        versions = dict(self._conn.execute("SELECT run_id, version FROM runs"))
        high_water = self._conn.execute(
            "SELECT value FROM meta WHERE key = 'high_water'"
        ).fetchone()
        return StoredState(
            runs={
                run_id: StoredRun(versions.get(run_id, 0), tuple(members))
                for run_id, members in runs.items()
            },
            high_water=high_water[0] if high_water else 0,
        )

    def put_member(self, member: MemberRecord, version: int) -> None:
        with self._conn:
            self._conn.execute(
                "INSERT INTO members (run_id, member_id, address, labels, joined_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, member_id) DO UPDATE SET "
                "address = excluded.address, labels = excluded.labels, "
                "joined_at = excluded.joined_at",
                (
                    member.run_id,
                    member.id,
                    member.address,
                    json.dumps(dict(member.labels), sort_keys=True),
                    member.joined_at,
                ),
            )
            self._set_version(member.run_id, version)

    def remove_member(self, run_id: str, member_id: str, version: int) -> None:
        with self._conn:
            self._conn.execute(
                "DELETE FROM members WHERE run_id = ? AND member_id = ?", (run_id, member_id)
            )
            left = self._conn.execute(
                "SELECT 1 FROM members WHERE run_id = ? LIMIT 1", (run_id,)
            ).fetchone()
            if left:
                self._set_version(run_id, version)
            else:
                self._conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
                self._raise_high_water(version)

    def close(self) -> None:
        self._conn.close()

    def _set_version(self, run_id: str, version: int) -> None:
        self._conn.execute(
            "INSERT INTO runs (run_id, version) VALUES (?, ?) "
            "ON CONFLICT (run_id) DO UPDATE SET version = excluded.version",
            (run_id, version),
        )
        self._raise_high_water(version)

    def _raise_high_water(self, version: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ('high_water', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            (version,),
        )
