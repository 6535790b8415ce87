"""The fleet's MQTT protocol, version 1: topics, message schemas and their validation.

This module is the one definition of the wire format (documented for people
in ``docs/mqtt-protocol.md``); the agent, the manager, the tests and the
benchmark all import it. Every topic lives under one namespace per fleet and
device::

    edge/v1/{fleet}/{device}/status        device -> manager  retained, QoS 1, Last Will
    edge/v1/{fleet}/{device}/telemetry     device -> manager  QoS 1, sequence-numbered
    edge/v1/{fleet}/{device}/event         device -> manager  QoS 1, sequence-numbered
    edge/v1/{fleet}/{device}/stream/get    device -> manager  QoS 1, block requests
    edge/v1/{fleet}/{device}/desired       manager -> device  retained, QoS 1
    edge/v1/{fleet}/{device}/cmd           manager -> device  QoS 1
    edge/v1/{fleet}/{device}/stream/data   manager -> device  QoS 1, binary blocks

JSON messages are objects with ``"v": 1`` and a ``"type"``; a receiver
ignores fields it does not know (additions within v1 stay optional) and
refuses a missing or mistyped field with :class:`~fleet.errors.ProtocolError`,
which callers log and drop. Stream blocks are binary (a short JSON header and
the raw bytes) so that a package costs barely more than its size on the wire.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, ClassVar

from fleet.errors import ProtocolError

__all__ = [
    "BLOCK_MAGIC",
    "DEVICE_TOPICS",
    "EVENT_STATES",
    "MANAGER_TOPICS",
    "OTA_FAILURE_STEP",
    "OTA_START",
    "OTA_TRANSITIONS",
    "PROTOCOL_VERSION",
    "ROLLBACK_SUFFIX",
    "TERMINAL_EVENT_STATES",
    "AgentPhase",
    "Alert",
    "Block",
    "Command",
    "DeploymentState",
    "Desired",
    "DesiredAction",
    "DeviceDeploymentState",
    "Event",
    "EventState",
    "HealthPolicy",
    "OtaOutcome",
    "Presence",
    "Status",
    "StreamGet",
    "Telemetry",
    "Topic",
    "UpdateStep",
    "check_id",
    "decode_block",
    "encode_block",
    "parse_json_message",
    "parse_topic",
    "sql_in",
    "subscription",
    "topic",
]

PROTOCOL_VERSION = 1
_ROOT = "edge"
DEVICE_TOPICS = ("status", "telemetry", "event", "stream/get")
MANAGER_TOPICS = ("desired", "cmd", "stream/data")
# A fleet or device id is one topic level: no wildcards, no '/', nothing a broker treats specially.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

# =====================================================================================
# --- state machines: the one definition of every state string (wire and database) ---
# =====================================================================================
#
# Each machine is an enum whose members *are* strings (``str`` mixin): they compare equal to,
# JSON-encode as and bind into SQL as their value, so the wire format and the database are
# unchanged. Compare against members, never against bare strings (STYLE.md, "Mender, paho").


class _WireState(str, Enum):
    """A state that travels as its string: ``str()``, ``format()`` and f-strings give the value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


def sql_in(states: Iterable[_WireState]) -> str:
    """``('a', 'b')`` for an SQL ``IN`` clause; states are fixed identifiers, never user input."""
    return "(" + ", ".join(f"'{s.value}'" for s in states) + ")"


class DeploymentState(_WireState):
    """A deployment (``deployments.state``)::

        running ⇄ paused ─► aborted
        running ─► succeeded | completed_with_failures | completed_with_offline   (a late device
                   result recomputes which of the three)
        running | paused ─► superseded   (every device taken over by a newer deployment)
    """

    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    COMPLETED_WITH_OFFLINE = "completed_with_offline"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"

    @property
    def terminal(self) -> bool:
        """Finished: the rollout no longer moves (a device's late result may still change *which*
        completed state it is, but never makes it active again)."""
        return self not in _ACTIVE_DEPLOYMENT

    @property
    def completed(self) -> bool:
        """Ran to its end (not aborted, not superseded)."""
        return self in _COMPLETED_DEPLOYMENT

    @classmethod
    def active(cls) -> tuple[DeploymentState, ...]:
        return _ACTIVE_DEPLOYMENT

    @classmethod
    def terminal_states(cls) -> tuple[DeploymentState, ...]:
        return tuple(s for s in cls if s.terminal)


