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
-- The console (fleet/console): alerts devices report in their status, the operators' actions,
-- and indexes for its paged, filtered device table and per-device pages.
CREATE TABLE IF NOT EXISTS device_alerts (
    device TEXT NOT NULL, alert TEXT NOT NULL, since REAL NOT NULL,
    PRIMARY KEY (device, alert)
);
CREATE TABLE IF NOT EXISTS audit (
    ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS devices_by_online ON devices (online, id);
CREATE INDEX IF NOT EXISTS devices_by_profile ON devices (profile, id);
CREATE INDEX IF NOT EXISTS devices_by_grp ON devices (grp, id);
CREATE INDEX IF NOT EXISTS devices_by_last_seen ON devices (last_seen);
CREATE INDEX IF NOT EXISTS deployment_devices_by_device ON deployment_devices (device);
CREATE INDEX IF NOT EXISTS events_by_deployment ON events (deployment_id, ts);
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
    """Thin, thread-safe access to the manager's tables; rows come back as dicts.

    The SQLite engine; :class:`fleet.manager.pg.PgFleetDB` is the PostgreSQL one, with the same
    interface (``--database postgresql://...``; :func:`fleet.manager.engines.open_database`).
    """

    engine = "sqlite"

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
        from fleet.manager.migrations import migrate

        migrate(self)  # versioned steps after the original schema (fleet.manager.migrations)

    @contextmanager
    def tx(self, exclusive: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (serialised with every other user of this object).

        ``exclusive=False`` (telemetry batches) matters to PostgreSQL only: SQLite has one writer.
        """
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

    @staticmethod
    def json_num(column: str, field: str) -> str:
        """SQL: ``column``'s JSON ``field`` when it is a number, else NULL (also for malformed JSON)."""
        path = f"'$.{field}'"
        return (
            f"(CASE WHEN json_valid({column}) THEN CASE WHEN json_type({column}, {path}) IN ('integer', 'real') "
            f"THEN json_extract({column}, {path}) END END)"
        )

    def ensure_partitions(self, stamps: Any) -> None:
        """PostgreSQL creates day partitions ahead of telemetry rows; SQLite has none."""

    # --- devices ---

    def upsert_device(self, status: Any) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute(
                # The alias makes the statement valid on PostgreSQL too (SQLite takes it since 3.24).
                """INSERT INTO devices AS d (id, online, first_seen, last_seen, profile, grp, tags, models,
                       agent_version, deployment_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET online=excluded.online, last_seen=excluded.last_seen,
                       profile=COALESCE(excluded.profile, d.profile), grp=COALESCE(excluded.grp, d.grp),
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

    # --- console reads and writes (fleet/console); plain SQL, for SQLite and PostgreSQL alike ---

    def set_device_alerts(self, device_id: str, alerts: list[str]) -> None:
        """The alerts a device's status reports now; each keeps the time it was first seen."""
        now, wanted = time.time(), set(alerts)
        with self.tx() as db:
            rows = db.execute("SELECT alert FROM device_alerts WHERE device=?", (device_id,)).fetchall()
            known = {r["alert"] for r in rows}
            for alert in known - wanted:
                db.execute("DELETE FROM device_alerts WHERE device=? AND alert=?", (device_id, alert))
            for alert in wanted - known:
                db.execute("INSERT INTO device_alerts VALUES (?, ?, ?)", (device_id, alert, now))

    def device_alerts(self, device_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        if device_id is not None:
            return self.query("SELECT * FROM device_alerts WHERE device=? ORDER BY alert", (device_id,))
        return self.query("SELECT * FROM device_alerts ORDER BY since DESC LIMIT ?", (limit,))

    def device_page(
        self,
        offset: int = 0,
        limit: int = 50,
        *,
        search: str = "",
        online: bool | None = None,
        profile: str | None = None,
        group: str | None = None,
        tag: str | None = None,
        model: str | None = None,
        sort: str = "id",
    ) -> tuple[int, list[dict[str, Any]]]:
        """One page of the registry, filtered (indexed columns; tags and models by their JSON text)
        and sorted by ``sort`` (id, last_seen, profile, grp or online; ``-`` first: descending)."""
        where, args = ["1=1"], []
        if search:
            where.append("id LIKE ? ESCAPE '\\'")
            args.append(f"%{_like(search)}%")
        if online is not None:
            where.append("online=?")
            args.append(int(online))
        if profile:
            where.append("profile=?")
            args.append(profile)
        if group:
            where.append("grp=?")
            args.append(group)
        if tag:
            where.append("tags LIKE ? ESCAPE '\\'")
            args.append(f"%{_like(json.dumps(tag))}%")
        if model:
            where.append("models LIKE ? ESCAPE '\\'")
            args.append(f"%{_like(json.dumps(model))}:%")
        column = sort.lstrip("-")
        if column not in ("id", "last_seen", "profile", "grp", "online"):
            raise ValueError(f"sort must be one of id, last_seen, profile, grp, online, got {sort[:20]!r}")
        order = f"{column} {'DESC' if sort.startswith('-') else 'ASC'}" + (", id" if column != "id" else "")
        clause = " AND ".join(where)
        total = self.one(f"SELECT COUNT(*) AS n FROM devices WHERE {clause}", tuple(args))
        rows = self.query(
            f"SELECT * FROM devices WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return int(total["n"] if total else 0), [_device_row(r) for r in rows]

    def device_facets(self) -> list[dict[str, Any]]:
        """Devices counted (``n``) by online flag, profile, group, tags, models and agent version (the
        overview): one row per distinct combination, so a large fleet's JSON is decoded once per kind."""
        rows = self.query(
            "SELECT online, profile, grp, tags, models, agent_version, COUNT(*) AS n FROM devices "
            "GROUP BY online, profile, grp, tags, models, agent_version"
        )
        out = []
        for r in rows:
            n = int(r.pop("n"))
            row = _device_row({**r, "id": None, "first_seen": None, "last_seen": None, "deployment_id": None})
            row["n"] = n
            out.append(row)
        return out

    def resources_of(self, device_ids: list[str], since: float) -> list[dict[str, Any]]:
        """Raw system telemetry of some devices received since ``since`` (the device table's page)."""
        if not device_ids:
            return []
        marks = ", ".join("?" for _ in device_ids)
        return self.query(
            f"SELECT device, ts, system, queue_dropped FROM telemetry WHERE received >= ? AND device IN ({marks})",
            (since, *device_ids),
        )

    def queue_drops(self, since: float, limit: int = 500) -> list[dict[str, Any]]:
        """Devices whose outbox reported dropped messages in telemetry received since ``since``."""
        return self.query(
            "SELECT device, MAX(queue_dropped) AS total FROM telemetry WHERE received >= ? "
            "GROUP BY device HAVING MAX(queue_dropped) > 0 ORDER BY device LIMIT ?",
            (since, limit),
        )

    def system_series(self, device_id: str, since: float, limit: int = 20000) -> list[dict[str, Any]]:
        return self.query(
            "SELECT ts, system, queue_depth, queue_dropped FROM telemetry WHERE device=? AND received >= ? "
            "ORDER BY ts LIMIT ?",
            (device_id, since, limit),
        )

    def model_rows(
        self, since: float, device_id: str | None = None, model: str | None = None, limit: int = 200000
    ) -> list[dict[str, Any]]:
        where, args = ["ts >= ?"], [since]
        if device_id is not None:
            where.append("device=?")
            args.append(device_id)
        if model is not None:
            where.append("model=?")
            args.append(model)
        return self.query(
            "SELECT device, ts, model, version, inferences, errors, latency FROM telemetry_models WHERE "
            f"{' AND '.join(where)} ORDER BY ts LIMIT ?",
            (*args, limit),
        )

    def device_events(self, device_id: str, limit: int = 200) -> list[dict[str, Any]]:
        return self.query(
            "SELECT ts, deployment_id, state, body FROM events WHERE device=? ORDER BY ts DESC LIMIT ?",
            (device_id, limit),
        )

    def deployment_events(self, dep_id: str, limit: int = 500) -> list[dict[str, Any]]:
        """Events of a deployment and of its rollback (``<id>.rollback``), newest first."""
        return self.query(
            "SELECT device, ts, deployment_id, state, body FROM events WHERE deployment_id IN (?, ?) "
            "ORDER BY ts DESC LIMIT ?",
            (dep_id, f"{dep_id}.rollback", limit),
        )

    def device_deployments(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return self.query(
            "SELECT dd.*, d.model, d.version, d.state AS deployment_state, d.created FROM deployment_devices dd "
            "JOIN deployments d ON d.id = dd.deployment_id WHERE dd.device=? ORDER BY d.created DESC LIMIT ?",
            (device_id, limit),
        )

    def deployment_summaries(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest deployments with their per-state device counts (no device rows)."""
        deps = self.query(
            "SELECT id, sha256, model, version, state, reason, wave, created, updated FROM deployments "
            "ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        if deps:
            marks = ", ".join("?" for _ in deps)
            counts: dict[str, dict[str, int]] = {}
            for r in self.query(
                "SELECT deployment_id, state, COUNT(*) AS n FROM deployment_devices "
                f"WHERE deployment_id IN ({marks}) GROUP BY deployment_id, state",
                tuple(d["id"] for d in deps),
            ):
                counts.setdefault(r["deployment_id"], {})[r["state"]] = int(r["n"])
            for d in deps:
                d["counts"] = counts.get(d["id"], {})
        return deps

    def add_audit(self, actor: str, action: str, target: str, detail: str = "") -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO audit (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                (time.time(), actor, action, target, detail[:2000]),
            )

    def audit(self, limit: int = 200, target: str | None = None) -> list[dict[str, Any]]:
        if target is not None:
            return self.query(
                "SELECT * FROM audit WHERE target=? ORDER BY ts DESC LIMIT ?", (target, limit)
            )
        return self.query("SELECT * FROM audit ORDER BY ts DESC LIMIT ?", (limit,))

    def change_marks(self) -> dict[str, Any]:
        """Cheap figures that change when devices, deployments or telemetry do (the console's SSE)."""
        devices = self.one("SELECT COUNT(*) AS n, SUM(online) AS online, MAX(last_seen) AS seen FROM devices")
        deps = self.one("SELECT COUNT(*) AS n, MAX(updated) AS updated FROM deployments")
        events = self.one("SELECT MAX(ts) AS ts FROM events")
        alerts = self.one("SELECT COUNT(*) AS n, MAX(since) AS since FROM device_alerts")
        return {
            "devices": [devices and devices["n"], devices and devices["online"], alerts and alerts["n"],
                        alerts and alerts["since"]],
            "telemetry": devices and devices["seen"],
            "deployments": [deps and deps["n"], deps and deps["updated"], events and events["ts"]],
        }


def _like(text: str) -> str:
    """``text`` for a LIKE pattern (ESCAPE '\\'): its own wildcards matched literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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
