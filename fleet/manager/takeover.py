"""Draining a dead instance's MQTT session (several managers on PostgreSQL).

A shared subscription (``$share/<group>/...``) splits messages between the members of the group,
and a member with a persistent session stays a member while it is away: mosquitto keeps routing
its share of telemetry, events and block requests to it, queued for its return. Those messages
were acknowledged to the devices (they deleted them), so they must not be dropped, and a rollout
waiting for events must not wait for a dead instance to come back.

So every instance keeps a heartbeat row (``leases``, ``instance:<client id>``, renewed every tick
for ``ttl_s``). The instance holding the ticker lease looks for heartbeats that expired; for each,
it connects *with the dead instance's client id* and its persistent session, handles what the
broker had queued for it (stored, then acknowledged, like its own), unsubscribes the shared
filters so the broker stops routing to that session, and disconnects. If the dead instance
returns meanwhile, the broker hands the session back to it (closing the drainer's connection)
and what the drainer had not acknowledged is sent again to its owner: duplicates, dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fleet.mqtt import make_client

__all__ = ["Heartbeat", "drain_session"]

log = logging.getLogger(__name__)

PREFIX = "instance:"


class Heartbeat:
    """This instance's ``instance:<client id>`` row in ``leases``, and the search for expired ones."""

    def __init__(self, db: Any, client_id: str, ttl_s: float) -> None:
        self.db, self.client_id, self.ttl_s = db, client_id, ttl_s
        self._now = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"

    def beat(self) -> None:
        with self.db.tx(exclusive=False) as c:
            c.execute(
                f"INSERT INTO leases (name, holder, expires) VALUES (?, ?, {self._now} + ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires",
                (PREFIX + self.client_id, self.client_id, self.ttl_s),
            )

    def expired(self) -> list[str]:
        """Client ids of instances whose heartbeat expired (not this one)."""
        rows = self.db.query(
            f"SELECT holder FROM leases WHERE name LIKE 'instance:%' AND expires < {self._now} ORDER BY holder"
        )
        return [r["holder"] for r in rows if r["holder"] != self.client_id]

    def forget(self, client_id: str) -> None:
        """Delete a drained instance's row, unless it came back and renewed it meanwhile."""
        with self.db.tx(exclusive=False) as c:
            c.execute(f"DELETE FROM leases WHERE name = ? AND expires < {self._now}", (PREFIX + client_id,))

    def stop(self) -> None:
        """A clean stop: nothing to drain (its session's queue was handled), forget the row."""
        try:
            with self.db.tx(exclusive=False) as c:
                c.execute("DELETE FROM leases WHERE name = ?", (PREFIX + self.client_id,))
        except Exception:
            log.exception("could not remove this instance's heartbeat")


def drain_session(
    manager: Any, client_id: str, filters: list[str], idle_s: float = 1.0, timeout_s: float = 60.0
) -> int:
    """Handle the messages queued in ``client_id``'s session, then leave the shared subscriptions.

    Returns how many messages were handled. ``manager`` is the :class:`FleetManager` doing it:
    its handler stores and acknowledges them through this connection.
    """
    b = manager.config.broker
    client = make_client(client_id, b, clean_session=False)
    client.manual_ack_set(True)
    connected, gone, unsubscribed = threading.Event(), threading.Event(), threading.Event()
    state = {"last": time.monotonic(), "n": 0}

    def on_message(c: Any, u: Any, msg: Any) -> None:
        state["last"] = time.monotonic()
        state["n"] += 1
        manager._on_mqtt_message(c, u, msg)

    client.on_connect = lambda *a: connected.set()
    client.on_disconnect = lambda *a: gone.set()
    client.on_unsubscribe = lambda *a: unsubscribed.set()
    client.on_message = on_message
    client.connect_async(b.host, b.port, keepalive=b.keepalive)
    client.loop_start()
    try:
        if not connected.wait(15):
            raise TimeoutError(f"could not connect as {client_id}")
        deadline = time.monotonic() + timeout_s
        state["last"] = time.monotonic()
        while time.monotonic() < deadline and not gone.is_set():
            if time.monotonic() - state["last"] >= idle_s and manager.pending_acks(client) == 0:
                break
            time.sleep(0.05)
        if gone.is_set():
            log.info("session %s was taken back by its owner while draining", client_id)
            return int(state["n"])
        client.unsubscribe(filters)
        unsubscribed.wait(10)
        # Whatever was routed to it until the broker processed the UNSUBSCRIBE.
        settle = time.monotonic() + max(idle_s, 0.5)
        while time.monotonic() < settle or manager.pending_acks(client):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        log.info("drained %d message(s) queued for the dead instance %s", state["n"], client_id)
        return int(state["n"])
    finally:
        client.disconnect()
        client.loop_stop()
