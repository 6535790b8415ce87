"""Telemetry ingestion at volume: a batch of windows stored in one transaction, for either engine.

The manager's telemetry writer thread calls :func:`store_telemetry` with up to ``batch_max``
messages and acknowledges them to the broker only after the commit. Duplicates (a device's resend,
or the broker's redelivery to another instance after a crash) are dropped by the primary keys;
the function says which windows were new, so each is counted once, whichever instance got it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["local_instance_id", "store_telemetry", "transient"]

_INSTANCE_FILE = "instance-id"


def local_instance_id(state_dir: Path) -> str:
    """This instance's id (8 hex digits), generated once and kept in ``state_dir/instance-id``."""
    p = Path(state_dir) / _INSTANCE_FILE
    try:
        text = p.read_text().strip()
        if len(text) == 8 and all(c in "0123456789abcdef" for c in text):
            return text
    except OSError:
        pass
    value = uuid.uuid4().hex[:8]
    tmp = p.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, p)
    return value


def transient(exc: BaseException) -> bool:
    """Whether a storage error is the database being away (retry) rather than a bad row (drop)."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names & {"OperationalError", "InterfaceError", "PoolTimeout", "PoolClosed", "TooManyRequests"}
    )


def _model_rows(
    rows: list[tuple[Any, dict[str, dict[str, Any]], float]], new: list[bool]
) -> list[tuple[Any, ...]]:
    out = []
    for (t, models, ts), ok in zip(rows, new):
        if not ok:
            continue
        for name, m in models.items():
            out.append(
                (
                    t.device,
                    t.stream,
                    t.seq,
                    name,
                    m["version"],
                    ts,
                    int(m["inferences"]),
                    int(m["errors"]),
                    json.dumps(m.get("latency_ms")) if m.get("latency_ms") else None,
                )
            )
    return out


def _telemetry_row(t: Any, ts: float, now: float) -> tuple[Any, ...]:
    """The ``telemetry`` table's columns for one message: device, stream, seq, ts, received,
    system (JSON), queue depth, queue dropped."""
    return (
        t.device,
        t.stream,
        t.seq,
        ts,
        now,
        json.dumps(t.system),
        t.queue.get("depth"),
        t.queue.get("dropped"),
    )


# PostgreSQL: the whole batch in one statement, i.e. one round trip and one transaction (the
# connection is in autocommit mode). Under load every round trip costs a wake-up of the manager and
# of the server; a batch used to take ten. The unique (device, stream, seq) first: what comes back
# from ``keys`` is new, whichever instance stored it; a second copy inside the batch is dropped by
# DISTINCT ON (the first by position ``n`` is kept). Devices' ``last_seen``: a row another instance
# is updating right now is skipped rather than waited for (never a deadlock between two batches).
_PG_BATCH = """
WITH batch AS (
    SELECT * FROM unnest(%(n)s::int[], %(device)s::text[], %(stream)s::text[], %(seq)s::bigint[],
                         %(ts)s::float8[], %(system)s::text[], %(depth)s::bigint[], %(dropped)s::bigint[])
        AS b(n, device, stream, seq, ts, system, queue_depth, queue_dropped)
), keys AS (
    INSERT INTO telemetry_keys (device, stream, seq, received)
    SELECT DISTINCT device, stream, seq, %(now)s::float8 FROM batch
    ON CONFLICT DO NOTHING RETURNING device, stream, seq
), fresh AS (
    SELECT DISTINCT ON (b.device, b.stream, b.seq) b.*
    FROM batch b JOIN keys k USING (device, stream, seq) ORDER BY b.device, b.stream, b.seq, b.n
), stored AS (
    INSERT INTO telemetry (device, stream, seq, ts, received, system, queue_depth, queue_dropped)
    SELECT device, stream, seq, ts, %(now)s::float8, system::jsonb, queue_depth, queue_dropped FROM fresh
    ON CONFLICT DO NOTHING RETURNING device, stream, seq
), new AS (
    SELECT f.n, f.device, f.stream, f.seq, f.ts FROM fresh f JOIN stored USING (device, stream, seq)
), models AS (
    INSERT INTO telemetry_models (device, stream, seq, model, version, ts, inferences, errors, latency)
    SELECT new.device, new.stream, new.seq, m.model, m.version, new.ts, m.inferences, m.errors, m.latency
    FROM unnest(%(m_n)s::int[], %(m_model)s::text[], %(m_version)s::text[], %(m_inferences)s::bigint[],
                %(m_errors)s::bigint[], %(m_latency)s::text[])
        AS m(n, model, version, inferences, errors, latency)
    JOIN new ON new.n = m.n
    ON CONFLICT DO NOTHING
), seen AS (
    UPDATE devices SET last_seen = GREATEST(last_seen, %(now)s::float8) WHERE id IN
        (SELECT id FROM devices WHERE id IN (SELECT device FROM new) ORDER BY id FOR UPDATE SKIP LOCKED)
)
SELECT n FROM new
"""


def store_telemetry(
    fleet_db: Any, rows: list[tuple[Any, dict[str, dict[str, Any]], float]], now: float
) -> list[bool]:
    """Insert ``(telemetry, admitted models, ts)`` rows in one transaction of ``fleet_db``.

    Returns, per row, whether it was new (False: a duplicate of a stored window or of an earlier
    row of the batch).
    """
    if fleet_db.engine == "sqlite":
        with fleet_db.tx(exclusive=False) as db:
            return _store_sqlite(db, rows, now)
    params: dict[str, Any] = {
        "now": now,
        "n": list(range(len(rows))),
        "device": [t.device for t, _, _ in rows],
        "stream": [t.stream for t, _, _ in rows],
        "seq": [t.seq for t, _, _ in rows],
        "ts": [ts for _, _, ts in rows],
        "system": [json.dumps(t.system) for t, _, _ in rows],
        "depth": [t.queue.get("depth") for t, _, _ in rows],
        "dropped": [t.queue.get("dropped") for t, _, _ in rows],
    }
    m_cols: list[list[Any]] = [[], [], [], [], [], []]
    for n, (_t, models, _ts) in enumerate(rows):
        for name, m in models.items():
            latency = json.dumps(m["latency_ms"]) if m.get("latency_ms") else None
            for col, value in zip(
                m_cols, (n, name, m["version"], int(m["inferences"]), int(m["errors"]), latency)
            ):
                col.append(value)
    for key, col in zip(("m_n", "m_model", "m_version", "m_inferences", "m_errors", "m_latency"), m_cols):
        params[key] = col
    with fleet_db.pool.connection() as conn:  # autocommit: the statement is the transaction
        new = {r["n"] for r in conn.execute(_PG_BATCH, params).fetchall()}
    return [n in new for n in range(len(rows))]


def _store_sqlite(
    db: Any, rows: list[tuple[Any, dict[str, dict[str, Any]], float]], now: float
) -> list[bool]:
    new = []
    for t, _models, ts in rows:
        new.append(
            bool(
                db.execute(
                    "INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    _telemetry_row(t, ts, now),
                ).rowcount
            )
        )
    models = _model_rows(rows, new)
    if models:
        db.executemany("INSERT OR IGNORE INTO telemetry_models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", models)
    for device in sorted({t.device for (t, _, _), ok in zip(rows, new) if ok}):
        db.execute("UPDATE devices SET last_seen=? WHERE id=?", (now, device))
    return new