_ACTIVE_DEPLOYMENT = (DeploymentState.RUNNING, DeploymentState.PAUSED)
_COMPLETED_DEPLOYMENT = (
    DeploymentState.SUCCEEDED,
    DeploymentState.COMPLETED_WITH_FAILURES,
    DeploymentState.COMPLETED_WITH_OFFLINE,
)


class DeviceDeploymentState(_WireState):
    """One device in one deployment (``deployment_devices.state``)::

        pending ─start─► in_progress ─event─► succeeded | failed
        in_progress ─timeout─► timed_out (answered, or online) | offline (away, never answered)
        timed_out | offline ─late result─► succeeded | failed
        pending ─abort─► skipped          pending | in_progress ─newer deployment─► superseded
        in_progress | succeeded | timed_out | offline ─abort─► rolling_back ─► rolled_back | rollback_failed
    """

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    OFFLINE = "offline"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"

    @property
    def terminal(self) -> bool:
        """Done for its wave (offline and timed_out too: a late result may still replace them)."""
        return self not in (self.PENDING, self.IN_PROGRESS, self.ROLLING_BACK)

    @property
    def failure(self) -> bool:
        """Counts against the rollout's failure thresholds."""
        return self in (self.FAILED, self.TIMED_OUT)

    @property
    def awaiting_result(self) -> bool:
        """The device's own final result (succeeded or failed) may still replace this state."""
        return self in (self.PENDING, self.IN_PROGRESS, self.TIMED_OUT, self.OFFLINE)

    @classmethod
    def active(cls) -> tuple[DeviceDeploymentState, ...]:
        """States of devices a deployment still drives."""
        return (cls.PENDING, cls.IN_PROGRESS)


class EventState(_WireState):
    """What an ``event`` reports: a step of a deployment on the device."""

    ACCEPTED = "accepted"  # the desired state was read; work starts
    DOWNLOADING = "downloading"  # progress while blocks arrive
    VERIFIED = "verified"  # sha256 and signature checked, staged in the store
    SWAPPED = "swapped"  # self-test passed, the new version serves; the health window runs
    SUCCEEDED = "succeeded"  # health window passed and `current` committed
    FAILED = "failed"  # a step failed; the device rolled back locally (``step`` and ``reason`` say why)
    ROLLED_BACK = "rolled_back"  # the manager asked for the previous version and the device serves it

    @property
    def terminal(self) -> bool:
        return self in (self.SUCCEEDED, self.FAILED, self.ROLLED_BACK)


class UpdateStep(_WireState):
    """The OTA step a ``failed`` event names (``step``)."""

    DOWNLOAD = "download"
    VERIFY = "verify"
    LOAD = "load"
    SELFTEST = "selftest"
    SWAP = "swap"  # the agent restarted while swapping (the journal's phase)
    HEALTH = "health"
    COMMIT = "commit"


class DesiredAction(_WireState):
    """What a ``desired`` state asks for."""

    INSTALL = "install"
    ROLLBACK = "rollback"  # back to an earlier version (no health window)


# A rollback the manager orders (aborting deployment D) is desired state "D.rollback".
ROLLBACK_SUFFIX = ".rollback"


class Presence(_WireState):
    """A device's ``status.state`` (``offline`` is also its Last Will)."""

    ONLINE = "online"
    OFFLINE = "offline"


class Alert(_WireState):
    """A condition the agent reports in its status (``status.alerts``) until it clears."""

    # Another agent connects with this device id: the broker hands the session back and forth.
    DUPLICATE_DEVICE_ID = "duplicate_device_id"


