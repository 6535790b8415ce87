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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from fleet.errors import ProtocolError

__all__ = [
    "BLOCK_MAGIC",
    "DEVICE_TOPICS",
    "EVENT_STATES",
    "MANAGER_TOPICS",
    "PROTOCOL_VERSION",
    "TERMINAL_EVENT_STATES",
    "Block",
    "Command",
    "Desired",
    "Event",
    "HealthPolicy",
    "Status",
    "StreamGet",
    "Telemetry",
    "Topic",
    "check_id",
    "decode_block",
    "encode_block",
    "parse_json_message",
    "parse_topic",
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

EVENT_STATES = (
    "accepted",  # the desired state was read; work starts
    "downloading",  # progress while blocks arrive
    "verified",  # sha256 and signature checked, staged in the store
    "swapped",  # self-test passed, the new version serves; the health window runs
    "succeeded",  # health window passed and `current` committed
    "failed",  # a step failed; the device rolled back locally (reason says which step)
    "rolled_back",  # the manager asked for the previous version and the device serves it again
)
TERMINAL_EVENT_STATES = ("succeeded", "failed", "rolled_back")


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
    state: str  # "online" or "offline" (the Last Will)
    ts: float
    agent_version: str = ""
    profile: str | None = None
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    models: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {version, sha256}
    deployment_id: str | None = None  # the deployment being worked on, if any

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Status:
        w = "status"
        state = _get(d, "state", str, w)
        if state not in ("online", "offline"):
            raise ProtocolError(f"status: state {state!r} is neither 'online' nor 'offline'")
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
    state: str  # one of EVENT_STATES
    version: str | None = None
    reason: str | None = None  # why it failed, or what happened
    step: str | None = None  # the OTA step that failed: download, verify, install, selftest, swap, health
    serving_sha256: str | None = None  # what the device serves after this event
    progress: dict[str, int] | None = None  # {"bytes": n, "total": m} while downloading

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        w = "event"
        state = _get(d, "state", str, w)
        if state not in EVENT_STATES:
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
    action: str = "install"  # "install", or "rollback" to an earlier version (no health window)
    block_size: int = 65536
    health: HealthPolicy = field(default_factory=HealthPolicy)
    # An install of a version lower than the committed one is refused by the agent's downgrade
    # guard unless this is set (``edge fleet deploy --allow-downgrade``); a rollback always may.
    allow_downgrade: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Desired:
        w = "desired"
        action = _get(d, "action", str, w, "install")
        if action not in ("install", "rollback"):
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
