"""The fleet's hardening: API token and upload limit, device-side package limits, the downgrade
guard, overlapping deployments, telemetry retention and its indexes, one manager per state."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from fleet_helpers import MODEL, seed_device, serving, wait_for, write_model_package

from fleet.errors import ConflictError, ManagerLockedError
from fleet.manager.http import ApiServer
from fleet.manager.rollout import RolloutSpec, Targets
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig
from fleet.protocol import Event, HealthPolicy, Status, Telemetry
from fleet.versions import compare_versions

FAST = HealthPolicy(window_s=0.5, min_inferences=1)
TOKEN = "t0ken-for-the-tests-0123456789"


def _spec(**kw: Any) -> RolloutSpec:
    kw.setdefault("health", FAST)
    kw.setdefault("block_size", 4096)
    return RolloutSpec(**kw)


def _wait_done(manager: FleetManager, dep_id: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (s := manager.rollouts.status(dep_id))["state"] not in ("running", "paused") and s,
        timeout,
        f"deployment {dep_id} to finish",
    )


def _register(manager: FleetManager, *devices: str) -> None:
    """Known devices with no agent behind them: deployments to them stay in progress."""
    for d in devices:
        manager.db.upsert_device(Status(device=d, state="online", ts=time.time()))


def _request(
    url: str, token: str | None = None, method: str = "GET", data: bytes | None = None
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- the HTTP API ---


def test_api_requires_the_token_except_metrics_and_health(tmp_path, manager, keys):
    pkg = write_model_package(tmp_path / "v1.edgepkg", "1.0", keys[0])
    api = ApiServer(manager, token=TOKEN, max_upload_bytes=pkg.path.stat().st_size).start()
    try:
        protected = [
            ("GET", "/api/v1/devices", None),
            ("GET", "/api/v1/packages", None),
            ("POST", "/api/v1/packages", pkg.path.read_bytes()),
            ("GET", f"/api/v1/packages/{pkg.sha256}/content", None),
            ("GET", "/api/v1/deployments", None),
            ("POST", "/api/v1/deployments", b'{"package": "x"}'),
            ("POST", "/api/v1/deployments/d1/abort", None),
            ("GET", "/api/v1/telemetry", None),
        ]
        for method, path, body in protected:
            for token in (None, "wrong-" + TOKEN, TOKEN[:-1], "Basic " + TOKEN):
                status, _ = _request(api.url + path, token, method, body)
                assert status == 401, (method, path, token, status)
        assert _request(api.url + "/metrics")[0] == 200
        assert json.loads(_request(api.url + "/healthz")[1]) == {"ok": True}

        status, body = _request(api.url + "/api/v1/packages", TOKEN, "POST", pkg.path.read_bytes())
        assert status == 201 and json.loads(body)["sha256"] == pkg.sha256
        status, body = _request(api.url + f"/api/v1/packages/{pkg.sha256}/content", TOKEN)
        assert status == 200 and body == pkg.path.read_bytes()
        assert _request(api.url + "/api/v1/devices", TOKEN)[0] == 200
        # One byte over the upload limit: 413, and nothing stored.
        status, body = _request(api.url + "/api/v1/packages", TOKEN, "POST", pkg.path.read_bytes() + b"x")
        assert status == 413 and b"limit" in body
        assert not list(manager.packages.root.glob(".tmp-upload-*"))
    finally:
        api.stop()


def test_generated_token_file_is_private_and_reused(tmp_path, monkeypatch):
    from fleet.auth import bearer_matches, client_token, manager_token

    monkeypatch.delenv("EDGE_FLEET_TOKEN", raising=False)
    monkeypatch.delenv("EDGE_FLEET_TOKEN_FILE", raising=False)
    token, source = manager_token(tmp_path / "state")
    path = tmp_path / "state" / "api-token"
    assert "generated" in source and (path.stat().st_mode & 0o777) == 0o600
    assert manager_token(tmp_path / "state") == (token, str(path))  # reused, not regenerated
    assert client_token(state_dir=tmp_path / "state") == token
    assert client_token(state_dir=tmp_path / "elsewhere") is None
    monkeypatch.setenv("EDGE_FLEET_TOKEN", TOKEN)
    assert manager_token(tmp_path / "state")[0] == TOKEN  # the environment wins over the file
    assert bearer_matches(f"Bearer {token}", token) and bearer_matches(f"bearer {token}", token)
    assert not bearer_matches(token, token) and not bearer_matches(None, token)


# --- device-side limits ---


def test_agent_refuses_packages_over_its_limit_or_its_free_disk(tmp_path, manager, start_agent, keys):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    for dev in ("small", "full"):
        seed_device(tmp_path / dev, v1, trust)
    start_agent("small", max_package_bytes=v2.stat().st_size - 1)
    start_agent("full", min_free_bytes=1 << 60)
    wait_for(lambda: sum(d["online"] for d in manager.devices()) == 2, 15, "2 devices online")

    final = _wait_done(manager, manager.deploy(manager.packages.add(v2)["sha256"], _spec())["id"])
    rows = {d["device"]: d for d in final["devices"]}
    assert rows["small"]["state"] == "failed" and rows["small"]["step"] == "download"
    assert "over this device's limit" in rows["small"]["reason"]
    assert rows["full"]["state"] == "failed" and "bytes free" in rows["full"]["reason"], rows["full"]
    for dev in ("small", "full"):
        assert serving(tmp_path / dev, trust) == ("1.0", True)
        assert not list((tmp_path / dev / "fleet" / "downloads").iterdir()), "bytes were downloaded"


def test_agent_cuts_off_a_stream_longer_than_announced(tmp_path, manager, start_agent, keys, monkeypatch):
    """A manager sending more bytes than the desired state's size: refused as the bytes arrive."""
    import zlib

    from fleet import protocol
    from fleet.manager import stream

    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    seed_device(tmp_path / "a", v1, trust)
    start_agent("a")
    wait_for(lambda: manager.devices() and manager.devices()[0]["online"], 15, "device online")
    manager.block_filter = lambda _dev, _index, data: data + b"\0" * 4096
    original = protocol.encode_block
    # The oversized blocks carry their own crc32: only the size check can catch them.
    monkeypatch.setattr(
        stream,
        "encode_block",
        lambda *a, crc32=None, **kw: original(*a, crc32=zlib.crc32(a[3]), **kw),
    )
    final = _wait_done(manager, manager.deploy(manager.packages.add(v2)["sha256"], _spec())["id"])
    dev = final["devices"][0]
    assert dev["state"] == "failed" and dev["step"] == "download", dev
    assert "past the" in dev["reason"] and "announced" in dev["reason"]
    assert not list((tmp_path / "a" / "fleet" / "downloads").iterdir()), "oversized download kept"
    assert serving(tmp_path / "a", trust) == ("1.0", True)