class AgentPhase(_WireState):
    """The agent's OTA machine; the forward phases are also the journal's ``phase``.

    :data:`OTA_TRANSITIONS` is the whole machine: from each phase, on each outcome, the next one.
    """

    IDLE = "idle"  # nothing in progress (the start and end of every attempt)
    DOWNLOAD = "download"  # downgrade guard (desired version), size and space checks, stream blocks, sha256
    VERIFY = "verify"  # expanded size vs free disk, signature and artifact hashes, staged; guard again
    SWAP = "swap"  # the runtime loads the new version and runs its self-test; the old one stays loaded
    HEALTH = "health"  # the watchdog window (skipped for a rollback)
    COMMIT = "commit"  # `current` switches atomically; old versions are collected
    REPORT = "report"  # succeeded (or rolled_back), journal closed
    REVERT = "revert"  # swap back to the committed version after a failure
    FAIL = "fail"  # report failed (step, reason), journal closed
    ABANDON = "abandon"  # a newer desired state arrived: swap back if swapped, drop the attempt

    @property
    def swapped(self) -> bool:
        """The new version may be serving: leaving by failure or supersession must swap back."""
        return self in (self.HEALTH, self.COMMIT)


class OtaOutcome(_WireState):
    """How a phase of the agent's OTA machine ended."""

    OK = "ok"
    ERROR = "error"  # UpdateError, DownloadError or anything unexpected: roll back locally
    SUPERSEDED = "superseded"  # a newer desired state (or the agent stopping)


# The agent's OTA machine, after Mender's client (src/mender-update/daemon/state_machine/): every
# phase, outcome and next phase in one place. A (phase, outcome) pair not listed cannot happen.
OTA_TRANSITIONS: Mapping[tuple[AgentPhase, OtaOutcome], AgentPhase] = {
    (AgentPhase.DOWNLOAD, OtaOutcome.OK): AgentPhase.VERIFY,
    (AgentPhase.DOWNLOAD, OtaOutcome.ERROR): AgentPhase.FAIL,
    (AgentPhase.DOWNLOAD, OtaOutcome.SUPERSEDED): AgentPhase.ABANDON,
    (AgentPhase.VERIFY, OtaOutcome.OK): AgentPhase.SWAP,
    (AgentPhase.VERIFY, OtaOutcome.ERROR): AgentPhase.FAIL,
    (AgentPhase.VERIFY, OtaOutcome.SUPERSEDED): AgentPhase.ABANDON,
    (AgentPhase.SWAP, OtaOutcome.OK): AgentPhase.HEALTH,
    # A swap that fails leaves the old version serving: nothing to swap back.
    (AgentPhase.SWAP, OtaOutcome.ERROR): AgentPhase.FAIL,
    (AgentPhase.SWAP, OtaOutcome.SUPERSEDED): AgentPhase.ABANDON,
    (AgentPhase.HEALTH, OtaOutcome.OK): AgentPhase.COMMIT,
    (AgentPhase.HEALTH, OtaOutcome.ERROR): AgentPhase.REVERT,
    (AgentPhase.HEALTH, OtaOutcome.SUPERSEDED): AgentPhase.ABANDON,
    (AgentPhase.COMMIT, OtaOutcome.OK): AgentPhase.REPORT,
    (AgentPhase.COMMIT, OtaOutcome.ERROR): AgentPhase.REVERT,
    (AgentPhase.REVERT, OtaOutcome.OK): AgentPhase.FAIL,
    (AgentPhase.FAIL, OtaOutcome.OK): AgentPhase.IDLE,
    (AgentPhase.REPORT, OtaOutcome.OK): AgentPhase.IDLE,
    (AgentPhase.ABANDON, OtaOutcome.OK): AgentPhase.IDLE,
    # The closing phases end the attempt whatever happens (their handlers log what went wrong);
    # a swap back that failed is still reported as the failure that caused it.
    (AgentPhase.REVERT, OtaOutcome.ERROR): AgentPhase.FAIL,
    (AgentPhase.FAIL, OtaOutcome.ERROR): AgentPhase.IDLE,
    (AgentPhase.REPORT, OtaOutcome.ERROR): AgentPhase.IDLE,
    (AgentPhase.ABANDON, OtaOutcome.ERROR): AgentPhase.IDLE,
}
# The first phase of an attempt, and the step a failure in each forward phase is reported as
# when the error does not name one itself (an UpdateError does: load, selftest, ...).
OTA_START = AgentPhase.DOWNLOAD
OTA_FAILURE_STEP: Mapping[AgentPhase, UpdateStep] = {
    AgentPhase.DOWNLOAD: UpdateStep.DOWNLOAD,
    AgentPhase.VERIFY: UpdateStep.VERIFY,
    AgentPhase.SWAP: UpdateStep.LOAD,
    AgentPhase.HEALTH: UpdateStep.HEALTH,
    AgentPhase.COMMIT: UpdateStep.COMMIT,
}

