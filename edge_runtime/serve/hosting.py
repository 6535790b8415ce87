"""What ``edge serve`` can host beside its models, without importing who provides it.

The device runtime never imports the fleet. The fleet's agent runs inside ``edge serve`` (one
process that serves models and takes OTA updates) through three small protocols defined here:

- :class:`ServePlugin`: contributes options to ``edge serve`` and, when they are given, an
  :class:`AgentSpec`. Plugins are found through the ``edge_runtime.serve_plugins`` entry-point
  group (the fleet registers ``fleet.serve_agent:PLUGIN`` in pyproject.toml);
- :class:`AgentSpec`: the settings of an agent, known before the server exists (the server's
  loader needs the agent's trust store when the server has none of its own);
- :class:`HostedAgent`: the running agent. The server loads the models the agent committed
  before READY=1, starts the agent after it, and stops it first on shutdown.

::

    edge serve --model ... [plugin options] ─► ServePlugin.from_args ─► AgentSpec
    InferenceServer(config, agent=spec) ─► spec.create(manager) ─► HostedAgent
        start:    load config models + agent.committed_models() ─► listen ─► READY=1 ─► agent.start()
        SIGTERM:  agent.stop() ─► drain ─► exit 0
"""

from __future__ import annotations

import argparse
import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from edge_runtime.serve.batcher import BatchingConfig
    from edge_runtime.serve.config import ModelConfig
    from edge_runtime.serve.manager import ModelManager

__all__ = ["PLUGIN_GROUP", "AgentSpec", "HostedAgent", "ServePlugin", "serve_plugins"]

log = logging.getLogger(__name__)

PLUGIN_GROUP = "edge_runtime.serve_plugins"


@runtime_checkable
class HostedAgent(Protocol):
    """An agent running inside the server, driving its :class:`ModelManager`."""

    @property
    def description(self) -> str:
        """A few words for the status line and logs, e.g. ``fleet home device pi4``."""

    def committed_models(self, batching: BatchingConfig) -> tuple[ModelConfig, ...]:
        """The models the agent has committed, for the server to load before READY=1."""

    def start(self) -> object:
        """Start in the background; readiness never waits for it."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop (called first on shutdown, while the models still serve)."""


@runtime_checkable
class AgentSpec(Protocol):
    """The settings of an agent to host; :meth:`create` raises a typed error for a bad setting."""

    @property
    def trust(self) -> tuple[Path, ...]:
        """Keys that packages must be signed with when the server has no ``trust_dir``."""

    def create(self, manager: ModelManager) -> HostedAgent:
        """The agent for this server's models (not started)."""


@runtime_checkable
class ServePlugin(Protocol):
    """Options that ``edge serve`` gains from another installed package."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the plugin's options (in an argument group of their own) to ``edge serve``."""

    def from_args(self, args: argparse.Namespace) -> AgentSpec | None:
        """The agent the options ask for (``args.config`` is the serving config file, if any), or None."""


def serve_plugins() -> list[ServePlugin]:
    """The installed plugins, by entry-point name; one that fails to import is skipped with a warning."""
    plugins = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        try:
            plugins.append(ep.load())
        except ImportError as exc:  # e.g. the fleet extra's paho-mqtt is not installed
            log.warning("edge serve: plugin %s (%s) is not available: %s", ep.name, ep.value, exc)
    return plugins
