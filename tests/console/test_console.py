"""The fleet console in a real browser (headless Chromium, playwright) against a real manager,
mosquitto and in-process agents: sign-in, the overview, a device's live charts, a deployment
created from the UI rolling out live, abort, the viewer's read-only role, a package's layers,
telemetry side by side, and the device table at 10,000 devices. Screenshots of each page go to
the module's tmp directory (``screenshots/``); no test may leave an error in the browser console."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from console_helpers import FLEET, OPERATOR, VIEWER, Fleet, Page, missing

if missing():
    pytest.skip(missing() or "", allow_module_level=True)

from fleet_helpers import Mosquitto, wait_for
from playwright import sync_api

from fleet.manager.http import ApiServer
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig


def _until(page: Any, js: str, timeout: float = 15.0) -> Any:
    """Poll ``js`` in the page until it is truthy (page.wait_for_function would eval a string,
    which the console's Content-Security-Policy forbids)."""
    return wait_for(lambda: page.evaluate(js), timeout, js, interval=0.1)


def _http(url: str, method: str = "GET", token: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_sign_in_overview_devices_and_live_device_charts(page: Page, fleet: Fleet) -> None:
    p = page.page
    p.goto(fleet.url + "/")
    # The page shows the form once its script learns there is no session (a request to the API).
    p.wait_for_selector("#signin-form", state="visible")
    assert p.get_attribute("#token", "type") == "password"
    page.expected.append("401")  # the wrong token below: the browser logs the refused request
    p.fill("#token", "not-the-token-at-all-000")
    p.click("#signin-button")
    p.wait_for_selector("#signin-error:has-text('neither')")
    assert OPERATOR not in p.url
    page.sign_in(OPERATOR)
    # The session is an HttpOnly, SameSite=Strict cookie; the token is in no URL and no storage.
    cookie = next(c for c in p.context.cookies() if c["name"] == "edge_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert OPERATOR not in cookie["value"]
    assert p.evaluate("document.cookie") == ""
    assert OPERATOR not in json.dumps(p.evaluate("({...localStorage, ...sessionStorage})"))

    p.wait_for_selector("#stat-total b:has-text('3')")
    p.wait_for_selector("#live.on")
    p.wait_for_selector("#versions td:has-text('1.0')")
    page.shot("overview")

    p.click("a[data-nav=devices]")
    p.wait_for_selector("#devices tbody tr >> nth=2")
    assert p.locator("#devices tbody tr").count() == 3
    p.fill("input[name=tag]", "gate")
    _until(p, "document.querySelectorAll('#devices tbody tr').length === 1")
    assert "gate-01" in p.inner_text("#devices")
    page.shot("devices")

    p.click("#devices a:has-text('gate-01')")
    p.wait_for_selector("#chart-system .uplot")
    for chart in ("#chart-system", "#chart-temp", "#chart-ips", "#chart-latency", "#chart-errors"):
        assert p.locator(f"{chart} .uplot").count() == 1, chart
    _until(p, "Number(document.querySelector('#chart-system').dataset.points) >= 2")
    before = int(p.get_attribute("#chart-system", "data-points") or 0)
    # New telemetry arrives every 0.5 s; the page learns of it over SSE and redraws without reloading.
    _until(p, f"Number(document.querySelector('#chart-system').dataset.points) > {before}", 10)
    p.wait_for_selector("#model-table td:has-text('linear')")
    assert p.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    page.shot("device")


def test_deploy_from_the_ui_rolls_out_live_then_abort(page: Page, fleet: Fleet) -> None:
    p = page.page
    page.sign_in(OPERATOR)
    p.click("a[data-nav=rollouts]")
    p.wait_for_selector("#deploy-form")
    v2 = fleet.packages["2.0"]["sha256"]
    p.select_option("#deploy-form select[name=package]", v2)
    p.check("#deploy-form input[name=all]")
    p.fill("#deploy-form input[name=canary]", "0.34")
    # The devices' own health window: short, and lenient on latency (this machine is loaded; the
    # agents, the traffic and the manager share one process), as tests/fleet/test_ota.py's FAST.
    p.fill("#deploy-form input[name=health_window]", "0.5")
    p.fill("#deploy-form input[name=health_latency_ratio]", "1000")
    p.click("#preview-button")
    p.wait_for_selector("#preview-count:has-text('3')")
    assert "2 wave(s)" in p.inner_text("#preview-result")
    page.shot("rollouts-preview")
    p.click("#deploy-button")
    p.wait_for_selector("#confirm[open]")
    assert "3 device(s)" in p.inner_text("#confirm-text")
    p.click("#confirm-ok")
    p.wait_for_selector("#deployment-id")
    dep_id = p.inner_text("#deployment-id")
    assert fleet.manager.rollouts.status(dep_id)["model"] == "linear"
    # Progress updates live (SSE): the page goes from running to succeeded without a reload.
    try:
        p.wait_for_selector("#deployment-state:has-text('succeeded')", timeout=60000)
    except sync_api.TimeoutError:
        page.shot("rollout-not-succeeded")
        status = fleet.manager.rollouts.status(dep_id)
        raise AssertionError(f"{status['state']} {status['reason']} {status['devices']}") from None
    assert p.get_attribute("#deployment-progress .progress", "data-done") == "3"
    assert p.evaluate("performance.getEntriesByType('navigation').length") == 1
    p.wait_for_selector("#timeline td:has-text('succeeded')")
    page.shot("rollout-succeeded")

    # A slow rollout of 3.0 (one device a minute), aborted from its page after confirmation.
    p.click("a[data-nav=rollouts]")
    p.wait_for_selector("#deploy-form")
    p.select_option("#deploy-form select[name=package]", fleet.packages["3.0"]["sha256"])
    p.check("#deploy-form input[name=all]")
    p.fill("#deploy-form input[name=rate]", "1")
    p.click("#deploy-button")
    p.wait_for_selector("#confirm[open]")
    p.click("#confirm-ok")
    p.wait_for_selector("#action-abort")
    slow_id = p.inner_text("#deployment-id")
    p.click("#action-abort")
    p.wait_for_selector("#confirm[open]")
    p.click("#confirm-cancel")  # cancelled: nothing happens
    time.sleep(0.3)
    assert fleet.manager.rollouts.status(slow_id)["state"] in ("running", "paused")
    p.click("#action-abort")
    p.click("#confirm-ok")
    p.wait_for_selector("#deployment-state:has-text('aborted')")
    assert fleet.manager.rollouts.status(slow_id)["state"] == "aborted"
    p.wait_for_selector("#deployment-reason:has-text('aborted by the operator')")
    p.wait_for_selector("#deployment-audit td:has-text('abort')")
    page.shot("rollout-aborted")

    p.click("a[data-nav=audit]")
    p.wait_for_selector("#audit td:has-text('abort')")
    audit = p.inner_text("#audit")
    assert "console operator session" in audit and dep_id in audit


def test_viewer_cannot_act(page: Page, fleet: Fleet) -> None:
    # The API: the viewer token reads, and every action is 403; the operator's is not.
    assert _http(fleet.url + "/api/v1/devices", token=VIEWER)[0] == 200
    status, body = _http(
        fleet.url + "/api/v1/deployments",
        "POST",
        VIEWER,
        {"package": fleet.packages["2.0"]["sha256"], "spec": {"targets": {"all": True}}},
    )
    assert status == 403, body
    assert _http(fleet.url + "/api/v1/deployments/x/abort", "POST", VIEWER)[0] == 403
    assert _http(fleet.url + "/api/v1/deployments/x/abort", "POST", OPERATOR)[0] == 404
    assert _http(fleet.url + "/api/v1/devices")[0] == 401

    p = page.page
    page.sign_in(VIEWER)
    p.wait_for_selector("#role:has-text('viewer')")
    p.click("a[data-nav=rollouts]")
    p.wait_for_selector("#deployments")
    assert p.locator("#deploy-form").count() == 0
    # Even from the page's own script, with the session's CSRF token, an action is refused.
    page.expected.append("403")
    status = p.evaluate(
        """async () => {
            const s = await (await fetch('/console/session')).json();
            const r = await fetch('/api/v1/deployments/x/abort', {method: 'POST', headers: {'X-CSRF-Token': s.csrf}});
            return r.status;
        }"""
    )
    assert status == 403
    page.shot("viewer-rollouts")


def test_csrf_is_required_for_session_actions(page: Page, fleet: Fleet) -> None:
    p = page.page
    page.sign_in(OPERATOR)
    page.expected += ["403", "404"]
    statuses = p.evaluate(
        """async () => {
            const s = await (await fetch('/console/session')).json();
            const without = await fetch('/api/v1/deployments/x/pause', {method: 'POST'});
            const wrong = await fetch('/api/v1/deployments/x/pause', {method: 'POST', headers: {'X-CSRF-Token': 'x'}});
            const right = await fetch('/api/v1/deployments/x/pause', {method: 'POST', headers: {'X-CSRF-Token': s.csrf}});
            return [without.status, wrong.status, right.status];
        }"""
    )
    assert statuses == [403, 403, 404]  # 404: past the checks, no such deployment


def test_package_and_telemetry_pages(page: Page, fleet: Fleet) -> None:
    p = page.page
    page.sign_in(OPERATOR)
    p.click("a[data-nav=packages]")
    p.wait_for_selector("#packages a:has-text('linear')")
    sha = fleet.packages["2.0"]["sha256"]
    p.goto(f"{fleet.url}/#/package/{sha}")
    p.wait_for_selector("#layers td:has-text('Gemm')")
    layers = p.inner_text("#layers")
    assert "[batch×4]" in layers or "4" in layers
    p.wait_for_selector("#selftest:has-text('passed')")
    assert "model.onnx" in p.inner_text("#artifacts")
    assert p.is_visible("#provenance") and p.is_visible("#accuracy")  # a training run's metrics and origin
    page.shot("package")

    p.click("a[data-nav=telemetry]")
    p.wait_for_selector("#tchart-ips .uplot")
    assert p.locator("#tchart-p95 .uplot").count() == 1
    _, series = _http(fleet.url + "/api/v1/telemetry/series?since_s=900", token=VIEWER)
    versions = {s["version"] for s in series["series"] if s["inferences"]}
    if len(versions) >= 2:  # after the rollout test: two versions side by side
        legend = p.inner_text("#tchart-ips .u-legend").lower()
        assert sum(f"linear {v}" in legend for v in versions) == 2, legend
    page.shot("telemetry")


def _publish_status(fleet: Fleet, device: str, alerts: list[str]) -> None:
    """A retained status as an agent sends it (fleet.protocol.Status), with ``alerts``."""
    import paho.mqtt.client as mqtt

    from fleet.protocol import Presence, Status, topic

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{device}")
    client.connect("127.0.0.1", fleet.broker.port)
    client.loop_start()
    try:
        status = Status(
            device=device, state=Presence.ONLINE, ts=time.time(), agent_version="test", alerts=alerts
        )
        client.publish(topic(FLEET, device, "status"), status.to_json(), qos=1, retain=True).wait_for_publish(
            5
        )
    finally:
        client.loop_stop()
        client.disconnect()


def test_device_alerts_are_stored_and_shown_live(page: Page, fleet: Fleet) -> None:
    """The agent's duplicate_device_id alert (its status's ``alerts``): stored, on the overview, cleared."""
    p = page.page
    page.sign_in(OPERATOR)
    p.wait_for_selector("#stat-total b")
    _publish_status(fleet, "ghost-01", ["duplicate_device_id"])
    p.wait_for_selector("#alerts td:has-text('duplicate_device_id')")  # live: no reload
    assert "ghost-01" in p.inner_text("#alerts")
    assert [a["alert"] for a in fleet.manager.db.device_alerts("ghost-01")] == ["duplicate_device_id"]
    page.shot("overview-alert")
    p.goto(f"{fleet.url}/#/device/ghost-01")
    p.wait_for_selector("#device-alerts:has-text('duplicate_device_id')")
    # The agent's next status carries no alert any more (it clears after 10 quiet minutes): it goes.
    _publish_status(fleet, "ghost-01", [])
    wait_for(lambda: not fleet.manager.db.device_alerts("ghost-01"), 10, "the alert to clear")
    p.goto(f"{fleet.url}/#/")
    p.wait_for_selector("#stat-total b")
    assert "duplicate_device_id" not in p.inner_text("#alerts")


def test_ten_thousand_devices_render_fast(page: Page, fleet: Fleet, tmp_path: Any) -> None:
    """10,000 device rows inserted directly: the device table's first render stays under 1 s."""
    broker = Mosquitto(tmp_path / "broker").start()
    manager = FleetManager(ManagerConfig("big", tmp_path / "manager", BrokerConfig(broker.url))).start()
    api = ApiServer(manager, token=OPERATOR, viewer_token=VIEWER).start()
    try:
        now = time.time()
        with manager.db.tx() as db:
            db.executemany(
                "INSERT INTO devices (id, online, first_seen, last_seen, profile, grp, tags, models, agent_version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        f"dev-{i:05d}",
                        int(i % 10 != 0),
                        now,
                        now - i,
                        ("rpi4", "rpi5", "orin")[i % 3],
                        f"plant-{i % 20}",
                        json.dumps([f"line-{i % 7}"]),
                        json.dumps({"linear": {"version": "1.0" if i % 4 else "2.0", "sha256": "0" * 64}}),
                        "0.9",
                    )
                    for i in range(10000)
                ],
            )
        p = page.page
        p.goto(api.url + "/")
        p.fill("#token", OPERATOR)
        p.click("#signin-button")
        p.wait_for_selector("#stat-total b:has-text('10,000')")
        start = time.monotonic()
        p.goto(api.url + "/#/devices")
        p.wait_for_selector("#page-info:has-text('of 10,000')")
        p.wait_for_selector("#devices tbody tr >> nth=49")
        first_render = time.monotonic() - start
        page.shot("devices-10000")
        start = time.monotonic()
        p.fill("input[name=profile]", "orin")
        p.wait_for_selector("#page-info:has-text('of 3,333')")
        filtered = time.monotonic() - start
        start = time.monotonic()
        p.goto(api.url + "/#/")
        p.reload()
        p.wait_for_selector("#stat-total b:has-text('10,000')")
        overview = time.monotonic() - start
        page.shot("overview-10000")
        print(
            f"10,000 devices: table first render {first_render:.3f} s, filter {filtered:.3f} s, overview {overview:.3f} s"
        )
        (fleet.shots / "timings.txt").write_text(
            f"first_render_s {first_render:.3f}\nfilter_s {filtered:.3f}\noverview_s {overview:.3f}\n"
        )
        assert first_render < 1.0, f"the device table took {first_render:.2f} s"
        assert filtered < 1.0
        assert overview < 2.0, f"the overview (a full page load) took {overview:.2f} s"
    finally:
        api.stop()
        manager.stop()
        broker.stop()
