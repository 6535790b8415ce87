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


def store_telemetry(
    db: Any, engine: str, rows: list[tuple[Any, dict[str, dict[str, Any]], float]], now: float
) -> list[bool]:
    """Insert ``(telemetry, admitted models, ts)`` rows inside the caller's transaction ``db``.

    Returns, per row, whether it was new (False: a duplicate of a stored window or of an earlier
    row of the batch).
    """
    if engine == "sqlite":
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
            db.executemany(
                "INSERT OR IGNORE INTO telemetry_models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", models
            )
        for device in sorted({t.device for (t, _, _), ok in zip(rows, new) if ok}):
            db.execute("UPDATE devices SET last_seen=? WHERE id=?", (now, device))
        return new
    raw = db.raw
    # The unique (device, stream, seq) first: what comes back is new, whichever instance stored it.
    keys = raw.execute(
        "INSERT INTO telemetry_keys (device, stream, seq, received) "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::float8[]) "
        "ON CONFLICT DO NOTHING RETURNING device, stream, seq",
        [
            [t.device for t, _, _ in rows],
            [t.stream for t, _, _ in rows],
            [t.seq for t, _, _ in rows],
            [now] * len(rows),
        ],
    ).fetchall()
    fresh = {(r["device"], r["stream"], r["seq"]) for r in keys}
    first = []
    for t, _models, _ts in rows:
        key = (t.device, t.stream, t.seq)
        first.append(key in fresh)
        fresh.discard(key)  # a second copy in the same batch is a duplicate
    if not any(first):
        return first
    cols = list(zip(*[_telemetry_row(t, ts, now) for (t, _models, ts), ok in zip(rows, first) if ok]))
    cur = raw.execute(
        "INSERT INTO telemetry (device, stream, seq, ts, received, system, queue_depth, queue_dropped) "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::float8[], %s::float8[], "
        "%s::text[]::jsonb[], %s::bigint[], %s::bigint[]) "
        "ON CONFLICT DO NOTHING RETURNING device, stream, seq, ts",
        [list(c) for c in cols],
    )
    inserted = {(r["device"], r["stream"], r["seq"], r["ts"]) for r in cur.fetchall()}
    new = [ok and (t.device, t.stream, t.seq, ts) in inserted for (t, _models, ts), ok in zip(rows, first)]
    models = _model_rows(rows, new)
    if models:
        mcols = [list(c) for c in zip(*models)]
        raw.execute(
            "INSERT INTO telemetry_models (device, stream, seq, model, version, ts, inferences, errors, latency) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::float8[], "
            "%s::bigint[], %s::bigint[], %s::text[]) ON CONFLICT DO NOTHING",
            mcols,
        )
    devices = sorted({t.device for (t, _, _), ok in zip(rows, new) if ok})
    if devices:
        # Another instance updating the same device row right now sets about the same time: skip it
        # rather than wait (and never deadlock two batches on each other).
        raw.execute(
            "UPDATE devices SET last_seen = GREATEST(last_seen, %s) WHERE id IN "
            "(SELECT id FROM devices WHERE id = ANY(%s) ORDER BY id FOR UPDATE SKIP LOCKED)",
            (now, devices),
        )
    return new
