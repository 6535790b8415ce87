"""The fleet agent inside ``edge serve``: one process serving models and taking OTA updates.

End to end: a real mosquitto on a free loopback port, the fleet manager in this process, and
``edge serve --fleet ... --device ...`` as a subprocess on a real notify socket. Also the option
plumbing (flags, the ``[fleet]`` table) and the manager's systemd unit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("paho.mqtt")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "serve"))

from fleet_helpers import (
    MODEL,
    Mosquitto,
    free_port,
    seed_device,
    wait_for,
    write_key,
    write_model_package,
)
from test_process import NotifySocket

from edge_runtime.errors import SignatureError
from edge_runtime.serve.cli import agent_from_args, register
from fleet.agent_options import AgentOptions, default_state_dir
from fleet.errors import AgentOptionsError
from fleet.manager.rollout import RolloutSpec
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig, make_client
from fleet.protocol import HealthPolicy, topic

FLEET, DEVICE = "test", "pi-1"


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _infer(url: str) -> dict[str, Any]:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}
    ).encode()
    request = urllib.request.Request(
        f"{url}/v2/models/{MODEL}/infer", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _retained_status(broker_url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The device's retained status message, read by a fresh client."""
    got: list[bytes] = []
    client = make_client("test-status-reader", BrokerConfig(broker_url))
    client.on_message = lambda _c, _u, msg: got.append(msg.payload)
    client.connect("127.0.0.1", BrokerConfig(broker_url).port)
    client.subscribe(topic(FLEET, DEVICE, "status"), qos=1)
    client.loop_start()
    try:
        wait_for(lambda: got, timeout, "the retained status")
    finally:
        client.disconnect()
        client.loop_stop()
    return json.loads(got[-1])  # type: ignore[no-any-return]


def _load_count(metrics: str) -> float:
    prefix = f'edge_model_load_total{{model="{MODEL}",result="success"}}'
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))


def test_serve_with_the_fleet_agent_takes_an_ota_update_and_stops_cleanly(tmp_path: Path) -> None:
    key = write_key(tmp_path / "trust" / "release")
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    state = tmp_path / "device"
    seed_device(state, v1, tmp_path / "trust")  # provisioned: 1.0 committed in the store

    broker = Mosquitto(tmp_path / "broker").start()
    manager = FleetManager(
        ManagerConfig(FLEET, tmp_path / "manager", BrokerConfig(broker.url), tick_interval_s=0.2)
    ).start()
    notify = NotifySocket()
    log = tmp_path / "serve.log"
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "edge_runtime.serve", "serve",
                "--port", str(port), "--backend", "onnxruntime", "--threads", "1",
                "--fleet", FLEET, "--device", DEVICE, "--broker", broker.url,
                "--trust", str(tmp_path / "trust"), "--state-dir", str(state),
                "--telemetry-interval", "0.5",
            ],
            env=dict(os.environ, NOTIFY_SOCKET=notify.name, PYTHONPATH=str(REPO)),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # READY=1 once the committed version serves; the agent connects afterwards, in the background.
        ready = notify.wait_for("READY=1", timeout=30)
        assert "serving 1 model(s)" in ready and f"device {DEVICE}" in ready, ready
        assert _get(f"{url}/v2/models/{MODEL}")["versions"] == ["1.0"]
        assert _infer(url)["model_version"] == "1.0"

        wait_for(
            lambda: any(d["id"] == DEVICE and d["online"] for d in manager.devices()), 15, "the device online"
        )
        # The agent's start-up did not load the committed version a second time.
        assert _load_count(_text(f"{url}/metrics")) == 1

        package = manager.packages.add(v2)
        # Sub-millisecond latencies on a busy test machine are noise: judge errors, not the p95 ratio.
        health = HealthPolicy(window_s=0.5, max_latency_ratio=100.0, min_inferences=1)
        spec = RolloutSpec(health=health, block_size=4096)
        deployment = manager.deploy(package["sha256"], spec)
        done = wait_for(
            lambda: (
                (s := manager.rollouts.status(deployment["id"]))["state"] not in ("running", "paused") and s
            ),
            20,
            "the deployment to finish",
        )
        assert done["state"] == "succeeded", done
        assert _get(f"{url}/v2/models/{MODEL}")["versions"] == ["2.0"]
        assert _infer(url)["model_version"] == "2.0"

        stopped_at = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()[-3000:]
        notify.wait_for("STOPPING=1", timeout=1)
        status = _retained_status(broker.url)
        assert status["state"] == "offline", status
        # Published by the agent on its way out, not the broker's Last Will (stamped at connect time).
        assert status["ts"] >= stopped_at, status
        assert status["models"][MODEL]["version"] == "2.0", status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
        manager.stop()
        broker.stop()


def test_readiness_does_not_wait_for_the_broker(tmp_path: Path) -> None:
    from edge_runtime.serve import ServeConfig, ServerThread

    key = write_key(tmp_path / "trust" / "release")
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    state = tmp_path / "device"
    seed_device(state, v1, tmp_path / "trust")
    nobody_listens = f"mqtt://127.0.0.1:{free_port()}"
    options = AgentOptions(
        fleet=FLEET, device=DEVICE, state_dir=state, broker=nobody_listens, trust=(tmp_path / "trust",)
    )
    started = time.monotonic()
    server = ServerThread(ServeConfig(port=0, backend="onnxruntime", threads=1), agent_spec=options)
    with server:
        assert time.monotonic() - started < 10
        assert _get(f"{server.url}/v2/health/ready") == {"ready": True}  # committed 1.0 loaded
        assert _infer(server.url)["model_version"] == "1.0"
        assert server.agent is not None and server.agent.agent.config.device == DEVICE
    assert server.server is not None and server.server.agent is None  # stopped with the server


