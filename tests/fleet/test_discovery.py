"""Zeroconf on a fresh network namespace's loopback (multicast enabled there only), and the embedded broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from fleet_helpers import REPO, free_port, wait_for

from fleet.broker import EmbeddedBroker
from fleet.mqtt import BrokerConfig, make_client

ADVERTISE = """
import time
from fleet.discovery import Advertiser
a = Advertiser("lab", "mqtt://127.0.0.1:1883", "http://127.0.0.1:8480", "ab" * 32).start()
time.sleep(8)
a.stop()
"""
BROWSE = """
from fleet.discovery import discover
m = discover("lab", timeout=6, interface="127.0.0.1")
print(m.broker_url, m.api_url, m.tls_fingerprint)
"""


def _netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.mark.skipif(not _netns_available(), reason="needs root and iproute2 for a network namespace")
def test_agent_finds_manager_by_dns_sd_in_a_network_namespace():
    ns = f"edgefleet-{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", ns], check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        # A namespace of our own: turning multicast on for its loopback touches nothing else.
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up", "multicast", "on"], check=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        run = ["ip", "netns", "exec", ns, sys.executable, "-c"]
        adv = subprocess.Popen([*run, textwrap.dedent(ADVERTISE)], env=env, cwd=REPO)
        time.sleep(1.0)
        out = subprocess.run(
            [*run, textwrap.dedent(BROWSE)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        adv.terminate()
        adv.wait(10)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["mqtt://127.0.0.1:1883", "http://127.0.0.1:8480", "ab" * 32]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_embedded_broker_carries_fleet_messages():
    broker = EmbeddedBroker(port=free_port()).start()
    try:
        got: list[bytes] = []
        c = make_client("probe", BrokerConfig(broker.url))
        c.on_message = lambda _c, _u, m: got.append(m.payload)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        c.subscribe("edge/v1/lab/+/telemetry", qos=1)
        time.sleep(0.3)
        c.publish("edge/v1/lab/d1/telemetry", b"x", qos=1).wait_for_publish(5)
        wait_for(lambda: got == [b"x"], 5, "the message through amqtt")
        c.disconnect()
        c.loop_stop()
    finally:
        broker.stop()
