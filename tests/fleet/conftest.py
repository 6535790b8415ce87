"""Fixtures: a real mosquitto per test, signing keys, a manager, in-process agents; all stopped after."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("paho.mqtt")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).parent))

from fleet_helpers import Mosquitto, write_key

from fleet.agent import Agent, AgentConfig
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig

FLEET = "test"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "broker").start()
    yield m
    m.stop()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Any, Path]:
    """(signing key, trust directory holding its public half)."""
    trust = tmp_path / "trust"
    return write_key(trust / "release"), trust


@pytest.fixture
def manager(tmp_path: Path, broker: Mosquitto) -> Iterator[FleetManager]:
    m = FleetManager(
        ManagerConfig(FLEET, tmp_path / "manager", BrokerConfig(broker.url), tick_interval_s=0.2)
    ).start()
    yield m
    m.stop()


@pytest.fixture
def start_agent(tmp_path: Path, broker: Mosquitto, keys: tuple[Any, Path]) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(device: str, runtime: Any = None, **fields: Any) -> Agent:
        fields.setdefault("telemetry_interval_s", 0.5)
        fields.setdefault("probe_interval_s", 0.05)
        config = AgentConfig(
            fleet=FLEET,
            device=device,
            state_dir=tmp_path / device,
            broker=BrokerConfig(broker.url),
            trust=(keys[1],),
            **fields,
        )
        agent = Agent(config, runtime=runtime).start()
        agents.append(agent)
        return agent

    yield start
    for a in agents:
        a.stop()
