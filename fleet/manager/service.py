"""The fleet manager (``edge fleet serve``): MQTT ingestion, package streaming, the rollout ticker.

:class:`FleetManager` owns the state (:class:`~fleet.manager.db.FleetDB`),
the package store, the rollout engine and one MQTT connection (a persistent
session, so QoS 1 telemetry sent while it restarts waits at the broker). Its
message handler validates every message against :mod:`fleet.protocol`;
anything malformed is counted, logged and dropped. Telemetry and events are
stored before the handler returns, i.e. before paho acknowledges them.

One manager per state directory: :class:`~fleet.manager.lock.StateLock` refuses a second one
(:class:`~fleet.errors.ManagerLockedError`). The MQTT client id is
``edge-fleet-manager-{fleet}-{instance}``, where ``instance`` is generated once and kept in the
database: stable across restarts (the persistent session survives them), distinct for managers
with different state, so two of them never make the broker close each other's connection.
Telemetry and events older than ``retention_days`` are deleted by the ticker thread every
``prune_interval_s``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from edge_runtime.package import TrustStore
from fleet.errors import BrokerError, ProtocolError
from fleet.manager.db import FleetDB
from fleet.manager.engines import open_database
from fleet.manager.ingest import local_instance_id as _local_instance_id
from fleet.manager.ingest import store_telemetry
from fleet.manager.ingest import transient as _transient
from fleet.manager.lease import Lease
from fleet.manager.lock import StateLock
from fleet.manager.packages import PackageStore
from fleet.manager.rollout import RolloutEngine, RolloutSpec, merge_latency
from fleet.manager.stream import StreamServer
from fleet.manager.takeover import Heartbeat, drain_session
from fleet.mqtt import BrokerConfig, make_client, peer_fingerprint
from fleet.protocol import (
    DeploymentState,
    Desired,
    Event,
    Presence,
    Status,
    StreamGet,
    Telemetry,
    parse_json_message,
    parse_topic,
    sql_in,
    subscription,
    topic,
)
from fleet.targets import LATENCY_BUCKETS_MS, LatencyHistogram

__all__ = ["FleetManager", "ManagerConfig"]

log = logging.getLogger(__name__)

BlockFilter = Callable[[str, int, bytes], bytes]


@dataclass
class ManagerConfig:
    fleet: str
    state_dir: Path
    broker: BrokerConfig
    trust: tuple[Path, ...] = ()  # when set, packages must be signed by one of these keys to be added
    tick_interval_s: float = 0.5
    retention_days: float = 30.0  # telemetry and events older than this are deleted; 0: keep forever
    prune_interval_s: float = 3600.0  # how often the ticker prunes (the first time right after start)
    # Package streaming (stream/get, fleet/manager/stream.py): token buckets of bytes, one per
    # device (blocks past it are not sent: the agent asks again) and one per package (blocks past it
    # wait); at most stream_outstanding_bytes published and not yet acknowledged by the broker (the
    # rest waits, one request per device, served in turn).
    stream_device_bytes_per_s: float = 4 << 20
    stream_device_burst_bytes: float = 16 << 20
    stream_package_bytes_per_s: float = 128 << 20
    stream_package_burst_bytes: float = 256 << 20
    stream_outstanding_bytes: int = 8 << 20
    max_models_per_device: int = 32  # distinct model names one device may report in telemetry
    max_label_sets: int = 1000  # label combinations per Prometheus metric (the rest are not exported)
    # Storage and scale-out (docs/scaling.md). database: None for STATE_DIR/fleet.sqlite, or a
    # postgresql:// URL shared by several instances; package_store: a directory every instance sees
    # (default: STATE_DIR/packages with SQLite, the database itself with PostgreSQL).
    database: str | None = None
    package_store: Path | None = None
    lease_ttl_s: float = 5.0  # the rollout ticker's leader lease (PostgreSQL): failover within this
    share_group: str | None = None  # MQTT shared subscription group (default edge-fleet-{fleet})
    batch_max: int = 500  # telemetry messages stored per transaction at most
    # How long a batch waits for more messages after its first one. 0: a batch is what queued up
    # while the previous one was being committed (no added latency when idle; larger under load).
    batch_wait_s: float = 0.0


def _num(field: str) -> str:
    """SQL: the ``system`` JSON's ``field`` when it is a number, else NULL (also for malformed JSON)."""
    path = f"'$.{field}'"
    return (
        f"(CASE WHEN json_valid(system) THEN CASE WHEN json_type(system, {path}) IN ('integer', 'real') "
        f"THEN json_extract(system, {path}) END END)"
    )


