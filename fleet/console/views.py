"""What the console's pages show, computed from the manager's tables (:class:`~fleet.manager.db.FleetDB`).

Every function takes the :class:`~fleet.manager.service.FleetManager` and returns plain JSON-able
data; the routes (:mod:`fleet.console.api`) run them in a worker thread. Stored values are never
trusted: numbers that are not finite, JSON that does not parse, entries of the wrong type are left
out, as in the rest of the manager.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import Any

from fleet.manager.rollout import RolloutSpec, merge_latency
from fleet.protocol import DeploymentState
from fleet.targets import LatencyHistogram
from fleet.versions import compare_versions

__all__ = [
    "HOT_C",
    "alerts",
    "deployment_detail",
    "device_detail",
    "device_page",
    "model_series",
    "overview",
    "package_inside",
    "preview",
]

HOT_C = 80.0  # a device whose temperature reached this in the window is "hot"
ERROR_RATE_JUMP = 0.01  # an error-rate regression: the newer version's rate is this much higher ...
ERROR_RATE_RATIO = 2.0  # ... and this many times the older versions'
LATENCY_RATIO = 1.5  # a latency regression: the newer version's p95 over this times the older ones'
MIN_INFERENCES = 50  # per side, before a regression is judged
MAX_ALERTS = 500

log = logging.getLogger(__name__)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _json_obj(text: Any) -> dict[str, Any]:
    """A stored JSON object: text (SQLite), or already decoded (PostgreSQL's JSONB ``system``)."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


# --- overview and alerts ---


def overview(manager: Any, since_s: float = 300.0) -> dict[str, Any]:
    """Devices online/offline by profile, group and tag; versions running where; rollouts; alerts."""
    facets = manager.db.device_facets()
    by: dict[str, dict[str, dict[str, int]]] = {"profile": {}, "group": {}, "tag": {}, "agent_version": {}}
    models: dict[str, dict[str, dict[str, Any]]] = {}

    def count(kind: str, key: str | None, online: bool, n: int) -> None:
        slot = by[kind].setdefault(key or "(none)", {"online": 0, "offline": 0})
        slot["online" if online else "offline"] += n

    online = total = 0
    for d in facets:
        on, n = d["online"], d["n"]
        total += n
        online += n if on else 0
        count("profile", d["profile"], on, n)
        count("group", d["grp"], on, n)
        count("agent_version", d["agent_version"], on, n)
        for tag in d["tags"]:
            count("tag", tag, on, n)
        for name, m in d["models"].items():
            slot = models.setdefault(name, {}).setdefault(
                m["version"], {"devices": 0, "online": 0, "profiles": {}, "groups": {}}
            )
            slot["devices"] += n
            slot["online"] += n if on else 0
            for kind, key in (("profiles", d["profile"]), ("groups", d["grp"])):
                slot[kind][key or "(none)"] = slot[kind].get(key or "(none)", 0) + n
    rollouts = [d for d in manager.db.deployment_summaries(200) if d["state"] in DeploymentState.active()]
    return {
        "devices": {"total": total, "online": online, "offline": total - online},
        "by_profile": by["profile"],
        "by_group": by["group"],
        "by_tag": dict(sorted(by["tag"].items(), key=lambda kv: -sum(kv[1].values()))[:50]),
        "by_agent_version": by["agent_version"],
        "models": models,
        "rollouts": rollouts,
        "alerts": cached_alerts(manager, since_s),
        "now": time.time(),
    }


ALERTS_TTL_S = 5.0
_alerts_cache: dict[tuple[int, float], tuple[float, list[dict[str, Any]]]] = {}
_alerts_busy: set[tuple[int, float]] = set()
_alerts_lock = threading.Lock()


def cached_alerts(manager: Any, since_s: float = 300.0) -> list[dict[str, Any]]:
    """:func:`alerts`, at most ``ALERTS_TTL_S`` old: they scan the window's telemetry, which grows
    with the fleet, so a stale list is served while one thread computes the next (the first call
    computes it). Device alerts (duplicate_device_id) are always read fresh: they are one indexed table."""
    key, now = (id(manager), since_s), time.monotonic()
    with _alerts_lock:
        cached = _alerts_cache.get(key)
        refresh = (cached is None or now - cached[0] > ALERTS_TTL_S) and key not in _alerts_busy
        if refresh and cached is not None:
            _alerts_busy.add(key)
    if cached is None:
        value = alerts(manager, since_s, device_alerts=False)
        with _alerts_lock:
            _alerts_cache[key] = (time.monotonic(), value)
        return _device_alerts(manager) + value
    if refresh:

        def compute() -> None:
            try:
                value = alerts(manager, since_s, device_alerts=False)
                with _alerts_lock:
                    _alerts_cache[key] = (time.monotonic(), value)
            except Exception:  # the database closed under it at shutdown: keep the old list
                log.debug("console alerts: computing them failed", exc_info=True)
            finally:
                with _alerts_lock:
                    _alerts_busy.discard(key)

        threading.Thread(target=compute, name="console-alerts", daemon=True).start()
    return _device_alerts(manager) + cached[1]


def _device_alerts(manager: Any) -> list[dict[str, Any]]:
    return [
        {
            "kind": str(a["alert"]),
            "device": a["device"],
            "since": _num(a["since"]),
            "severity": "error",
            "text": _ALERT_TEXT.get(str(a["alert"]), "reported by the device's agent"),
        }
        for a in manager.db.device_alerts(limit=MAX_ALERTS)
    ]


def alerts(manager: Any, since_s: float = 300.0, device_alerts: bool = True) -> list[dict[str, Any]]:
    """What needs an operator's eye: device alerts (duplicate_device_id), throttling, hot devices,
    queue drops, and per model an error-rate or latency regression of its newest version."""
    out: list[dict[str, Any]] = _device_alerts(manager) if device_alerts else []
    for device, r in sorted(manager.resource_summary(since_s).items()):
        if len(out) >= MAX_ALERTS:
            break
        if r.get("throttled_reports"):
            out.append(
                {
                    "kind": "throttling",
                    "device": device,
                    "severity": "warning",
                    "text": f"throttled in {r['throttled_reports']} of {r['reports']} reports",
                }
            )
        temp = _num(r.get("temperature_max"))
        if temp is not None and temp >= HOT_C:
            out.append(
                {
                    "kind": "hot",
                    "device": device,
                    "severity": "warning",
                    "text": f"temperature reached {temp:.0f} °C",
                }
            )
    for r in manager.db.queue_drops(time.time() - since_s):
        if len(out) >= MAX_ALERTS:
            break
        out.append(
            {
                "kind": "queue_drops",
                "device": r["device"],
                "severity": "warning",
                "text": f"its outbox dropped {int(r['total'])} message(s)",
            }
        )
    out.extend(_regressions(manager, max(since_s, 900.0)))
    return out[:MAX_ALERTS]


_ALERT_TEXT = {
    "duplicate_device_id": "another agent uses this device id: the broker keeps closing one of them",
}


def _regressions(manager: Any, since_s: float) -> list[dict[str, Any]]:
    summary = manager.telemetry_summary(since_s)["models"]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in summary:
        by_model.setdefault(row["model"], []).append(row)
    out = []
    for model, rows in by_model.items():
        if len(rows) < 2:
            continue
        newest = rows[0]
        for r in rows[1:]:
            if (compare_versions(r["version"], newest["version"]) or 0) > 0:
                newest = r
        older = [r for r in rows if r is not newest]
        inferences = sum(r["inferences"] for r in older)
        if newest["inferences"] < MIN_INFERENCES or inferences < MIN_INFERENCES:
            continue
        old_rate = sum(r["errors"] for r in older) / inferences
        if (
            newest["error_rate"] > old_rate + ERROR_RATE_JUMP
            and newest["error_rate"] > ERROR_RATE_RATIO * old_rate
        ):
            out.append(
                {
                    "kind": "error_rate_regression",
                    "model": model,
                    "version": newest["version"],
                    "severity": "error",
                    "text": f"{model} {newest['version']}: error rate {newest['error_rate']:.1%} "
                    f"against {old_rate:.1%} for earlier versions",
                }
            )
        old_p95 = [r["p95_ms"] for r in older if _num(r.get("p95_ms"))]
        if old_p95 and _num(newest.get("p95_ms")) and newest["p95_ms"] > LATENCY_RATIO * max(old_p95):
            out.append(
                {
                    "kind": "latency_regression",
                    "model": model,
                    "version": newest["version"],
                    "severity": "warning",
                    "text": f"{model} {newest['version']}: p95 {newest['p95_ms']:.1f} ms against "
                    f"{max(old_p95):.1f} ms for earlier versions",
                }
            )
    return out


# --- devices ---


def device_page(manager: Any, query: dict[str, Any], since_s: float = 300.0) -> dict[str, Any]:
    """One page of the device table, each device with a summary of its recent resources."""
    total, rows = manager.db.device_page(**query)
    summary: dict[str, dict[str, Any]] = {}
    for r in manager.db.resources_of([d["id"] for d in rows], time.time() - since_s):
        s = summary.setdefault(
            r["device"],
            {
                "reports": 0,
                "cpu": None,
                "temperature_max": None,
                "throttled_reports": 0,
                "mem_used": None,
                "mem_total": None,
                "_ts": -math.inf,
            },
        )
        system = _json_obj(r["system"])
        s["reports"] += 1
        temp = _num(system.get("temperature_c"))
        if temp is not None:
            s["temperature_max"] = temp if s["temperature_max"] is None else max(temp, s["temperature_max"])
        if _num(system.get("throttled")):
            s["throttled_reports"] += 1
        ts = _num(r["ts"]) or 0.0
        if ts >= s["_ts"]:
            s["_ts"] = ts
            s["cpu"] = _num(system.get("cpu_percent"))
            s["mem_used"] = _num(system.get("mem_used_bytes"))
            s["mem_total"] = _num(system.get("mem_total_bytes"))
    alerted = {a["device"] for a in manager.db.device_alerts(limit=MAX_ALERTS)}
    for d in rows:
        s = summary.get(d["id"])
        if s is not None:
            s.pop("_ts")
        d["resources"] = s
        d["alerted"] = d["id"] in alerted
    return {
        "total": total,
        "offset": query.get("offset", 0),
        "limit": query.get("limit", 50),
        "devices": rows,
    }


def device_detail(manager: Any, device_id: str) -> dict[str, Any] | None:
    device = manager.db.device(device_id)
    if device is None:
        return None
    device["alerts"] = manager.db.device_alerts(device_id)
    device["deployments"] = manager.db.device_deployments(device_id)
    events = []
    for e in manager.db.device_events(device_id):
        body = _json_obj(e["body"])
        events.append(
            {
                "ts": _num(e["ts"]),
                "deployment_id": e["deployment_id"],
                "state": e["state"],
                **{k: body.get(k) for k in ("step", "reason", "version", "progress") if k in body},
            }
        )
    device["events"] = events
    return device


def device_series(manager: Any, device_id: str, since_s: float, buckets: int = 60) -> dict[str, Any]:
    """A device's system telemetry (each report) and its models' figures per time bucket."""
    now = time.time()
    points: dict[str, list[Any]] = {k: [] for k in ("t", "cpu", "mem", "temp", "throttled")}
    for r in manager.db.system_series(device_id, now - since_s):
        system = _json_obj(r["system"])
        ts = _num(r["ts"])
        if ts is None:
            continue
        used, total = _num(system.get("mem_used_bytes")), _num(system.get("mem_total_bytes"))
        points["t"].append(ts)
        points["cpu"].append(_num(system.get("cpu_percent")))
        points["mem"].append(100.0 * used / total if used is not None and total else None)
        points["temp"].append(_num(system.get("temperature_c")))
        throttled = _num(system.get("throttled"))
        points["throttled"].append(None if throttled is None else 1 if throttled else 0)
    return {
        "device": device_id,
        "since_s": since_s,
        "system": points,
        "models": model_series(
            manager.db.model_rows(now - since_s, device_id=device_id), now, since_s, buckets
        ),
    }


# --- telemetry over time ---


def model_series(rows: list[dict[str, Any]], now: float, since_s: float, buckets: int = 60) -> dict[str, Any]:
    """Rows of ``telemetry_models`` as series on one time grid, per model and version: inferences/s,
    p50 and p95 latency (ms), error rate; None in buckets without inferences."""
    buckets = max(2, min(int(buckets), 500))
    width = since_s / buckets
    start = now - since_s
    grid = [start + (i + 1) * width for i in range(buckets)]
    acc: dict[tuple[str, str], list[list[Any]]] = {}
    for r in rows:
        ts = _num(r["ts"])
        if ts is None or not isinstance(r["model"], str) or not isinstance(r["version"], str):
            continue
        i = min(buckets - 1, max(0, int((ts - start) // width)))
        cells = acc.setdefault(
            (r["model"], r["version"]), [[0, 0, LatencyHistogram()] for _ in range(buckets)]
        )
        cell = cells[i]
        n, e = r["inferences"], r["errors"]
        cell[0] += n if isinstance(n, int) and n >= 0 else 0
        cell[1] += e if isinstance(e, int) and e >= 0 else 0
        merge_latency(cell[2], r["latency"])
    series = []
    for (model, version), cells in sorted(acc.items()):
        series.append(
            {
                "model": model,
                "version": version,
                "inferences": sum(c[0] for c in cells),
                "ips": [c[0] / width if c[0] else None for c in cells],
                "p50": [c[2].quantile(0.5) for c in cells],
                "p95": [c[2].quantile(0.95) for c in cells],
                "error_rate": [c[1] / c[0] if c[0] else None for c in cells],
            }
        )
    return {"t": grid, "bucket_s": width, "series": series}


# --- rollouts ---


def deployment_detail(manager: Any, dep_id: str) -> dict[str, Any]:
    dep = manager.rollouts.status(dep_id)
    try:
        dep["spec"] = json.loads(dep["spec"])
    except (TypeError, ValueError, RecursionError):
        pass
    timeline = []
    for e in manager.db.deployment_events(dep_id):
        body = _json_obj(e["body"])
        timeline.append(
            {
                "ts": _num(e["ts"]),
                "device": e["device"],
                "deployment_id": e["deployment_id"],
                "state": e["state"],
                **{k: body.get(k) for k in ("step", "reason", "progress") if k in body},
            }
        )
    dep["timeline"] = timeline
    dep["audit"] = manager.db.audit(100, target=dep_id)
    return dep


def preview(manager: Any, package_ref: str, spec: RolloutSpec, limit: int = 200) -> dict[str, Any]:
    """The devices a deployment would reach, its wave sizes and the devices busy with the model."""
    package = manager.packages.get(package_ref)
    devices = [d for d in manager.db.devices() if spec.targets.match(d)]
    fractions = spec.wave_fractions()
    n = len(devices)
    ends = [max(1, math.ceil(f * n)) if n else 0 for f in fractions]
    sizes = [max(0, min(e, n) - (min(ends[i - 1], n) if i else 0)) for i, e in enumerate(ends)]
    busy = manager.rollouts._busy(package["name"], [d["id"] for d in devices]) if devices else {}
    return {
        "package": {k: package[k] for k in ("sha256", "name", "version")},
        "count": n,
        "online": sum(d["online"] for d in devices),
        "waves": sizes,
        "devices": [
            {
                "id": d["id"],
                "online": d["online"],
                "profile": d["profile"],
                "grp": d["grp"],
                "current": (d["models"].get(package["name"]) or {}).get("version"),
            }
            for d in devices[:limit]
        ],
        "busy": {dep: sorted(devs)[:20] for dep, devs in busy.items()},
    }


# --- inside a package ---

_inside_cache: dict[str, dict[str, Any]] = {}
_inside_lock = threading.Lock()


def package_inside(manager: Any, sha_ref: str) -> dict[str, Any]:
    """The package's manifest, artifacts, the per-layer view of its model, accuracy and self-test.

    Computed once per package (packages are immutable, named by sha256) and kept in memory."""
    row = manager.packages.get(sha_ref)
    with _inside_lock:
        cached = _inside_cache.get(row["sha256"])
    if cached is not None:
        return cached
    from edge_runtime.package import open_package

    out: dict[str, Any] = {"package": row}
    with open_package(manager.packages.path(row["sha256"])) as pkg:
        m = pkg.manifest
        out["manifest"] = m.to_dict()
        # The key the signature names; verified only when the manager has a trust store (then
        # ``package.signer`` holds it, checked at upload).
        out["claimed_signer"] = pkg.signature.key_id if pkg.signature is not None else None
        out["layers"], out["partition"], out["layer_source"] = _layers(pkg)
    out["accuracy"] = out["manifest"].get("metrics") or {}
    out["selftest"] = _selftest(manager.packages.path(row["sha256"]))
    with _inside_lock:
        if len(_inside_cache) > 64:
            _inside_cache.clear()
        _inside_cache[row["sha256"]] = out
    return out


def _shape(graph: Any, name: str) -> list[Any] | None:
    shape = graph.shape(name)
    return None if shape is None else [d if isinstance(d, int) else str(d) for d in shape]


def _layers(pkg: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    """Per layer: operator, input/output shapes, where it runs (INT8 / float), 2:4, MACs, time."""
    m = pkg.manifest
    kinds = {a.kind for a in m.artifacts}
    sparse = set(m.sparsity.layers) if m.sparsity is not None else set()
    profile = _profile(m.metrics)
    partition = None
    plan = None
    if "native-plan" in kinds:
        try:
            from edge_runtime.plan.partition import partition_report
            from edge_runtime.plan.quantized_plan import QuantizedPlan

            plan = QuantizedPlan.from_bytes(pkg.read_artifact("native-plan"))
            partition = partition_report(plan)
        except Exception:  # noqa: BLE001 - the view shows what it can read
            plan = None
    placed = (partition or {}).get("nodes", {})
    macs = dict(plan.macs) if plan is not None and plan.macs else {}
    onnx_kind = "onnx" if "onnx" in kinds else "onnx-qdq" if "onnx-qdq" in kinds else None
    layers: list[dict[str, Any]] = []
    if onnx_kind is not None:
        try:
            from edge_runtime.graph.importer import import_onnx
            from edge_runtime.plan.partition import node_macs

            graph = import_onnx(pkg.read_artifact(onnx_kind))
            if not macs:
                macs = node_macs(graph)
            for node in graph.nodes:
                where = placed.get(node.name)
                layers.append(
                    {
                        "name": node.name,
                        "op": node.op_type,
                        "inputs": [{"name": i, "shape": _shape(graph, i)} for i in node.inputs if i],
                        "outputs": [{"name": o, "shape": _shape(graph, o)} for o in node.outputs],
                        "numerics": _numerics(where, plan is not None),
                        "placement": where,
                        "sparse_2_4": node.name in sparse or any(i in sparse for i in node.inputs),
                        "macs": int(macs.get(node.name, 0)),
                        "time_ms": profile.get(node.name),
                    }
                )
            return layers, partition, onnx_kind
        except Exception:  # noqa: BLE001 - fall back on the plan's steps
            layers = []
    if plan is not None:
        for step in plan.steps:
            if step.node.startswith("<"):
                continue
            where = placed.get(step.node)
            layers.append(
                {
                    "name": step.node,
                    "op": step.op,
                    "inputs": [{"name": i, "shape": None} for i in step.inputs],
                    "outputs": [{"name": o, "shape": None} for o in step.outputs],
                    "numerics": _numerics(where, True),
                    "placement": where,
                    "sparse_2_4": step.node in sparse,
                    "macs": int(macs.get(step.node, 0)),
                    "time_ms": profile.get(step.node),
                }
            )
        return layers, partition, "native-plan"
    return layers, partition, "none"


def _numerics(where: str | None, has_plan: bool) -> str:
    """How a layer runs: ``INT8`` (the native kernels), ``fused`` (folded into a neighbour by the
    lowering: a BatchNorm, an activation), ``float`` (the native backend's float steps, a foreign
    segment, or a package without a native plan)."""
    if not has_plan:
        return "float"
    if where is None:
        return "fused"
    return "INT8" if where == "native" else "float"


def _profile(metrics: dict[str, Any]) -> dict[str, float]:
    """Per-layer times (ms) a profiled package carries: ``metrics.profile.layers_ms`` or ``metrics.layer_ms``."""
    raw = metrics.get("layer_ms")
    if raw is None and isinstance(metrics.get("profile"), dict):
        raw = metrics["profile"].get("layers_ms")
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items() if _num(v) is not None}


def _selftest(path: Any) -> dict[str, Any]:
    """Run the package's self-test here (the manager's CPU), bounded; the result or why not."""
    try:
        import edge_runtime

        with edge_runtime.load(path, threads=1) as model:
            result = model.selftest()
        return {
            "ran": True,
            "passed": bool(result.passed),
            "atol": _num(result.atol),
            "rtol": _num(result.rtol),
            "seconds": _num(result.seconds),
            "detail": result.summary()[:1000],
        }
    except Exception as exc:  # noqa: BLE001 - a view: say why it could not run
        return {"ran": False, "passed": None, "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}
