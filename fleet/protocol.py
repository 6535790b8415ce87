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
import math
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
    "MAX_BUCKETS",
    "MAX_INT",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MODELS",
    "MAX_REASON",
    "MAX_TAGS",
    "MAX_TEXT",
    "MAX_TS",
    "MAX_WINDOW_S",
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
    "check_text",
    "decode_block",
    "encode_block",
    "json_depth",
    "loads_bounded",
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
# C0 and C1 control characters: refused in names and versions (they would reach operators' terminals).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# --- bounds on what a message may carry (docs/security.md "Fleet limits") ---
MAX_JSON_BYTES = 256 << 10  # one JSON message's payload
MAX_JSON_DEPTH = 16  # nesting of a JSON message (and of an API body)
MAX_INT = 1 << 53  # counts, sizes, sequence numbers: exact in every JSON reader, fits SQLite
MAX_TS = 4102444800.0  # 2100-01-01: a device timestamp is epoch seconds in [0, MAX_TS]
MAX_WINDOW_S = 7 * 86400.0  # a telemetry window or a health window
MAX_TEXT = 128  # versions, profiles, groups, tags, agent versions, steps, tokens, command ids
MAX_REASON = 2048  # an event's reason (longer ones are cut, not refused: the result matters)
MAX_TAGS = 32  # tags of one device
MAX_MODELS = 32  # models in one status or telemetry message
MAX_BUCKETS = 64  # bounds of one latency histogram
MAX_LATENCY_MS = 1e9  # a histogram bound

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


def _show(value: Any) -> str:
    """A short rendering of a refused value for an error message (never a 4,000-digit integer)."""
    text = (
        f"a {value.bit_length()}-bit integer" if isinstance(value, int) and value > MAX_INT else repr(value)
    )
    return text if len(text) <= 40 else text[:37] + "..."


def _in_range(value: float, lo: float, hi: float) -> bool:
    if isinstance(value, int):
        return lo <= value <= hi
    return math.isfinite(value) and lo <= value <= hi


def _nonneg(
    d: Mapping[str, Any], key: str, where: str, default: Any = ..., hi: float = float(MAX_INT)
) -> Any:
    """A finite number in [0, hi] (NaN, Infinity and 1e400 are refused)."""
    return _number(d, key, where, default, 0.0, hi)


def _number(d: Mapping[str, Any], key: str, where: str, default: Any, lo: float, hi: float) -> Any:
    value = _get(d, key, (int, float), where, default)
    if value is not default and value is not None and not _in_range(value, lo, hi):
        raise ProtocolError(
            f"{where}: field {key!r} must be a finite number in [{lo:g}, {hi:g}], got {_show(value)}"
        )
    return value


def _count(
    d: Mapping[str, Any], key: str, where: str, default: Any = ..., hi: int = MAX_INT, integral: bool = False
) -> Any:
    """An integer in [0, hi]; ``integral``: a float with no fraction (``10.0``) is taken as one too."""
    value = _get(d, key, (int, float) if integral else int, where, default)
    if value is default or value is None:
        return value
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise ProtocolError(f"{where}: field {key!r} must be an integer, got {_show(value)}")
        value = int(value)
    if not 0 <= value <= hi:
        raise ProtocolError(f"{where}: field {key!r} must be an integer in [0, {hi}], got {_show(value)}")
    return value


def _ts(d: Mapping[str, Any], key: str, where: str) -> float:
    """A device timestamp: epoch seconds in [0, MAX_TS] (year 2100)."""
    return float(_nonneg(d, key, where, hi=MAX_TS))


def _text(d: Mapping[str, Any], key: str, where: str, default: Any = ..., max_len: int = MAX_TEXT) -> Any:
    """A string of at most ``max_len`` characters without control characters."""
    value = _get(d, key, str, where, default)
    if value is default or value is None:
        return value
    return check_text(value, f"{where}: field {key!r}", max_len)


