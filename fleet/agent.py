"""The device agent (``edge agent``): status, telemetry and over-the-air updates over MQTT.

Threads: paho's network thread only parses and hands messages over; the
*main loop* (:meth:`Agent.run`) turns acknowledgements into deleted outbox
rows, writes telemetry windows and publishes the outbox; the *updater*
thread carries out one desired state at a time, walking the OTA machine's one transition table
(:data:`fleet.protocol.OTA_TRANSITIONS`, one ``_ota_<phase>`` handler per phase)::

    download (guard, size, resumable, sha256) ─► verify (expanded size, signature, staged; guard)
      ─► swap (self-test) ─► health window ─► commit `current` ─► report succeeded (or rolled_back)
    error before the swap ─► fail      error after it ─► revert (swap back) ─► fail (step, reason)
    newer desired state ─► abandon (swap back if swapped)

State under ``state_dir``: ``models/`` (the :class:`~edge_runtime.store.ModelStore`,
whose ``current`` link moves only at commit), ``fleet/packages/<sha256>.edgepkg``
(verified package files, needed to load a version), ``fleet/downloads/<sha256>.part``
(a download's prefix, resumed after a restart), ``fleet/outbox.sqlite`` (the
durable queue) and ``fleet/journal.json`` (the attempt in progress and the
deployments already finished, so a restart neither repeats nor forgets one).

Guards before anything is installed: a package over ``max_package_bytes`` is refused before the
download starts (and a manager that sends more bytes than announced is cut off); a download the
state directory's file system has no room for (its remaining bytes, the extracted copy, plus
``min_free_bytes``) is refused; with ``downgrade_guard`` (the default), an install whose version
is lower than the committed one (:func:`fleet.versions.compare_versions`) is refused unless the
desired state allows it (``allow_downgrade``) or is a rollback. Each is reported as a ``failed``
event with its step and reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_runtime._version import __version__ as runtime_version
from edge_runtime.store import ModelStore
from fleet.discovery import find_broker
from fleet.errors import (
    DigestMismatchError,
    DowngradeError,
    DownloadError,
    DownloadTooLargeError,
    InsufficientSpaceError,
    ProtocolError,
    UpdateError,
)
from fleet.mqtt import BrokerConfig, make_client
from fleet.protocol import (
    OTA_FAILURE_STEP,
    OTA_START,
    OTA_TRANSITIONS,
    ROLLBACK_SUFFIX,
    AgentPhase,
    Alert,
    Command,
    Desired,
    DesiredAction,
    Event,
    EventState,
    HealthPolicy,
    OtaOutcome,
    Presence,
    Status,
    StreamGet,
    Telemetry,
    UpdateStep,
    check_id,
    decode_block,
    parse_json_message,
    parse_topic,
    topic,
)
from fleet.queue import DurableQueue
from fleet.targets import LLMStats, RuntimeTarget, StandaloneTarget, VersionStats
from fleet.versions import compare_versions

__all__ = ["DEFAULT_MAX_PACKAGE_BYTES", "Agent", "AgentConfig"]

DEFAULT_MAX_PACKAGE_BYTES = 512 << 20
_RECONNECT_MIN_S, _RECONNECT_MAX_S = 1, 10  # fleet.mqtt.make_client's reconnect delays

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    """Everything ``edge agent`` needs.

    ``broker=None``, or a broker whose ``url`` is empty: find the manager with zeroconf and connect
    to the broker it advertises (with the given broker's credentials, CA file and fingerprint; a
    configured fingerprint wins over the advertised one).
    """

    fleet: str
    device: str
    state_dir: Path
    broker: BrokerConfig | None = None
    trust: tuple[Path, ...] = ()  # .pub files or directories; empty: packages need no signature
    tags: tuple[str, ...] = ()
    group: str | None = None
    profile: str | None = None  # reported to the manager; default: detected
    telemetry_interval_s: float = 10.0
    queue_max_bytes: int = 8 << 20
    queue_max_age_s: float = 7 * 86400
    download_window: int = 8  # blocks requested at once
    block_timeout_s: float = 3.0  # re-request missing blocks after this long
    stall_timeout_s: float = 120.0  # give a download up after this long without progress
    probe_interval_s: float = 0.5  # self-test runs during a health window (the watchdog)
    discovery_timeout_s: float = 10.0
    max_inflight: int = 32  # outbox messages published and not yet acknowledged
    max_package_bytes: int = DEFAULT_MAX_PACKAGE_BYTES  # larger packages are refused before download
    min_free_bytes: int = 64 << 20  # left free on the state directory's file system after an install
    downgrade_guard: bool = True  # refuse installing a version lower than the committed one


class _Superseded(Exception):
    """A newer desired state arrived; the current attempt stops (and rolls back if it swapped)."""


@dataclass
class _Attempt:
    """What the OTA machine's handlers hand on to each other for one desired state."""

    desired: Desired
    previous: Any  # the committed InstalledModel when the attempt started, or None
    path: Path | None = None  # the verified-by-sha256 package file
    installed: Any = None  # the InstalledModel staged in the store
    before: VersionStats | None = None  # the previous version's stats, the health window's baseline
    left: AgentPhase | None = None  # the forward phase that failed or was superseded
    error: BaseException | None = None


