"""The manager's state in SQLite (WAL): devices, packages, deployments, telemetry.

One connection shared under a lock: the MQTT thread, the rollout ticker and
the HTTP handlers all make short transactions, and WAL lets readers (the
CLI, a backup) look while the manager writes. Duplicate telemetry and events
are dropped by the primary key ``(device, stream, seq)``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.protocol import DeploymentState, Presence, sql_in

__all__ = ["FleetDB"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    online INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    profile TEXT,
    grp TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    models TEXT NOT NULL DEFAULT '{}',
    agent_version TEXT,
    deployment_id TEXT
);
CREATE TABLE IF NOT EXISTS packages (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    signer TEXT,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL REFERENCES packages(sha256),
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,            -- running, paused, succeeded, completed_with_failures,
                                    -- completed_with_offline, aborted, superseded
    reason TEXT,
    wave INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_devices (
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    device TEXT NOT NULL,
    wave INTEGER NOT NULL,
    state TEXT NOT NULL,            -- pending, in_progress, succeeded, failed, timed_out, skipped,
                                    -- offline, superseded, rolling_back, rolled_back
    phase TEXT,                     -- the device's last event (downloading, swapped, ...)
    previous_sha256 TEXT,
    previous_version TEXT,
    started REAL,
    finished REAL,
    step TEXT,
    reason TEXT,
    PRIMARY KEY (deployment_id, device)
);
CREATE TABLE IF NOT EXISTS telemetry (
    device TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    ts REAL NOT NULL, received REAL NOT NULL,
    system TEXT NOT NULL, queue_depth INTEGER, queue_dropped INTEGER,
    PRIMARY KEY (device, stream, seq)
);
CREATE TABLE IF NOT EXISTS telemetry_models (
    device TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, ts REAL NOT NULL,
    inferences INTEGER NOT NULL, errors INTEGER NOT NULL, latency TEXT,
    PRIMARY KEY (device, stream, seq, model)
);
CREATE INDEX IF NOT EXISTS telemetry_models_by_model ON telemetry_models (model, version, ts);
-- The time-window queries (GET /api/v1/telemetry) and the retention pruning search by ts.
CREATE INDEX IF NOT EXISTS telemetry_models_by_ts ON telemetry_models (ts);
CREATE INDEX IF NOT EXISTS telemetry_by_ts ON telemetry (ts);
CREATE INDEX IF NOT EXISTS telemetry_by_received ON telemetry (received);
CREATE TABLE IF NOT EXISTS events (
    device TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    ts REAL NOT NULL, deployment_id TEXT NOT NULL, state TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Retention: what is pruned, and by which time column (received: the manager's clock, used where
# stored; ts: the device's clock, the only one telemetry_models and events have).
_PRUNE = (
    ("telemetry", "received"),
    ("telemetry_models", "ts"),
    ("events", "ts"),
)
_PRUNE_BATCH = 5000  # rows per transaction, so ingestion is never blocked for long


class FleetDB:
    """Thin, thread-safe access to the manager's tables; rows come back as dicts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed row survives a crash of the manager; a power cut may
        # lose the last moments, which devices resend (they keep rows until PUBACK).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (serialised with every other user of this object)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def meta(self, key: str, default: str) -> str:
        """A value of the ``meta`` table, set to ``default`` the first time it is asked for."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, default))
            return str(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()["value"])

    def prune(self, before: float) -> dict[str, int]:
        """Delete telemetry and events older than ``before`` (epoch seconds); rows deleted per table.

        Events of deployments still running or paused are kept whatever their age. Deleted in
        batches of a few thousand rows, each its own short transaction.
        """
        deleted: dict[str, int] = {}
        for table, column in _PRUNE:
            keep = (
                " AND deployment_id NOT IN (SELECT id FROM deployments WHERE state IN "
                f"{sql_in(DeploymentState.active())})"
                if table == "events"
                else ""
            )
            total = 0
            while True:
                with self.tx() as db:
                    n = db.execute(
                        f"DELETE FROM {table} WHERE rowid IN "  # table and column: the fixed _PRUNE names
                        f"(SELECT rowid FROM {table} WHERE {column} < ?{keep} LIMIT ?)",
                        (before, _PRUNE_BATCH),
                    ).rowcount
                total += n
                if n < _PRUNE_BATCH:
                    break
            deleted[table] = total
        return deleted

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- devices ---

    def upsert_device(self, status: Any) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute(
                """INSERT INTO devices (id, online, first_seen, last_seen, profile, grp, tags, models,
                       agent_version, deployment_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET online=excluded.online, last_seen=excluded.last_seen,
                       profile=COALESCE(excluded.profile, profile), grp=COALESCE(excluded.grp, grp),
                       tags=excluded.tags, models=excluded.models,
                       agent_version=excluded.agent_version, deployment_id=excluded.deployment_id""",
                (
                    status.device,
                    int(status.state == Presence.ONLINE),
                    now,
                    now,
                    status.profile,
                    status.group,
                    json.dumps(status.tags),
                    json.dumps(status.models),
                    status.agent_version,
                    status.deployment_id,
                ),
            )

    def devices(self) -> list[dict[str, Any]]:
        return [_device_row(r) for r in self.query("SELECT * FROM devices ORDER BY id")]

    def device(self, device_id: str) -> dict[str, Any] | None:
        r = self.one("SELECT * FROM devices WHERE id=?", (device_id,))
        return None if r is None else _device_row(r)


def _stored_json(text: Any, kind: type, default: Any) -> Any:
    """A JSON column as ``kind``, or ``default`` when it holds anything else: readers never trust it."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return default
    return value if isinstance(value, kind) else default


def _device_row(r: dict[str, Any]) -> dict[str, Any]:
    """A registry row with its JSON columns decoded; malformed stored entries are left out."""
    tags = _stored_json(r["tags"], list, [])
    r["tags"] = [t for t in tags if isinstance(t, str)]
    models = _stored_json(r["models"], dict, {})
    r["models"] = {
        name: m
        for name, m in models.items()
        if isinstance(m, dict) and isinstance(m.get("version"), str) and isinstance(m.get("sha256"), str)
    }
    r["online"] = bool(r["online"])
    for key in ("profile", "grp", "agent_version", "deployment_id"):
        if not isinstance(r.get(key), str):
            r[key] = None
    return r
