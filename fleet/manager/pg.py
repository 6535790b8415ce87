"""The manager's state in PostgreSQL (psycopg 3 with a connection pool): ``--database postgresql://...``.

:class:`PgFleetDB` has the interface of :class:`~fleet.manager.db.FleetDB`: the same tables
(:mod:`fleet.manager.migrations`), rows as dicts, ``tx()`` yielding something with ``execute``
and ``executemany``. The SQL the rest of the manager writes (SQLite's dialect: ``?`` parameters,
``INSERT OR IGNORE``) is translated once per statement text.

Several manager instances share one database. To keep the semantics the code was written for
(SQLite: one writer at a time), every ``tx()`` takes a transaction-level advisory lock shared by
all instances, so registry, deployment and package writes are serialised fleet-wide exactly as
one SQLite connection serialises them. The volume path, telemetry ingestion, asks for
``tx(exclusive=False)``: its batches run concurrently, duplicates resolved by the primary keys.

``telemetry`` and ``telemetry_models`` are partitioned by day on the device's ``ts``; partitions
are created ahead of the rows that need them (today and tomorrow at start and hourly, other days
on demand); rows older than the retention window go to the default partition. Retention drops
whole day partitions, then deletes what is left below the cut in batches.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from functools import lru_cache
from typing import Any

from fleet.manager.db import FleetDB
from fleet.protocol import DeploymentState, sql_in

__all__ = ["PgFleetDB", "is_postgres_url"]

log = logging.getLogger(__name__)

WRITE_LOCK = 0x45444745_0002  # the fleet-wide writer lock (advisory, transaction level)
PARTITION_LOCK = 0x45444745_0003
PARTITIONED = ("telemetry", "telemetry_models")
_PRUNE_BATCH = 5000
_DAY = 86400.0
_PART_NAME = re.compile(r"^(telemetry|telemetry_models)_p(\d{8})$")


def is_postgres_url(text: str | None) -> bool:
    return bool(text) and str(text).startswith(("postgresql://", "postgres://"))


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite-dialect SQL as PostgreSQL: ``?`` -> ``%s``, ``INSERT OR IGNORE`` -> ``ON CONFLICT DO NOTHING``."""
    out = sql.replace("%", "%%").replace("?", "%s")
    if re.match(r"\s*INSERT\s+OR\s+IGNORE\s+INTO", out, re.IGNORECASE):
        out = re.sub(r"INSERT\s+OR\s+IGNORE\s+INTO", "INSERT INTO", out, count=1, flags=re.IGNORECASE)
        out = out.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    return out


class _Row(dict):  # type: ignore[type-arg]
    """A dict row that also answers ``row[0]`` (sqlite3.Row does, and some callers use it)."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _row_factory(cursor: Any) -> Any:
    desc = cursor.description
    if desc is None:
        return lambda values: values
    names = [c.name for c in desc]
    return lambda values: _Row(zip(names, map(_plain, values)))


def _plain(value: Any) -> Any:
    """numeric (SUM of integers, AVG) as int or float, like SQLite returns them."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class _Cursor:
    def __init__(self, cur: Any) -> None:
        self._cur = cur
        self.rowcount = cur.rowcount

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur.fetchall())