def _done_state(d: Desired) -> EventState:
    """What a desired state reports once its version is committed."""
    return EventState.ROLLED_BACK if d.action == DesiredAction.ROLLBACK else EventState.SUCCEEDED


# Journaled phases after which a restarted agent settles the attempt instead of resuming it: the new
# version may have been serving, and `current` says whether it was committed.
_RESTART_SETTLES = (AgentPhase.SWAP, AgentPhase.HEALTH, AgentPhase.COMMIT)


class Agent:
    """One device's agent. ``run()`` blocks until :meth:`stop`; :meth:`start` runs it in a thread."""

    # Two agents with one device id take the broker session from each other (MQTT 3.1.1 closes the
    # older connection without a reason; MQTT 5 says "session taken over", 0x8E). A connection the
    # broker drops within TAKEOVER_WINDOW_S of accepting it, TAKEOVER_COUNT times in a row (or once
    # with 0x8E), is taken for that: the agent says so, raises the duplicate_device_id alert in its
    # status and backs off (TAKEOVER_BASE_S doubling to TAKEOVER_MAX_BACKOFF_S) instead of
    # reconnecting every second. A connection that lasts STABLE_S restores the normal reconnect
    # delay; the alert clears after ALERT_CLEAR_S without another takeover.
    TAKEOVER_WINDOW_S = 5.0
    TAKEOVER_COUNT = 3
    TAKEOVER_BASE_S = 2
    TAKEOVER_MAX_BACKOFF_S = 120
    STABLE_S = 30.0
    ALERT_CLEAR_S = 600.0
    _SESSION_TAKEN_OVER = 0x8E

    def __init__(self, config: AgentConfig, runtime: RuntimeTarget | None = None) -> None:
        self.config = config
        check_id(config.fleet, "fleet")
        check_id(config.device, "device")
        self._trust = None
        if config.trust:
            from edge_runtime.package import TrustStore

            self._trust = TrustStore.load(*config.trust)
        else:
            log.warning("no trust store configured: packages are installed without a signature check")
        self.runtime: RuntimeTarget = runtime or StandaloneTarget(trust_store=self._trust)
        root = Path(config.state_dir)
        self.store = ModelStore(root, trust_store=self._trust)
        self._dir = root / "fleet"
        self._packages = self._dir / "packages"
        self._downloads = self._dir / "downloads"
        for d in (self._packages, self._downloads):
            d.mkdir(parents=True, exist_ok=True)
        self.outbox = DurableQueue(
            self._dir / "outbox.sqlite", config.queue_max_bytes, config.queue_max_age_s
        )
        self._journal_path = self._dir / "journal.json"
        self._journal: dict[str, Any] = self._read_journal()

        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._sent_up_to = 0  # highest seq published on this connection
        self._resend = threading.Event()  # (re)connected: publish the outbox from the start
        self._blocks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._desired: Desired | None = None
        self._desired_cv = threading.Condition()
        self._deployment_id: str | None = None
        self._last_stats: dict[str, VersionStats] = {}
        self._profile_obj: Any = None
        self._threads: list[threading.Thread] = []
        self._status_dirty = threading.Event()
        # The takeover detector (see the class attributes); written by paho's thread.
        self._link_lock = threading.Lock()
        self._connected_at = 0.0
        self._short_sessions = 0  # consecutive connections the broker dropped soon after accepting
        self._backoff_s: int | None = None  # the reconnect delay while backing off, else None
        self._alerts: dict[Alert, float] = {}  # alert -> when it was last seen (monotonic)
        self.on_event: Callable[[Event], None] | None = None  # a hook for embedding programs and tests

    # --- journal: what survives a restart besides the store and the outbox ---

    def _read_journal(self) -> dict[str, Any]:
        try:
            data = json.loads(self._journal_path.read_text())
            if isinstance(data, dict):
                data.setdefault("finished", {})
                return data
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("journal %s is unreadable (%s); starting a new one", self._journal_path, exc)
        return {"attempt": None, "finished": {}}

    def _write_journal(self) -> None:
        # Keep the 200 most recent finished deployments: enough to never repeat a live one.
        finished = self._journal["finished"]
        if len(finished) > 200:
            for key in sorted(finished, key=lambda k: finished[k].get("ts", 0))[:-200]:
                del finished[key]
        tmp = self._journal_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self._journal, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._journal_path)

    # --- lifecycle ---

    def start(self) -> Agent:
        """Run in a background thread (for embedding and tests)."""
        t = threading.Thread(target=self.run, name=f"agent-{self.config.device}", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        with self._desired_cv:
            self._desired_cv.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def run(self) -> None:
        """Serve the committed models, connect, and loop until :meth:`stop`."""
        self._recover()
        broker = self.config.broker
        if broker is None or not broker.url:
            broker = find_broker(
                self.config.fleet, broker or BrokerConfig(url=""), self._stopping, self.config.discovery_timeout_s
            )
            if broker is None:  # stopped while looking
                self.runtime.close()
                self.outbox.close()
                return
        self._client = self._connect(broker)
        updater = threading.Thread(target=self._updater, name="agent-updater", daemon=True)
        updater.start()
        self._threads.append(updater)
        next_telemetry = time.monotonic() + self.config.telemetry_interval_s
        try:
            while not self._stopping.is_set():
                self._drain_acks()
                self._check_link()
                if time.monotonic() >= next_telemetry:
                    next_telemetry += self.config.telemetry_interval_s
                    self._queue_telemetry()
                if self._status_dirty.is_set() and self._connected.is_set():
                    self._status_dirty.clear()
                    self._publish_status()
                self._pump_outbox()
                self._wake.wait(0.05)
                self._wake.clear()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        client = self._client
        if client is not None:
            if self._connected.is_set():
                info = client.publish(
                    self._topic("status"), self._status(Presence.OFFLINE).to_json(), qos=1, retain=True
                )
                try:
                    info.wait_for_publish(timeout=2)
                except (RuntimeError, ValueError):
                    pass
            client.disconnect()
            client.loop_stop()
        self.runtime.close()
        self.outbox.close()

    # --- MQTT plumbing ---

    def _topic(self, kind: str) -> str:
        return topic(self.config.fleet, self.config.device, kind)

    def _connect(self, broker: BrokerConfig) -> mqtt.Client:
        client = make_client(f"edge-{self.config.fleet}-{self.config.device}", broker)
        client.will_set(self._topic("status"), self._status(Presence.OFFLINE).to_json(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = lambda _c, _u, mid, _rc, _p: (self._acks.put(mid), self._wake.set())
        log.info("connecting to %s as %s/%s", broker.public_url, self.config.fleet, self.config.device)
        client.connect_async(broker.host, broker.port, keepalive=broker.keepalive)
        client.loop_start()
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        for kind in ("desired", "cmd", "stream/data"):
            client.subscribe(self._topic(kind), qos=1)
        with self._link_lock:
            self._connected_at = time.monotonic()
        self._connected.set()
        self._resend.set()
        self._status_dirty.set()  # the status carries any alert raised while away
        self._wake.set()
        log.info("connected to the broker")

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not was_connected or self._stopping.is_set():
            return  # a connection attempt that failed, or our own disconnect
        with self._link_lock:
            lasted = time.monotonic() - self._connected_at
            taken_over = getattr(rc, "value", rc) == self._SESSION_TAKEN_OVER
            if taken_over or lasted < self.TAKEOVER_WINDOW_S:
                self._short_sessions += 1
            else:
                self._short_sessions = 0
            if not taken_over and self._short_sessions < self.TAKEOVER_COUNT:
                log.warning("disconnected from the broker (%s); reconnecting", rc)
                return
            excess = max(0, self._short_sessions - self.TAKEOVER_COUNT)
            backoff = int(min(self.TAKEOVER_MAX_BACKOFF_S, self.TAKEOVER_BASE_S * 2**excess))
            self._backoff_s = backoff
            self._alerts[Alert.DUPLICATE_DEVICE_ID] = time.monotonic()
            count = self._short_sessions
        self._status_dirty.set()
        client.reconnect_delay_set(min_delay=backoff, max_delay=max(backoff, _RECONNECT_MAX_S))
        log.error(
            "another agent is using device id %r in fleet %r: the broker closed this connection %d "
            "time(s) in a row within %.0f s of accepting it (%s), which is what it does when a second "
            "client connects with the same id. Give every device its own id (--device). "
            "Reconnecting in %d s (backing off).",
            self.config.device,
            self.config.fleet,
            count,
            self.TAKEOVER_WINDOW_S,
            rc,
            backoff,
        )

    def _check_link(self) -> None:
        """Main loop: after STABLE_S connected, stop backing off; clear an alert that has gone quiet."""
        if not self._connected.is_set():
            return
        now = time.monotonic()
        cleared: list[Alert] = []
        with self._link_lock:
            stable = now - self._connected_at >= self.STABLE_S
            restore = stable and self._backoff_s is not None
            if stable:
                self._short_sessions = 0
                self._backoff_s = None
                for alert, seen in list(self._alerts.items()):
                    if now - seen >= self.ALERT_CLEAR_S:
                        del self._alerts[alert]
                        cleared.append(alert)
        if restore and self._client is not None:
            self._client.reconnect_delay_set(min_delay=_RECONNECT_MIN_S, max_delay=_RECONNECT_MAX_S)
            log.info("the broker connection is stable again; normal reconnect delays")
        if cleared:
            log.info("alert(s) cleared: %s", ", ".join(cleared))
            self._status_dirty.set()

    @property
    def alerts(self) -> tuple[Alert, ...]:
        """The alerts the agent's status reports now."""
        with self._link_lock:
            return tuple(sorted(self._alerts))

    @property
    def reconnect_backoff_s(self) -> int | None:
        """The reconnect delay while backing off from a session takeover loop, else None."""
        with self._link_lock:
            return self._backoff_s

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Runs on paho's thread: parse, hand over, return. Never raise: a bad message is dropped.
        try:
            kind = parse_topic(msg.topic).kind
            if kind == "stream/data":
                self._blocks.put(decode_block(msg.payload))
            elif kind == "desired":
                if not msg.payload:
                    return  # a cleared retained message
                desired = parse_json_message(kind, msg.payload)
                with self._desired_cv:
                    self._desired = desired
                    self._desired_cv.notify_all()
            elif kind == "cmd":
                cmd: Command = parse_json_message(kind, msg.payload)
                if cmd.cmd == "report":
                    self._status_dirty.set()
                    self._queue_telemetry()
            else:
                raise ProtocolError(f"the agent does not receive {kind!r} messages")
        except ProtocolError as exc:
            log.warning("dropped a message on %s: %s", msg.topic, exc)
        except Exception:
            log.exception("dropped a message on %s: unexpected error", msg.topic)

    def _drain_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            seq = self._inflight.pop(mid, None)
            if seq is not None:
                self.outbox.ack(seq)

    def _pump_outbox(self) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            return
        if self._resend.is_set():
            # A new connection: whatever was unacknowledged is sent again (the manager drops duplicates).
            self._resend.clear()
            self._inflight.clear()
            self._sent_up_to = 0
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for msg in self.outbox.peek(room, after=self._sent_up_to):
            info = client.publish(self._topic(msg.kind), msg.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # not connected after all: the next connection resends
            self._inflight[info.mid] = msg.seq
            self._sent_up_to = msg.seq

    def _publish_status(self) -> None:
        if self._client is not None:
            self._client.publish(
                self._topic("status"), self._status(Presence.ONLINE).to_json(), qos=1, retain=True
            )

    def _status(self, state: Presence) -> Status:
        models = {}
        for name in self.store.names():
            try:
                cur = self.store.current(name)
            except Exception:  # noqa: BLE001 - a store being changed by another process
                cur = None
            if cur is not None:
                models[name] = {"version": cur.version, "sha256": cur.sha256}
        return Status(
            device=self.config.device,
            state=state,
            ts=time.time(),
            agent_version=runtime_version,
            profile=self.config.profile or self._profile_name(),
            tags=list(self.config.tags),
            group=self.config.group,
            models=models,
            deployment_id=self._deployment_id,
            alerts=[a.value for a in self.alerts],
        )

    def _profile_name(self) -> str | None:
        profile = self._profile()
        return getattr(profile, "name", None)

    def _profile(self) -> Any:
        if self._profile_obj is None:
            try:
                from device_profiles import detect_profile

                self._profile_obj = detect_profile()
            except Exception as exc:  # noqa: BLE001 - telemetry without a profile is still telemetry
                log.debug("no device profile: %s", exc)
                self._profile_obj = False
        return self._profile_obj or None

    # --- telemetry and events: always through the durable outbox ---

    def _queue_telemetry(self) -> None:
        models: dict[str, dict[str, Any]] = {}
        for name in self.store.names():
            stats = self.runtime.stats(name)
            if stats is None:
                continue
            window = stats.since(self._last_stats.get(name, VersionStats(stats.version)))
            self._last_stats[name] = stats
            models[name] = {
                "version": stats.version,
                "inferences": window.inferences,
                "errors": window.errors,
                "latency_ms": window.latency.to_dict(),
            }
            if window.llm is not None:
                models[name]["llm"] = window.llm.to_dict()
        system = self._system()
        depth, dropped = self.outbox.depth(), self.outbox.dropped()
        self.outbox.put(
            "telemetry",
            lambda seq: Telemetry(
                device=self.config.device,
                stream=self.outbox.stream,
                seq=seq,
                ts=time.time(),
                window_s=self.config.telemetry_interval_s,
                models=models,
                system=system,
                queue={"depth": depth, "dropped": dropped},
            ).to_json(),
        )
        self._wake.set()

    def _system(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            import psutil

            out["cpu_percent"] = psutil.cpu_percent(interval=None)
            vm = psutil.virtual_memory()
            out["mem_used_bytes"], out["mem_total_bytes"] = vm.total - vm.available, vm.total
        except ImportError:
            out["load_1m"] = os.getloadavg()[0]
        profile = self._profile()
        if profile is not None:
            from device_profiles import read_temperature_c, read_throttled

            try:
                out["temperature_c"] = read_temperature_c(profile)
                throttled = read_throttled(profile)
                out["throttled"] = throttled.raw if throttled is not None else None
            except Exception as exc:  # noqa: BLE001 - sensors are best effort
                log.debug("sensors unreadable: %s", exc)
        return {k: v for k, v in out.items() if v is not None}

    def _event(self, d: Desired, state: EventState, **fields: Any) -> None:
        def build(seq: int) -> bytes:
            event = Event(
                device=self.config.device,
                stream=self.outbox.stream,
                seq=seq,
                ts=time.time(),
                deployment_id=d.deployment_id,
                model=d.model,
                sha256=d.sha256,
                version=d.version,
                state=state,
                **fields,
            )
            if self.on_event is not None:
                self.on_event(event)
            return event.to_json()

        self.outbox.put("event", build)
        log.info(
            "deployment %s: %s%s",
            d.deployment_id,
            state,
            f" ({fields['reason']})" if "reason" in fields else "",
        )
        self._wake.set()

    # --- start-up: serve what is committed, settle an interrupted attempt ---

    def _package_path(self, sha256: str) -> Path:
        return self._packages / f"{sha256}.edgepkg"

    def _recover(self) -> None:
        for name in self.store.names():
            cur = self.store.current(name)
            if cur is None:
                continue
            try:
                self.runtime.swap(name, self._package_path(cur.sha256))
                log.info("serving %s %s (%s)", name, cur.version, cur.sha256[:12])
            except (UpdateError, OSError) as exc:
                # The committed version must have passed its self-test once; fall back to the previous.
                log.error("committed %s %s does not load (%s); rolling back", name, cur.version, exc)
                prev = self.store.rollback(name)
                self.runtime.swap(name, self._package_path(prev.sha256))
        attempt = self._journal.get("attempt")
        if attempt and attempt.get("phase") in _RESTART_SETTLES:
            d = Desired.from_dict(attempt["desired"])
            current = self.store.current(d.model)
            if current is not None and current.sha256 == d.sha256:
                self._finish(d, _done_state(d), reason="committed just before the agent restarted")
            else:
                # Killed after swapping but before committing: `current` still names the old version,
                # which is what we just loaded. Record the failure so the attempt is not retried.
                reason = "the agent restarted during the swap or health window; the previous version serves"
                self._finish(d, EventState.FAILED, step=attempt["phase"], reason=reason)

    def _finish(self, d: Desired, state: EventState, **fields: Any) -> None:
        current = self.store.current(d.model)
        fields.setdefault("serving_sha256", current.sha256 if current else None)
        self._event(d, state, **{k: v for k, v in fields.items() if v is not None})
        self._journal["finished"][d.deployment_id] = {"state": state, "sha256": d.sha256, "ts": time.time()}
        self._journal["attempt"] = None
        self._write_journal()
        self._deployment_id = None
        self._status_dirty.set()

    # --- the updater thread: one desired state at a time, through the OTA machine ---

    def _updater(self) -> None:
        while not self._stopping.is_set():
            with self._desired_cv:
                while self._desired is None and not self._stopping.is_set():
                    self._desired_cv.wait(0.5)
                d, self._desired = self._desired, None
            if d is None:
                continue
            try:
                self._apply(d)
            except Exception:
                log.exception("deployment %s: unexpected error", d.deployment_id)

    def _check_superseded(self) -> None:
        if self._stopping.is_set():
            raise _Superseded()
        with self._desired_cv:
            if self._desired is not None:
                raise _Superseded()

    def _apply(self, d: Desired) -> None:
        if d.deployment_id in self._journal["finished"]:
            return  # already done (the retained desired state is delivered on every connect)
        current = self.store.current(d.model)
        if current is not None and current.sha256 == d.sha256:
            self._finish(d, _done_state(d), reason="already serving")
            return
        self._deployment_id = d.deployment_id
        self._status_dirty.set()
        if d.action == DesiredAction.INSTALL:
            self._event(d, EventState.ACCEPTED)
        self._run_ota(_Attempt(d, previous=current))

    def _run_ota(self, a: _Attempt) -> None:
        """Walk :data:`fleet.protocol.OTA_TRANSITIONS` from the first phase back to idle.

        Each phase is one handler (``_ota_<phase>``); how it ends (ok, error, superseded) and the
        table alone decide the next phase. Forward phases are journaled as they start, so that a
        restarted agent knows whether the new version may have been serving.
        """
        phase = OTA_START
        while phase is not AgentPhase.IDLE:
            if phase in OTA_FAILURE_STEP:  # a forward phase
                self._journal["attempt"] = {"desired": a.desired.to_dict(), "phase": phase.value}
                self._write_journal()
            try:
                getattr(self, f"_ota_{phase.value}")(a)
                outcome = OtaOutcome.OK
            except _Superseded:
                outcome, a.left = OtaOutcome.SUPERSEDED, phase
            except Exception as exc:  # every failure rolls back through the table
                outcome, a.left, a.error = OtaOutcome.ERROR, phase, exc
                if not isinstance(exc, (UpdateError, DownloadError)):
                    log.exception("deployment %s: %s failed unexpectedly", a.desired.deployment_id, phase)
            following = OTA_TRANSITIONS.get((phase, outcome))
            if following is None:
                log.critical(
                    "deployment %s: no transition from %s on %s; the agent stops this attempt",
                    a.desired.deployment_id,
                    phase,
                    outcome,
                )
                following = AgentPhase.IDLE
            phase = following

    # The handlers of the forward phases: raise to fail (UpdateError names its step), _Superseded
    # when a newer desired state arrives.

    def _ota_download(self, a: _Attempt) -> None:
        self._check_downgrade(a.desired, a.desired.version, a.previous)  # on the version the manager names
        a.path = self._download(a.desired)

    def _ota_verify(self, a: _Attempt) -> None:
        assert a.path is not None
        self._check_expanded_space(a.desired, a.path)
        a.installed = self._install(a.desired, a.path)
        self._check_downgrade(a.desired, a.installed.version, a.previous)  # the signed manifest's version

    def _ota_swap(self, a: _Attempt) -> None:
        assert a.path is not None
        a.before = self.runtime.stats(a.desired.model)
        self.runtime.swap(a.desired.model, a.path)
        if a.desired.action == DesiredAction.INSTALL:
            self._event(a.desired, EventState.SWAPPED)

    def _ota_health(self, a: _Attempt) -> None:
        if a.desired.action == DesiredAction.ROLLBACK:
            return  # back to a version that served before: no health window
        self._watch_health(a.desired, a.before)

    def _ota_commit(self, a: _Attempt) -> None:
        assert a.installed is not None
        self.store.activate(a.desired.model, a.installed.sha256)
        self._gc(a.desired.model)

    # The handlers of the closing phases.

    def _ota_report(self, a: _Attempt) -> None:
        self._finish(a.desired, _done_state(a.desired))

    def _ota_revert(self, a: _Attempt) -> None:
        self._swap_back(a.desired, a.previous.sha256 if a.previous else None)

    def _ota_fail(self, a: _Attempt) -> None:
        exc = a.error
        if isinstance(exc, UpdateError):
            step, reason = exc.step, exc.reason
        else:
            step = OTA_FAILURE_STEP.get(a.left, UpdateStep.DOWNLOAD) if a.left else UpdateStep.DOWNLOAD
            reason = str(exc) if isinstance(exc, DownloadError) else f"{type(exc).__name__}: {exc}"
        self._finish(a.desired, EventState.FAILED, step=step, reason=reason)

    def _ota_abandon(self, a: _Attempt) -> None:
        if a.left is not None and a.left.swapped:
            self._swap_back(a.desired, a.previous.sha256 if a.previous else None)
        self._journal["attempt"] = None
        self._write_journal()
        self._deployment_id = None
        self._status_dirty.set()
        log.info("deployment %s superseded by a newer desired state", a.desired.deployment_id)

    def _check_downgrade(self, d: Desired, version: str, current: Any) -> None:
        """DowngradeError if installing ``version`` over the committed one is a refused downgrade.

        A rollback passes when it undoes the deployment whose version this device serves (what a
        manager's abort sends); any other rollback (a replayed or forged one naming an older
        deployment) is judged like an install.
        """
        if not self.config.downgrade_guard or current is None:
            return
        if d.allow_downgrade and d.action == DesiredAction.INSTALL:
            return
        if d.action == DesiredAction.ROLLBACK and self._undoes_what_serves(d, current):
            return
        order = compare_versions(version, current.version)
        if order is None:
            log.warning(
                "deployment %s: versions %r and %r are not comparable; the downgrade guard lets it pass",
                d.deployment_id,
                version,
                current.version,
            )
        elif order < 0:
            if d.action == DesiredAction.ROLLBACK:
                raise DowngradeError(
                    f"rollback to version {version} is lower than the committed {current.version} and "
                    "does not undo the deployment this device serves (a replayed rollback?); refused by "
                    "the downgrade guard"
                )
            raise DowngradeError(
                f"version {version} is lower than the committed {current.version}; refused by the "
                "downgrade guard (deploy with allow_downgrade, or roll back, to go back)"
            )

    def _undoes_what_serves(self, d: Desired, current: Any) -> bool:
        """Whether rollback ``d`` names (``<deployment>.rollback``) the deployment that installed
        the committed version: only then is it the manager's abort of what this device runs."""
        if not d.deployment_id.endswith(ROLLBACK_SUFFIX):
            return False
        done = self._journal["finished"].get(d.deployment_id[: -len(ROLLBACK_SUFFIX)])
        return (
            isinstance(done, dict)
            and done.get("state") == EventState.SUCCEEDED
            and done.get("sha256") == current.sha256
        )

    def _swap_back(self, d: Desired, sha256: str | None) -> None:
        if sha256 is None:
            log.error("deployment %s: no previous version of %s to swap back to", d.deployment_id, d.model)
            return
        try:
            self.runtime.swap(d.model, self._package_path(sha256))
        except UpdateError as exc:
            log.critical("deployment %s: swapping back to %s failed: %s", d.deployment_id, sha256[:12], exc)

    def _check_expanded_space(self, d: Desired, path: Path) -> None:
        """InsufficientSpaceError unless the package *as extracted* (the manifest's artifact sizes,
        which the reader holds the archive's entries to) and ``min_free_bytes`` fit.

        The check before the download can only use the compressed size the desired state names: a
        1 MiB package may expand to 1 GiB. A version already in the store needs no room.
        """
        if any(m.sha256 == d.sha256 for m in self.store.versions(d.model)):
            return
        from edge_runtime.package import open_package

        try:
            with open_package(path, self._trust, self.store.limits) as pkg:
                expanded = len(pkg.manifest_bytes) + sum(a.size for a in pkg.manifest.artifacts)
        except Exception as exc:
            path.unlink(missing_ok=True)
            raise UpdateError(UpdateStep.VERIFY, f"{type(exc).__name__}: {exc}") from exc
        need = expanded + self.config.min_free_bytes
        free = self._free_bytes()
        if free < need:
            path.unlink(missing_ok=True)  # it cannot be installed here; do not keep its bytes either
            raise InsufficientSpaceError(
                f"{free} bytes free in {self._downloads}, {need} needed: the package expands to "
                f"{expanded} bytes ({d.size} compressed), and {self.config.min_free_bytes} are kept free"
            )

    def _install(self, d: Desired, path: Path) -> Any:
        """Verify the signature and hashes and extract into the store (does not activate)."""
        try:
            installed = self.store.install(path)
        except Exception as exc:
            path.unlink(missing_ok=True)
            raise UpdateError(UpdateStep.VERIFY, f"{type(exc).__name__}: {exc}") from exc
        if installed.name != d.model:
            raise UpdateError(UpdateStep.VERIFY, f"the package is model {installed.name!r}, not {d.model!r}")
        self._event(d, EventState.VERIFIED)
        return installed

    def _gc(self, name: str) -> None:
        self.store.gc(name, keep=2)
        keep = {m.sha256 for n in self.store.names() for m in self.store.versions(n)}
        for f in self._packages.glob("*.edgepkg"):
            if f.stem not in keep:
                f.unlink(missing_ok=True)

    # --- download: MQTT stream blocks, resumable from the .part prefix ---

    def _download(self, d: Desired) -> Path:
        final = self._package_path(d.sha256)
        if final.is_file():
            return final
        limit = self.config.max_package_bytes
        if d.size > limit:
            raise DownloadTooLargeError(
                f"the package is {d.size} bytes, over this device's limit of {limit} (max_package_bytes)"
            )
        part = self._downloads / f"{d.sha256}.part"
        block, size = d.block_size, d.size
        nblocks = max(1, -(-size // block))
        partial = part.stat().st_size if part.exists() else 0  # a download resumed after a restart
        self._check_space(d, remaining=size - min(partial, size))
        try:
            with open(part, "a+b") as f:
                have = min(f.seek(0, os.SEEK_END) // block, nblocks)
                f.truncate(have * block)  # a torn last block is fetched again
                if have:
                    log.info(
                        "deployment %s: resuming download at block %d/%d", d.deployment_id, have, nblocks
                    )
                self._fetch_blocks(d, f, have, nblocks)
                f.flush()
                os.fsync(f.fileno())
        except DownloadTooLargeError:
            part.unlink(missing_ok=True)
            raise
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != d.sha256:
            part.unlink(missing_ok=True)
            raise DigestMismatchError(
                f"downloaded {size} bytes hash to {digest.hexdigest()[:12]}, the deployment names "
                f"{d.sha256[:12]}; the download was discarded"
            )
        os.replace(part, final)
        return final

    def _free_bytes(self) -> int:
        """Free bytes on the file system of the state directory (where downloads and the store live)."""
        return shutil.disk_usage(self._downloads).free

    def _check_space(self, d: Desired, remaining: int) -> None:
        """InsufficientSpaceError unless the rest of the download, its extraction into the store
        (about the package's size again) and ``min_free_bytes`` fit."""
        need = remaining + d.size + self.config.min_free_bytes
        free = self._free_bytes()
        if free < need:
            raise InsufficientSpaceError(
                f"{free} bytes free in {self._downloads}, {need} needed ({remaining} to download, "
                f"{d.size} to install, {self.config.min_free_bytes} kept free)"
            )

    def _fetch_blocks(self, d: Desired, f: Any, have: int, nblocks: int) -> None:
        assert self._client is not None
        token = uuid.uuid4().hex[:8]
        while not self._blocks.empty():  # blocks of an earlier attempt
            self._blocks.get_nowait()
        last_progress, next_report = time.monotonic(), have + max(1, nblocks // 4)
        # The block timeout doubles with each round that brought nothing (up to 8 times): on a busy
        # manager the blocks are queued, not lost, and asking again at once only adds to the queue.
        timeout = self.config.block_timeout_s
        while have < nblocks:
            self._check_superseded()
            if time.monotonic() - last_progress > self.config.stall_timeout_s:
                raise DownloadError(f"no block arrived for {self.config.stall_timeout_s:.0f} s")
            if not self._connected.wait(0.5):
                continue
            count = min(self.config.download_window, nblocks - have)
            request = StreamGet(d.sha256, d.block_size, have, count, token)
            self._client.publish(self._topic("stream/get"), request.to_json(), qos=1)
            got: dict[int, bytes] = {}
            deadline = time.monotonic() + timeout
            while len(got) < count and time.monotonic() < deadline:
                try:
                    b = self._blocks.get(timeout=0.1)
                except queue.Empty:
                    continue
                if b.file_id != d.sha256 or not have <= b.index < have + count:
                    continue  # a late block of an earlier request
                if b.error is not None:
                    raise DownloadError(f"the manager cannot serve the package: {b.error}")
                if not b.intact:
                    log.warning("block %d of %s failed its crc32; asking again", b.index, d.sha256[:12])
                    continue
                got[b.index] = b.data
            # Append the contiguous run received; anything after a gap is asked for again.
            timeout = (
                self.config.block_timeout_s
                if have in got
                else min(8 * self.config.block_timeout_s, 2 * timeout)
            )
            while have in got:
                data = got.pop(have)
                if len(data) > d.block_size or have * d.block_size + len(data) > d.size:
                    raise DownloadTooLargeError(
                        f"block {have} would take the download past the {d.size} bytes announced; "
                        "the download was discarded"
                    )
                f.write(data)
                have += 1
                last_progress = time.monotonic()
            if have >= next_report or have == nblocks:
                f.flush()
                os.fsync(f.fileno())
                written = min(have * d.block_size, d.size)
                self._event(d, EventState.DOWNLOADING, progress={"bytes": written, "total": d.size})
                next_report = have + max(1, nblocks // 4)

    def _watch_health(self, d: Desired, before: VersionStats | None) -> None:
        """Probe the new version for the window; raise UpdateError('health') on errors or slowness."""
        policy = d.health
        start_stats = self.runtime.stats(d.model)
        deadline = time.monotonic() + policy.window_s
        baseline_p95 = before.latency.quantile(0.95) if before and before.latency.total else None
        while time.monotonic() < deadline:
            self._check_superseded()
            self.runtime.probe(d.model)
            time.sleep(self.config.probe_interval_s)
        now = self.runtime.stats(d.model)
        if now is None or start_stats is None:
            raise UpdateError(UpdateStep.HEALTH, "the new version stopped serving during the health window")
        window = now.since(start_stats)
        # Probes ran inside this window, so at least one inference is always judged.
        if window.inferences and window.errors / window.inferences > policy.max_error_rate:
            raise UpdateError(
                UpdateStep.HEALTH,
                f"{window.errors} errors in {window.inferences} inferences "
                f"(over the {policy.max_error_rate:.0%} allowed)",
            )
        self._judge_llm(policy, before.llm if before else None, window.llm)
        p95 = window.latency.quantile(0.95)
        if (
            baseline_p95
            and p95 is not None
            and window.inferences >= policy.min_inferences
            and p95 > policy.max_latency_ratio * baseline_p95
        ):
            raise UpdateError(
                UpdateStep.HEALTH,
                f"p95 latency {p95:.1f} ms is over {policy.max_latency_ratio}x the previous version's "
                f"{baseline_p95:.1f} ms",
            )

    @staticmethod
    def _judge_llm(policy: HealthPolicy, before: LLMStats | None, window: LLMStats | None) -> None:
        """A language model's window against the previous version: p95 time to first token and the
        median tokens/s, when both have ``min_generations`` generations; UpdateError('health') if worse."""
        if before is None or window is None:
            return
        if before.generations < policy.min_generations or window.generations < policy.min_generations:
            return
        ttft, baseline_ttft = window.ttft_ms.quantile(0.95), before.ttft_ms.quantile(0.95)
        if ttft is not None and baseline_ttft and ttft > policy.max_ttft_ratio * baseline_ttft:
            raise UpdateError(
                UpdateStep.HEALTH,
                f"p95 time to first token {ttft:.1f} ms is over {policy.max_ttft_ratio}x the previous "
                f"version's {baseline_ttft:.1f} ms",
            )
        rate, baseline_rate = window.tokens_per_s.quantile(0.5), before.tokens_per_s.quantile(0.5)
        if (
            policy.min_tokens_per_s_ratio
            and rate is not None
            and baseline_rate
            and rate < policy.min_tokens_per_s_ratio * baseline_rate
        ):
            raise UpdateError(
                UpdateStep.HEALTH,
                f"median decode rate {rate:.1f} tokens/s is under {policy.min_tokens_per_s_ratio}x the "
                f"previous version's {baseline_rate:.1f} tokens/s",
            )