# Kept for importers of the tuples (the enums are the definition).
EVENT_STATES = EventState.values()
TERMINAL_EVENT_STATES = tuple(s.value for s in EventState if s.terminal)

# =====================================================================================
# --- end of the state machines ---
# =====================================================================================


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ProtocolError(f"{what} {value!r} is not a valid id (letters, digits, '.', '_', '-'; 1-64)")
    return value


@dataclass(frozen=True)
class Topic:
    fleet: str
    device: str
    kind: str  # one of DEVICE_TOPICS or MANAGER_TOPICS

    def __str__(self) -> str:
        return f"{_ROOT}/v{PROTOCOL_VERSION}/{self.fleet}/{self.device}/{self.kind}"


def topic(fleet: str, device: str, kind: str) -> str:
    """The topic string for ``kind`` (e.g. ``"telemetry"``) of one device."""
    if kind not in DEVICE_TOPICS + MANAGER_TOPICS:
        raise ProtocolError(f"unknown topic kind {kind!r}")
    return str(Topic(check_id(fleet, "fleet"), check_id(device, "device"), kind))


def subscription(fleet: str, kind: str, device: str = "+") -> str:
    """A filter for ``kind`` of every device of ``fleet`` (or of one device)."""
    return f"{_ROOT}/v{PROTOCOL_VERSION}/{fleet}/{device}/{kind}"


def parse_topic(text: str) -> Topic:
    """Split a topic into fleet, device and kind; ProtocolError for anything outside the layout."""
    parts = text.split("/")
    if len(parts) < 5 or parts[0] != _ROOT:
        raise ProtocolError(f"topic {text!r} is outside {_ROOT}/v{PROTOCOL_VERSION}/")
    if parts[1] != f"v{PROTOCOL_VERSION}":
        raise ProtocolError(f"topic {text!r} is protocol {parts[1]}, this side speaks v{PROTOCOL_VERSION}")
    kind = "/".join(parts[4:])
    if kind not in DEVICE_TOPICS + MANAGER_TOPICS:
        raise ProtocolError(f"topic {text!r} has unknown kind {kind!r}")
    return Topic(check_id(parts[2], "fleet"), check_id(parts[3], "device"), kind)


# --- field checks: each names the field, so a dropped message's log line says what was wrong ---