# --- the downgrade guard ---


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("1.0", "2.0", -1),
        ("1.10", "1.9", 1),
        ("1.2", "1.2.0", 0),
        ("v2.0.1", "2.0", 1),
        ("2.0-rc.1", "2.0", -1),
        ("2.0-rc.2", "2.0-rc.10", -1),
        ("2.0-1", "2.0-alpha", -1),
        ("1.0+build.7", "1.0", 0),
        ("latest", "1.0", None),
        ("release-7", "release-8", None),
        ("2024-spring", "2024-summer", -1),  # 2024 with prereleases "spring" < "summer"
    ],
)
def test_compare_versions(a, b, order):
    assert compare_versions(a, b) == order
    if order is not None:
        assert compare_versions(b, a) == -order


def test_downgrade_refused_unless_allowed(tmp_path, manager, start_agent, keys):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    seed_device(tmp_path / "a", v2, trust)
    start_agent("a")
    wait_for(lambda: manager.devices() and manager.devices()[0]["online"], 15, "device online")
    old = manager.packages.add(v1)["sha256"]

    final = _wait_done(manager, manager.deploy(old, _spec())["id"])
    dev = final["devices"][0]
    assert dev["state"] == "failed" and dev["step"] == "verify", dev
    assert "lower than the committed 2.0" in dev["reason"]
    assert serving(tmp_path / "a", trust) == ("2.0", True)
    assert not list((tmp_path / "a" / "fleet" / "downloads").iterdir()), "refused before downloading"

    final = _wait_done(manager, manager.deploy(old, _spec(allow_downgrade=True))["id"])
    assert final["state"] == "succeeded", final
    assert serving(tmp_path / "a", trust) == ("1.0", True)


# --- overlapping deployments ---


