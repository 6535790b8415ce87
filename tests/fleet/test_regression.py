"""A rollout aborts when the updated devices' telemetry regresses against the previous version.

Version 2.0 passes the device's own (lenient, short) health window, so the devices commit it;
then their traffic shows more errors, or a slower p95, than 1.0 did on the same devices before the
deployment. The manager must abort and roll every updated device back to 1.0.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fleet_helpers import IN, MODEL, seed_device, serving, wait_for, write_model_package

from fleet.manager.rollout import RolloutSpec
from fleet.protocol import HealthPolicy
from fleet.targets import StandaloneTarget


class _Degraded:
    """A loaded model whose ``run`` fails every ``fail_every``-th call, or sleeps ``delay_s`` first."""

    def __init__(self, model: Any, fail_every: int, delay_s: float) -> None:
        self._model, self._fail_every, self._delay_s, self._calls = model, fail_every, delay_s, 0

    def run(self, inputs: Any) -> Any:
        self._calls += 1
        if self._fail_every and self._calls % self._fail_every == 0:
            raise RuntimeError("simulated inference error")
        time.sleep(self._delay_s)
        return self._model.run(inputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class RegressesOn2(StandaloneTarget):
    """Serves 2.0 worse than 1.0 in real traffic, while its self-test (the health probe) still passes."""

    def __init__(self, fail_every: int = 0, delay_s: float = 0.0) -> None:
        super().__init__()
        self.fail_every, self.delay_s = fail_every, delay_s

    def swap(self, name: str, package_path: Path) -> str:
        version = super().swap(name, package_path)
        if version == "2.0":
            served = self._models[name]
            served.model = _Degraded(served.model, self.fail_every, self.delay_s)
        return version


def _traffic(agents: list[Any], stop: threading.Event) -> None:
    x = np.zeros((1, IN), np.float32)
    deadline = time.monotonic() + 240  # bounded even if the test forgets to stop it
    while not stop.is_set() and time.monotonic() < deadline:
        for a in agents:
            # The simulated errors are the point (a call racing a swap finishes on the old version).
            with contextlib.suppress(RuntimeError):
                a.runtime.run(MODEL, {"x": x})
        time.sleep(0.004)


@pytest.mark.parametrize("kind", ["error_rate", "p95_latency"])
def test_telemetry_regression_aborts_and_rolls_back(tmp_path, manager, start_agent, keys, kind):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    manager.packages.add(v1)
    # 2.0's slowness must stand out of the noise of a loaded machine: the agents, the traffic and
    # the manager share one process (and its GIL), so 1.0's own p95 can reach tens of ms there.
    runtime_args = {"fail_every": 4} if kind == "error_rate" else {"delay_s": 0.15}
    devices = ("r1", "r2")
    agents = []
    for dev in devices:
        seed_device(tmp_path / dev, v1, trust)
        agents.append(start_agent(dev, runtime=RegressesOn2(**runtime_args)))
    wait_for(lambda: sum(d["online"] for d in manager.devices()) == 2, 15, "devices online")

    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(agents, stop), daemon=True)
    traffic.start()
    try:
        # A baseline of 1.0 on these devices, from their telemetry.
        wait_for(
            lambda: (
                manager.telemetry_summary()["models"]
                and manager.telemetry_summary()["models"][0]["inferences"] >= 100
            ),
            20,
            "a 1.0 baseline",
        )
        spec = RolloutSpec(
            # The device's own window is lenient: 2.0 gets committed, the fleet must catch it.
            health=HealthPolicy(window_s=0.3, max_error_rate=1.0, max_latency_ratio=1000, min_inferences=1),
            block_size=4096,
            max_error_rate=0.1,
            max_latency_ratio=3.0,
            min_inferences=30,
            # The last (only) wave soaks: its telemetry is judged before completion. Long enough that
            # the deployment can only end by the abort however slowly a loaded machine gets the
            # telemetry in; the wait below is on that state change, not on a guess of its timing.
            watch_s=600,
        )
        dep = manager.deploy(manager.packages.add(v2)["sha256"], spec)
        final = wait_for(
            lambda: (s := manager.rollouts.status(dep["id"]))["state"] not in ("running", "paused") and s,
            150,
            "the abort",
        )
        assert final["state"] == "aborted", final
        expected = "error rate" if kind == "error_rate" else "p95 latency"
        assert expected in final["reason"], final["reason"]
        wait_for(
            lambda: all(d["state"] == "rolled_back" for d in manager.rollouts.status(dep["id"])["devices"]),
            90,
            "every updated device rolled back",
        )
    finally:
        stop.set()
        traffic.join(5)
    for dev in devices:
        assert serving(tmp_path / dev, trust) == ("1.0", True)


def test_no_abort_without_regression(tmp_path, manager, start_agent, keys):
    """The same thresholds on a healthy 2.0: the rollout succeeds (the check is not trigger-happy)."""
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    seed_device(tmp_path / "h1", v1, trust)
    agent = start_agent("h1")
    wait_for(lambda: manager.devices(), 15, "device online")
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=([agent], stop), daemon=True)
    traffic.start()
    try:
        wait_for(
            lambda: (m := manager.telemetry_summary()["models"]) and m[0]["inferences"] >= 100, 20, "baseline"
        )
        spec = RolloutSpec(
            # The device's window judges errors only: a loaded machine's latency noise is not a fault.
            health=HealthPolicy(window_s=0.3, min_inferences=1, max_latency_ratio=1000.0),
            block_size=4096,
            max_error_rate=0.1,
            max_latency_ratio=3.0,
            min_inferences=30,
            watch_s=2.5,
        )
        dep = manager.deploy(manager.packages.add(v2)["sha256"], spec)
        row = wait_for(lambda: manager.rollouts.status(dep["id"])["devices"][0]["finished"], 60, "commit")
        final = wait_for(
            lambda: (s := manager.rollouts.status(dep["id"]))["state"] != "running" and s, 60, "the end"
        )
        assert final["state"] == "succeeded", final
        # It soaked: completed no sooner than watch_s after the last wave's commit (the recorded
        # times, not a sleep racing the ticker).
        assert final["updated"] >= row + spec.watch_s, (final["updated"], row)
        # The soak judged real 2.0 telemetry (enough of it) and found nothing wrong.
        judged = manager.db.one(
            "SELECT SUM(inferences) AS n FROM telemetry_models WHERE version='2.0' AND ts >= ?", (row,)
        )
        assert judged["n"] >= spec.min_inferences
    finally:
        stop.set()
        traffic.join(5)
