"""Deployments and staged rollouts: who gets a package, when, and when to stop.

A deployment targets devices (by id, tag, profile or group; the targets are
resolved once, when it is created), splits them into waves (a canary
fraction, or explicit cumulative fractions), and starts devices at most
``rate_per_min`` a minute. The ticker (:meth:`RolloutEngine.tick`, twice a
second) moves it along::

    pending ─start─► in_progress ─event─► succeeded | failed       (timeout ─► timed_out)
    a wave is done when all its devices are; the next wave starts only then (after ``watch_s``
    more when telemetry thresholds are set: the wave's updated devices soak and are judged)
    abort when failures cross a threshold (count or fraction, after min_executed devices)
    or when the updated devices' telemetry regresses (error rate, p95 latency vs before)
    abort ─► every updated or updating device gets a rollback desired state ─► rolled_back

Starting a device means publishing its retained *desired* state, so a device
that is off converges when it comes back. Devices that are away (convergence
semantics, see docs/fleet.md "Devices that are away"):

- a targeted device still in progress at ``device_timeout_s`` is ``timed_out``
  (a failure) if it acknowledged the deployment or is online, and ``offline``
  (not a failure, but terminal for its wave) if it is offline and never
  answered; either way its desired state stays retained, and the result it
  reports when it comes back replaces the row's state, even after the
  deployment finished (whose final state is then recomputed);
- a device that registers, or starts to match the targets, while a deployment
  is running or paused joins its *last* wave (it is never made a canary); a
  finished or aborted deployment is a record, not a standing order, and takes
  no new devices.

One deployment per device and model at a time: creating a deployment whose devices are pending
or in progress in a running or paused deployment of the same model is refused
(:class:`~fleet.errors.ConflictError`) unless ``supersede`` is given. Then those devices' rows in
the older deployment become ``superseded`` (terminal, not a failure, never timed out), and an
older deployment left with no device of its own to drive is marked ``superseded`` itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.errors import ConflictError, FleetError, NotFoundError, ProtocolError
from fleet.manager.db import FleetDB
from fleet.protocol import (
    MAX_INT,
    MAX_TEXT,
    ROLLBACK_SUFFIX,
    DeploymentState,
    Desired,
    DesiredAction,
    DeviceDeploymentState,
    Event,
    EventState,
    HealthPolicy,
    sql_in,
)
from fleet.targets import LatencyHistogram

__all__ = ["InvalidRequestError", "RolloutEngine", "RolloutSpec", "Targets", "merge_latency"]

log = logging.getLogger(__name__)

# The states are defined once, in fleet.protocol (DeploymentState, DeviceDeploymentState).
_DS = DeviceDeploymentState
_ACTIVE_SQL = sql_in(_DS.active())  # device rows a deployment still drives, for SQL IN
_RUNNING_SQL = sql_in(DeploymentState.active())  # running or paused deployments, for SQL IN


class InvalidRequestError(ValueError, FleetError):
    """A deployment request or spec that is malformed or out of range (HTTP 400, naming the field)."""


MAX_TARGETS = 100_000  # entries of one target list
MAX_WAVES = 100
# spec field -> (kind, low, high, optional). "fraction": (0, 1]; "int": an integer; "number": finite.
_SPEC_RANGES: dict[str, tuple[str, float, float, bool]] = {
    "canary": ("fraction", 0.0, 1.0, True),
    "rate_per_min": ("number", 0.0, 1e6, False),
    "device_timeout_s": ("number", 0.1, 30 * 86400.0, False),
    "max_failures": ("int", 1, 1 << 31, True),
    "max_failure_rate": ("number", 0.0, 1.0, True),
    "min_executed": ("int", 0, 1 << 31, False),
    "max_error_rate": ("number", 0.0, 1.0, True),
    "max_latency_ratio": ("number", 1e-3, 1e6, True),
    "min_inferences": ("int", 0, MAX_INT, False),
    "watch_s": ("number", 0.0, 7 * 86400.0, False),
    "block_size": ("int", 512, 1 << 20, False),
}


def _check_type(name: str, value: Any, kind: str, optional: bool) -> None:
    if value is None:
        if optional:
            return
        raise InvalidRequestError(f"{name} must be {'an integer' if kind == 'int' else 'a number'}, got null")
    wanted: tuple[type, ...] = (int,) if kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise InvalidRequestError(
            f"{name} must be {'an integer' if kind == 'int' else 'a number'}, got {type(value).__name__}"
        )


def _check_value(name: str, value: Any, kind: str, lo: float, hi: float, optional: bool) -> None:
    _check_type(name, value, kind, optional)
    if value is None:
        return
    finite = isinstance(value, int) or math.isfinite(value)
    low_ok = value > lo if kind == "fraction" else value >= lo
    if not (finite and low_ok and value <= hi):
        interval = f"({lo:g}, {hi:g}]" if kind == "fraction" else f"[{lo:g}, {hi:g}]"
        shown = repr(value) if not isinstance(value, int) or abs(value) < 1 << 64 else "a huge integer"
        raise InvalidRequestError(f"{name} must be a finite number in {interval}, got {shown}")


def _stored_count(value: Any) -> int:
    """A count read back from the database: a non-negative integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT else 0


