"""The fleet agent inside ``edge serve``: one process that serves models and takes OTA updates.

::

    edge serve --fleet home --device pi4-kitchen --broker mqtts://broker.lan:8883 \\
        --password-file /etc/edge/mqtt-password --trust /etc/edge/trust

or a ``[fleet]`` table in the serving config file (flags given as well override it). The options
are those of ``edge agent`` (:mod:`fleet.agent_options`), without ``--password``.

The runtime does not import the fleet: :data:`fleet.agent_options.SERVE_PLUGIN` implements its
:class:`~edge_runtime.serve.hosting.ServePlugin` and is found through the
``edge_runtime.serve_plugins`` entry point; :class:`~fleet.agent_options.AgentOptions` is the
:class:`~edge_runtime.serve.hosting.AgentSpec` and :class:`EmbeddedAgent` (here) the
:class:`~edge_runtime.serve.hosting.HostedAgent`. How the two share the process::

    start:  models committed in STATE/models/<name>/current ─┐
            models of [models] / --model ──────────────────┴─► load + self-test ─► listen ─► READY=1
                                                                  ─► agent thread: (zeroconf) ─► connect
    deployments: agent ─► ServeTarget ─► ModelManager.swap (hot swap beside the running version)
    SIGTERM: agent stops (status "offline", clean disconnect) ─► the server drains and exits 0

The agent never delays readiness: it connects in the background, keeps retrying the broker (and
zeroconf, when no broker is configured) and the server serves meanwhile. The models the server
loaded from the store at start are not loaded a second time when the agent starts and "recovers"
them (:class:`_EmbeddedTarget`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.package import file_sha256
from edge_runtime.serve.batcher import BatchingConfig
from edge_runtime.serve.config import ModelConfig
from edge_runtime.serve.errors import ServeError
from fleet.agent import Agent, AgentConfig
from fleet.errors import AgentOptionsError, FleetError
from fleet.mqtt import normalize_fingerprint
from fleet.targets import ServeTarget

if TYPE_CHECKING:
    from edge_runtime.serve.manager import ModelManager

__all__ = ["EmbeddedAgent"]

log = logging.getLogger(__name__)


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None  # a missing package: the swap itself reports it


class _EmbeddedTarget(ServeTarget):
    """:class:`~fleet.targets.ServeTarget` that does not reload what the server loaded at start.

    When the agent starts it swaps every committed model in (its "recovery"). The server has
    already loaded those from the store before READY=1, so a swap to the package of the store
    version the server loaded is a no-op, as long as that version still serves (checked by the
    loaded path, then by the package's sha256). Any other swap goes to the server's manager.
    """

    def __init__(self, manager: ModelManager) -> None:
        super().__init__(manager)
        self._server_manager = manager
        self._preloaded: dict[str, tuple[str, Path]] = {}  # name -> (sha256, loaded store dir)

    def preloaded(self, name: str, sha256: str, path: Path) -> None:
        """The server is loading ``name`` from the store version ``path`` (package ``sha256``)."""
        self._preloaded[name] = (sha256, path.resolve())

    def swap(self, name: str, package_path: Path) -> str:
        expected = self._preloaded.get(name)
        if expected is not None:
            try:
                loaded = self._server_manager.get(name)
            except ServeError:
                loaded = None
            if (
                loaded is not None
                and loaded.path == expected[1]
                and _sha256_or_none(package_path) == expected[0]
            ):
                log.debug("model %s %s: already serving from the store", name, loaded.version)
                return str(loaded.version)
            del self._preloaded[name]  # something else serves now: never skip again
        return str(super().swap(name, package_path))


class EmbeddedAgent:
    """The fleet agent of one server, driving its :class:`ModelManager` (see the module doc).

    Construction checks the settings and opens the agent's state (so that a bad setting stops
    ``edge serve`` before it loads anything); :meth:`start` runs the agent on a thread, and
    :meth:`stop` stops it: the agent publishes ``offline`` and disconnects.
    """

    def __init__(self, config: AgentConfig, manager: ModelManager) -> None:
        self.config = config
        self._target = _EmbeddedTarget(manager)
        broker = config.broker
        try:
            if broker is not None and broker.url:
                _ = broker.port  # BrokerError for a URL that is not mqtt:// or mqtts://
            if broker is not None and broker.tls_fingerprint:
                normalize_fingerprint(broker.tls_fingerprint)
            self.agent: Agent = Agent(config, runtime=self._target)
        except (FleetError, EdgeRuntimeError, OSError) as exc:
            raise AgentOptionsError(f"fleet agent for device {config.device!r}: {exc}") from exc
        self._thread: threading.Thread | None = None

    @property
    def description(self) -> str:
        return f"fleet {self.config.fleet} device {self.config.device}"

    def committed_models(self, batching: BatchingConfig | None = None) -> tuple[ModelConfig, ...]:
        """The versions committed in the store (``models/<name>/current``), for the server to load.

        Each is remembered so that the agent's own start-up does not load it a second time.
        """
        models = []
        store = self.agent.store  # the agent's own ModelStore under STATE_DIR/models
        for name in store.names():
            try:
                current = store.current(name)
            except EdgeRuntimeError as exc:
                log.error("model %s: the store's committed version is unreadable: %s", name, exc)
                continue
            if current is None:
                continue
            self._target.preloaded(name, current.sha256, current.path)
            models.append(ModelConfig(name, current.path, batching or BatchingConfig()))
        return tuple(models)

    def start(self) -> EmbeddedAgent:
        """Run the agent on a background thread: find the broker, connect, serve deployments."""
        self._thread = threading.Thread(
            target=self._run, name=f"fleet-agent-{self.config.device}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.agent.run()  # finds the broker (zeroconf) if none is set; closes its state when it returns
        except Exception:
            # The server keeps serving what it has; no update arrives until it restarts.
            log.exception("the fleet agent stopped on an unexpected error; the server keeps serving")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the agent: an update in progress is abandoned (and swapped back), status goes offline."""
        self.agent.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the fleet agent did not stop within %.0f s", timeout)
        else:
            self.agent.outbox.close()  # never started: nothing else closes it
