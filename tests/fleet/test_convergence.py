"""Devices that are away during a rollout: offline ones converge when they return, late ones join.

Semantics under test (docs/fleet.md, "Devices that are away"): a targeted device that is offline and
silent past ``device_timeout_s`` is ``offline`` (not a failure); its retained desired state makes it
converge when it reconnects, and its late result updates the finished deployment. A device that
registers while a deployment runs joins its last wave; once the deployment finished, it does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet_helpers import seed_device, serving, wait_for, write_model_package

from fleet.manager.rollout import RolloutSpec
from fleet.protocol import HealthPolicy


def _row(manager: Any, dep_id: str, device: str) -> dict[str, Any] | None:
    return next((d for d in manager.rollouts.status(dep_id)["devices"] if d["device"] == device), None)


def _online(manager: Any) -> set[str]:
    return {d["id"] for d in manager.devices() if d["online"]}


def test_offline_device_converges_and_late_device_joins(tmp_path: Path, manager, start_agent, keys):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    for dev in ("a", "b", "late", "after"):
        seed_device(tmp_path / dev, v1, trust)
    start_agent("a")
    b = start_agent("b")
    wait_for(lambda: _online(manager) == {"a", "b"}, 15, "a and b online")
    b.stop()  # graceful: a retained "offline" status
    wait_for(lambda: _online(manager) == {"a"}, 10, "b offline")

    spec = RolloutSpec(
        health=HealthPolicy(window_s=0.3, min_inferences=1),
        block_size=4096,
        device_timeout_s=4.0,
        max_failures=1,  # an offline device must not count as a failure and abort the rollout
    )
    dep = manager.deploy(manager.packages.add(v2)["sha256"], spec)
    assert {d["device"] for d in dep["devices"]} == {"a", "b"}

    # A device that registers while the deployment runs joins it (its last wave) and converges.
    start_agent("late")
    wait_for(lambda: _row(manager, dep["id"], "late"), 10, "the late device to join")
    final = wait_for(
        lambda: (s := manager.rollouts.status(dep["id"]))["state"] not in ("running", "paused") and s,
        30,
        "the deployment to finish",
    )
    assert final["state"] == "completed_with_offline", final
    states = {d["device"]: d["state"] for d in final["devices"]}
    assert states == {"a": "succeeded", "late": "succeeded", "b": "offline"}, states
    assert serving(tmp_path / "late", trust) == ("2.0", True)
    assert serving(tmp_path / "b", trust) == ("1.0", True)

    # Once finished, the deployment is a record: a device registering now is not added.
    start_agent("after")
    wait_for(lambda: "after" in _online(manager), 10, "the device registering after the end")
    assert _row(manager, dep["id"], "after") is None

    # b comes back: the retained desired state is waiting; it converges and the outcome is updated.
    start_agent("b")
    wait_for(lambda: (r := _row(manager, dep["id"], "b")) and r["state"] == "succeeded", 30, "b to converge")
    assert serving(tmp_path / "b", trust) == ("2.0", True)
    assert manager.rollouts.status(dep["id"])["state"] == "succeeded"
    assert serving(tmp_path / "after", trust) == ("1.0", True)


def test_abort_withdraws_the_install_from_an_offline_device(tmp_path: Path, manager, start_agent, keys):
    """Aborted while a device is away: when it returns it keeps (or is rolled back to) the old version."""
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    manager.packages.add(v1)
    seed_device(tmp_path / "away", v1, trust)
    away = start_agent("away")
    wait_for(lambda: _online(manager) == {"away"}, 15, "device online")
    away.stop()
    wait_for(lambda: not _online(manager), 10, "device offline")
    dep = manager.deploy(
        manager.packages.add(v2)["sha256"], RolloutSpec(health=HealthPolicy(window_s=0.3), block_size=4096)
    )
    manager.rollouts.abort(dep["id"])
    start_agent("away")
    wait_for(
        lambda: (r := _row(manager, dep["id"], "away")) and r["state"] == "rolled_back", 20, "the rollback"
    )
    assert serving(tmp_path / "away", trust) == ("1.0", True)
