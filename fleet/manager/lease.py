"""The rollout ticker's leader lease: a row of ``leases`` with a holder and an expiry.

Every manager instance of a fleet tries to take or renew the lease ``ticker`` on each tick; the
one that holds it runs the rollout ticker and the retention pruning, the others only ingest and
answer the API. The holder renews it every tick (half a second by default) for ``ttl_s`` more;
when it dies, nobody renews, and the first instance to try after the expiry takes it over, so a
failover takes at most ``ttl_s`` plus one tick.

Times are the database's clock on PostgreSQL (one clock for all instances, whatever their hosts'
clocks say) and this host's on SQLite (one manager anyway). A holder that could not renew for
``ttl_s`` (the database unreachable) stops ticking before anyone else can take over: it counts
from when it *sent* its last successful renewal, never from when the answer came.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["Lease"]

log = logging.getLogger(__name__)

_NOW = {"sqlite": "?", "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())::double precision"}


class Lease:
    """``name`` held by ``holder`` for ``ttl_s`` at a time; :meth:`renew` takes or extends it."""

    def __init__(self, db: Any, name: str, holder: str, ttl_s: float = 5.0) -> None:
        self.db, self.name, self.holder, self.ttl_s = db, name, holder, ttl_s
        self._valid_until = 0.0  # monotonic
        self.held_since: float | None = None  # wall clock, when this instance took it
        self.takeovers = 0

    @property
    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def renew(self) -> bool:
        """Take the lease if it is free or expired, extend it if ours; whether we hold it now."""
        sent = time.monotonic()
        now = _NOW[self.db.engine]
        args: tuple[Any, ...]
        if self.db.engine == "sqlite":
            t = time.time()
            args = (self.name, self.holder, t + self.ttl_s, t)
            sql = (
                "INSERT INTO leases AS l (name, holder, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires "
                "WHERE l.holder = excluded.holder OR l.expires < ?"
            )
        else:
            args = (self.name, self.holder, self.ttl_s)
            sql = (
                f"INSERT INTO leases AS l (name, holder, expires) VALUES (?, ?, {now} + ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires "
                f"WHERE l.holder = excluded.holder OR l.expires < {now}"
            )
        try:
            with self.db.tx(exclusive=False) as c:
                c.execute(sql, args)
                row = c.execute("SELECT holder FROM leases WHERE name=?", (self.name,)).fetchone()
        except Exception:
            log.exception("could not renew the %s lease", self.name)
            return self.held
        mine = row is not None and row["holder"] == self.holder
        if mine:
            if not self.held:
                self.held_since = time.time()
                self.takeovers += 1
                log.info("this manager (%s) now holds the %s lease", self.holder, self.name)
            self._valid_until = sent + self.ttl_s * 0.8  # stop before anyone else may start
        else:
            if self.held:
                log.warning("lost the %s lease to %s", self.name, row["holder"] if row else "nobody")
            self._valid_until = 0.0
            self.held_since = None
        return mine

    def release(self) -> None:
        """Give the lease up (a clean stop): another instance takes over at its next tick."""
        if not self.held:
            return
        try:
            with self.db.tx(exclusive=False) as c:
                c.execute("DELETE FROM leases WHERE name=? AND holder=?", (self.name, self.holder))
        except Exception:
            log.exception("could not release the %s lease", self.name)
        self._valid_until = 0.0

    def current(self) -> dict[str, Any] | None:
        return self.db.one("SELECT holder, expires FROM leases WHERE name=?", (self.name,))
