"""The fleet manager: state, packages, rollouts, MQTT ingestion and the HTTP API."""

from fleet.manager.db import FleetDB
from fleet.manager.packages import PackageStore
from fleet.manager.rollout import RolloutEngine, RolloutSpec, Targets
from fleet.manager.service import FleetManager, ManagerConfig

__all__ = [
    "FleetDB",
    "FleetManager",
    "ManagerConfig",
    "PackageStore",
    "RolloutEngine",
    "RolloutSpec",
    "Targets",
]
