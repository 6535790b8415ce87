"""The agent's durable outbox: telemetry and deployment events in SQLite until the broker acknowledged them.

Every message gets the next sequence number of this queue (``seq``) inside
the same transaction that stores it, so numbers are never reused, even after
a crash; together with the queue's random ``stream`` id they let the manager
count each message once however often it is resent. A row is deleted only
when the broker's PUBACK for it arrives (QoS 1).

Drop policy, applied when a message is added and when the queue is pruned:
rows older than ``max_age_s`` are dropped; then, while the queue is over
``max_bytes``, the oldest *telemetry* row is dropped first (a later window
carries the same kind of information), and deployment events only when no
telemetry is left. Drops are counted and reported in the next telemetry
(``queue.dropped``), so the manager sees the gap.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DurableQueue", "QueuedMessage"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,            -- 'telemetry' or 'event'
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class QueuedMessage:
    seq: int
    kind: str
    payload: bytes


class DurableQueue:
    """A bounded, crash-safe FIFO of outgoing messages; safe to use from several threads."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 8 << 20, max_age_s: float = 7 * 86400):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a row the agent thinks is stored survives a power cut, not only a crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='stream'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('stream', ?)", (uuid.uuid4().hex[:16],))
                self._db.execute("INSERT INTO meta VALUES ('next_seq', '1'), ('dropped', '0')")
        self.stream: str = self._meta("stream")

    def _tx(self) -> sqlite3.Connection:
        return _Tx(self._db)  # type: ignore[return-value]

    def _meta(self, key: str) -> str:
        return str(self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute("UPDATE meta SET value=? WHERE key=?", (str(value), key))

    def put(self, kind: str, build: Callable[[int], bytes]) -> int:
        """Store a message and return its seq. ``build(seq) -> bytes`` makes the payload, seq included."""
        with self._lock, self._tx():
            seq = int(self._meta("next_seq"))
            payload = build(seq)
            self._db.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?, ?)", (seq, kind, payload, time.time(), len(payload))
            )
            self._set_meta("next_seq", seq + 1)
            self._prune_locked()
        return seq

    def _prune_locked(self) -> None:
        dropped = self._db.execute(
            "DELETE FROM outbox WHERE created < ?", (time.time() - self.max_age_s,)
        ).rowcount
        total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
        while total > self.max_bytes:
            # Oldest telemetry first; events (rare, and what rollouts decide on) only when none is left.
            row = self._db.execute(
                "SELECT seq, size FROM outbox ORDER BY kind = 'event', seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM outbox WHERE seq=?", (row[0],))
            total -= row[1]
            dropped += 1
        if dropped:
            self._set_meta("dropped", int(self._meta("dropped")) + dropped)
            log.warning("outbox over its bounds: dropped %d oldest message(s)", dropped)

    def peek(self, limit: int, after: int = 0) -> list[QueuedMessage]:
        """The oldest ``limit`` messages with seq > ``after`` (not removed)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [QueuedMessage(r[0], r[1], bytes(r[2])) for r in rows]

    def ack(self, seq: int) -> None:
        """The broker acknowledged ``seq``: forget it."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM outbox WHERE seq=?", (seq,))

    def last_seq(self) -> int:
        """The seq of the newest message ever stored (0 before the first)."""
        with self._lock:
            return int(self._meta("next_seq")) - 1

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def dropped(self) -> int:
        with self._lock:
            return int(self._meta("dropped"))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
