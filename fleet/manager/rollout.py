"""Deployments and staged rollouts: who gets a package, when, and when to stop.

A deployment targets devices (by id, tag, profile or group; the targets are
resolved once, when it is created), splits them into waves (a canary
fraction, or explicit cumulative fractions), and starts devices at most
``rate_per_min`` a minute. The ticker (:meth:`RolloutEngine.tick`, twice a
second) moves it along::

    pending ─start─► in_progress ─event─► succeeded | failed       (timeout ─► timed_out)
    a wave is done when all its devices are; the next wave starts only then
    abort when failures cross a threshold (count or fraction, after min_executed devices)
    or when the updated devices' telemetry regresses (error rate, p95 latency vs before)
    abort ─► every updated or updating device gets a rollback desired state ─► rolled_back

Starting a device means publishing its retained *desired* state, so a device
that is off converges when it comes back (within the per-device timeout, or
later: a late success is still recorded).
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

from fleet.errors import ConflictError, NotFoundError
from fleet.manager.db import FleetDB
from fleet.protocol import Desired, Event, HealthPolicy
from fleet.runtime import LatencyHistogram

__all__ = ["RolloutEngine", "RolloutSpec", "Targets"]

log = logging.getLogger(__name__)

ROLLBACK_SUFFIX = ".rollback"
_TERMINAL = ("succeeded", "failed", "timed_out", "skipped", "rolled_back", "rollback_failed")
_FAILED = ("failed", "timed_out")


@dataclass(frozen=True)
class Targets:
    """Devices matching any of the lists (``all``: every known device)."""

    devices: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    all: bool = False

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
    health: HealthPolicy = field(default_factory=HealthPolicy)  # the device-side health window
    block_size: int = 65536

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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutSpec:
        d = dict(d)
        t = d.pop("targets", None) or {"all": True}
        targets = Targets(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})
        health = HealthPolicy.from_dict(d.pop("health", None) or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown rollout option(s): {', '.join(sorted(unknown))}")
        if "waves" in d:
            d["waves"] = tuple(d["waves"])
        return cls(targets=targets, health=health, **d)


class RolloutEngine:
    """Creates deployments and moves them along; ``publish(device, desired)`` sends a desired state."""

    def __init__(self, db: FleetDB, publish: Callable[[str, Desired], None]) -> None:
        self.db = db
        self.publish = publish
        self._starts: dict[str, list[float]] = {}  # deployment -> recent start times (rate limit)

    # --- creating and controlling ---

    def create(self, package: dict[str, Any], spec: RolloutSpec) -> dict[str, Any]:
        fractions = spec.wave_fractions()
        devices = [d for d in self.db.devices() if spec.targets.match(d)]
        if not devices:
            raise ConflictError("no known device matches the deployment's targets")
        dep_id = f"d{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        # A stable shuffle, so the canary is not always the alphabetically first devices.
        devices.sort(key=lambda d: hashlib.sha256(f"{dep_id}/{d['id']}".encode()).digest())
        n, now = len(devices), time.time()
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO deployments VALUES (?, ?, ?, ?, ?, 'running', NULL, 0, ?, ?)",
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
                    "previous_version) VALUES (?, ?, ?, 'pending', ?, ?)",
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
        dep["waves"] = len(RolloutSpec.from_dict(dep["spec"]).wave_fractions())
        return dep

    def list(self) -> list[dict[str, Any]]:
        return [self.status(r["id"]) for r in self.db.query("SELECT id FROM deployments ORDER BY created")]

    def pause(self, dep_id: str) -> dict[str, Any]:
        self._set_state(dep_id, ("running",), "paused", "paused by the operator")
        return self.status(dep_id)

    def resume(self, dep_id: str) -> dict[str, Any]:
        self._set_state(dep_id, ("paused",), "running", None)
        self.tick()
        return self.status(dep_id)

    def abort(self, dep_id: str, reason: str = "aborted by the operator") -> dict[str, Any]:
        dep = self._deployment(dep_id)
        if dep["state"] not in ("running", "paused"):
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
        spec = RolloutSpec.from_dict(dep["spec"])
        rollbacks: list[tuple[str, Desired]] = []
        with self.db.tx() as db:
            db.execute(
                "UPDATE deployments SET state='aborted', reason=?, updated=? WHERE id=?",
                (reason, now, dep["id"]),
            )
            db.execute(
                "UPDATE deployment_devices SET state='skipped', reason='deployment aborted' "
                "WHERE deployment_id=? AND state='pending'",
                (dep["id"],),
            )
            for d in db.execute(
                "SELECT * FROM deployment_devices WHERE deployment_id=? AND state IN "
                "('in_progress', 'succeeded', 'timed_out')",
                (dep["id"],),
            ).fetchall():
                if d["previous_sha256"] is None:
                    continue  # nothing to go back to: the device had no version of this model
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
                    action="rollback",
                    block_size=spec.block_size,
                )
                db.execute(
                    "UPDATE deployment_devices SET state='rolling_back' WHERE deployment_id=? AND device=?",
                    (dep["id"], d["device"]),
                )
                rollbacks.append((d["device"], desired))
        for device, desired in rollbacks:
            self.publish(device, desired)

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
                state = {"rolled_back": "rolled_back", "failed": "rollback_failed"}.get(event.state)
            elif event.state in ("succeeded", "failed"):
                # After an abort, the forward result no longer changes the device's state.
                state = event.state if row["state"] in ("in_progress", "timed_out", "pending") else None
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

    # --- the ticker ---

    def tick(self) -> None:
        for dep in self.db.query("SELECT id FROM deployments WHERE state IN ('running', 'paused')"):
            try:
                self._tick_one(self._deployment(dep["id"]))
            except Exception:
                log.exception("deployment %s: tick failed", dep["id"])

    def _tick_one(self, dep: dict[str, Any]) -> None:
        spec = RolloutSpec.from_dict(dep["spec"])
        now = time.time()
        with self.db.tx() as db:
            timed_out = db.execute(
                "UPDATE deployment_devices SET state='timed_out', finished=?, "
                "reason='no result within ' || ? || ' s' "
                "WHERE deployment_id=? AND state='in_progress' AND started < ?",
                (now, int(spec.device_timeout_s), dep["id"], now - spec.device_timeout_s),
            ).rowcount
        if timed_out:
            log.warning("deployment %s: %d device(s) timed out", dep["id"], timed_out)
        devices = self.db.query("SELECT * FROM deployment_devices WHERE deployment_id=?", (dep["id"],))
        executed = [d for d in devices if d["state"] in ("succeeded", *_FAILED)]
        failures = sum(d["state"] in _FAILED for d in executed)
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
        while wave < len(waves) and all(d["state"] in _TERMINAL for d in devices if d["wave"] == wave):
            wave += 1
        if wave >= len(waves):
            state = "succeeded" if not failures else "completed_with_failures"
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
        if dep["state"] == "running":
            self._start_devices(
                dep, spec, [d for d in devices if d["wave"] <= wave and d["state"] == "pending"]
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
            )
            with self.db.tx() as db:
                db.execute(
                    "UPDATE deployment_devices SET state='in_progress', started=? "
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
        if spec.max_error_rate is None and spec.max_latency_ratio is None:
            return None
        updated = [d for d in devices if d["state"] == "succeeded"]
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
                inferences, errors = inferences + r["inferences"], errors + r["errors"]
                if r["latency"]:
                    h = json.loads(r["latency"])
                    hist.counts = [a + b for a, b in zip(hist.counts, h["counts"])]
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
                inferences += r["inferences"]
                if r["latency"]:
                    hist.counts = [a + b for a, b in zip(hist.counts, json.loads(r["latency"])["counts"])]
        return {"inferences": inferences, "p95_ms": hist.quantile(0.95)}