def _finite(value: Any) -> Any:
    """A stored number as it may be shown: None unless a finite int or float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _count(value: Any) -> int:
    """A stored count: a non-negative integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# A device timestamp more than this ahead of the manager's clock is stored as the receipt time.
MAX_CLOCK_AHEAD_S = 300.0
_LOG_EVERY_S = 60.0  # per device: one warning about its invalid messages a minute, with the count


def _describe(body: Status | Telemetry) -> str:
    """A queued message as a log names it."""
    if isinstance(body, Telemetry):
        return f"telemetry {body.device}/{body.stream}/{body.seq}"
    return f"the status of {body.device}"


class _LabelCap:
    """At most ``limit`` label combinations per metric; the excess is refused (and counted by the caller)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[tuple[str, ...]]] = {}

    def allow(self, metric: str, *labels: str) -> bool:
        seen = self._seen.setdefault(metric, set())
        if labels in seen:
            return True
        if len(seen) >= self.limit:
            return False
        seen.add(labels)
        return True


class _Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.limited = Counter(
            "fleet_limited_total",
            "Values dropped or clamped by a manager limit, by limit",
            ["limit"],
            registry=r,
        )
        self.messages = Counter(
            "fleet_messages_total", "MQTT messages received, by kind", ["kind"], registry=r
        )
        self.dropped = Counter(
            "fleet_messages_dropped_total", "Messages dropped, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "fleet_duplicates_total", "Telemetry and events received again (same stream and seq)", registry=r
        )
        self.inferences = Counter(
            "fleet_inferences_total", "Inferences reported by devices", ["model", "version"], registry=r
        )
        self.errors = Counter(
            "fleet_inference_errors_total",
            "Inference errors reported by devices",
            ["model", "version"],
            registry=r,
        )
        self.stream_bytes = Counter(
            "fleet_stream_bytes_total", "Package bytes streamed to devices", registry=r
        )
        # Where the telemetry writer's time goes (PostgreSQL: batches acknowledged after commit).
        self.batches = Counter(
            "fleet_telemetry_batches_total", "Telemetry batches stored (one transaction each)", registry=r
        )
        self.batched = Counter(
            "fleet_telemetry_batched_messages_total", "Telemetry messages in stored batches", registry=r
        )
        self.store_seconds = Counter(
            "fleet_telemetry_store_seconds_total",
            "Seconds the telemetry writer spent storing batches (insert and commit)",
            registry=r,
        )
        self.writer_idle_seconds = Counter(
            "fleet_telemetry_writer_idle_seconds_total",
            "Seconds the telemetry writer waited for a message",
            registry=r,
        )
        self.handler_seconds = Counter(
            "fleet_message_handler_seconds_total",
            "Seconds the MQTT network thread spent handling messages, by kind",
            ["kind"],
            registry=r,
        )
        self.devices = Gauge("fleet_devices", "Known devices, by state", ["state"], registry=r)
        self.deployment_devices = Gauge(
            "fleet_deployment_devices",
            "Devices of active deployments, by state",
            ["deployment", "state"],
            registry=r,
        )
        self.device_queue_dropped = Gauge(
            "fleet_device_queue_dropped",
            "Messages a device's outbox dropped (its last report)",
            ["device"],
            registry=r,
        )


class FleetManager:
    """The manager's core; :meth:`start` connects and runs the ticker, :meth:`stop` ends both."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        root = Path(config.state_dir)
        self._lock = StateLock(root).acquire()
        try:
            self.db: FleetDB = open_database(config.database, root)
            if self.db.engine == "sqlite":
                instance = self.db.meta("instance_id", uuid.uuid4().hex[:8])
            else:
                # Several instances share the database: each keeps its own id in its state directory.
                instance = _local_instance_id(root)
                self.db.retention_days = config.retention_days  # type: ignore[attr-defined]
        except BaseException:
            self._lock.release()
            raise
        self.instance = instance
        self.client_id = f"edge-fleet-manager-{config.fleet}-{instance}"
        self.shared = self.db.engine != "sqlite"  # several instances: shared subscriptions, a lease
        trust = TrustStore.load(*config.trust) if config.trust else None
        if config.package_store is not None:
            self.packages = PackageStore(config.package_store, self.db, trust)
        else:
            self.packages = PackageStore(root / "packages", self.db, trust, in_database=self.shared)
        self.lease = Lease(self.db, "ticker", self.client_id, config.lease_ttl_s) if self.shared else None
        self._batch: queue.Queue[tuple[Status | Telemetry, int, int, Any] | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        # Per network thread (ours, or a drainer's): the client of the message being handled, and
        # whether _on_message queued it (then the writer acknowledges it after the commit).
        self._msg_ctx = threading.local()
        self._unacked: dict[int, int] = {}  # id(client) -> telemetry queued, not yet acknowledged
        self._unacked_lock = threading.Lock()
        self.heartbeat = Heartbeat(self.db, self.client_id, config.lease_ttl_s) if self.shared else None
        self._draining: threading.Thread | None = None
        self.rollouts = RolloutEngine(self.db, self._publish_desired)
        self.metrics = _Metrics()
        self.stream = StreamServer(
            self._publish_block,
            self.packages.read_block,
            device_bytes_per_s=config.stream_device_bytes_per_s,
            device_burst_bytes=config.stream_device_burst_bytes,
            package_bytes_per_s=config.stream_package_bytes_per_s,
            package_burst_bytes=config.stream_package_burst_bytes,
            max_outstanding_bytes=config.stream_outstanding_bytes,
            limited=self._limited,
            warn=self._warn_limited,
            sent=self.metrics.stream_bytes.inc,
        )
        self._labels = _LabelCap(config.max_label_sets)
        self._device_models: dict[str, set[str]] = {}  # model names each device reported (bounded)
        self._warned: dict[str, tuple[float, int]] = {}  # device -> (last warning, messages since)
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        # sha256 of the broker's certificate as seen on our verified TLS connection (None over plain
        # MQTT): what the zeroconf advertisement carries for agents to pin.
        self.tls_fingerprint: str | None = None

    # --- lifecycle ---

    def start(self, connect_timeout: float = 15.0) -> FleetManager:
        b = self.config.broker
        client = make_client(self.client_id, b, clean_session=False)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *_: self._connected.clear()
        if self.shared:
            # PostgreSQL: telemetry is stored in batches and acknowledged to the broker only once
            # its batch is committed (manual acknowledgements); every other message once its
            # handler returned, as paho would.
            client.manual_ack_set(True)
            client.on_message = self._on_mqtt_message
            self._writer = threading.Thread(
                target=self._write_loop, name="fleet-telemetry-writer", daemon=True
            )
            self._writer.start()
        else:
            # SQLite: each message stored in its own transaction before the handler returns, and
            # paho acknowledges it then.
            client.on_message = self._on_message
        client.on_publish = lambda _c, _u, mid, _rc, _p: self.stream.acknowledged(mid)
        # What is in flight to the broker is bounded by the stream server's window
        # (stream_outstanding_bytes), not by paho's count of 64 messages.
        client.max_inflight_messages_set(1000)
        client.connect_async(b.host, b.port, keepalive=b.keepalive)
        self._client = client
        self.stream.start()
        client.loop_start()
        if not self._connected.wait(connect_timeout):
            client.loop_stop()
            self.stream.stop()
            raise BrokerError(f"could not connect to the broker at {b.url} within {connect_timeout:.0f} s")
        self._ticker = threading.Thread(target=self._tick_loop, name="fleet-ticker", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
        if self.lease is not None:
            self.lease.release()
        if self._draining is not None:
            self._draining.join(10)
        if self.heartbeat is not None and self._client is not None and self._others_alive():
            # Leave the shared subscriptions, so the broker routes our share to the others while we
            # are away (the only instance keeps them: its session queues what comes meanwhile).
            self._client.unsubscribe(self._shared_filters())
            time.sleep(0.5)  # what was already routed to us arrives and is queued for the writer
        if self._writer is not None:
            self._batch.put(None)  # commits and acknowledges what is queued, then ends
            self._writer.join(10)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self.stream.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()  # after the writer acknowledged all: nothing left to drain
        self.close()

    def close(self) -> None:
        """Close the database and release the state directory's lock (``stop`` does this too)."""
        self.db.close()
        self._lock.release()

    def _tick_loop(self) -> None:
        next_prune = time.monotonic()
        while not self._stop.wait(self.config.tick_interval_s):
            if self.heartbeat is not None:
                try:
                    self.heartbeat.beat()
                except Exception:
                    log.exception("could not renew this instance's heartbeat")
            if self.lease is not None and not self.lease.renew():
                continue  # another instance runs the ticker
            if self.heartbeat is not None:
                self._drain_dead_instances()
            self.rollouts.tick()
            if self.config.retention_days > 0 and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.config.prune_interval_s
                try:
                    self.prune()
                except Exception:
                    log.exception(
                        "pruning old telemetry failed; retrying in %.0f s", self.config.prune_interval_s
                    )

    def _shared_filters(self) -> list[str]:
        group = self.config.share_group or f"edge-fleet-{self.config.fleet}"
        return [
            f"$share/{group}/{subscription(self.config.fleet, k)}"
            for k in ("telemetry", "event", "stream/get")
        ]

    def _others_alive(self) -> bool:
        try:
            rows = self.db.query(
                "SELECT COUNT(*) AS n FROM leases WHERE name LIKE 'instance:%' AND holder <> ? "
                "AND expires > EXTRACT(EPOCH FROM clock_timestamp())",
                (self.client_id,),
            )
        except Exception:  # noqa: BLE001 - unknown: stay subscribed (nothing can be lost that way)
            return False
        return bool(rows and rows[0]["n"])

    def _drain_dead_instances(self) -> None:
        """The ticker's holder: drain the sessions of instances whose heartbeat expired (in a thread)."""
        assert self.heartbeat is not None
        if self._draining is not None and self._draining.is_alive():
            return
        try:
            dead = self.heartbeat.expired()
        except Exception:
            log.exception("could not look for dead instances")
            return
        if not dead:
            return

        def run() -> None:
            for client_id in dead:
                try:
                    # All its filters: its status subscription would otherwise keep queueing too.
                    filters = [*self._shared_filters(), subscription(self.config.fleet, "status")]
                    drain_session(self, client_id, filters)
                    self.heartbeat.forget(client_id)  # type: ignore[union-attr]
                except Exception:
                    log.exception("draining the session of %s failed; trying again later", client_id)

        self._draining = threading.Thread(target=run, name="fleet-drain", daemon=True)
        self._draining.start()

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Delete telemetry and events older than ``retention_days``; rows deleted per table."""
        before = (time.time() if now is None else now) - self.config.retention_days * 86400
        deleted = self.db.prune(before)
        if any(deleted.values()):
            log.info(
                "retention (%g days): deleted %s",
                self.config.retention_days,
                ", ".join(f"{n} {table}" for table, n in deleted.items()),
            )
        return deleted

    # --- MQTT ---

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the manager: %s", rc)
            return
        for kind in ("status", "telemetry", "event", "stream/get"):
            filt = subscription(self.config.fleet, kind)
            if self.shared and kind != "status":
                # Split between the instances; status (retained, small) goes to every instance.
                filt = f"$share/{self.config.share_group or f'edge-fleet-{self.config.fleet}'}/{filt}"
            client.subscribe(filt, qos=1)
        self.tls_fingerprint = peer_fingerprint(client)
        self._connected.set()
        log.info(
            "manager of fleet %s connected to %s%s",
            self.config.fleet,
            self.config.broker.public_url,
            f" (certificate sha256 {self.tls_fingerprint})" if self.tls_fingerprint else "",
        )

    def _publish_desired(self, device: str, desired: Desired | None) -> None:
        """Set a device's retained desired state; ``None`` clears it (an empty retained message)."""
        assert self._client is not None
        payload = desired.to_json() if desired is not None else b""
        self._client.publish(topic(self.config.fleet, device, "desired"), payload, qos=1, retain=True)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        started, kind = time.perf_counter(), "invalid"
        try:
            t = parse_topic(msg.topic)
            if t.fleet != self.config.fleet:
                raise ProtocolError(f"message of fleet {t.fleet!r}")
            kind = t.kind
            self.metrics.messages.labels(t.kind).inc()
            if t.kind == "status" and not msg.payload:
                return  # a cleared retained status
            body = parse_json_message(t.kind, msg.payload)
            # The topic names the sender (the broker's ACL guarantees it); the body must agree.
            if getattr(body, "device", t.device) != t.device:
                raise ProtocolError(f"message on {t.device}'s topic claims to be from {body.device}")
            if isinstance(body, (Status, Telemetry)):
                self._queue_for_writer(body, msg)
            elif isinstance(body, Event):
                self.ingest_event(body)
            elif isinstance(body, StreamGet):
                self.stream.request(t.device, body)
        except ProtocolError as exc:
            self.metrics.dropped.labels("invalid").inc()
            self._warn_invalid(msg.topic, exc)
        except Exception:
            self.metrics.dropped.labels("error").inc()
            log.exception("dropped a message on %s: unexpected error", msg.topic)
        finally:
            self.metrics.handler_seconds.labels(kind).inc(time.perf_counter() - started)

    def _warn_invalid(self, topic_name: str, exc: Exception) -> None:
        """Log a dropped message, at most once a minute per sender (with how many were dropped since)."""
        parts = topic_name.split("/")
        sender = parts[3] if len(parts) > 3 else "?"
        self._warn_limited(sender, f"dropped a message on {topic_name[:200]}: {str(exc)[:500]}")

    def _warn_limited(self, sender: str, text: str) -> None:
        """``log.warning(text)``, at most once a minute per sender, with how many were suppressed."""
        now = time.monotonic()
        last, since = self._warned.get(sender, (-_LOG_EVERY_S, 0))
        if now - last < _LOG_EVERY_S:
            self._warned[sender] = (last, since + 1)
            return
        if len(self._warned) >= 10000:
            self._warned.clear()
        self._warned[sender] = (now, 0)
        more = f" (and {since} more from {sender} in the last minute)" if since else ""
        log.warning("%s%s", text, more)

    def _limited(self, limit: str, n: int = 1) -> None:
        self.metrics.limited.labels(limit).inc(n)

    def _device_ts(self, ts: float, now: float) -> float:
        """A device's timestamp, or the receipt time when the device's clock is far ahead."""
        if ts > now + MAX_CLOCK_AHEAD_S:
            self._limited("clock_ahead")
            return now
        return ts

    def _admit_models(self, device: str, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The models of a telemetry message within the device's model limit; histograms on our bounds."""
        known = self._device_models.setdefault(device, set())
        out: dict[str, dict[str, Any]] = {}
        for name, m in models.items():
            if name not in known:
                if len(known) >= self.config.max_models_per_device:
                    self._limited("models_per_device")
                    continue
                known.add(name)
            hist = m.get("latency_ms")
            if hist is not None and tuple(hist["le"]) != LATENCY_BUCKETS_MS:
                # Merged bucket by bucket with everyone else's: other bounds cannot be, so not kept.
                self._limited("histogram_bounds")
                m = {k: v for k, v in m.items() if k != "latency_ms"}
            out[name] = m
        return out

    # --- ingestion: each (device, stream, seq) counts once ---

    def _on_mqtt_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's callback: handle, then acknowledge (telemetry: after its batch commits)."""
        ctx = self._msg_ctx
        ctx.client, ctx.deferred = client, False
        try:
            self._on_message(client, userdata, msg)
        finally:
            if not ctx.deferred and msg.qos:
                client.ack(msg.mid, msg.qos)

    def _queue_for_writer(self, body: Status | Telemetry, msg: mqtt.MQTTMessage) -> None:
        """Telemetry and status: to the writer's next batch (PostgreSQL), else stored now."""
        client = getattr(self._msg_ctx, "client", None)
        if client is None:  # SQLite, or called outside paho's callback (tests): store now
            self._store_batch([body])
            return
        self._msg_ctx.deferred = True
        with self._unacked_lock:
            self._unacked[id(client)] = self._unacked.get(id(client), 0) + 1
        self._batch.put((body, msg.mid, msg.qos, client))

    def pending_acks(self, client: Any) -> int:
        """Telemetry and status received on ``client``, not yet acknowledged (queued or being stored)."""
        with self._unacked_lock:
            return self._unacked.get(id(client), 0)

    def _write_loop(self) -> None:
        """Store queued telemetry and statuses in batches and acknowledge them after the commit."""
        cfg, done = self.config, False
        while not done:
            idle = time.perf_counter()
            first = self._batch.get()
            stored = time.perf_counter()
            self.metrics.writer_idle_seconds.inc(stored - idle)
            if first is None:
                break
            items = [first]
            deadline = time.monotonic() + cfg.batch_wait_s
            while len(items) < cfg.batch_max:
                try:
                    wait = deadline - time.monotonic()
                    item = self._batch.get(timeout=wait) if wait > 0 else self._batch.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                items.append(item)
            while True:
                try:
                    self._store_batch([it[0] for it in items])
                    break
                except Exception as exc:
                    if not _transient(exc) and len(items) > 1:
                        # One bad message must not hold the others back: store them one by one.
                        log.exception("a batch of %d messages failed; storing one by one", len(items))
                        for it in items:
                            try:
                                self._store_batch([it[0]])
                            except Exception as one:  # noqa: BLE001 - sorted out just below
                                if _transient(one):
                                    break  # the database went away meanwhile: retry the batch
                                self.metrics.dropped.labels("error").inc()
                                log.error("dropped %s: it cannot be stored (%s)", _describe(it[0]), one)
                        else:
                            break
                    elif not _transient(exc):
                        self.metrics.dropped.labels("error").inc()
                        log.exception("dropped %s: it cannot be stored", _describe(items[0][0]))
                        break
                    else:
                        log.warning("storing a batch failed (%s); retrying, not acknowledged", exc)
                    if self._stop.is_set():
                        return  # unacknowledged: the broker sends them again to the next session
                    time.sleep(1.0)
            self.metrics.store_seconds.inc(time.perf_counter() - stored)
            self.metrics.batches.inc()
            self.metrics.batched.inc(len(items))
            for _, mid, qos, client in items:
                self._ack(mid, qos, client)

    def _ack(self, mid: int, qos: int, client: Any) -> None:
        if qos:
            client.ack(mid, qos)
        with self._unacked_lock:
            self._unacked[id(client)] = self._unacked.get(id(client), 1) - 1

    def ingest_telemetry(self, t: Telemetry) -> bool:
        """Store a telemetry window; False when it is a duplicate."""
        return self._ingest_batch([t])[0]

    def _store_batch(self, bodies: list[Status | Telemetry]) -> None:
        """What the writer stores in one go: the statuses (one transaction), then the telemetry (one)."""
        statuses = [b for b in bodies if isinstance(b, Status)]
        if statuses and self.db.engine == "sqlite":
            for st in statuses:  # one at a time, as they come (SQLite's transactions do not nest)
                self._apply_status(st)
        elif statuses:
            # Serialised fleet-wide like every registry write; one commit for the whole burst of
            # statuses that arrives when devices (re)connect, rather than one per device.
            with self.db.tx():
                # No deployment under way (the usual case): nothing for a device to join, so the
                # two reads per status that adoption takes are skipped.
                active = self.db.query(
                    f"SELECT 1 AS x FROM deployments WHERE state IN {sql_in(DeploymentState.active())} LIMIT 1"
                )
                for st in statuses:
                    self._apply_status(st, adopt=bool(active))
        telemetry = [b for b in bodies if isinstance(b, Telemetry)]
        if telemetry:
            self._ingest_batch(telemetry)

    def _apply_status(self, st: Status, adopt: bool = True) -> None:
        """A device's status into the registry (PostgreSQL: within the caller's transaction)."""
        self.db.upsert_device(st)
        self.db.set_device_alerts(st.device, st.alerts)  # shown by the console
        if adopt and st.state == Presence.ONLINE:
            # A device new to the fleet, or newly matching, joins the deployments under way.
            device = self.db.device(st.device)
            if device is not None:
                self.rollouts.adopt(device)

    def _ingest_batch(self, batch: list[Telemetry]) -> list[bool]:
        """Store telemetry windows in one transaction; per window, False when it is a duplicate."""
        now = time.time()
        rows = []
        for t in batch:
            models = self._admit_models(t.device, t.models)
            rows.append((t, models, self._device_ts(t.ts, now)))
        self.db.ensure_partitions({ts for _, _, ts in rows})
        inserted = store_telemetry(self.db, rows, now)
        out = []
        for (t, models, _ts), ok in zip(rows, inserted):
            out.append(ok)
            if ok:
                self._count_telemetry(t, models)
            else:
                self.metrics.duplicates.inc()
        return out

    def _count_telemetry(self, t: Telemetry, models: dict[str, dict[str, Any]]) -> None:
        for name, m in models.items():
            # Label combinations are bounded: past the limit a (model, version) is not exported.
            if self._labels.allow("model_version", name, m["version"]):
                self.metrics.inferences.labels(name, m["version"]).inc(m["inferences"])
                self.metrics.errors.labels(name, m["version"]).inc(m["errors"])
            else:
                self._limited("metric_labels")
        if "dropped" in t.queue:
            if self._labels.allow("device", t.device):
                self.metrics.device_queue_dropped.labels(t.device).set(t.queue["dropped"])
            else:
                self._limited("metric_labels")

    def ingest_event(self, e: Event) -> bool:
        ts = self._device_ts(e.ts, time.time())
        with self.db.tx() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                (e.device, e.stream, e.seq, ts, e.deployment_id, e.state, e.to_json().decode()),
            ).rowcount
        if not inserted:
            self.metrics.duplicates.inc()
            return False
        self.rollouts.on_event(e)
        return True

    # --- package streaming (AWS IoT streams style) ---

    def _publish_block(self, device: str, payload: bytes) -> int:
        """One ``stream/data`` message (QoS 1); its message id (the stream server waits for its ack)."""
        assert self._client is not None
        return self._client.publish(topic(self.config.fleet, device, "stream/data"), payload, qos=1).mid

    @property
    def block_filter(self) -> BlockFilter | None:
        """Fault injection for tests and drills: what a block's data becomes (sent under its crc)."""
        return self.stream.block_filter

    @block_filter.setter
    def block_filter(self, value: BlockFilter | None) -> None:
        self.stream.block_filter = value

    # --- queries for the HTTP API and CLI ---

    def devices(self, since_s: float = 300.0) -> list[dict[str, Any]]:
        """The registry, each device with ``resources``: its system telemetry over the last ``since_s``."""
        resources = self.resource_summary(since_s)
        devices = self.db.devices()
        for d in devices:
            d["resources"] = resources.get(d["id"])
        return devices

    def resource_summary(self, since_s: float = 300.0) -> dict[str, dict[str, Any]]:
        """Per device: reports, mean/max CPU %, latest/max memory, max temperature, throttled reports.

        From the ``system`` field of the telemetry received in the last ``since_s``; a figure the
        device cannot read (no sensor) is None. Aggregated in SQLite, one pass over the window.
        """
        # Readers never trust stored values (rows of an older manager, a hand-edited database): only
        # numbers are aggregated, and what comes out is a finite number or None.
        num = _num if self.db.engine == "sqlite" else lambda f: self.db.json_num("system", f)
        typed_ts = "typeof(ts) IN ('integer', 'real')" if self.db.engine == "sqlite" else "TRUE"
        rows = self.db.query(
            f"""SELECT device, COUNT(*) AS reports,
                   MAX(CASE WHEN {typed_ts} THEN ts END) AS last_ts,
                   AVG({num("cpu_percent")}) AS cpu_mean,
                   MAX({num("cpu_percent")}) AS cpu_max,
                   MAX({num("mem_used_bytes")}) AS mem_used_max,
                   MAX({num("mem_total_bytes")}) AS mem_total,
                   MAX({num("temperature_c")}) AS temperature_max,
                   SUM(CASE WHEN COALESCE({num("throttled")}, 0) != 0 THEN 1 ELSE 0 END) AS throttled_reports,
                   COUNT({num("throttled")}) AS throttled_readable
               FROM telemetry WHERE received >= ? GROUP BY device""",
            (time.time() - since_s,),
        )
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            device = r.pop("device")
            readable = r.pop("throttled_readable")
            r = {k: _finite(v) for k, v in r.items()}
            if not readable:
                r["throttled_reports"] = None
            r["since_s"] = since_s
            out[device] = r
        return out

    def deploy(self, package_ref: str, spec: RolloutSpec, supersede: bool = False) -> dict[str, Any]:
        """Start a deployment; ``supersede``: take its devices over from running ones of the model."""
        return self.rollouts.create(self.packages.get(package_ref), spec, supersede=supersede)

    def telemetry_summary(self, since_s: float = 3600) -> dict[str, Any]:
        """Per model and version: inferences, errors, error rate and p95 over the last ``since_s``."""
        since = time.time() - since_s
        out: dict[str, Any] = {}
        for r in self.db.query(
            "SELECT model, version, inferences, errors, latency FROM telemetry_models WHERE ts >= ?", (since,)
        ):
            key = f"{r['model']}@{r['version']}"
            agg = out.setdefault(
                key,
                {
                    "model": r["model"],
                    "version": r["version"],
                    "inferences": 0,
                    "errors": 0,
                    "_hist": LatencyHistogram(),
                },
            )
            agg["inferences"] += _count(r["inferences"])
            agg["errors"] += _count(r["errors"])
            merge_latency(agg["_hist"], r["latency"])
        for agg in out.values():
            hist = agg.pop("_hist")
            agg["error_rate"] = agg["errors"] / agg["inferences"] if agg["inferences"] else 0.0
            agg["p95_ms"] = hist.quantile(0.95)
        typed = "typeof(queue_dropped) = 'integer'" if self.db.engine == "sqlite" else "TRUE"
        devices = self.db.query(
            "SELECT COUNT(*) AS messages, COUNT(DISTINCT device) AS devices, "
            f"COALESCE(SUM(CASE WHEN {typed} THEN queue_dropped END), 0) "
            "AS queue_dropped FROM telemetry WHERE ts >= ?",
            (since,),
        )[0]
        return {"since_s": since_s, **devices, "models": sorted(out.values(), key=lambda a: a["model"])}

    def render_metrics(self) -> bytes:
        m = self.metrics
        devices = self.db.devices()
        m.devices.labels(Presence.ONLINE).set(sum(d["online"] for d in devices))
        m.devices.labels(Presence.OFFLINE).set(sum(not d["online"] for d in devices))
        m.deployment_devices.clear()
        for dep in self.db.query(
            f"SELECT id FROM deployments WHERE state IN {sql_in(DeploymentState.active())}"
        ):
            for state, n in self.rollouts.status(dep["id"])["counts"].items():
                m.deployment_devices.labels(dep["id"], state).set(n)
        return generate_latest(m.registry)