def check_text(value: Any, what: str, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise ProtocolError(f"{what} is {len(value)} characters long, over the limit of {max_len}")
    if _CONTROL_RE.search(value):
        raise ProtocolError(f"{what} contains control characters")
    return value


def _reason(d: Mapping[str, Any], key: str, where: str) -> str | None:
    """Free text (why a step failed): control characters blanked, cut at MAX_REASON characters."""
    value = _get(d, key, str, where, None)
    if value is None:
        return None
    value = _CONTROL_RE.sub(" ", value)
    return value if len(value) <= MAX_REASON else value[: MAX_REASON - 3] + "..."


def _sha(d: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    value = _get(d, key, str, where, default)
    if value is not default and value is not None and not _SHA_RE.match(value):
        raise ProtocolError(f"{where}: field {key!r} is not a sha256 (64 lowercase hex characters)")
    return value


def _mapping(d: Mapping[str, Any], key: str, where: str, max_items: int) -> dict[str, Any]:
    value = _get(d, key, dict, where, {})
    if len(value) > max_items:
        raise ProtocolError(f"{where}: field {key!r} has {len(value)} entries, over the limit of {max_items}")
    return value


def json_depth(value: Any) -> int:
    """How deeply ``value`` (a decoded JSON document) nests lists and objects; iterative."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in item if isinstance(child, (dict, list)))
    return depth


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_bounded(
    payload: bytes | str,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    finite: bool = True,
) -> Any:
    """``json.loads`` for untrusted input: a size and nesting limit, no NaN/Infinity, no overflow to inf.

    Anything else raises :class:`ProtocolError` (a ValueError) with the reason. ``finite=False``
    lets ``NaN``, ``Infinity`` and ``1e400`` through as floats, for a caller whose own field checks
    refuse them naming the field (the HTTP API's deployment specs).
    """
    if len(payload) > max_bytes:
        raise ProtocolError(f"payload of {len(payload)} bytes is over the limit of {max_bytes}")
    try:
        if finite:
            value = json.loads(payload, parse_constant=_refuse_constant, parse_float=_finite_float)
        else:
            value = json.loads(payload)
    except RecursionError:
        raise ProtocolError(f"payload nests deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, a 5,000-digit integer, NaN
        raise ProtocolError(f"payload is not JSON ({exc})") from None
    if json_depth(value) > max_depth:
        raise ProtocolError(f"payload nests deeper than {max_depth} levels")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a float")
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
        models: dict[str, dict[str, str]] = {}
        for name, m in _mapping(d, "models", w, MAX_MODELS).items():
            where = f"status models[{_show(name)}]"
            check_id(name, "status: model name")
            if not isinstance(m, dict):
                raise ProtocolError(f"{where} must be an object")
            models[name] = {"version": _text(m, "version", where), "sha256": _sha(m, "sha256", where)}
        tags = _get(d, "tags", list, w, [])
        if len(tags) > MAX_TAGS:
            raise ProtocolError(f"status: {len(tags)} tags, over the limit of {MAX_TAGS}")
        for tag in tags:
            check_text(tag, "status: a tag")
        deployment_id = _get(d, "deployment_id", str, w, None)
        return cls(
            device=check_id(_get(d, "device", str, w), "device"),
            state=state,
            ts=_ts(d, "ts", w),
            agent_version=_text(d, "agent_version", w, ""),
            profile=_text(d, "profile", w, None),
            tags=list(dict.fromkeys(tags)),
            group=_text(d, "group", w, None),
            models=models,
            deployment_id=None if deployment_id is None else check_id(deployment_id, "deployment_id"),
            alerts=list(alerts),
        )


@dataclass(frozen=True)
class Telemetry(_Message):
    """One reporting window. ``(stream, seq)`` is unique: the manager counts a pair once.

    ``models[name]``: ``version``, ``inferences``, ``errors`` and ``latency_ms``
    (``{"le": [upper bounds], "counts": [per bucket, one more for +Inf]}``); a
    language model adds ``llm``: ``generations``, ``tokens`` and the histograms
    ``ttft_ms``, ``itl_ms``, ``queue_ms`` and ``tokens_per_s`` of the window.
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
        models: dict[str, dict[str, Any]] = {}
        for name, m in _mapping(d, "models", w, MAX_MODELS).items():
            where = f"telemetry models[{_show(name)}]"
            check_id(name, "telemetry: model name")
            if not isinstance(m, dict):
                raise ProtocolError(f"{where} must be an object")
            inferences = _count(m, "inferences", where, integral=True)
            errors = _count(m, "errors", where, integral=True)
            if errors > inferences:
                raise ProtocolError(f"{where}: {errors} errors in {inferences} inferences")
            entry: dict[str, Any] = {
                "version": _text(m, "version", where),
                "inferences": inferences,
                "errors": errors,
            }
            hist = _get(m, "latency_ms", dict, where, None)
            if hist is not None:
                entry["latency_ms"] = _histogram(hist, f"{where} latency_ms")
            llm = _get(m, "llm", dict, where, None)
            if llm is not None:
                entry["llm"] = _llm_window(llm, f"{where} llm")
            models[name] = entry
        return cls(
            device=check_id(_get(d, "device", str, w), "device"),
            stream=check_id(_get(d, "stream", str, w), "stream"),
            seq=_count(d, "seq", w),
            ts=_ts(d, "ts", w),
            window_s=float(_nonneg(d, "window_s", w, hi=MAX_WINDOW_S)),
            models=models,
            system=_system(_get(d, "system", dict, w, {})),
            queue=_known(_get(d, "queue", dict, w, {}), _QUEUE_FIELDS, "telemetry queue"),
        )


# Known telemetry fields: (low, high, integer only). Unknown ones are ignored and not kept.
_SYSTEM_FIELDS: dict[str, tuple[float, float, bool]] = {
    "cpu_percent": (0.0, 100.0, False),
    "mem_used_bytes": (0.0, float(MAX_INT), True),
    "mem_total_bytes": (0.0, float(MAX_INT), True),
    "temperature_c": (-273.15, 1000.0, False),
    "throttled": (0.0, float(1 << 32), True),  # the raw flag word (Raspberry Pi firmware)
    "load_1m": (0.0, 1e6, False),
}
_QUEUE_FIELDS: dict[str, tuple[float, float, bool]] = {
    "depth": (0.0, float(MAX_INT), True),
    "dropped": (0.0, float(MAX_INT), True),
}


def _known(d: Mapping[str, Any], fields: dict[str, tuple[float, float, bool]], where: str) -> dict[str, Any]:
    """The known numeric fields of ``d``, each checked against its range; the rest left out."""
    out: dict[str, Any] = {}
    for key, (lo, hi, integer) in fields.items():
        if d.get(key) is None:
            continue
        if integer:
            out[key] = _count(d, key, where, hi=int(hi), integral=True)
        else:
            out[key] = float(_number(d, key, where, ..., lo, hi))
    return out


def _system(d: Mapping[str, Any]) -> dict[str, Any]:
    out = _known(d, _SYSTEM_FIELDS, "telemetry system")
    if out.get("mem_used_bytes", 0) > out.get("mem_total_bytes", MAX_INT):
        raise ProtocolError("telemetry system: mem_used_bytes is over mem_total_bytes")
    return out


LLM_HISTOGRAMS = ("ttft_ms", "itl_ms", "queue_ms", "tokens_per_s")


def _llm_window(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A language model's telemetry window: two counts and up to four histograms (unknown keys dropped)."""
    out: dict[str, Any] = {
        "generations": _count(d, "generations", where, 0, integral=True),
        "tokens": _count(d, "tokens", where, 0, integral=True),
    }
    for key in LLM_HISTOGRAMS:
        hist = _get(d, key, dict, where, None)
        if hist is not None:
            out[key] = _histogram(hist, f"{where} {key}")
    return out


def _histogram(hist: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"le": [...], "counts": [...]}``: increasing finite bounds, one more non-negative count."""
    le, counts = _get(hist, "le", list, where), _get(hist, "counts", list, where)
    if not 1 <= len(le) <= MAX_BUCKETS:
        raise ProtocolError(f"{where}: {len(le)} bucket bounds, allowed 1 to {MAX_BUCKETS}")
    if len(counts) != len(le) + 1:
        raise ProtocolError(f"{where}: needs len(le)+1 counts, got {len(counts)} for {len(le)} bounds")
    bounds: list[float] = []
    for b in le:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not _in_range(b, 0.0, MAX_LATENCY_MS):
            raise ProtocolError(
                f"{where}: bound {_show(b)} is not a finite number in [0, {MAX_LATENCY_MS:g}]"
            )
        if bounds and b <= bounds[-1]:
            raise ProtocolError(f"{where}: bounds must increase ({_show(b)} after {bounds[-1]:g})")
        bounds.append(b)
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_INT:
            raise ProtocolError(f"{where}: count {_show(c)} is not an integer in [0, {MAX_INT}]")
    return {"le": bounds, "counts": list(counts)}


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
            ts=_ts(d, "ts", w),
            deployment_id=check_id(_get(d, "deployment_id", str, w), "deployment_id"),
            model=check_id(_get(d, "model", str, w), "model"),
            sha256=_sha(d, "sha256", w),
            state=state,
            version=_text(d, "version", w, None),
            reason=_reason(d, "reason", w),
            step=_text(d, "step", w, None),
            serving_sha256=_sha(d, "serving_sha256", w, None),
            progress=_progress(_get(d, "progress", dict, w, None)),
        )


def _progress(d: Mapping[str, Any] | None) -> dict[str, int] | None:
    if d is None:
        return None
    out = {k: _count(d, k, "event progress", None) for k in ("bytes", "total")}
    return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class HealthPolicy:
    """How long and against what a device watches a new version before committing it."""

    window_s: float = 10.0
    max_error_rate: float = 0.05  # errors / inferences of the new version
    max_latency_ratio: float = 2.0  # p95 of the new version / p95 of the previous one
    min_inferences: int = 20  # fewer than this: latency is not judged, errors still are
    # Language models (judged when both versions have min_generations generations): p95 time to first
    # token of the new version / the previous one's, and the median tokens/s of the new / the previous
    # (0: not judged).
    max_ttft_ratio: float = 2.0
    min_tokens_per_s_ratio: float = 0.5
    min_generations: int = 3

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HealthPolicy:
        w = "desired.health"
        return cls(
            window_s=float(_nonneg(d, "window_s", w, cls.window_s, hi=MAX_WINDOW_S)),
            max_error_rate=float(_nonneg(d, "max_error_rate", w, cls.max_error_rate, hi=1.0)),
            max_latency_ratio=float(_nonneg(d, "max_latency_ratio", w, cls.max_latency_ratio, hi=1e6)),
            min_inferences=_count(d, "min_inferences", w, cls.min_inferences, hi=1 << 31, integral=True),
            max_ttft_ratio=float(_nonneg(d, "max_ttft_ratio", w, cls.max_ttft_ratio, hi=1e6)),
            min_tokens_per_s_ratio=float(
                _nonneg(d, "min_tokens_per_s_ratio", w, cls.min_tokens_per_s_ratio, hi=1.0)
            ),
            min_generations=_count(d, "min_generations", w, cls.min_generations, hi=1 << 31, integral=True),
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
            version=_text(d, "version", w),
            ts=_ts(d, "ts", w),
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
        return cls(cmd=cmd, id=_text(d, "id", "cmd", ""))


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
            raise ProtocolError(f"stream_get: block_size {_show(block)} or count {_show(count)} out of range")
        return cls(
            file_id=_sha(d, "file_id", w),
            block_size=block,
            offset=_count(d, "offset", w, hi=1 << 32),
            count=count,
            token=_text(d, "token", w, ""),
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
        d = loads_bounded(payload)
    except ProtocolError as exc:
        raise ProtocolError(f"{kind}: {exc}") from None
    if not isinstance(d, dict):
        raise ProtocolError(f"{kind}: payload must be a JSON object")
    if d.get("v") != PROTOCOL_VERSION or isinstance(d.get("v"), bool):
        raise ProtocolError(
            f"{kind}: protocol version {_show(d.get('v'))}, this side speaks {PROTOCOL_VERSION}"
        )
    if d.get("type") != parser.TYPE:
        raise ProtocolError(f"{kind}: message type {_show(d.get('type'))}, expected {parser.TYPE!r}")
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
    h = loads_bounded(payload[_HEAD.size : _HEAD.size + hlen])
    if not isinstance(h, dict):
        raise ProtocolError("stream block header is not a JSON object")
    return Block(
        file_id=_sha(h, "f", "block"),
        index=_count(h, "i", "block", hi=1 << 32),
        total_size=_count(h, "n", "block"),
        data=payload[_HEAD.size + hlen :],
        crc32=_count(h, "c", "block", hi=0xFFFFFFFF),
        token=_text(h, "t", "block", ""),
        error=_reason(h, "e", "block"),
    )
