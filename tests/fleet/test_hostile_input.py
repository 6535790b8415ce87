"""Hostile and clumsy input to the manager: each ends as a typed refusal or a bounded cost, nothing lost.

The MQTT attacks come from a raw paho client on a device's own topics of a real mosquitto (what an
ACL-permitted device can do); the API attacks are HTTP requests with the operator's token.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
import urllib.error
import urllib.request
from contextlib import redirect_stdout
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fleet_helpers import seed_device, serving, wait_for, write_model_package
from paho.mqtt.enums import CallbackAPIVersion

from fleet import cli
from fleet.manager.http import ApiServer
from fleet.manager.rollout import InvalidRequestError, RolloutSpec, Targets
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig
from fleet.protocol import MAX_MODELS, HealthPolicy, Status, StreamGet, decode_block, topic
from fleet.targets import LATENCY_BUCKETS_MS

FLEET = "test"  # conftest's
TOKEN = "t0ken-for-the-tests-0123456789"


def _strict_json(raw: bytes) -> Any:
    """json.loads that refuses NaN and Infinity, as a strict client (and JSON itself) does."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"the API emitted {name}")

    return json.loads(raw, parse_constant=refuse)


def _request(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, _strict_json(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _strict_json(exc.read())


class Device:
    """A raw MQTT client with a device's identity: it publishes whatever bytes it likes."""

    def __init__(self, url: str, device: str) -> None:
        self.device = device
        self.received: list[bytes] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{device}")
        self._subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.payload)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        host, port = url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.client.subscribe(topic(FLEET, device, "stream/data"), qos=1)
        assert self._subscribed.wait(10)

    def publish(self, kind: str, payload: bytes | dict[str, Any]) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic(FLEET, self.device, kind), body, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _telemetry(device: str, seq: int, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "type": "telemetry",
        "device": device,
        "stream": "s1",
        "seq": seq,
        "ts": time.time(),
        "window_s": 1.0,
        "models": {
            "m": {
                "version": "1.0",
                "inferences": 10,
                "errors": 1,
                "latency_ms": {
                    "le": list(LATENCY_BUCKETS_MS),
                    "counts": [10] + [0] * len(LATENCY_BUCKETS_MS),
                },
            }
        },
        "system": {"cpu_percent": 12.5, "mem_used_bytes": 1 << 20, "mem_total_bytes": 1 << 30},
        "queue": {"depth": 0, "dropped": 0},
    }
    body.update(over)
    return body


def _dropped(manager: FleetManager, reason: str = "invalid") -> float:
    return manager.metrics.dropped.labels(reason)._value.get()


def _limited(manager: FleetManager, limit: str) -> float:
    return manager.metrics.limited.labels(limit)._value.get()


def _status(device: str, **over: Any) -> dict[str, Any]:
    body = {"v": 1, "type": "status", "device": device, "state": "online", "ts": time.time()}
    body.update(over)
    return body


@pytest.fixture
def api(manager: FleetManager) -> Any:
    server = ApiServer(manager, token=TOKEN).start()
    yield server
    server.stop()


def _cli_devices(api: ApiServer, *extra: str, monkeypatch: Any) -> str:
    monkeypatch.setenv("EDGE_FLEET_TOKEN", TOKEN)
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["fleet", "devices", "--api", api.url, *extra]) == 0
    return out.getvalue()


# --- 10, 11: invalid telemetry and status are dropped and counted; readers survive stored junk ---