# --- option plumbing ---


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_fleet_flags_mirror_edge_agent(tmp_path: Path) -> None:
    assert agent_from_args(_parse("--model", "m=x.edgepkg")) is None  # no fleet flag: no agent
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    options = agent_from_args(
        _parse(
            "--fleet", "f", "--device", "d", "--broker", "mqtts://b:8883",
            "--password-file", str(password), "--trust", "keys", "--tag", "a", "--tag", "b",
            "--max-package-mib", "2", "--no-downgrade-guard",
        )
    )  # fmt: skip
    assert options is not None
    config = options.agent_config(environ={})
    assert config.broker is not None
    assert (config.broker.url, config.broker.username, config.broker.password) == (
        "mqtts://b:8883",
        "d",
        "s3cret",
    )
    assert config.trust == (Path("keys").absolute(),) and config.tags == ("a", "b")
    assert config.max_package_bytes == 2 << 20 and config.downgrade_guard is False
    assert config.min_free_bytes == 64 << 20 and config.telemetry_interval_s == 10.0  # edge agent's defaults
    with pytest.raises(AgentOptionsError, match="--device"):
        agent_from_args(_parse("--fleet", "f"))


def test_password_from_the_environment_and_zeroconf_without_a_broker() -> None:
    options = AgentOptions(fleet="f", device="d")
    assert options.broker_config(environ={}) is None  # zeroconf, anonymous
    broker = options.broker_config(environ={"EDGE_MQTT_PASSWORD": "pw"})
    assert broker is not None and (broker.url, broker.username, broker.password) == ("", "d", "pw")


def test_state_dir_defaults_to_systemds_state_directory() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/edge-x:/var/lib/other"}) == Path("/var/lib/edge-x")
    assert default_state_dir({}) == Path("/var/lib/edge")


def test_fleet_table_of_the_config_file_with_flags_on_top(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        '[server]\nport = 0\n[fleet]\nfleet = "home"\ndevice = "pi"\nstate_dir = "state"\n'
        'trust = "keys"\ntags = ["x"]\ntelemetry_interval_s = 2\n'
    )
    from edge_runtime.serve import load_config

    assert load_config(config).port == 0  # the server's part of the file still loads
    options = agent_from_args(_parse("--config", str(config), "--device", "pi-2"))
    assert options is not None
    assert (options.fleet, options.device) == ("home", "pi-2")
    assert options.state_dir == tmp_path / "state" and options.trust == (tmp_path / "keys",)
    assert options.tags == ("x",) and options.telemetry_interval_s == 2
    config.write_text('[fleet]\nfleet = "home"\ndevice = "pi"\nbroker_url = "mqtt://x"\n')
    with pytest.raises(AgentOptionsError, match="unknown field.*broker_url"):
        agent_from_args(_parse("--config", str(config)))


def test_bad_fleet_settings_fail_before_anything_loads(tmp_path: Path) -> None:
    from edge_runtime.serve import ServeConfig
    from edge_runtime.serve.server import InferenceServer

    for options, match in (
        (AgentOptions(fleet="f", device="no/slash", state_dir=tmp_path), "device"),
        (AgentOptions(fleet="f", device="d", state_dir=tmp_path, broker="http://x"), "mqtt://"),
    ):
        with pytest.raises(AgentOptionsError, match=match):
            InferenceServer(ServeConfig(port=0), agent_spec=options)
    missing_keys = AgentOptions(fleet="f", device="d", state_dir=tmp_path, trust=(tmp_path / "none",))
    with pytest.raises(SignatureError, match="does not exist"):  # the server's loader reads it first
        InferenceServer(ServeConfig(port=0), agent_spec=missing_keys)
    with pytest.raises(AgentOptionsError, match="password file"):
        AgentOptions(fleet="f", device="d", password_file=tmp_path / "missing").agent_config()


# --- the manager's systemd unit ---


def test_fleet_manager_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    text = (REPO / "deploy/systemd/edge-fleet.service").read_text()
    lines = text.splitlines()
    for line in ("Type=simple", "StateDirectory=edge-fleet", "Restart=on-failure", "NoNewPrivileges=yes"):
        assert line in lines, line
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert " fleet serve " in exec_start and "--state-dir /var/lib/edge-fleet" in exec_start
    analyze = shutil.which("systemd-analyze")
    edge = Path(sys.executable).with_name("edge")
    if analyze is None or not edge.is_file():
        pytest.skip("systemd-analyze or this install's edge script is missing")
    # verify checks that the ExecStart binary exists: point it at this install's edge.
    unit = tmp_path / "edge-fleet.service"
    unit.write_text(text.replace("/opt/edge/venv/bin/edge", str(edge)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "edge-fleet.service" not in result.stderr, result.stderr  # no warning about our unit


def test_options_the_manager_would_refuse_in_every_status_are_refused_at_start() -> None:
    with pytest.raises(AgentOptionsError, match="over the limit of 32"):
        AgentOptions(fleet="f", device="d", tags=tuple(f"t{i}" for i in range(33)))
    with pytest.raises(AgentOptionsError, match="200 characters"):
        AgentOptions(fleet="f", device="d", tags=("x" * 200,))
    with pytest.raises(AgentOptionsError, match="control characters"):
        AgentOptions(fleet="f", device="d", group="line\nbreak")
    assert AgentOptions(fleet="f", device="d", tags=("a", "b"), group="g").tags == ("a", "b")