def test_overlapping_deployment_refused_unless_superseding(tmp_path, manager, keys):
    key = keys[0]
    v2 = manager.packages.add(write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path)
    v3 = manager.packages.add(write_model_package(tmp_path / "v3.edgepkg", "3.0", key, seed=3).path)
    _register(manager, "a", "b")
    first = manager.deploy(v2["sha256"], _spec(targets=Targets(devices=("a", "b"))))
    assert first["counts"] == {"in_progress": 2}

    with pytest.raises(ConflictError, match=f"{first['id']}: a.*--supersede"):
        manager.deploy(v3["sha256"], _spec(targets=Targets(devices=("a",))))
    # Taking over one of two devices: that row is superseded, the first deployment goes on with b.
    second = manager.deploy(v3["sha256"], _spec(targets=Targets(devices=("a",))), supersede=True)
    old = manager.rollouts.status(first["id"])
    assert old["state"] == "running" and old["counts"] == {"in_progress": 1, "superseded": 1}
    assert next(d for d in old["devices"] if d["device"] == "a")["reason"] == (
        f"superseded by deployment {second['id']}"
    )
    # Taking over the rest: the first deployment is superseded as a whole, not timed out.
    manager.deploy(v3["sha256"], _spec(targets=Targets(devices=("b",))), supersede=True)
    manager.rollouts.tick()
    old = manager.rollouts.status(first["id"])
    assert old["state"] == "superseded" and old["counts"] == {"superseded": 2}
    # A late result from the first deployment does not bring its row back.
    manager.ingest_event(
        Event(
            device="a",
            stream="s",
            seq=1,
            ts=time.time(),
            deployment_id=first["id"],
            model=MODEL,
            sha256=v2["sha256"],
            version="2.0",
            state="failed",
            step="download",
            reason="late",
        )
    )
    assert manager.rollouts.status(first["id"])["counts"] == {"superseded": 2}


# --- retention, indexes ---


def _telemetry(seq: int, ts: float) -> Telemetry:
    return Telemetry(
        device="d1",
        stream="s",
        seq=seq,
        ts=ts,
        window_s=10.0,
        models={MODEL: {"version": "1.0", "inferences": 5, "errors": 0}},
        system={},
        queue={"depth": 0, "dropped": 0},
    )


def test_retention_prunes_old_telemetry_and_the_window_query_uses_indexes(tmp_path):
    m = FleetManager(ManagerConfig("f", tmp_path, BrokerConfig(), retention_days=1))
    try:
        now = time.time()
        for seq in (1, 2):
            assert m.ingest_telemetry(_telemetry(seq, now))
        assert m.prune(now=now) == {"telemetry": 0, "telemetry_models": 0, "events": 0}
        assert m.telemetry_summary(3600)["models"][0]["inferences"] == 10
        # A day and a bit later everything received now is past the retention.
        assert m.prune(now=now + 1.1 * 86400) == {"telemetry": 2, "telemetry_models": 2, "events": 0}
        assert m.telemetry_summary(10 * 86400)["messages"] == 0

        def plan(sql: str) -> str:
            return " ".join(r["detail"] for r in m.db.query("EXPLAIN QUERY PLAN " + sql, (now,)))

        # The queries of GET /api/v1/telemetry search an index on ts, not the whole table.
        models_plan = plan(
            "SELECT model, version, inferences, errors, latency FROM telemetry_models WHERE ts >= ?"
        )
        assert "USING INDEX telemetry_models_by_ts" in models_plan, models_plan
        summary_plan = plan(
            "SELECT COUNT(*) AS messages, COUNT(DISTINCT device) AS devices, "
            "COALESCE(SUM(queue_dropped), 0) AS queue_dropped FROM telemetry WHERE ts >= ?"
        )
        assert "USING INDEX telemetry_by_ts" in summary_plan, summary_plan
    finally:
        m.close()


# --- one manager per state directory ---


def test_second_manager_on_the_same_state_is_refused(tmp_path):
    first = FleetManager(ManagerConfig("f", tmp_path / "a", BrokerConfig()))
    try:
        with pytest.raises(ManagerLockedError, match="another fleet manager .pid"):
            FleetManager(ManagerConfig("f", tmp_path / "a", BrokerConfig()))
        other = FleetManager(ManagerConfig("f", tmp_path / "b", BrokerConfig()))
        assert other.client_id != first.client_id  # no mutual disconnects at the broker
        other.close()
        client_id = first.client_id
    finally:
        first.close()
    again = FleetManager(ManagerConfig("f", tmp_path / "a", BrokerConfig()))
    assert again.client_id == client_id  # stable: the broker's persistent session survives restarts
    again.close()