def test_invalid_telemetry_and_status_are_dropped_over_mqtt(manager, broker, api, monkeypatch):
    dev = Device(broker.url, "evil")
    try:
        dev.publish("status", _status("evil", tags=["a"], group="g"))
        wait_for(lambda: manager.db.device("evil"), 10, "the device registered")
        hist = {"le": list(LATENCY_BUCKETS_MS), "counts": [1] * (len(LATENCY_BUCKETS_MS) + 1)}
        attacks: list[bytes | dict[str, Any]] = [
            _telemetry("evil", 1, system={"cpu_percent": "x"}),
            b'{"v":1,"type":"telemetry","device":"evil","stream":"s1","seq":2,"ts":Infinity,"window_s":1}',
            _telemetry("evil", 3, ts=1e18),
            _telemetry("evil", 4, queue={"depth": 0, "dropped": "x"}),
            _telemetry("evil", 5, models={"m": {"version": "1.0", "inferences": 1, "errors": 5}}),
            _telemetry(
                "evil",
                6,
                models={
                    "m": {
                        "version": "1",
                        "inferences": 9,
                        "errors": 0,
                        "latency_ms": {"le": [5, 1, float("1e300")], "counts": [1, 1, 1, 1]},
                    }
                },
            ),
            _telemetry(
                "evil",
                7,
                models={
                    "m": {
                        "version": "1",
                        "inferences": 9,
                        "errors": 0,
                        "latency_ms": {"le": list(range(1, 10001)), "counts": [0] * 10001},
                    }
                },
            ),
            _telemetry("evil", 8, models={"m": {"version": "1", "inferences": -1, "errors": 0}}),
            _telemetry("evil", 9, system={"cpu_percent": 400.0}),
            _telemetry("evil", 10, window_s=float(1 << 40)),
            {**_telemetry("evil", 11), "seq": 1 << 70},
            _status("evil", tags=[f"t{i}" for i in range(10_000)]),
            _status("evil", group="g" * 100_000),
            _status("evil", profile="\x1b[2J\x1b[31mpwned"),
            _status("evil", ts=float("1e18")),
            b"[" * 100_000,
            b"\xff\xfe not json",
        ]
        for i, payload in enumerate(attacks):
            kind = "status" if isinstance(payload, dict) and payload.get("type") == "status" else "telemetry"
            dev.publish(kind, payload)
        wait_for(lambda: _dropped(manager) >= len(attacks), 15, f"{len(attacks)} invalid messages dropped")
        assert _dropped(manager) == len(attacks)
        assert _dropped(manager, "error") == 0, "an attack reached an unexpected exception"
        # A good message after all that is stored: the device is not shut out.
        dev.publish(
            "telemetry",
            _telemetry(
                "evil",
                100,
                models={"m": {"version": "1.0", "inferences": 3, "errors": 0, "latency_ms": hist}},
            ),
        )
        wait_for(
            lambda: manager.db.one("SELECT 1 AS x FROM telemetry WHERE seq=100"), 10, "the valid telemetry"
        )
    finally:
        dev.close()
    # Nothing of the attacks was stored; the registry still has the first status's values.
    assert [r["seq"] for r in manager.db.query("SELECT seq FROM telemetry")] == [100]
    row = manager.db.device("evil")
    assert row["tags"] == ["a"] and row["grp"] == "g" and row["profile"] is None
    # Operators' views work: the API (strict JSON), the table and --json.
    status, devices = _request(f"{api.url}/api/v1/devices")
    assert status == 200 and devices[0]["resources"]["cpu_max"] == 12.5
    assert "evil" in _cli_devices(api, monkeypatch=monkeypatch)
    assert json.loads(_cli_devices(api, "--json", monkeypatch=monkeypatch))[0]["id"] == "evil"


def test_readers_never_trust_stored_values(manager, api, monkeypatch):
    """Rows written by an older manager (or by hand) with junk: every reader shows '-' or skips them."""
    now = time.time()
    manager.db.upsert_device(Status(device="old", state="online", ts=now))
    with manager.db.tx() as db:
        db.execute("UPDATE devices SET tags='not json', models='[1, 2]', profile=X'0102' WHERE id='old'")
        rows = [
            ("old", "s", 1, float("inf"), now, '{"cpu_percent": "x", "temperature_c": "hot"}', "x", "x"),
            ("old", "s", 2, now, now, "not json at all", None, None),
            (
                "old",
                "s",
                3,
                now,
                now,
                '{"cpu_percent": 50, "mem_used_bytes": "lots", "mem_total_bytes": 4}',
                1,
                2,
            ),
        ]
        db.executemany("INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany(
            "INSERT INTO telemetry_models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("old", "s", 1, "m", "1", now, "x", "y", "not json"),
                ("old", "s", 2, "m", "1", now, 10, 1, '{"le": [1], "counts": [1, 2]}'),
                (
                    "old",
                    "s",
                    3,
                    "m",
                    "1",
                    now,
                    5,
                    0,
                    json.dumps({"le": list(LATENCY_BUCKETS_MS), "counts": ["a"] * 13}),
                ),
            ],
        )
    status, devices = _request(f"{api.url}/api/v1/devices")
    assert status == 200
    r = devices[0]["resources"]
    assert r["cpu_max"] == 50 and r["temperature_max"] is None and r["mem_used_max"] is None
    assert r["last_ts"] is None or math.isfinite(r["last_ts"])
    assert devices[0]["tags"] == [] and devices[0]["models"] == {} and devices[0]["profile"] is None
    status, summary = _request(f"{api.url}/api/v1/telemetry")
    assert (
        status == 200 and summary["models"][0]["inferences"] == 15 and summary["models"][0]["p95_ms"] is None
    )
    assert "old" in _cli_devices(api, monkeypatch=monkeypatch)
    # The table also survives an API that sends junk (an older or a hostile manager).
    rows = cli.device_rows(
        [
            {
                "id": "x\x1b[2J",
                "online": "yes",
                "models": {"m": "v"},
                "resources": {"cpu_mean": "x", "cpu_max": 1e400},
            }
        ]
    )
    assert "\x1b" not in rows[1] and "-" in rows[1]