class _Conn:
    """What ``tx()`` yields: ``execute``/``executemany`` in SQLite's dialect."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _Cursor:
        cur = self.raw.cursor()
        cur.execute(translate(sql), tuple(args) if args else None)
        return _Cursor(cur)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Cursor:
        rows = [tuple(r) for r in rows]
        cur = self.raw.cursor()
        if rows:
            cur.executemany(translate(sql), rows)
        return _Cursor(cur)


def _day(ts: float) -> _dt.date:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).date()


def _day_start(day: _dt.date) -> float:
    return _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc).timestamp()


class PgFleetDB(FleetDB):
    """:class:`FleetDB` over a psycopg connection pool."""

    engine = "postgresql"

    def __init__(self, url: str, min_size: int = 2, max_size: int = 12) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self.path = None  # type: ignore[assignment]
        self.retention_days = 30.0
        self._psycopg = psycopg
        self._local = threading.local()
        self._parts: set[tuple[str, _dt.date]] = set()
        self._parts_lock = threading.Lock()
        self._lock = threading.RLock()  # FleetDB's; not used for PostgreSQL transactions
        psycopg.connect(url, connect_timeout=10).close()  # fail fast, with psycopg's reason
        self.pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": _row_factory},
            open=False,
            name="edge-fleet",
        )
        self.pool.open(wait=True, timeout=30)
        from fleet.manager.migrations import migrate

        migrate(self)
        self.ensure_partitions([time.time(), time.time() + _DAY])

    # --- transactions ---

    @contextmanager
    def tx(self, exclusive: bool = True) -> Iterator[Any]:  # type: ignore[override]
        """One transaction; ``exclusive``: serialised with every other instance's exclusive ones."""
        current = getattr(self._local, "conn", None)
        if current is not None:  # nested: part of the caller's transaction
            yield current
            return
        with self.pool.connection() as conn, conn.transaction():
            c = _Conn(conn)
            if exclusive:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            self._local.conn = c
            try:
                yield c
            finally:
                self._local.conn = None

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        current = getattr(self._local, "conn", None)
        if current is not None:
            return [dict(r) for r in current.execute(sql, args).fetchall()]
        with self.pool.connection() as conn:
            return [dict(r) for r in _Conn(conn).execute(sql, args).fetchall()]

    def meta(self, key: str, default: str) -> str:
        with self.tx() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, default))
            return str(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()["value"])

    def close(self) -> None:
        self.pool.close()

    # --- SQL fragments that differ between engines ---

    @staticmethod
    def json_num(column: str, field: str) -> str:
        """SQL: ``column``'s JSON ``field`` when it is a number, else NULL."""
        return (
            f"(CASE WHEN jsonb_typeof({column}->'{field}') = 'number' "
            f"THEN ({column}->>'{field}')::double precision END)"
        )

    # --- partitions and retention ---

    def _window(self, now: float) -> tuple[float, float]:
        keep = self.retention_days if self.retention_days > 0 else 366
        return now - (keep + 1) * _DAY, now + 2 * _DAY

    def ensure_partitions(self, stamps: Iterable[float]) -> None:
        """Create the day partitions the timestamps fall in (those inside the window)."""
        now = time.time()
        lo, hi = self._window(now)
        days = {_day(ts) for ts in stamps if lo <= ts <= hi}
        wanted = [(t, d) for d in days for t in PARTITIONED if (t, d) not in self._parts]
        if not wanted:
            return
        with self._parts_lock:
            for table, day in wanted:
                if (table, day) in self._parts:
                    continue
                name = f"{table}_p{day:%Y%m%d}"
                start = _day_start(day)
                try:
                    with self.pool.connection() as conn, conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
                        exists = conn.execute("SELECT to_regclass(%s) AS r", (name,)).fetchone()["r"]
                        if exists is None:
                            conn.execute(
                                f"CREATE TABLE {name} PARTITION OF {table} "  # name: from a date, table: fixed
                                f"FOR VALUES FROM ({start!r}) TO ({start + _DAY!r})"
                            )
                except self._psycopg.Error as exc:
                    # Rows of that day already sit in the default partition: they stay there.
                    log.warning("could not create partition %s (%s); its rows use the default one", name, exc)
                self._parts.add((table, day))

    def partitions(self, table: str) -> list[tuple[str, float]]:
        """The day partitions of ``table``: (name, start of the day)."""
        rows = self.query(
            "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ?",
            (table,),
        )
        out = []
        for r in rows:
            m = _PART_NAME.match(r["name"])
            if m and m.group(1) == table:
                day = _dt.datetime.strptime(m.group(2), "%Y%m%d").date()
                out.append((r["name"], _day_start(day)))
        return sorted(out, key=lambda p: p[1])

    def prune(self, before: float) -> dict[str, int]:
        """Drop the day partitions wholly before ``before``, then delete older rows left, in batches.

        On PostgreSQL the day partitions are by device time (``ts``) for both telemetry tables;
        what remains (rows of the boundary day, the default partition) is deleted by the same
        columns as on SQLite.
        """
        deleted: dict[str, int] = {}
        for table, column in (("telemetry", "received"), ("telemetry_models", "ts"), ("events", "ts")):
            total = 0
            if table in PARTITIONED:
                for name, start in self.partitions(table):
                    if start + _DAY <= before:
                        with self.tx(exclusive=False) as db:
                            total += db.execute(f"SELECT COUNT(*) AS n FROM {name}").fetchone()["n"]
                            db.execute(f"DROP TABLE {name}")  # name: from pg_class, matched above
                        self._parts.discard((table, _day(start)))
            key = {
                "telemetry": "device, stream, seq, ts",
                "telemetry_models": "device, stream, seq, model, ts",
                "events": "device, stream, seq",
            }[table]
            keep = (
                " AND deployment_id NOT IN (SELECT id FROM deployments WHERE state IN "
                f"{sql_in(DeploymentState.active())})"
                if table == "events"
                else ""
            )
            while True:
                with self.tx(exclusive=False) as db:
                    n = db.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN "
                        f"(SELECT {key} FROM {table} WHERE {column} < ?{keep} LIMIT ?)",
                        (before, _PRUNE_BATCH),
                    ).rowcount
                total += n
                if n < _PRUNE_BATCH:
                    break
            deleted[table] = total
        while True:  # the duplicate guard's keys go with the telemetry they guarded
            with self.tx(exclusive=False) as db:
                n = db.execute(
                    "DELETE FROM telemetry_keys WHERE (device, stream, seq) IN "
                    "(SELECT device, stream, seq FROM telemetry_keys WHERE received < ? LIMIT ?)",
                    (before, _PRUNE_BATCH),
                ).rowcount
            if n < _PRUNE_BATCH:
                break
        self.ensure_partitions([time.time(), time.time() + _DAY])
        return deleted


def drop_everything(url: str) -> None:
    """Drop every table of the fleet schema (tests)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
