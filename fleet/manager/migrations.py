"""Versioned schema migrations for both engines (SQLite and PostgreSQL).

The schema is one list of numbered steps (:data:`MIGRATIONS`), each with the statements of each
engine. ``schema_version`` holds one row per step applied. :func:`migrate` runs at every start of
a manager, inside one serialised transaction (``BEGIN IMMEDIATE`` on SQLite, an advisory
transaction lock on PostgreSQL, so two instances starting together migrate once): a manager
started against a database at an older schema brings it up to date; one at a *newer* schema than
this code knows is refused (an older manager must not write into a schema it does not understand).

A SQLite database made before versioning (the tables exist, ``schema_version`` does not) is at
version 1: step 1 is the original schema, all ``IF NOT EXISTS``, so applying it changes nothing.

Steps:

1. the original tables (devices, packages, deployments, deployment_devices, telemetry,
   telemetry_models, events, meta). On PostgreSQL ``telemetry`` and ``telemetry_models`` are
   partitioned by day on the device's ``ts`` (the partition key is part of their primary keys,
   which is how PostgreSQL enforces uniqueness across partitions), with a default partition for
   rows outside the window that gets daily partitions (see :mod:`fleet.manager.pg`); the unique
   ``(device, stream, seq)`` of a telemetry window is ``telemetry_keys``, not partitioned.
2. ``leases`` (the rollout ticker's leader lease) and ``package_chunks`` (package files stored in
   the database, 1 MiB a row).
3. the console's tables (``device_alerts``, ``audit``) and indexes (on SQLite also in the original
   script, which every start runs: ``IF NOT EXISTS``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fleet.errors import FleetError

__all__ = ["LATEST", "MIGRATIONS", "Migration", "SchemaTooNewError", "current_version", "migrate"]

# Serialises migrations (and partition creation) between PostgreSQL instances.
PG_MIGRATION_LOCK = 0x45444745_0001  # "EDGE", 1


class SchemaTooNewError(FleetError):
    """The database was migrated by a newer manager than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


_PG_V1 = (
    """CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY,
        online BIGINT NOT NULL DEFAULT 0,
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        profile TEXT,
        grp TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        models TEXT NOT NULL DEFAULT '{}',
        agent_version TEXT,
        deployment_id TEXT)""",
    """CREATE TABLE IF NOT EXISTS packages (
        sha256 TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        size BIGINT NOT NULL,
        signer TEXT,
        added DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS deployments (
        id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL REFERENCES packages(sha256),
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        wave BIGINT NOT NULL DEFAULT 0,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS deployment_devices (
        deployment_id TEXT NOT NULL REFERENCES deployments(id),
        device TEXT NOT NULL,
        wave BIGINT NOT NULL,
        state TEXT NOT NULL,
        phase TEXT,
        previous_sha256 TEXT,
        previous_version TEXT,
        started DOUBLE PRECISION,
        finished DOUBLE PRECISION,
        step TEXT,
        reason TEXT,
        PRIMARY KEY (deployment_id, device))""",
    """CREATE TABLE IF NOT EXISTS telemetry (
        device TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL,
        ts DOUBLE PRECISION NOT NULL, received DOUBLE PRECISION NOT NULL,
        system JSONB NOT NULL, queue_depth BIGINT, queue_dropped BIGINT,
        PRIMARY KEY (device, stream, seq, ts)) PARTITION BY RANGE (ts)""",
    "CREATE TABLE IF NOT EXISTS telemetry_default PARTITION OF telemetry DEFAULT",
    # (device, stream, seq) once, whatever the ts: what drops duplicates across instances and
    # partitions (a partitioned table's unique keys must include its partition key, ts).
    """CREATE TABLE IF NOT EXISTS telemetry_keys (
        device TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL,
        received DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (device, stream, seq))""",
    "CREATE INDEX IF NOT EXISTS telemetry_keys_by_received ON telemetry_keys (received)",
    """CREATE TABLE IF NOT EXISTS telemetry_models (
        device TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL,
        model TEXT NOT NULL, version TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL,
        inferences BIGINT NOT NULL, errors BIGINT NOT NULL, latency TEXT,
        PRIMARY KEY (device, stream, seq, model, ts)) PARTITION BY RANGE (ts)""",
    "CREATE TABLE IF NOT EXISTS telemetry_models_default PARTITION OF telemetry_models DEFAULT",
    "CREATE INDEX IF NOT EXISTS telemetry_models_by_model ON telemetry_models (model, version, ts)",
    "CREATE INDEX IF NOT EXISTS telemetry_models_by_ts ON telemetry_models (ts)",
    "CREATE INDEX IF NOT EXISTS telemetry_by_ts ON telemetry (ts)",
    "CREATE INDEX IF NOT EXISTS telemetry_by_received ON telemetry (received)",
    """CREATE TABLE IF NOT EXISTS events (
        device TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL,
        ts DOUBLE PRECISION NOT NULL, deployment_id TEXT NOT NULL, state TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (device, stream, seq))""",
    "CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

MIGRATIONS: tuple[Migration, ...] = (
    # SQLite's step 1 is fleet.manager.db._SCHEMA (run with executescript; see _apply_sqlite).
    Migration(1, "the original tables", ("<db._SCHEMA>",), _PG_V1),
    Migration(
        2,
        "leader lease and package chunks",
        (
            (
                "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
                "expires REAL NOT NULL)"
            ),
            (
                "CREATE TABLE IF NOT EXISTS package_chunks (sha256 TEXT NOT NULL, idx INTEGER NOT NULL, "
                "data BLOB NOT NULL, PRIMARY KEY (sha256, idx))"
            ),
        ),
        (
            (
                "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
                "expires DOUBLE PRECISION NOT NULL)"
            ),
            (
                "CREATE TABLE IF NOT EXISTS package_chunks (sha256 TEXT NOT NULL, idx BIGINT NOT NULL, "
                "data BYTEA NOT NULL, PRIMARY KEY (sha256, idx))"
            ),
        ),
    ),
)
_CONSOLE = (
    (
        "CREATE TABLE IF NOT EXISTS device_alerts (device TEXT NOT NULL, alert TEXT NOT NULL, "
        "since {real} NOT NULL, PRIMARY KEY (device, alert))"
    ),
    (
        "CREATE TABLE IF NOT EXISTS audit (ts {real} NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, "
        "target TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')"
    ),
    "CREATE INDEX IF NOT EXISTS audit_by_ts ON audit (ts)",
    "CREATE INDEX IF NOT EXISTS devices_by_online ON devices (online, id)",
    "CREATE INDEX IF NOT EXISTS devices_by_profile ON devices (profile, id)",
    "CREATE INDEX IF NOT EXISTS devices_by_grp ON devices (grp, id)",
    "CREATE INDEX IF NOT EXISTS devices_by_last_seen ON devices (last_seen)",
    "CREATE INDEX IF NOT EXISTS deployment_devices_by_device ON deployment_devices (device)",
    "CREATE INDEX IF NOT EXISTS events_by_deployment ON events (deployment_id, ts)",
)
MIGRATIONS += (
    Migration(
        3,
        "console tables (device alerts, audit) and indexes",
        tuple(s.format(real="REAL") for s in _CONSOLE),
        tuple(s.format(real="DOUBLE PRECISION") for s in _CONSOLE),
    ),
)
LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL, "
    "description TEXT NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, "
    "applied DOUBLE PRECISION NOT NULL, description TEXT NOT NULL)",
}


