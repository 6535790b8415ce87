"""Fixtures for the console tests: a real mosquitto, a manager with its HTTP API and console, three
in-process agents serving a real model under traffic, and headless Chromium driven by playwright.

Skipped cleanly without playwright (the Python package), Debian's ``chromium``, mosquitto or
onnxruntime. Chromium is launched from /usr/bin/chromium: ``playwright install`` is never needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("paho.mqtt")
pytest.importorskip("onnxruntime")
pytest.importorskip("aiohttp")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("EDGE_TEST_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

from fleet_helpers import (
    IN,
    MODEL,
    MOSQUITTO,
    Mosquitto,
    seed_device,
    wait_for,
    write_key,
    write_model_package,
)

if not Path(MOSQUITTO).exists():
    pytest.skip("no mosquitto (apt-get install -y mosquitto)", allow_module_level=True)

from fleet.agent import Agent, AgentConfig
from fleet.manager.http import ApiServer
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig
from fleet.protocol import HealthPolicy

FLEET = "console"
OPERATOR = "operator-token-for-the-console-tests"
VIEWER = "viewer-token-for-the-console-tests"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEVICES = ("cam-01", "cam-02", "gate-01")
FAST = HealthPolicy(window_s=0.5, min_inferences=1, max_latency_ratio=1000.0)


@dataclass
class Fleet:
    manager: FleetManager
    api: ApiServer
    agents: list[Agent]
    packages: dict[str, dict[str, Any]]
    shots: Path
    tmp: Path
    broker: Mosquitto
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.api.url


def _traffic(agents: list[Agent], stop: threading.Event) -> None:
    x = np.zeros((1, IN), np.float32)
    deadline = time.monotonic() + 300
    while not stop.is_set() and time.monotonic() < deadline:
        for a in agents:
            with contextlib.suppress(Exception):  # a call racing a swap
                a.runtime.run(MODEL, {"x": x})
        time.sleep(0.02)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("console")
    broker = Mosquitto(tmp / "broker").start()
    key = write_key(tmp / "trust" / "release")
    trust = tmp / "trust"
    manager = FleetManager(
        ManagerConfig(FLEET, tmp / "manager", BrokerConfig(broker.url), tick_interval_s=0.2)
    ).start()
    api = ApiServer(manager, token=OPERATOR, viewer_token=VIEWER).start()
    paths = {
        v: write_model_package(tmp / f"v{v}.edgepkg", v, key, seed=int(v[0])).path
        for v in ("1.0", "2.0", "3.0")
    }
    packages = {v: manager.packages.add(p) for v, p in paths.items()}
    agents: list[Agent] = []
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(agents, stop), daemon=True)
    try:
        for i, device in enumerate(DEVICES):
            seed_device(tmp / device, paths["1.0"], trust)
            config = AgentConfig(
                fleet=FLEET,
                device=device,
                state_dir=tmp / device,
                broker=BrokerConfig(broker.url),
                trust=(trust,),
                telemetry_interval_s=0.5,
                probe_interval_s=0.05,
                profile="rpi4" if device.startswith("cam") else "jetson-orin-nano",
                group="plant-a" if i < 2 else "plant-b",
                tags=("camera",) if device.startswith("cam") else ("gate",),
            )
            agents.append(Agent(config).start())
        wait_for(lambda: sum(d["online"] for d in manager.devices()) == len(DEVICES), 20, "devices online")
        traffic.start()
        # Under the module's tmp directory, or where $EDGE_CONSOLE_SCREENSHOTS says (to keep them).
        shots = Path(os.environ.get("EDGE_CONSOLE_SCREENSHOTS") or tmp / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield Fleet(manager, api, agents, packages, shots, tmp, broker)
    finally:
        stop.set()
        for a in agents:
            a.stop()
        api.stop()
        manager.stop()
        broker.stop()
        print(f"console screenshots: {os.environ.get('EDGE_CONSOLE_SCREENSHOTS') or tmp / 'screenshots'}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, page: Any, fleet: Fleet) -> None:
        self.page, self.fleet = page, fleet
        self.errors: list[str] = []
        self.expected: list[str] = []  # substrings of errors a test provokes on purpose
        page.on(
            "console",
            lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def sign_in(self, token: str = OPERATOR) -> None:
        self.page.goto(self.fleet.url + "/")
        self.page.fill("#token", token)
        self.page.click("#signin-button")
        self.page.wait_for_selector("#top:not([hidden])")

    def shot(self, name: str) -> Path:
        path = self.fleet.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(x in e for x in self.expected)]


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15000)
    p = Page(context.new_page(), fleet)
    yield p
    context.close()
    assert not p.unexpected_errors(), f"errors in the browser console: {p.unexpected_errors()}"


@pytest.fixture
def chromium_path() -> str:
    return shutil.which("chromium") or CHROMIUM