# --- 12: cardinality ---


def test_model_names_per_device_and_metric_labels_are_bounded(manager, broker, api):
    dev = Device(broker.url, "spray")
    before = len(_request_text(f"{api.url}/metrics"))
    try:
        per = MAX_MODELS
        for i in range(2000 // per + 1):
            models = {f"m{i * per + j}": {"version": "1", "inferences": 1, "errors": 0} for j in range(per)}
            dev.publish("telemetry", _telemetry("spray", i, models=models))
        n = 2000 // per + 1
        wait_for(
            lambda: len(manager.db.query("SELECT seq FROM telemetry WHERE device='spray'")) == n, 30, "stored"
        )
    finally:
        dev.close()
    limit = manager.config.max_models_per_device
    names = manager.db.query("SELECT DISTINCT model FROM telemetry_models WHERE device='spray'")
    assert len(names) == limit
    assert _limited(manager, "models_per_device") == n * per - limit
    text = _request_text(f"{api.url}/metrics")
    assert text.count("fleet_inferences_total{") == limit
    assert len(text) < before + 20_000, (before, len(text))
    assert 'fleet_limited_total{limit="models_per_device"}' in text


def test_metric_label_sets_are_capped(tmp_path, broker):
    m = FleetManager(
        ManagerConfig(
            FLEET, tmp_path / "m", BrokerConfig(broker.url), max_label_sets=5, max_models_per_device=1000
        )
    )
    try:
        from fleet.protocol import Telemetry

        for i in range(40):
            t = Telemetry(
                device="d",
                stream="s",
                seq=i,
                ts=time.time(),
                window_s=1.0,
                models={f"m{i}": {"version": "1", "inferences": 1, "errors": 0}},
            )
            assert m.ingest_telemetry(t)
        assert len(m.db.query("SELECT * FROM telemetry_models")) == 40, (
            "the data is kept, only labels are capped"
        )
        text = m.render_metrics().decode()
        assert text.count("fleet_inferences_total{") == 5
        assert m.metrics.limited.labels("metric_labels")._value.get() == 35
    finally:
        m.close()


def _request_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


# --- 13: stream amplification ---


def test_stream_requests_are_rate_limited_per_device_and_a_real_download_still_completes(
    tmp_path, broker, keys, start_agent
):
    key, trust = keys
    rate, burst = 64 << 10, 128 << 10
    manager = FleetManager(
        ManagerConfig(
            FLEET,
            tmp_path / "m",
            BrokerConfig(broker.url),
            tick_interval_s=0.2,
            stream_device_bytes_per_s=rate,
            stream_device_burst_bytes=burst,
        )
    ).start()
    dev = None
    try:
        big = write_model_package(tmp_path / "big.edgepkg", "1.0", key, seed=3, k=20000)  # ~240 KB
        sha = manager.packages.add(big.path)["sha256"]
        size = big.path.stat().st_size
        dev = Device(broker.url, "greedy")
        t0 = time.monotonic()
        request = StreamGet(sha, 1 << 20, 0, 64, "t").to_json()  # the whole file, each time
        for _ in range(30):
            dev.publish("stream/get", request)
        time.sleep(1.5)
        elapsed = time.monotonic() - t0
        got = sum(len(decode_block(p).data) for p in dev.received)
        # What was asked (30 times the file) against what the buckets let through, however slow the
        # machine: the burst, the rate over the time it took, and one block a full bucket admits.
        assert 0 < got <= burst + rate * elapsed + size, (got, burst, elapsed)
        assert got <= 30 * size / 4, (got, 30 * size)
        assert _limited(manager, "stream_device") > 0
        # Another device is not affected by the greedy one's bucket: a real OTA completes.
        v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
        v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
        manager.packages.add(v1)
        seed_device(tmp_path / "ok", v1, trust)
        start_agent("ok", block_timeout_s=0.5)
        wait_for(lambda: manager.db.device("ok"), 15, "device ok online")
        spec = RolloutSpec(
            targets=Targets(devices=("ok",)),
            health=HealthPolicy(window_s=0.3, min_inferences=1),
            block_size=4096,
        )
        dep = manager.deploy(manager.packages.add(v2)["sha256"], spec)
        final = wait_for(
            lambda: (s := manager.rollouts.status(dep["id"]))["state"] != "running" and s, 60, "the rollout"
        )
        assert final["state"] == "succeeded", final
        assert serving(tmp_path / "ok", trust) == ("2.0", True)
    finally:
        if dev is not None:
            dev.close()
        manager.stop()


def test_a_throttled_download_slows_but_completes(tmp_path, broker, keys, start_agent):
    """The agent's own download, through a bucket smaller than the package: blocks held back are asked again."""
    key, trust = keys
    manager = FleetManager(
        ManagerConfig(
            FLEET,
            tmp_path / "m",
            BrokerConfig(broker.url),
            tick_interval_s=0.2,
            stream_device_bytes_per_s=96 << 10,
            stream_device_burst_bytes=48 << 10,
        )
    ).start()
    try:
        v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
        v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2, k=12000).path  # ~150 KB
        manager.packages.add(v1)
        seed_device(tmp_path / "slow", v1, trust)
        start_agent("slow", block_timeout_s=0.5)
        wait_for(lambda: manager.db.device("slow"), 15, "device online")
        spec = RolloutSpec(
            targets=Targets(devices=("slow",)),
            health=HealthPolicy(window_s=0.3, min_inferences=1),
            block_size=4096,
        )
        dep = manager.deploy(manager.packages.add(v2)["sha256"], spec)
        final = wait_for(
            lambda: (s := manager.rollouts.status(dep["id"]))["state"] != "running" and s, 90, "the rollout"
        )
        assert final["state"] == "succeeded", final
        assert _limited(manager, "stream_device") > 0, "the bucket never held a block back"
    finally:
        manager.stop()


