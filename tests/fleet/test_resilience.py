"""Agents in separate processes, killed with SIGKILL; the broker killed and restarted mid-transfer."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
from conftest import FLEET
from fleet_helpers import IN, MODEL, seed_device, serving, start_agent_process, wait_for, write_model_package

from fleet.manager.rollout import RolloutSpec
from fleet.protocol import HealthPolicy


def _slow_blocks(delay_s: float) -> Any:
    def slow(_device: str, _index: int, data: bytes) -> bytes:
        time.sleep(delay_s)
        return data

    return slow


def _device_row(manager: Any, dep_id: str, device: str) -> dict[str, Any]:
    return next(d for d in manager.rollouts.status(dep_id)["devices"] if d["device"] == device)


def _part_size(state_dir: Path) -> int:
    parts = list((state_dir / "fleet" / "downloads").glob("*.part"))
    return parts[0].stat().st_size if parts else 0


def test_full_rollout_to_agent_processes(tmp_path, broker, manager, keys):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2, k=4096).path
    devices = ["p1", "p2", "p3"]
    procs = []
    try:
        for dev in devices:
            seed_device(tmp_path / dev, v1, trust)
            procs.append(
                start_agent_process(
                    FLEET, dev, tmp_path / dev, broker.url, trust, tmp_path / f"{dev}.log", "--tag", "lab"
                )
            )
        wait_for(lambda: sum(d["online"] for d in manager.devices()) == 3, 30, "3 agent processes online")
        spec = RolloutSpec(
            waves=(0.34, 1.0), health=HealthPolicy(window_s=0.5, min_inferences=1), block_size=8192
        )
        dep = manager.deploy(manager.packages.add(v2)["sha256"], spec)
        final = wait_for(
            lambda: (s := manager.rollouts.status(dep["id"]))["state"] != "running" and s, 60, "rollout end"
        )
        assert final["state"] == "succeeded", final
        for dev in devices:
            assert serving(tmp_path / dev, trust) == ("2.0", True)
        # Telemetry from every process reaches the manager.
        wait_for(lambda: manager.telemetry_summary()["devices"] == 3, 10, "telemetry from all 3")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    # A graceful stop leaves a retained "offline" status.
    wait_for(lambda: not any(d["online"] for d in manager.devices()), 10, "devices offline")


def test_sigkill_mid_download_resumes_then_mid_swap_serves_old(tmp_path, broker, manager, keys):
    key, trust = keys
    state = tmp_path / "k1"
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2, k=16384).path  # ~200 KB
    seed_device(state, v1, trust)
    log = tmp_path / "k1.log"
    proc = start_agent_process(FLEET, "k1", state, broker.url, trust, log, "--download-window", "1")
    try:
        wait_for(lambda: manager.devices(), 30, "agent online")
        manager.block_filter = _slow_blocks(0.02)  # 50 blocks/s: a download of a few seconds
        total = v2.stat().st_size
        spec = RolloutSpec(
            health=HealthPolicy(window_s=30, min_inferences=1), block_size=4096, device_timeout_s=120
        )
        dep = manager.deploy(manager.packages.add(v2)["sha256"], spec)

        # 1. SIGKILL mid-download: the committed version is intact, the prefix stays.
        wait_for(lambda: 0 < _part_size(state) < total // 2, 30, "a partial download")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kept = _part_size(state)
        assert 0 < kept < total
        assert serving(state, trust) == ("1.0", True)

        # 2. Restart: the download resumes from the prefix, then the long health window starts.
        manager.block_filter = None
        proc = start_agent_process(FLEET, "k1", state, broker.url, trust, log, "--download-window", "1")
        wait_for(lambda: _device_row(manager, dep["id"], "k1")["phase"] == "swapped", 60, "the swap")
        assert "resuming download at block" in log.read_text()

        # 3. SIGKILL mid-swap (inside the health window, before the commit): old version still committed.
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert serving(state, trust) == ("1.0", True)
        assert not list((state / "models").rglob(".tmp-*"))

        # 4. Restart: it serves 1.0 and reports the interrupted attempt as failed, not retried.
        proc = start_agent_process(FLEET, "k1", state, broker.url, trust, log)
        row = wait_for(
            lambda: (r := _device_row(manager, dep["id"], "k1"))["state"] == "failed" and r,
            30,
            "failure report",
        )
        assert row["step"] == "health" and "restarted" in row["reason"]
        time.sleep(1.0)
        assert serving(state, trust) == ("1.0", True)
        assert not list((state / "fleet" / "downloads").glob("*.part"))
    finally:
        proc.terminate()
        proc.wait(10)


def test_broker_restart_mid_download_resumes(tmp_path, broker, manager, start_agent, keys):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2, k=16384).path
    seed_device(tmp_path / "r1", v1, trust)
    start_agent("r1", download_window=2, block_timeout_s=1.0)
    wait_for(lambda: manager.devices(), 15, "agent online")
    manager.block_filter = _slow_blocks(0.01)
    dep = manager.deploy(
        manager.packages.add(v2)["sha256"],
        RolloutSpec(health=HealthPolicy(window_s=0.5, min_inferences=1), block_size=4096),
    )
    total = v2.stat().st_size
    wait_for(lambda: 0 < _part_size(tmp_path / "r1") < total // 2, 30, "a partial download")
    broker.kill()
    before = _part_size(tmp_path / "r1")
    time.sleep(1.0)
    broker.start()
    final = wait_for(
        lambda: (s := manager.rollouts.status(dep["id"]))["state"] != "running" and s, 60, "rollout end"
    )
    assert final["state"] == "succeeded", final
    assert before > 0
    assert serving(tmp_path / "r1", trust) == ("2.0", True)


def test_broker_killed_during_telemetry_nothing_lost_nothing_counted_twice(
    tmp_path, broker, manager, start_agent, keys
):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    agents = []
    for dev in ("t1", "t2"):
        seed_device(tmp_path / dev, v1, trust)
        agents.append(start_agent(dev, telemetry_interval_s=0.1))
    wait_for(lambda: len(manager.devices()) == 2, 15, "agents online")
    x = np.zeros((1, IN), np.float32)
    runs = 0

    def infer(n: int) -> None:
        nonlocal runs
        for _ in range(n):
            for a in agents:
                a.runtime.run(MODEL, {"x": x})
            runs += 1
            time.sleep(0.01)

    infer(30)
    # mosquitto saves its sessions every second (autosave_interval 1): killed before its first save,
    # it would come back without the manager's subscriptions and drop what devices resend before
    # the manager subscribes again (a loss of the broker's, not of the fleet's).
    time.sleep(1.5)
    broker.kill()  # SIGKILL: unacknowledged publishes are resent on reconnect
    wait_for(lambda: not any(a._connected.is_set() for a in agents), 10, "agents to notice")
    infer(60)  # telemetry keeps being written to the outbox meanwhile
    assert all(a.outbox.depth() > 0 for a in agents)
    broker.start()
    infer(30)
    for a in agents:
        # A window written after the last inference, then an empty outbox: everything was acknowledged.
        mark = a.outbox.last_seq()
        wait_for(
            lambda a=a, mark=mark: a.outbox.last_seq() >= mark + 2 and a.outbox.depth() == 0,
            20,
            "outbox drained",
        )
        acknowledged = a.outbox.last_seq()
        dev = a.config.device

        def stored(dev: str = dev) -> list[int]:
            rows = manager.db.query(
                "SELECT seq FROM telemetry WHERE device=? UNION ALL SELECT seq FROM events WHERE device=?",
                (dev, dev),
            )
            return sorted(r["seq"] for r in rows)

        # The broker acknowledges a message to the device before it hands it to the manager: the
        # last ones may still be on their way (PostgreSQL: in the batch being committed).
        wait_for(lambda n=acknowledged: len(set(stored())) >= n, 10, "the acknowledged windows stored")
        seqs = stored()
        assert seqs[:acknowledged] == list(range(1, acknowledged + 1)), f"{dev}: gaps or duplicates"
        assert len(seqs) == len(set(seqs))
        counted = manager.db.one("SELECT SUM(inferences) AS n FROM telemetry_models WHERE device=?", (dev,))[
            "n"
        ]
        assert counted == runs, f"{dev}: the manager counted {counted} inferences, the device ran {runs}"
