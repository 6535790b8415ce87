"""The shipped ACL template, on a real mosquitto with a real password file: devices stay in their lane."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fleet_helpers import REPO, Mosquitto, wait_for

from fleet.mqtt import BrokerConfig, make_client
from fleet.protocol import topic

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")

USERS = {"manager": "m-secret", "dev-a": "a-secret", "dev-b": "b-secret", "observer": "o-secret"}


@pytest.fixture
def secured(tmp_path: Path):
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        flags = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *flags, "-b", str(passwd), user, password], check=True)
    acl = tmp_path / "acl"
    template = (REPO / "deploy" / "mosquitto" / "acl.template").read_text()
    # The observer (test only) reads everything, to see what would have got through.
    acl.write_text(template.replace("FLEET", "f1") + "\nuser observer\ntopic read #\n")
    broker = Mosquitto(
        tmp_path / "broker", f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}"
    ).start()
    yield broker
    broker.stop()


def _client(
    broker: Mosquitto, user: str, password: str | None = None
) -> tuple[mqtt.Client, list, threading.Event]:
    received: list[tuple[str, bytes]] = []
    connected = threading.Event()
    c = make_client(f"acl-{user}", BrokerConfig(broker.url, user, password or USERS[user]))
    c.on_connect = lambda *a: connected.set() if not a[3].is_failure else None
    c.on_message = lambda _c, _u, m: received.append((m.topic, m.payload))
    c.connect_async("127.0.0.1", broker.port)
    c.loop_start()
    return c, received, connected


def test_devices_cannot_write_other_devices_or_command_topics(secured):
    observer, seen, ok = _client(secured, "observer")
    assert ok.wait(10)
    subscribed = threading.Event()
    observer.on_subscribe = lambda *_: subscribed.set()
    observer.subscribe("#", qos=1)
    assert subscribed.wait(10)  # the broker has the subscription before anything is published
    dev_a, _, ok_a = _client(secured, "dev-a")
    assert ok_a.wait(10)
    forged = [
        topic("f1", "dev-b", "telemetry"),  # another device's telemetry
        topic("f1", "dev-b", "status"),
        topic("f1", "dev-a", "desired"),  # a command topic, even its own
        topic("f1", "dev-b", "desired"),
        topic("f1", "dev-a", "cmd"),
        topic("f1", "dev-a", "stream/data"),
        "edge/v1/other-fleet/dev-a/telemetry",
    ]
    for t in forged:
        dev_a.publish(t, b"forged", qos=1).wait_for_publish(5)
    dev_a.publish(topic("f1", "dev-a", "telemetry"), b"marker", qos=1).wait_for_publish(5)
    wait_for(lambda: any(p == b"marker" for _, p in seen), 10, "the device's own telemetry")
    got_through = [t for t, p in seen if p == b"forged"]
    assert got_through == [], f"the ACL let these through: {got_through}"

    # The manager's user can command a device, and the device reads only its own commands.
    dev_b, b_seen, ok_b = _client(secured, "dev-b")
    assert ok_b.wait(10)
    b_subscribed = threading.Event()
    dev_b.on_subscribe = lambda *_: b_subscribed.set()
    dev_b.subscribe("edge/v1/f1/+/desired", qos=1)  # a wildcard reaching dev-a's topics too
    assert b_subscribed.wait(10)
    mgr, _, ok_m = _client(secured, "manager")
    assert ok_m.wait(10)
    mgr.publish(topic("f1", "dev-a", "desired"), b"for-a", qos=1).wait_for_publish(5)
    mgr.publish(topic("f1", "dev-b", "desired"), b"for-b", qos=1).wait_for_publish(5)
    wait_for(lambda: any(p == b"for-b" for _, p in b_seen), 10, "dev-b's own desired state")
    assert all(p != b"for-a" for _, p in b_seen), "dev-b read dev-a's desired state"
    for c in (observer, dev_a, dev_b, mgr):
        c.disconnect()
        c.loop_stop()


def test_wrong_password_is_refused(secured):
    c, _, connected = _client(secured, "dev-a", "not-the-password")
    assert not connected.wait(2)
    c.loop_stop()


@pytest.mark.parametrize("source", ["file", "env"])
def test_manager_password_never_on_the_command_line(tmp_path, secured, source):
    """`edge fleet serve` logs in as `manager` with --password-file or $EDGE_MQTT_PASSWORD."""
    import os
    import sys
    import urllib.request

    from fleet_helpers import free_port

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = []
    if source == "file":
        (tmp_path / "pw").write_text(USERS["manager"] + "\n")
        args = ["--password-file", str(tmp_path / "pw")]
    else:
        env["EDGE_MQTT_PASSWORD"] = USERS["manager"]
    http = free_port()
    log = tmp_path / "manager.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", "fleet", "serve", "--fleet", "f1", "--state-dir",
             str(tmp_path / "m"), "--broker", secured.url, "--http", f"127.0.0.1:{http}", *args],
            env=env, cwd=REPO, stdout=out, stderr=out,
        )  # fmt: skip
    try:

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1).status == 200
            except OSError:
                return proc.poll() is not None  # exited: fail below with its log

        wait_for(healthy, 30, "the manager to connect and serve")
        assert proc.poll() is None, log.read_text()[-2000:]
        assert "connected to mqtt://127.0.0.1" in log.read_text()
        assert USERS["manager"] not in " ".join(proc.args)
    finally:
        proc.terminate()
        proc.wait(15)