# --- 14, 15: deployment requests ---


def _deploy(api: ApiServer, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    return _request(f"{api.url}/api/v1/deployments", "POST", data)


@pytest.fixture
def known(tmp_path, manager, keys) -> str:
    """A package and two registered devices (no agents: deployments to them stay in progress)."""
    pkg = write_model_package(tmp_path / "p.edgepkg", "1.0", keys[0], seed=1).path
    for d in ("dev-a", "dev-b"):
        manager.db.upsert_device(Status(device=d, state="online", ts=time.time()))
    return manager.packages.add(pkg)["sha256"]


def test_deployment_request_with_unknown_keys_or_no_targets_is_refused(manager, api, known):
    status, body = _deploy(api, {"package": known, "devices": ["dev-zz"]})
    assert status == 400 and "devices" in body["error"] and "unknown key" in body["error"]
    for spec in ({}, {"targets": {}}, {"targets": {"all": False, "devices": []}}, {"targets": None}):
        status, body = _deploy(api, {"package": known, "spec": spec})
        assert status == 400 and "targets" in body["error"], (spec, body)
    status, body = _deploy(api, {"package": known})
    assert status == 400 and "spec" in body["error"]
    status, body = _deploy(api, {"package": known, "spec": {"targets": {"device": ["dev-a"]}}})
    assert status == 400 and "device" in body["error"]
    assert manager.rollouts.list() == [], "nothing was deployed"
    status, body = _deploy(api, {"package": known, "spec": {"targets": {"devices": ["dev-a"]}}})
    assert status == 201 and [d["device"] for d in body["devices"]] == ["dev-a"]
    status, body = _deploy(api, {"package": known, "spec": {"targets": {"all": True}}, "supersede": True})
    assert status == 201 and len(body["devices"]) == 2


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"targets": {"all": true}, "device_timeout_s": NaN}', "device_timeout_s"),
        (b'{"targets": {"all": true}, "device_timeout_s": 1e400}', "device_timeout_s"),
        (b'{"targets": {"all": true}, "max_latency_ratio": -Infinity}', "max_latency_ratio"),
        (b'{"targets": {"all": true}, "health": {"window_s": NaN}}', "window_s"),
        (b'{"targets": {"all": true}, "waves": [Infinity]}', "waves"),
        (b'{"targets": {"all": true}, "device_timeout_s": -5}', "device_timeout_s"),
        (b'{"targets": {"all": true}, "device_timeout_s": "600"}', "device_timeout_s"),
        (b'{"targets": {"all": true}, "block_size": 1}', "block_size"),
        (b'{"targets": {"all": true}, "block_size": 4096.5}', "block_size"),
        (b'{"targets": {"all": true}, "rate_per_min": -1}', "rate_per_min"),
        (b'{"targets": {"all": true}, "max_failure_rate": "lots"}', "max_failure_rate"),
        (b'{"targets": {"all": true}, "max_failure_rate": 2}', "max_failure_rate"),
        (b'{"targets": {"all": true}, "max_failures": true}', "max_failures"),
        (b'{"targets": {"all": true}, "min_executed": -1}', "min_executed"),
        (b'{"targets": {"all": true}, "watch_s": 1e12}', "watch_s"),
        (b'{"targets": {"all": true}, "canary": 0}', "canary"),
        (b'{"targets": {"all": true}, "waves": [0.5, "x"]}', "waves"),
        (b'{"targets": {"all": true}, "waves": 0.5}', "waves"),
        (b'{"targets": {"all": true}, "health": {"max_error_rate": 5}}', "max_error_rate"),
        (b'{"targets": {"all": true}, "health": {"window_s": -1}}', "window_s"),
        (b'{"targets": {"all": true}, "health": {"windows": 1}}', "windows"),
        (b'{"targets": {"all": true}, "allow_downgrade": "yes"}', "allow_downgrade"),
        (b'{"targets": {"all": "yes"}}', "all"),
        (b'{"targets": {"tags": "kitchen"}}', "tags"),
        (b'{"targets": {"all": true}, "retries": 3}', "retries"),
        (b"[]", "spec"),
    ],
)
def test_spec_values_are_validated(manager, api, known, raw, field):
    status, body = _deploy(api, None, b'{"package": "' + known.encode() + b'", "spec": ' + raw + b"}")
    assert status == 400, body
    assert field in body["error"], body["error"]
    assert manager.rollouts.list() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"null",
        b"7",
        b'"x"',
        b"[" * 50_000 + b"]" * 50_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"{",
        b"\xff",
    ],
)
def test_malformed_bodies_answer_400_not_500(manager, api, known, raw):
    status, body = _deploy(api, None, raw)
    assert status == 400, body
    assert "error" in body