def current_version(db: Any) -> int:
    """The highest step applied (0: an empty database)."""
    rows = db.query("SELECT MAX(version) AS v FROM schema_version")
    return int(rows[0]["v"] or 0) if rows else 0


def _refuse_newer(have: int) -> None:
    if have > LATEST:
        raise SchemaTooNewError(
            f"the database is at schema version {have}, newer than this manager's {LATEST}: upgrade the manager"
        )


def migrate(db: Any, target: int = LATEST) -> list[int]:
    """Apply the steps above the database's version up to ``target``; the versions applied.

    ``db`` is a :class:`~fleet.manager.db.FleetDB` (either engine). ``target`` below
    :data:`LATEST` is for tests (a database "made by an older manager").
    """
    engine = db.engine
    if engine == "sqlite":
        from fleet.manager.db import _SCHEMA

        with db.tx() as c:
            c.execute(_VERSION_TABLE["sqlite"])
        have = current_version(db)
        _refuse_newer(have)
        applied = []
        for m in MIGRATIONS:
            if have < m.version <= target:
                if m.version == 1:
                    db._db.executescript(
                        _SCHEMA
                    )  # IF NOT EXISTS throughout: also adopts a pre-versioning file
                    with db.tx() as c:
                        _record(c, m)
                else:
                    with db.tx() as c:
                        for stmt in m.sqlite:
                            c.execute(stmt)
                        _record(c, m)
                applied.append(m.version)
        return applied
    with db.tx() as c:
        c.execute("SELECT pg_advisory_xact_lock(?)", (PG_MIGRATION_LOCK,))
        c.execute(_VERSION_TABLE["postgresql"])
        row = c.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
        have = int(row["v"] or 0)
        _refuse_newer(have)
        applied = []
        for m in MIGRATIONS:
            if have < m.version <= target:
                for stmt in m.postgresql:
                    c.execute(stmt)
                _record(c, m)
                applied.append(m.version)
    return applied


def _record(c: Any, m: Migration) -> None:
    c.execute(
        "INSERT INTO schema_version (version, applied, description) VALUES (?, ?, ?)",
        (m.version, time.time(), m.description),
    )
