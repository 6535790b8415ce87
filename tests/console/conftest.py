"""Fixtures for the console tests (what they share is in console_helpers.py): the fleet (mosquitto,
a manager with its HTTP API and console, three in-process agents serving a real model under
traffic), the browser (headless Chromium from /usr/bin/chromium, driven by playwright) and a page
that fails its test on any error in the browser console. The test modules skip themselves when
something is missing (console_helpers.missing); the fixtures import what they need lazily."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

from console_helpers import CHROMIUM, CHROMIUM_ARGS, DEVICES, FLEET, OPERATOR, VIEWER, Fleet, Page, traffic


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from fleet_helpers import Mosquitto, seed_device, wait_for, write_key, write_model_package

    from fleet.agent import Agent, AgentConfig
    from fleet.manager.http import ApiServer
    from fleet.manager.service import FleetManager, ManagerConfig
    from fleet.mqtt import BrokerConfig

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
    agents: list[Any] = []
    stop = threading.Event()
    load = threading.Thread(target=traffic, args=(agents, stop), daemon=True)
    # Under the module's tmp directory, or where $EDGE_CONSOLE_SCREENSHOTS says (to keep them).
    shots = Path(os.environ.get("EDGE_CONSOLE_SCREENSHOTS") or tmp / "screenshots")
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
        load.start()
        shots.mkdir(parents=True, exist_ok=True)
        yield Fleet(manager, api, agents, packages, shots, tmp, broker)
    finally:
        stop.set()
        for a in agents:
            a.stop()
        api.stop()
        manager.stop()
        broker.stop()
        print(f"console screenshots: {shots}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(30000)  # a loaded 2-core machine
    p = Page(context.new_page(), fleet)
    yield p
    context.close()
    assert not p.unexpected_errors(), f"errors in the browser console: {p.unexpected_errors()}"
