"""Helpers for the console tests (a plain module, like tests/fleet/fleet_helpers.py).

What the browser tests need and whether this machine has it (:func:`missing`): playwright (the
Python package), Debian's ``chromium`` at /usr/bin/chromium (``playwright install`` is never
needed), mosquitto, paho-mqtt and onnxruntime. Importing this module needs none of them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FLEET = "console"
OPERATOR = "operator-token-for-the-console-tests"
VIEWER = "viewer-token-for-the-console-tests"
CHROMIUM = os.environ.get("EDGE_TEST_CHROMIUM", "/usr/bin/chromium")
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
MODEL, IN = "linear", 4  # as tests/fleet/fleet_helpers.py writes packages


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for module, what in (
        ("playwright", "playwright (pip install playwright; no `playwright install` needed)"),
        ("paho.mqtt", "paho-mqtt"),
        ("onnxruntime", "onnxruntime"),
        ("aiohttp", "aiohttp"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"no {what}"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        return "no mosquitto (apt-get install -y mosquitto)"
    return None


@dataclass
class Fleet:
    manager: Any  # fleet.manager.service.FleetManager
    api: Any  # fleet.manager.http.ApiServer
    agents: list[Any]
    packages: dict[str, dict[str, Any]]
    shots: Path
    tmp: Path
    broker: Any  # fleet_helpers.Mosquitto
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.api.url)


def traffic(agents: list[Any], stop: threading.Event) -> None:
    """Inference calls on every agent's runtime (so telemetry carries per-model figures)."""
    x = np.zeros((1, IN), np.float32)
    deadline = time.monotonic() + 300
    while not stop.is_set() and time.monotonic() < deadline:
        for a in agents:
            with contextlib.suppress(Exception):  # a call racing a swap
                a.runtime.run(MODEL, {"x": x})
        time.sleep(0.02)


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