def test_bad_package_refs_and_query_values_answer_400_or_404(manager, api, known):
    status, _ = _deploy(api, {"package": "%%%%%%%%", "spec": {"targets": {"all": True}}})
    assert status == 400
    status, _ = _deploy(api, {"package": 7, "spec": {"targets": {"all": True}}})
    assert status == 400
    for q in ("nan", "inf", "-1", "x", "1e400"):
        status, _ = _request(f"{api.url}/api/v1/devices?since_s={q}")
        assert status == 400, q


def test_spec_ranges_hold_for_python_callers_too():
    with pytest.raises(InvalidRequestError, match="device_timeout_s"):
        RolloutSpec(device_timeout_s=float("nan"))
    with pytest.raises(InvalidRequestError, match="block_size"):
        RolloutSpec(block_size=1)
    with pytest.raises(InvalidRequestError, match="max_failure_rate"):
        RolloutSpec(max_failure_rate=float("inf"))
    # A stored spec (to_dict) reads back as itself.
    spec = RolloutSpec(targets=Targets(tags=("k",)), canary=0.25, max_failure_rate=0.5)
    assert RolloutSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_cli_deploy_needs_a_target_or_all(monkeypatch):
    monkeypatch.setenv("EDGE_FLEET_TOKEN", TOKEN)
    # The refusal comes before any request (the API address is not even reachable).
    with pytest.raises(SystemExit, match="--all"):
        cli.main(["fleet", "deploy", "0123abcd", "--api", "http://127.0.0.1:9"])
    with pytest.raises(SystemExit, match="--all"):
        cli.main(["fleet", "deploy", "0123abcd", "--all", "--tag", "k", "--api", "http://127.0.0.1:9"])


def test_a_stored_spec_from_before_the_checks_is_aborted_once_not_failed_every_tick(manager, known):
    dep = manager.deploy(known, RolloutSpec(targets=Targets(devices=("dev-a",)), device_timeout_s=60))
    stored = json.loads(manager.db.one("SELECT spec FROM deployments WHERE id=?", (dep["id"],))["spec"])
    stored["device_timeout_s"], stored["block_size"] = float("nan"), 1
    with manager.db.tx() as db:
        db.execute("UPDATE deployments SET spec=? WHERE id=?", (json.dumps(stored), dep["id"]))
    final = wait_for(
        lambda: (s := manager.rollouts.status(dep["id"]))["state"] != "running" and s, 10, "the abort"
    )
    assert final["state"] == "aborted" and "stored spec is invalid" in final["reason"], final
    assert final["waves"] == 1
