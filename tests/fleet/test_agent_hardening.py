"""The agent's state machines and its hardening, each attack reproduced against a real mosquitto:
two agents with one device id, a package that expands far beyond its compressed size, a replayed
rollback. Waits are on events and states (never on a fixed sleep racing the agent)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from fleet_helpers import MODEL, seed_device, serving, wait_for, write_model_package

from fleet.agent import Agent, AgentConfig
from fleet.manager.rollout import RolloutSpec
from fleet.mqtt import BrokerConfig
from fleet.protocol import (
    OTA_FAILURE_STEP,
    OTA_START,
    OTA_TRANSITIONS,
    ROLLBACK_SUFFIX,
    AgentPhase,
    Alert,
    DeploymentState,
    Desired,
    DesiredAction,
    DeviceDeploymentState,
    Event,
    EventState,
    HealthPolicy,
    OtaOutcome,
    Status,
    parse_json_message,
    topic,
)

# Latency is not what these tests judge: on a loaded machine a 0.5 s p95 is noise.
FAST = HealthPolicy(window_s=0.5, min_inferences=1, max_latency_ratio=1000.0)
FLEET = "test"  # conftest's


def _spec(**kw: Any) -> RolloutSpec:
    kw.setdefault("health", FAST)
    kw.setdefault("block_size", 4096)
    return RolloutSpec(**kw)


def _wait_done(manager: Any, dep_id: str, timeout: float = 40) -> dict[str, Any]:
    return wait_for(
        lambda: DeploymentState((s := manager.rollouts.status(dep_id))["state"]).terminal and s,
        timeout,
        f"deployment {dep_id} to finish",
    )


# --- the state machines: one definition ---


def test_states_travel_as_their_strings():
    # The wire (JSON), the database (SQLite) and formatting all see the plain value.
    assert json.dumps({"s": DeploymentState.COMPLETED_WITH_OFFLINE}) == '{"s": "completed_with_offline"}'
    assert f"{EventState.ROLLED_BACK}" == "rolled_back" and str(AgentPhase.HEALTH) == "health"
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (state TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (DeviceDeploymentState.TIMED_OUT,))
    assert db.execute("SELECT state FROM t WHERE state = 'timed_out'").fetchone() == ("timed_out",)
    assert DeviceDeploymentState("timed_out").failure and DeviceDeploymentState.OFFLINE.terminal
    assert not DeviceDeploymentState.ROLLING_BACK.terminal


def test_the_demo_waits_for_every_terminal_deployment_state_and_only_those():
    from edge_demo.runner import TERMINAL_DEPLOYMENT_STATES

    assert set(TERMINAL_DEPLOYMENT_STATES) == {
        "succeeded",
        "completed_with_failures",
        "completed_with_offline",
        "aborted",
        "superseded",
    }
    assert "failed" not in TERMINAL_DEPLOYMENT_STATES  # not a deployment state
    assert not DeploymentState.RUNNING.terminal and not DeploymentState.PAUSED.terminal


def test_ota_transition_table_is_complete():
    forward = set(OTA_FAILURE_STEP)
    assert OTA_START in forward
    for phase in forward:
        # every forward phase can succeed and can fail; a failure after the swap reverts first
        assert (phase, OtaOutcome.OK) in OTA_TRANSITIONS
        after_error = OTA_TRANSITIONS[(phase, OtaOutcome.ERROR)]
        assert after_error is (AgentPhase.REVERT if phase.swapped else AgentPhase.FAIL)
    # From anywhere, whatever happens, the machine gets back to idle.
    for (phase, _outcome), nxt in OTA_TRANSITIONS.items():
        seen = {phase}
        while nxt is not AgentPhase.IDLE:
            assert nxt not in seen or nxt in forward, f"loop through {nxt}"
            seen.add(nxt)
            nxt = OTA_TRANSITIONS[(nxt, OtaOutcome.OK)]
    # Every phase the table names has its handler on the agent.
    for phase in {p for p, _ in OTA_TRANSITIONS} | set(OTA_TRANSITIONS.values()):
        assert phase is AgentPhase.IDLE or callable(getattr(Agent, f"_ota_{phase.value}", None)), phase


# --- two agents with one device id ---


class _StatusWatcher:
    """Every status the broker delivers for one device, parsed."""

    def __init__(self, url_port: int, device: str) -> None:
        self.statuses: list[Status] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="status-watcher")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic(FLEET, device, "status"), qos=1)
        self.client.connect("127.0.0.1", url_port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            with self._lock:
                self.statuses.append(parse_json_message("status", msg.payload))

    def latest(self) -> Status | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def any(self, pred: Any) -> bool:
        with self._lock:
            return any(pred(s) for s in self.statuses)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_two_agents_with_one_device_id_back_off_and_say_so(tmp_path, broker, caplog):
    caplog.set_level(logging.INFO, logger="fleet.agent")
    watcher = _StatusWatcher(broker.port, "twin")
    agents = []
    try:
        for i in (1, 2):
            config = AgentConfig(
                fleet=FLEET, device="twin", state_dir=tmp_path / f"twin-{i}", broker=BrokerConfig(broker.url)
            )
            agents.append(Agent(config).start())
        first, second = agents

        def takeover_logs() -> list[str]:
            return [
                r.getMessage() for r in caplog.records if "another agent is using device id" in r.getMessage()
            ]

        # Each kicks the other off; after three such connections in a row both say what is going
        # on, plainly, and back off exponentially (2 s, then 4 s, ...) instead of every second.
        wait_for(lambda: any("Reconnecting in 4 s" in m for m in takeover_logs()), 120, "a 4 s back-off")
        logs = takeover_logs()
        assert any("Reconnecting in 2 s" in m for m in logs), logs
        assert all("'twin'" in m and "--device" in m for m in logs)
        assert any(Alert.DUPLICATE_DEVICE_ID in a.alerts for a in agents)
        # The manager learns it from the (retained) status.
        wait_for(
            lambda: watcher.any(lambda s: Alert.DUPLICATE_DEVICE_ID in s.alerts),
            60,
            "a status with the alert",
        )

        # The duplicate goes away: the survivor's connection becomes stable, it stops backing off and
        # its status still says what happened (until the alert clears).
        second.stop()
        first.STABLE_S = 1.0
        wait_for(lambda: first._connected.is_set() and first.reconnect_backoff_s is None, 120, "stable again")
        if Alert.DUPLICATE_DEVICE_ID in first.alerts:
            wait_for(
                lambda: (
                    (s := watcher.latest()) is not None
                    and s.state == "online"
                    and Alert.DUPLICATE_DEVICE_ID in s.alerts
                ),
                30,
                "an online status with the alert",
            )
        first.ALERT_CLEAR_S = 0.5
        wait_for(lambda: not first.alerts, 30, "the alert to clear")
        wait_for(
            lambda: (s := watcher.latest()) is not None and s.state == "online" and not s.alerts,
            30,
            "a status without the alert",
        )
    finally:
        for a in agents:
            a.stop()
        watcher.close()


def test_a_lone_agent_raises_no_alert(tmp_path, broker):
    agent = Agent(
        AgentConfig(fleet=FLEET, device="solo", state_dir=tmp_path / "solo", broker=BrokerConfig(broker.url))
    ).start()
    try:
        wait_for(agent._connected.is_set, 30, "connected")
        # A broker restart is one disconnect after a long-enough session, not a takeover loop.
        broker.stop()
        broker.start()
        wait_for(agent._connected.is_set, 60, "reconnected")
        assert agent.alerts == () and agent.reconnect_backoff_s is None
    finally:
        agent.stop()


# --- a package that expands far beyond its size ---


def test_free_disk_check_uses_the_expanded_size(tmp_path, manager, start_agent, keys):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    bomb = write_model_package(  # 12 MiB of zero weights, compressed
        tmp_path / "bomb.edgepkg", "2.0", key, k=1 << 20, zero_weights=True, compress=True
    ).path
    size = bomb.stat().st_size
    assert size < 1 << 20, size
    seed_device(tmp_path / "a", v1, trust)
    agent = start_agent("a", min_free_bytes=1 << 20)
    # Room for what the compressed size suggests (download + as much again + the reserve), not for
    # the 12 MiB the package expands to.
    agent._free_bytes = lambda: 3 * size + (1 << 20)
    wait_for(lambda: manager.devices() and manager.devices()[0]["online"], 15, "device online")

    bomb_sha = manager.packages.add(bomb)["sha256"]
    final = _wait_done(manager, manager.deploy(bomb_sha, _spec())["id"])
    dev = final["devices"][0]
    assert dev["state"] == DeviceDeploymentState.FAILED and dev["step"] == "verify", dev
    assert "expands to" in dev["reason"] and "bytes free" in dev["reason"], dev
    assert serving(tmp_path / "a", trust) == ("1.0", True)
    staged = [
        p.name for p in (tmp_path / "a" / "models" / MODEL).iterdir() if p.is_dir() and not p.is_symlink()
    ]
    assert len(staged) == 1, f"the package was staged: {staged}"
    kept = [p.stem for p in (tmp_path / "a" / "fleet" / "packages").glob("*.edgepkg")]
    assert bomb_sha not in kept, "the package that cannot be staged was kept"


# --- a replayed rollback ---


def test_replayed_rollback_is_refused_by_the_downgrade_guard(tmp_path, manager, start_agent, keys):
    key, trust = keys
    pkgs = {
        v: write_model_package(tmp_path / f"v{v}.edgepkg", v, key, seed=i).path
        for i, v in enumerate(("1.0", "2.0", "3.0"))
    }
    seed_device(tmp_path / "a", pkgs["1.0"], trust)
    agent = start_agent("a")
    events: list[Event] = []
    agent.on_event = events.append
    wait_for(lambda: manager.devices() and manager.devices()[0]["online"], 15, "device online")
    shas = {v: manager.packages.add(p)["sha256"] for v, p in pkgs.items()}
    sizes = {v: p.stat().st_size for v, p in pkgs.items()}
    dep = {}
    for v in ("2.0", "3.0"):
        dep[v] = _wait_done(manager, manager.deploy(shas[v], _spec())["id"])
        assert dep[v]["state"] == DeploymentState.SUCCEEDED, dep[v]["devices"]
    assert serving(tmp_path / "a", trust) == ("3.0", True)

    def rollback(of: str, to: str) -> Desired:
        # Exactly what the manager sends when it aborts deployment `of` (see RolloutEngine._abort).
        return Desired(
            deployment_id=dep[of]["id"] + ROLLBACK_SUFFIX,
            model=MODEL,
            sha256=shas[to],
            size=sizes[to],
            version=to,
            ts=time.time(),
            action=DesiredAction.ROLLBACK,
            block_size=4096,
        )

    def result(dep_id: str) -> Event:
        return wait_for(
            lambda: next(
                (e for e in events if e.deployment_id == dep_id and EventState(e.state).terminal), None
            ),
            30,
            f"the device's result for {dep_id}",
        )

    # The rollback of the 2.0 deployment, replayed after 3.0 was installed: it would take the device
    # to 1.0. It does not undo what the device serves, so the downgrade guard judges it.
    replay = rollback(of="2.0", to="1.0")
    manager.rollouts.publish("a", replay)
    refused = result(replay.deployment_id)
    assert refused.state == EventState.FAILED and refused.step == "verify", refused
    assert "replayed rollback" in (refused.reason or "")
    assert serving(tmp_path / "a", trust) == ("3.0", True)

    # The manager's rollback of the deployment the device serves still goes through.
    real = rollback(of="3.0", to="2.0")
    manager.rollouts.publish("a", real)
    done = result(real.deployment_id)
    assert done.state == EventState.ROLLED_BACK, done
    assert serving(tmp_path / "a", trust) == ("2.0", True)


# --- the OTA machine's other exits: superseded mid-window, a commit that fails ---


def test_superseded_during_the_health_window_swaps_back_then_installs_the_newer(
    tmp_path, manager, start_agent, keys
):
    key, trust = keys
    pkgs = {
        v: write_model_package(tmp_path / f"v{v}.edgepkg", v, key, seed=i).path
        for i, v in enumerate(("1.0", "2.0", "3.0"))
    }
    seed_device(tmp_path / "a", pkgs["1.0"], trust)
    agent = start_agent("a")
    events: list[Event] = []
    agent.on_event = events.append
    wait_for(lambda: manager.devices() and manager.devices()[0]["online"], 15, "device online")
    shas = {v: manager.packages.add(p)["sha256"] for v, p in pkgs.items()}
    slow = HealthPolicy(window_s=600.0, min_inferences=1, max_latency_ratio=1000.0)
    first = manager.deploy(shas["2.0"], _spec(health=slow))
    wait_for(
        lambda: any(e.deployment_id == first["id"] and e.state == EventState.SWAPPED for e in events),
        30,
        "2.0 swapped in, its health window running",
    )
    second = _wait_done(manager, manager.deploy(shas["3.0"], _spec(), supersede=True)["id"])
    assert second["state"] == DeploymentState.SUCCEEDED, second["devices"]
    assert manager.rollouts.status(first["id"])["state"] == DeploymentState.SUPERSEDED
    assert serving(tmp_path / "a", trust) == ("3.0", True)
    # The abandoned attempt reported nothing final, and the journal holds no attempt in progress.
    assert not any(e.deployment_id == first["id"] and EventState(e.state).terminal for e in events)
    assert json.loads((tmp_path / "a" / "fleet" / "journal.json").read_text())["attempt"] is None


def test_a_commit_that_fails_reverts_and_reports_the_step(tmp_path, manager, start_agent, keys):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2 = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2).path
    seed_device(tmp_path / "a", v1, trust)
    agent = start_agent("a")
    swaps: list[str] = []
    real_swap = agent.runtime.swap

    def swap(name: str, path: Path) -> Any:
        swaps.append(Path(path).stem)
        return real_swap(name, path)

    def activate(name: str, sha256: str) -> Any:
        raise OSError(28, "No space left on device")

    agent.runtime.swap = swap
    agent.store.activate = activate
    wait_for(lambda: manager.devices() and manager.devices()[0]["online"], 15, "device online")
    sha1, sha2 = manager.packages.add(v1)["sha256"], manager.packages.add(v2)["sha256"]
    final = _wait_done(manager, manager.deploy(sha2, _spec())["id"])
    dev = final["devices"][0]
    assert dev["state"] == DeviceDeploymentState.FAILED and dev["step"] == "commit", dev
    assert "No space left" in dev["reason"]
    assert swaps[-2:] == [sha2, sha1], "swapped in, then back"
    assert serving(tmp_path / "a", trust) == ("1.0", True)