def merge_latency(hist: LatencyHistogram, stored: Any) -> bool:
    """Add a stored histogram (JSON text) to ``hist`` when it is one on the same bounds; else False.

    Readers never trust stored values: rows of an older manager may hold anything.
    """
    if not stored:
        return False
    try:
        h = json.loads(stored)
    except (TypeError, ValueError, RecursionError):
        return False
    if not isinstance(h, dict) or not isinstance(h.get("le"), list) or not isinstance(h.get("counts"), list):
        return False
    counts = h["counts"]
    if tuple(h["le"]) != tuple(hist.le) or len(counts) != len(hist.counts):
        return False
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_INT for c in counts):
        return False
    hist.counts = [a + b for a, b in zip(hist.counts, counts)]
    return True


@dataclass(frozen=True)
class Targets:
    """Devices matching any of the lists (``all``: every known device)."""

    devices: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    all: bool = False

    @classmethod
    def from_dict(cls, t: Any) -> Targets:
        """Targets from JSON; they must name devices, tags, profiles or groups, or say ``all``."""
        if t is None:
            raise InvalidRequestError(
                'spec.targets is missing: name devices, tags, profiles or groups, or {"all": true} '
                "for the whole fleet"
            )
        if not isinstance(t, dict):
            raise InvalidRequestError(f"spec.targets must be an object, got {type(t).__name__}")
        unknown = set(t) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidRequestError(f"unknown spec.targets key(s): {', '.join(sorted(map(str, unknown)))}")
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("devices", "tags", "profiles", "groups"):
            values = t.get(key) or []
            if not isinstance(values, list) or len(values) > MAX_TARGETS:
                raise InvalidRequestError(
                    f"spec.targets.{key} must be a list of at most {MAX_TARGETS} strings"
                )
            for v in values:
                if not isinstance(v, str) or not 0 < len(v) <= MAX_TEXT:
                    raise InvalidRequestError(
                        f"spec.targets.{key}: each entry must be a string of 1 to {MAX_TEXT} characters"
                    )
            lists[key] = tuple(values)
        everything = t.get("all", False)
        if not isinstance(everything, bool):
            raise InvalidRequestError("spec.targets.all must be true or false")
        if not everything and not any(lists.values()):
            raise InvalidRequestError(
                'spec.targets names no device: give devices, tags, profiles or groups, or {"all": true} '
                "for the whole fleet"
            )
        return cls(all=everything, **lists)

    def match(self, device: dict[str, Any]) -> bool:
        return (
            self.all
            or device["id"] in self.devices
            or bool(set(device["tags"]) & set(self.tags))
            or device.get("profile") in self.profiles
            or device.get("grp") in self.groups
        )