def _get(
    d: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    if key not in d or d[key] is None:
        if default is ...:
            raise ProtocolError(f"{where}: missing field {key!r}")
        return default
    value = d[key]
    # bool is an int in Python; a JSON true where a number is expected is still an error.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ProtocolError(f"{where}: field {key!r} must be {types}, got a boolean")
    if not isinstance(value, types):
        raise ProtocolError(f"{where}: field {key!r} must be {types}, got {type(value).__name__}")
    return value


def _nonneg(d: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    value = _get(d, key, (int, float), where, default)
    if value is not None and value is not default and value < 0:
        raise ProtocolError(f"{where}: field {key!r} must be >= 0, got {value}")
    return value


def _count(d: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    value = _get(d, key, int, where, default)
    if value is not default and value is not None and value < 0:
        raise ProtocolError(f"{where}: field {key!r} must be >= 0, got {value}")
    return value


def _sha(d: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    value = _get(d, key, str, where, default)
    if value is not default and value is not None and not _SHA_RE.match(value):
        raise ProtocolError(f"{where}: field {key!r} is not a sha256 (64 lowercase hex characters)")
    return value


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class _Message:
    """JSON encoding shared by the message classes."""

    TYPE: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"v": PROTOCOL_VERSION, "type": self.TYPE, **_clean(asdict(self))}  # type: ignore[call-overload]

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Status(_Message):
    """What the device is and runs; retained, so the manager learns it on (re)subscribing."""

    TYPE: ClassVar[str] = "status"
    device: str
    state: str  # a Presence: "online" or "offline" (the Last Will)
    ts: float
    agent_version: str = ""
    profile: str | None = None
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    models: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {version, sha256}
    deployment_id: str | None = None  # the deployment being worked on, if any
    # Alert values (e.g. "duplicate_device_id") the device reports until they clear; optional in v1.
    alerts: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Status:
        w = "status"
        state = _get(d, "state", str, w)
        if state not in Presence.values():
            raise ProtocolError(f"status: state {state!r} is neither 'online' nor 'offline'")
        alerts = _get(d, "alerts", list, w, [])
        if len(alerts) > 16 or not all(isinstance(a, str) and len(a) <= 64 for a in alerts):
            raise ProtocolError("status: alerts must be at most 16 strings of at most 64 characters")
        models = _get(d, "models", dict, w, {})
        for name, m in models.items():
            if not isinstance(m, dict) or not isinstance(m.get("version"), str):
                raise ProtocolError(f"status: models[{name!r}] needs a string version")
            _sha(m, "sha256", f"status models[{name!r}]")
        tags = _get(d, "tags", list, w, [])
        if not all(isinstance(t, str) for t in tags):
            raise ProtocolError("status: tags must be strings")
        return cls(
            device=check_id(_get(d, "device", str, w), "device"),
            state=state,
            ts=_nonneg(d, "ts", w),
            agent_version=_get(d, "agent_version", str, w, ""),
            profile=_get(d, "profile", str, w, None),
            tags=list(tags),
            group=_get(d, "group", str, w, None),
            models=models,
            deployment_id=_get(d, "deployment_id", str, w, None),
            alerts=list(alerts),
        )


@dataclass(frozen=True)
class Telemetry(_Message):
    """One reporting window. ``(stream, seq)`` is unique: the manager counts a pair once.

    ``models[name]``: ``version``, ``inferences``, ``errors`` and ``latency_ms``
    (``{"le": [upper bounds], "counts": [per bucket, one more for +Inf]}``).
    ``system``: ``cpu_percent``, ``mem_used_bytes``, ``mem_total_bytes``,
    ``temperature_c``, ``throttled`` where readable. ``queue``: ``depth`` and
    ``dropped`` of the device's durable queue.
    """

    TYPE: ClassVar[str] = "telemetry"
    device: str
    stream: str  # the id of the device's queue: seq restarts only with a new queue
    seq: int
    ts: float
    window_s: float
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    queue: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Telemetry:
        w = "telemetry"
        models = _get(d, "models", dict, w, {})
        for name, m in models.items():
            where = f"telemetry models[{name!r}]"
            if not isinstance(m, dict):
                raise ProtocolError(f"{where} must be an object")
            _get(m, "version", str, where)
            _nonneg(m, "inferences", where)
            _nonneg(m, "errors", where)
            hist = _get(m, "latency_ms", dict, where, None)
            if hist is not None:
                le, counts = _get(hist, "le", list, where), _get(hist, "counts", list, where)
                if len(counts) != len(le) + 1 or not all(isinstance(c, int) and c >= 0 for c in counts):
                    raise ProtocolError(f"{where}: latency_ms needs len(le)+1 non-negative integer counts")
        return cls(
            device=check_id(_get(d, "device", str, w), "device"),
            stream=check_id(_get(d, "stream", str, w), "stream"),
            seq=_count(d, "seq", w),
            ts=_nonneg(d, "ts", w),
            window_s=_nonneg(d, "window_s", w),
            models=models,
            system=_get(d, "system", dict, w, {}),
            queue=_get(d, "queue", dict, w, {}),
        )


@dataclass(frozen=True)
class Event(_Message):
    """A step of a deployment on the device; sequence-numbered like telemetry."""

    TYPE: ClassVar[str] = "event"
    device: str
    stream: str
    seq: int
    ts: float
    deployment_id: str
    model: str
    sha256: str
    state: str  # an EventState
    version: str | None = None
    reason: str | None = None  # why it failed, or what happened
    step: str | None = None  # the OTA step that failed: download, verify, install, selftest, swap, health
    serving_sha256: str | None = None  # what the device serves after this event
    progress: dict[str, int] | None = None  # {"bytes": n, "total": m} while downloading

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        w = "event"
        state = _get(d, "state", str, w)
        if state not in EventState.values():
            raise ProtocolError(f"event: unknown state {state!r}")
        return cls(
            device=check_id(_get(d, "device", str, w), "device"),
            stream=check_id(_get(d, "stream", str, w), "stream"),
            seq=_count(d, "seq", w),
            ts=_nonneg(d, "ts", w),
            deployment_id=check_id(_get(d, "deployment_id", str, w), "deployment_id"),
            model=check_id(_get(d, "model", str, w), "model"),
            sha256=_sha(d, "sha256", w),
            state=state,
            version=_get(d, "version", str, w, None),
            reason=_get(d, "reason", str, w, None),
            step=_get(d, "step", str, w, None),
            serving_sha256=_sha(d, "serving_sha256", w, None),
            progress=_get(d, "progress", dict, w, None),
        )


@dataclass(frozen=True)
class HealthPolicy:
    """How long and against what a device watches a new version before committing it."""

    window_s: float = 10.0
    max_error_rate: float = 0.05  # errors / inferences of the new version
    max_latency_ratio: float = 2.0  # p95 of the new version / p95 of the previous one
    min_inferences: int = 20  # fewer than this: latency is not judged, errors still are

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HealthPolicy:
        w = "desired.health"
        return cls(
            window_s=float(_nonneg(d, "window_s", w, cls.window_s)),
            max_error_rate=float(_nonneg(d, "max_error_rate", w, cls.max_error_rate)),
            max_latency_ratio=float(_nonneg(d, "max_latency_ratio", w, cls.max_latency_ratio)),
            min_inferences=int(_nonneg(d, "min_inferences", w, cls.min_inferences)),
        )


@dataclass(frozen=True)
class Desired(_Message):
    """The version a device should serve; retained, so a device that was off converges on return."""

    TYPE: ClassVar[str] = "desired"
    deployment_id: str
    model: str
    sha256: str
    size: int
    version: str
    ts: float
    action: str = DesiredAction.INSTALL  # or ROLLBACK to an earlier version (no health window)
    block_size: int = 65536
    health: HealthPolicy = field(default_factory=HealthPolicy)
    # An install of a version lower than the committed one is refused by the agent's downgrade
    # guard unless this is set (``edge fleet deploy --allow-downgrade``); a rollback always may.
    allow_downgrade: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Desired:
        w = "desired"
        action = _get(d, "action", str, w, DesiredAction.INSTALL.value)
        if action not in DesiredAction.values():
            raise ProtocolError(f"desired: unknown action {action!r}")
        block = _get(d, "block_size", int, w, 65536)
        if not 512 <= block <= 1 << 20:
            raise ProtocolError(f"desired: block_size {block} is outside [512, 1 MiB]")
        return cls(
            deployment_id=check_id(_get(d, "deployment_id", str, w), "deployment_id"),
            model=check_id(_get(d, "model", str, w), "model"),
            sha256=_sha(d, "sha256", w),
            size=_count(d, "size", w),
            version=_get(d, "version", str, w),
            ts=_nonneg(d, "ts", w),
            action=action,
            block_size=block,
            health=HealthPolicy.from_dict(_get(d, "health", dict, w, {})),
            allow_downgrade=_get(d, "allow_downgrade", bool, w, False),
        )


@dataclass(frozen=True)
class Command(_Message):
    """A one-off request: ``report`` (publish status and telemetry now)."""

    TYPE: ClassVar[str] = "cmd"
    cmd: str
    id: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Command:
        cmd = _get(d, "cmd", str, "cmd")
        if cmd not in ("report",):
            raise ProtocolError(f"cmd: unknown command {cmd!r}")
        return cls(cmd=cmd, id=_get(d, "id", str, "cmd", ""))


@dataclass(frozen=True)
class StreamGet(_Message):
    """Ask for ``count`` blocks of ``block_size`` from block ``offset`` of file ``file_id`` (a sha256).

    Modelled on AWS IoT streams (``f`` file, ``l`` block size, ``o`` offset,
    ``n`` blocks, ``c`` client token), with long names.
    """

    TYPE: ClassVar[str] = "stream_get"
    file_id: str
    block_size: int
    offset: int
    count: int
    token: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamGet:
        w = "stream_get"
        block, count = _get(d, "block_size", int, w), _get(d, "count", int, w)
        if not 512 <= block <= 1 << 20 or not 1 <= count <= 64:
            raise ProtocolError(f"stream_get: block_size {block} or count {count} out of range")
        return cls(
            file_id=_sha(d, "file_id", w),
            block_size=block,
            offset=_count(d, "offset", w),
            count=count,
            token=_get(d, "token", str, w, ""),
        )


_PARSERS: dict[str, Any] = {
    "status": Status,
    "telemetry": Telemetry,
    "event": Event,
    "desired": Desired,
    "cmd": Command,
    "stream/get": StreamGet,
}


def parse_json_message(kind: str, payload: bytes) -> Any:
    """Decode and validate the JSON message expected on topic ``kind``; ProtocolError if it is not one."""
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError(f"no JSON message is defined for topic kind {kind!r}")
    try:
        d = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{kind}: payload is not JSON ({exc})") from None
    if not isinstance(d, dict):
        raise ProtocolError(f"{kind}: payload must be a JSON object")
    if d.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"{kind}: protocol version {d.get('v')!r}, this side speaks {PROTOCOL_VERSION}")
    if d.get("type") != parser.TYPE:
        raise ProtocolError(f"{kind}: message type {d.get('type')!r}, expected {parser.TYPE!r}")
    return parser.from_dict(d)


# --- stream blocks: b"EDGB" | u16 header length | JSON header | raw bytes ---

BLOCK_MAGIC = b"EDGB"
_HEAD = struct.Struct(">4sH")


@dataclass(frozen=True)
class Block:
    """One block of a file (``data`` empty and ``error`` set when the manager cannot serve it)."""

    file_id: str
    index: int
    total_size: int
    data: bytes
    crc32: int
    token: str = ""
    error: str | None = None

    @property
    def intact(self) -> bool:
        return zlib.crc32(self.data) == self.crc32


def encode_block(
    file_id: str,
    index: int,
    total_size: int,
    data: bytes,
    token: str = "",
    error: str | None = None,
    crc32: int | None = None,
) -> bytes:
    """A stream/data payload; ``crc32`` defaults to the data's own (given apart only to inject faults)."""
    crc = zlib.crc32(data) if crc32 is None else crc32
    header: dict[str, Any] = {"f": file_id, "i": index, "n": total_size, "c": crc, "t": token}
    if error is not None:
        header["e"] = error
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(BLOCK_MAGIC, len(head)) + head + data


def decode_block(payload: bytes) -> Block:
    """Split a stream/data payload; ProtocolError when it is not a block (the crc is checked by the caller)."""
    if len(payload) < _HEAD.size:
        raise ProtocolError("stream block shorter than its header")
    magic, hlen = _HEAD.unpack_from(payload)
    if magic != BLOCK_MAGIC or len(payload) < _HEAD.size + hlen:
        raise ProtocolError("stream block with a bad magic or a truncated header")
    try:
        h = json.loads(payload[_HEAD.size : _HEAD.size + hlen])
        return Block(
            file_id=_sha(h, "f", "block"),
            index=_get(h, "i", int, "block"),
            total_size=_get(h, "n", int, "block"),
            data=payload[_HEAD.size + hlen :],
            crc32=_get(h, "c", int, "block"),
            token=_get(h, "t", str, "block", ""),
            error=_get(h, "e", str, "block", None),
        )
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ProtocolError(f"stream block header is not a JSON object ({exc})") from None