@dataclass(frozen=True)
class RolloutSpec:
    """How a deployment proceeds. Fractions are of the targeted devices."""

    targets: Targets = field(default_factory=lambda: Targets(all=True))
    canary: float | None = None  # first wave's fraction; the rest follows as one wave
    waves: tuple[float, ...] = ()  # cumulative fractions, e.g. (0.1, 0.5, 1.0); overrides canary
    rate_per_min: float = 0.0  # device starts a minute; 0: no limit
    device_timeout_s: float = 600.0
    max_failures: int | None = None  # abort at this many failed devices
    max_failure_rate: float | None = None  # abort when failed / executed reaches this
    min_executed: int = 1  # ... but only once this many devices finished
    max_error_rate: float | None = None  # abort when updated devices' errors / inferences exceed this
    max_latency_ratio: float | None = None  # abort when their p95 exceeds this times the one before
    min_inferences: int = 50  # telemetry regression is judged only on this many inferences each side
    # With a telemetry threshold set, each finished wave soaks this long (its updated devices'
    # telemetry judged) before the next wave starts or the deployment completes.
    watch_s: float = 60.0
    health: HealthPolicy = field(default_factory=HealthPolicy)  # the device-side health window
    block_size: int = 65536
    allow_downgrade: bool = False  # let devices install a version lower than their committed one

    @property
    def watches_telemetry(self) -> bool:
        """Whether the rollout aborts on a telemetry regression (and so soaks each wave)."""
        return self.max_error_rate is not None or self.max_latency_ratio is not None

    def wave_fractions(self) -> tuple[float, ...]:
        if self.waves:
            fractions = tuple(sorted(self.waves))
        elif self.canary is not None:
            fractions = (self.canary, 1.0)
        else:
            fractions = (1.0,)
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"wave fractions must be in (0, 1], got {fractions}")
        return fractions if fractions[-1] == 1.0 else (*fractions, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        for name, (kind, lo, hi, optional) in _SPEC_RANGES.items():
            _check_value(f"spec.{name}", getattr(self, name), kind, lo, hi, optional)
        if len(self.waves) > MAX_WAVES:
            raise InvalidRequestError(f"spec.waves: {len(self.waves)} waves, over the limit of {MAX_WAVES}")
        for i, f in enumerate(self.waves):
            _check_value(f"spec.waves[{i}]", f, "fraction", 0.0, 1.0, False)

    @classmethod
    def from_dict(cls, d: Any) -> RolloutSpec:
        """A spec from JSON (an API body or the stored copy); InvalidRequestError naming the field.

        Every field is checked for its type, finiteness and range; unknown fields are refused, and
        so are targets that name nothing: a fleet-wide deployment says ``"targets": {"all": true}``.
        """
        if not isinstance(d, dict):
            raise InvalidRequestError(f"spec must be an object, got {type(d).__name__}")
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidRequestError(f"unknown rollout option(s): {', '.join(sorted(map(str, unknown)))}")
        targets = Targets.from_dict(d.pop("targets", None))
        health = d.pop("health", None)
        if health is None:
            health = {}
        if not isinstance(health, dict):
            raise InvalidRequestError(f"spec.health must be an object, got {type(health).__name__}")
        unknown = set(health) - set(HealthPolicy.__dataclass_fields__)
        if unknown:
            raise InvalidRequestError(
                f"unknown spec.health option(s): {', '.join(sorted(map(str, unknown)))}"
            )
        try:
            policy = HealthPolicy.from_dict(health)
        except ProtocolError as exc:
            raise InvalidRequestError(f"spec.{exc}") from None
        for name, (kind, _lo, _hi, optional) in _SPEC_RANGES.items():
            if name in d:
                _check_type(f"spec.{name}", d[name], kind, optional)
        if "allow_downgrade" in d and not isinstance(d["allow_downgrade"], bool):
            raise InvalidRequestError("spec.allow_downgrade must be true or false")
        if "waves" in d:
            if not isinstance(d["waves"], (list, tuple)):
                raise InvalidRequestError(f"spec.waves must be a list, got {type(d['waves']).__name__}")
            for i, f in enumerate(d["waves"]):
                _check_type(f"spec.waves[{i}]", f, "fraction", False)
            d["waves"] = tuple(d["waves"])
        return cls(targets=targets, health=policy, **d)


def _outcome(states: list[str]) -> str:
    """The final state of a deployment that ran to its end, from its devices' states."""
    if any(_DS(s).failure for s in states):
        return DeploymentState.COMPLETED_WITH_FAILURES
    if _DS.OFFLINE in states:
        return DeploymentState.COMPLETED_WITH_OFFLINE
    return DeploymentState.SUCCEEDED


class RolloutEngine:
    """Creates deployments and moves them along.

    ``publish(device, desired)`` sends a device its retained desired state; ``None`` withdraws it.
    """

    def __init__(self, db: FleetDB, publish: Callable[[str, Desired | None], None]) -> None:
        self.db = db
        self.publish = publish
        self._starts: dict[str, list[float]] = {}  # deployment -> recent start times (rate limit)

    # --- creating and controlling ---

    def create(self, package: dict[str, Any], spec: RolloutSpec, supersede: bool = False) -> dict[str, Any]:
        """Start a deployment of ``package``; ConflictError when its devices are busy with the model.

        ``supersede``: take those devices over from the running deployments instead (see above).
        """
        fractions = spec.wave_fractions()
        devices = [d for d in self.db.devices() if spec.targets.match(d)]
        if not devices:
            raise ConflictError("no known device matches the deployment's targets")
        dep_id = f"d{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        busy = self._busy(package["name"], [d["id"] for d in devices])
        if busy and not supersede:
            listing = "; ".join(
                f"{dep}: {', '.join(sorted(devs)[:5])}{' ...' if len(devs) > 5 else ''}"
                for dep, devs in sorted(busy.items())
            )
            raise ConflictError(
                f"{sum(map(len, busy.values()))} targeted device(s) are in a deployment of "
                f"{package['name']} still under way ({listing}); wait for it, abort it, "
                "or deploy with supersede (--supersede)"
            )
        # A stable shuffle, so the canary is not always the alphabetically first devices.
        devices.sort(key=lambda d: hashlib.sha256(f"{dep_id}/{d['id']}".encode()).digest())
        n, now = len(devices), time.time()
        with self.db.tx() as db:
            for old_id, old_devices in busy.items():
                self._supersede(db, old_id, old_devices, dep_id, now)
            db.execute(
                f"INSERT INTO deployments VALUES (?, ?, ?, ?, ?, '{DeploymentState.RUNNING}', NULL, 0, ?, ?)",
                (
                    dep_id,
                    package["sha256"],
                    package["name"],
                    package["version"],
                    json.dumps(spec.to_dict()),
                    now,
                    now,
                ),
            )
            for i, dev in enumerate(devices):
                wave = next(w for w, f in enumerate(fractions) if i < max(1, math.ceil(f * n)))
                current = dev["models"].get(package["name"], {})
                db.execute(
                    "INSERT INTO deployment_devices (deployment_id, device, wave, state, previous_sha256, "
                    f"previous_version) VALUES (?, ?, ?, '{_DS.PENDING}', ?, ?)",
                    (dep_id, dev["id"], wave, current.get("sha256"), current.get("version")),
                )
        log.info(
            "deployment %s: %s %s to %d device(s) in %d wave(s)",
            dep_id,
            package["name"],
            package["version"],
            n,
            len(fractions),
        )
        self.tick()
        return self.status(dep_id)

    def _busy(self, model: str, devices: list[str]) -> dict[str, list[str]]:
        """Running or paused deployments of ``model`` still driving any of ``devices``: id -> devices."""
        wanted = set(devices)
        busy: dict[str, list[str]] = {}
        for r in self.db.query(
            "SELECT x.deployment_id, x.device FROM deployment_devices x JOIN deployments d "
            f"ON d.id = x.deployment_id WHERE d.model = ? AND d.state IN {_RUNNING_SQL} "
            f"AND x.state IN {_ACTIVE_SQL}",
            (model,),
        ):
            if r["device"] in wanted:
                busy.setdefault(r["deployment_id"], []).append(r["device"])
        return busy

    @staticmethod
    def _supersede(db: Any, old_id: str, devices: list[str], new_id: str, now: float) -> None:
        """Hand ``devices`` of deployment ``old_id`` over to ``new_id`` (inside the caller's transaction)."""
        reason = f"superseded by deployment {new_id}"
        db.executemany(
            f"UPDATE deployment_devices SET state='{_DS.SUPERSEDED}', finished=?, reason=? "
            f"WHERE deployment_id=? AND device=? AND state IN {_ACTIVE_SQL}",
            [(now, reason, old_id, device) for device in devices],
        )
        left = db.execute(
            f"SELECT COUNT(*) FROM deployment_devices WHERE deployment_id=? AND state IN {_ACTIVE_SQL}",
            (old_id,),
        ).fetchone()[0]
        if not left:
            db.execute(
                f"UPDATE deployments SET state='{DeploymentState.SUPERSEDED}', reason=?, updated=? WHERE id=?",
                (reason, now, old_id),
            )
        log.warning("deployment %s: %d device(s) %s", old_id, len(devices), reason)

    def adopt(self, device: dict[str, Any]) -> list[str]:
        """Add a device (a registry row) to every running or paused deployment it matches and is not in.

        Called when a device's status arrives. It joins the last wave, as pending, with its
        currently committed version as the one to roll back to; the ticker starts it in turn.
        Returns the ids of the deployments it joined.
        """
        joined: list[str] = []
        for dep in self.db.query(
            f"SELECT d.id, d.model, d.spec FROM deployments d WHERE d.state IN {_RUNNING_SQL} "
            "AND NOT EXISTS (SELECT 1 FROM deployment_devices x WHERE x.deployment_id = d.id AND x.device = ?)",
            (device["id"],),
        ):
            try:
                spec = RolloutSpec.from_dict(json.loads(dep["spec"]))
            except (InvalidRequestError, TypeError, ValueError):
                continue  # a spec stored before the checks: the ticker aborts that deployment
            if not spec.targets.match(device):
                continue
            current = device["models"].get(dep["model"], {})
            with self.db.tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO deployment_devices (deployment_id, device, wave, state, "
                    f"previous_sha256, previous_version) VALUES (?, ?, ?, '{_DS.PENDING}', ?, ?)",
                    (
                        dep["id"],
                        device["id"],
                        len(spec.wave_fractions()) - 1,
                        current.get("sha256"),
                        current.get("version"),
                    ),
                )
            log.info("deployment %s: device %s joined its last wave", dep["id"], device["id"])
            joined.append(dep["id"])
        return joined

    def _deployment(self, dep_id: str) -> dict[str, Any]:
        row = self.db.one("SELECT * FROM deployments WHERE id=?", (dep_id,))
        if row is None:
            raise NotFoundError(f"no deployment {dep_id!r}")
        row["spec"] = json.loads(row["spec"])
        return row

    def status(self, dep_id: str) -> dict[str, Any]:
        dep = self._deployment(dep_id)
        devices = self.db.query(
            "SELECT * FROM deployment_devices WHERE deployment_id=? ORDER BY wave, device", (dep_id,)
        )
        counts: dict[str, int] = {}
        for d in devices:
            counts[d["state"]] = counts.get(d["state"], 0) + 1
        dep["counts"] = counts
        dep["devices"] = devices
        try:
            dep["waves"] = len(RolloutSpec.from_dict(dep["spec"]).wave_fractions())
        except (InvalidRequestError, TypeError):  # a spec stored before the checks: shown, not parsed
            dep["waves"] = max((d["wave"] for d in devices if isinstance(d["wave"], int)), default=0) + 1
        return dep

    def list(self) -> list[dict[str, Any]]:
        return [self.status(r["id"]) for r in self.db.query("SELECT id FROM deployments ORDER BY created")]

    def pause(self, dep_id: str) -> dict[str, Any]:
        self._set_state(dep_id, (DeploymentState.RUNNING,), DeploymentState.PAUSED, "paused by the operator")
        return self.status(dep_id)

    def resume(self, dep_id: str) -> dict[str, Any]:
        self._set_state(dep_id, (DeploymentState.PAUSED,), DeploymentState.RUNNING, None)
        self.tick()
        return self.status(dep_id)

    def abort(self, dep_id: str, reason: str = "aborted by the operator") -> dict[str, Any]:
        dep = self._deployment(dep_id)
        if DeploymentState(dep["state"]).terminal:
            raise ConflictError(f"deployment {dep_id} is {dep['state']}; only a running or paused one aborts")
        self._abort(dep, reason)
        return self.status(dep_id)

    def _set_state(self, dep_id: str, allowed: tuple[str, ...], state: str, reason: str | None) -> None:
        dep = self._deployment(dep_id)
        if dep["state"] not in allowed:
            raise ConflictError(f"deployment {dep_id} is {dep['state']}, not {' or '.join(allowed)}")
        with self.db.tx() as db:
            db.execute(
                "UPDATE deployments SET state=?, reason=?, updated=? WHERE id=?",
                (state, reason, time.time(), dep_id),
            )

    def _abort(self, dep: dict[str, Any], reason: str) -> None:
        log.warning("deployment %s: aborting: %s", dep["id"], reason)
        now = time.time()
        block_size = dep["spec"].get("block_size") if isinstance(dep["spec"], dict) else None
        if (
            isinstance(block_size, bool)
            or not isinstance(block_size, int)
            or not 512 <= block_size <= 1 << 20
        ):
            block_size = 65536  # a spec stored before the checks; rollbacks need no download anyway
        rollbacks: list[tuple[str, Desired]] = []
        clears: list[str] = []
        with self.db.tx() as db:
            db.execute(
                f"UPDATE deployments SET state='{DeploymentState.ABORTED}', reason=?, updated=? WHERE id=?",
                (reason, now, dep["id"]),
            )
            db.execute(
                f"UPDATE deployment_devices SET state='{_DS.SKIPPED}', reason='deployment aborted' "
                f"WHERE deployment_id=? AND state='{_DS.PENDING}'",
                (dep["id"],),
            )
            for d in db.execute(
                "SELECT * FROM deployment_devices WHERE deployment_id=? AND state IN "
                f"{sql_in((_DS.IN_PROGRESS, _DS.SUCCEEDED, _DS.TIMED_OUT, _DS.OFFLINE))}",
                (dep["id"],),
            ).fetchall():
                if d["previous_sha256"] is None:
                    # Nothing to go back to (the device had no version of this model); at least
                    # withdraw the retained desired state so a device that is away does not install
                    # the aborted version when it returns.
                    clears.append(d["device"])
                    continue
                size_row = db.execute(
                    "SELECT size FROM packages WHERE sha256=?", (d["previous_sha256"],)
                ).fetchone()
                desired = Desired(
                    deployment_id=dep["id"] + ROLLBACK_SUFFIX,
                    model=dep["model"],
                    sha256=d["previous_sha256"],
                    size=size_row["size"] if size_row else 0,
                    version=d["previous_version"] or "",
                    ts=now,
                    action=DesiredAction.ROLLBACK,
                    block_size=block_size,
                )
                db.execute(
                    f"UPDATE deployment_devices SET state='{_DS.ROLLING_BACK}' WHERE deployment_id=? AND device=?",
                    (dep["id"], d["device"]),
                )
                rollbacks.append((d["device"], desired))
        for device, desired in rollbacks:
            self.publish(device, desired)
        for device in clears:
            self.publish(device, None)

    # --- events from devices ---

    def on_event(self, event: Event) -> None:
        dep_id, rollback = event.deployment_id, event.deployment_id.endswith(ROLLBACK_SUFFIX)
        if rollback:
            dep_id = dep_id[: -len(ROLLBACK_SUFFIX)]
        now = time.time()
        with self.db.tx() as db:
            row = db.execute(
                "SELECT state FROM deployment_devices WHERE deployment_id=? AND device=?",
                (dep_id, event.device),
            ).fetchone()
            if row is None:
                log.info("event for unknown deployment %s from %s ignored", dep_id, event.device)
                return
            if rollback:
                state = {
                    EventState.ROLLED_BACK: _DS.ROLLED_BACK,
                    EventState.FAILED: _DS.ROLLBACK_FAILED,
                }.get(EventState(event.state))
            elif event.state in (EventState.SUCCEEDED, EventState.FAILED):
                # After an abort, the forward result no longer changes the device's state.
                state = _DS(event.state) if _DS(row["state"]).awaiting_result else None
            else:
                state = None
            if state is not None:
                db.execute(
                    "UPDATE deployment_devices SET state=?, phase=?, finished=?, step=?, reason=? "
                    "WHERE deployment_id=? AND device=?",
                    (state, event.state, now, event.step, event.reason, dep_id, event.device),
                )
            else:
                db.execute(
                    "UPDATE deployment_devices SET phase=? WHERE deployment_id=? AND device=?",
                    (event.state, dep_id, event.device),
                )
            if state is not None and not rollback:
                # A late result of a finished deployment (a device that was away): recompute its outcome.
                dep = db.execute("SELECT state FROM deployments WHERE id=?", (dep_id,)).fetchone()
                if DeploymentState(dep["state"]).completed:
                    states = [
                        r["state"]
                        for r in db.execute(
                            "SELECT state FROM deployment_devices WHERE deployment_id=?", (dep_id,)
                        ).fetchall()
                    ]
                    db.execute(
                        "UPDATE deployments SET state=?, updated=? WHERE id=?",
                        (_outcome(states), now, dep_id),
                    )

    # --- the ticker ---

    def tick(self) -> None:
        for dep in self.db.query(f"SELECT id FROM deployments WHERE state IN {_RUNNING_SQL}"):
            try:
                row = self._deployment(dep["id"])
                try:
                    RolloutSpec.from_dict(row["spec"])
                except (InvalidRequestError, TypeError) as exc:
                    # A spec stored before the checks (NaN timeouts, block_size 1): it could never move
                    # on, and would fail every tick. Abort it once, rolling back what it updated.
                    self._abort(row, f"its stored spec is invalid ({exc}); deploy again")
                    continue
                self._tick_one(row)
            except Exception:
                log.exception("deployment %s: tick failed", dep["id"])

    def _tick_one(self, dep: dict[str, Any]) -> None:
        spec = RolloutSpec.from_dict(dep["spec"])
        now = time.time()
        with self.db.tx() as db:
            # Offline and silent since it was started: it has not tried and failed, it is away.
            # Not a failure; its retained desired state makes it converge when it returns.
            offline = db.execute(
                f"UPDATE deployment_devices SET state='{_DS.OFFLINE}', finished=?, "
                "reason='offline since it was started; converges when it reconnects' "
                f"WHERE deployment_id=? AND state='{_DS.IN_PROGRESS}' AND started < ? AND phase IS NULL "
                "AND device IN (SELECT id FROM devices WHERE online=0)",
                (now, dep["id"], now - spec.device_timeout_s),
            ).rowcount
            timed_out = db.execute(
                f"UPDATE deployment_devices SET state='{_DS.TIMED_OUT}', finished=?, "
                "reason='no result within ' || ? || ' s' "
                f"WHERE deployment_id=? AND state='{_DS.IN_PROGRESS}' AND started < ?",
                (now, int(spec.device_timeout_s), dep["id"], now - spec.device_timeout_s),
            ).rowcount
        if offline:
            log.warning("deployment %s: %d device(s) offline past the timeout", dep["id"], offline)
        if timed_out:
            log.warning("deployment %s: %d device(s) timed out", dep["id"], timed_out)
        devices = self.db.query("SELECT * FROM deployment_devices WHERE deployment_id=?", (dep["id"],))
        executed = [d for d in devices if d["state"] == _DS.SUCCEEDED or _DS(d["state"]).failure]
        failures = sum(_DS(d["state"]).failure for d in executed)
        if len(executed) >= spec.min_executed and failures:
            if spec.max_failures is not None and failures >= spec.max_failures:
                self._abort(dep, f"{failures} device(s) failed (threshold {spec.max_failures})")
                return
            if spec.max_failure_rate is not None and failures / len(executed) >= spec.max_failure_rate:
                self._abort(
                    dep,
                    f"{failures} of {len(executed)} devices failed "
                    f"({failures / len(executed):.0%}, threshold {spec.max_failure_rate:.0%})",
                )
                return
        regression = self._regression(dep, spec, devices)
        if regression:
            self._abort(dep, regression)
            return
        waves = spec.wave_fractions()
        wave = dep["wave"]
        soak = spec.watch_s if spec.watches_telemetry else 0.0
        while wave < len(waves):
            rows = [d for d in devices if d["wave"] == wave]
            if not all(_DS(d["state"]).terminal for d in rows):
                break
            # The wave is done; with telemetry thresholds, its updated devices are judged for a while
            # before anything else is updated (otherwise the last wave would never be judged at all).
            done_at = max((d["finished"] or 0.0 for d in rows), default=0.0)
            if now < done_at + soak:
                break
            wave += 1
        if wave >= len(waves):
            state = _outcome([d["state"] for d in devices])
            with self.db.tx() as db:
                db.execute(
                    "UPDATE deployments SET state=?, wave=?, updated=? WHERE id=?",
                    (state, wave, now, dep["id"]),
                )
            log.info("deployment %s: %s (%d failed)", dep["id"], state, failures)
            return
        if wave != dep["wave"]:
            log.info("deployment %s: wave %d of %d starts", dep["id"], wave + 1, len(waves))
            with self.db.tx() as db:
                db.execute("UPDATE deployments SET wave=?, updated=? WHERE id=?", (wave, now, dep["id"]))
        if dep["state"] == DeploymentState.RUNNING:
            self._start_devices(
                dep, spec, [d for d in devices if d["wave"] <= wave and d["state"] == _DS.PENDING]
            )

    def _start_devices(self, dep: dict[str, Any], spec: RolloutSpec, pending: list[dict[str, Any]]) -> None:
        now = time.time()
        starts = [t for t in self._starts.get(dep["id"], []) if t > now - 60]
        if spec.rate_per_min > 0:
            pending = pending[: max(0, int(spec.rate_per_min) - len(starts))]
        package = self.db.one("SELECT * FROM packages WHERE sha256=?", (dep["sha256"],))
        assert package is not None
        for d in pending:
            desired = Desired(
                deployment_id=dep["id"],
                model=dep["model"],
                sha256=dep["sha256"],
                size=package["size"],
                version=dep["version"],
                ts=now,
                block_size=spec.block_size,
                health=spec.health,
                allow_downgrade=spec.allow_downgrade,
            )
            with self.db.tx() as db:
                db.execute(
                    f"UPDATE deployment_devices SET state='{_DS.IN_PROGRESS}', started=? "
                    "WHERE deployment_id=? AND device=?",
                    (now, dep["id"], d["device"]),
                )
            self.publish(d["device"], desired)
            starts.append(now)
        self._starts[dep["id"]] = starts

    def _regression(
        self, dep: dict[str, Any], spec: RolloutSpec, devices: list[dict[str, Any]]
    ) -> str | None:
        """Why the updated devices' telemetry is worse than before the deployment, or None."""
        if not spec.watches_telemetry:
            return None
        updated = [d for d in devices if d["state"] == _DS.SUCCEEDED]
        if not updated:
            return None
        new = self._aggregate(dep["model"], dep["version"], [(d["device"], d["finished"]) for d in updated])
        if new["inferences"] < spec.min_inferences:
            return None
        if spec.max_error_rate is not None and new["error_rate"] > spec.max_error_rate:
            return (
                f"updated devices' error rate {new['error_rate']:.1%} is over {spec.max_error_rate:.1%} "
                f"({new['errors']} errors in {new['inferences']} inferences)"
            )
        if spec.max_latency_ratio is not None:
            before = self._aggregate_before(dep, devices)
            if (
                before["inferences"] >= spec.min_inferences
                and before["p95_ms"]
                and new["p95_ms"]
                and new["p95_ms"] > spec.max_latency_ratio * before["p95_ms"]
            ):
                return (
                    f"updated devices' p95 latency {new['p95_ms']:.1f} ms is over "
                    f"{spec.max_latency_ratio}x the {before['p95_ms']:.1f} ms before the deployment"
                )
        return None

    def _aggregate(self, model: str, version: str, since: list[tuple[str, float]]) -> dict[str, Any]:
        hist, inferences, errors = LatencyHistogram(), 0, 0
        for device, start in since:
            for r in self.db.query(
                "SELECT inferences, errors, latency FROM telemetry_models "
                "WHERE device=? AND model=? AND version=? AND ts >= ?",
                (device, model, version, start),
            ):
                inferences, errors = (
                    inferences + _stored_count(r["inferences"]),
                    errors + _stored_count(r["errors"]),
                )
                merge_latency(hist, r["latency"])
        return {
            "inferences": inferences,
            "errors": errors,
            "error_rate": errors / inferences if inferences else 0.0,
            "p95_ms": hist.quantile(0.95),
        }

    def _aggregate_before(self, dep: dict[str, Any], devices: list[dict[str, Any]]) -> dict[str, Any]:
        hist, inferences = LatencyHistogram(), 0
        for d in devices:
            if not d["previous_version"]:
                continue
            for r in self.db.query(
                "SELECT inferences, latency FROM telemetry_models WHERE device=? AND model=? AND version=? "
                "AND ts >= ?",
                (d["device"], dep["model"], d["previous_version"], dep["created"] - 3600),
            ):
                inferences += _stored_count(r["inferences"])
                merge_latency(hist, r["latency"])
        return {"inferences": inferences, "p95_ms": hist.quantile(0.95)}
