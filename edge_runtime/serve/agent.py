"""The fleet agent inside ``edge serve``: one process that serves models and takes OTA updates.

::

    edge serve --fleet home --device pi4-kitchen --broker mqtts://broker.lan:8883 \\
        --password-file /etc/edge/mqtt-password --trust /etc/edge/trust

or, in the serving config file, a ``[fleet]`` table (flags given as well override it)::

    [fleet]
    fleet = "home"
    device = "pi4-kitchen"
    broker = "mqtts://broker.lan:8883"   # omit: find the manager with zeroconf
    username = "pi4-kitchen"             # default: the device id when a password is given
    password_file = "/etc/edge/mqtt-password"   # else $EDGE_MQTT_PASSWORD
    ca_file = "/etc/edge/ca.pem"
    tls_fingerprint = "ab12..."          # pin the broker's certificate (sha256 of its DER form)
    trust = ["/etc/edge/trust"]          # .pub files or directories; packages must be signed so
    state_dir = "/var/lib/edge"          # default: $STATE_DIRECTORY (systemd), else /var/lib/edge
    tags = ["kitchen"]
    group = "ground-floor"
    telemetry_interval_s = 10
    queue_max_bytes = 8388608
    download_window = 8
    max_package_mib = 512
    min_free_mib = 64
    downgrade_guard = true

The options, their names and defaults are those of ``edge agent`` (:mod:`fleet.cli`), except that
there is no ``--password`` flag (a command line is visible to every user: use the file or the
environment variable).

How the two share the process (:class:`InferenceServer <edge_runtime.serve.server.InferenceServer>`
does this when given an agent config)::

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

import dataclasses
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.package import file_sha256
from edge_runtime.serve.batcher import BatchingConfig
from edge_runtime.serve.config import ModelConfig
from edge_runtime.serve.errors import ServeConfigError, ServeError
from fleet.targets import ServeTarget  # light: no MQTT client imported

if TYPE_CHECKING:
    from edge_runtime.serve.manager import ModelManager
    from fleet.agent import Agent, AgentConfig
    from fleet.mqtt import BrokerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_STATE_DIR",
    "PASSWORD_ENV",
    "EmbeddedAgent",
    "FleetAgentError",
    "FleetOptions",
    "default_state_dir",
    "fleet_options_from_dict",
    "read_fleet_table",
]

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/edge")
PASSWORD_ENV = "EDGE_MQTT_PASSWORD"  # as fleet.cli: the agent's MQTT password when no file is given
_DISCOVERY_RETRY_S = (2.0, 30.0)  # zeroconf retried with back-off between these bounds


class FleetAgentError(ServeConfigError):
    """The fleet settings cannot start an agent (a bad id, trust store, broker URL or password file)."""


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; the first when several), else /var/lib/edge."""
    value = environ.get("STATE_DIRECTORY", "")
    return Path(value.split(":")[0]) if value else DEFAULT_STATE_DIR


@dataclass(frozen=True)
class FleetOptions:
    """The ``[fleet]`` table / ``--fleet ...`` flags of ``edge serve``; see the module doc."""

    fleet: str
    device: str
    state_dir: Path = field(default_factory=default_state_dir)
    broker: str | None = None  # None: zeroconf
    username: str | None = None
    password_file: Path | None = None
    ca_file: str | None = None
    tls_fingerprint: str | None = None
    trust: tuple[Path, ...] = ()
    tags: tuple[str, ...] = ()
    group: str | None = None
    telemetry_interval_s: float = 10.0
    queue_max_bytes: int = 8 << 20
    download_window: int = 8
    max_package_mib: float = 512
    min_free_mib: float = 64
    downgrade_guard: bool = True

    def password(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The first line of ``password_file``, else ``$EDGE_MQTT_PASSWORD``, else None."""
        if self.password_file is None:
            return environ.get(PASSWORD_ENV) or None
        try:
            lines = self.password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise FleetAgentError(
                f"cannot read the MQTT password file {self.password_file}: {exc.strerror or exc}"
            ) from None
        return lines[0].strip() if lines else ""

    def broker_config(self, environ: Mapping[str, str] = os.environ) -> BrokerConfig | None:
        """As ``edge agent`` builds it: None (zeroconf, anonymous) unless something is configured."""
        from fleet.mqtt import BrokerConfig

        password = self.password(environ)
        user = self.username or (self.device if password else None)
        if not (self.broker or user or self.ca_file or self.tls_fingerprint):
            return None
        # No broker URL: "" means "found by zeroconf", logging in with these settings.
        return BrokerConfig(self.broker or "", user, password, self.ca_file, self.tls_fingerprint)

    def agent_config(self, environ: Mapping[str, str] = os.environ) -> AgentConfig:
        from fleet.agent import AgentConfig

        return AgentConfig(
            fleet=self.fleet,
            device=self.device,
            state_dir=self.state_dir,
            broker=self.broker_config(environ),
            trust=self.trust,
            tags=self.tags,
            group=self.group,
            telemetry_interval_s=self.telemetry_interval_s,
            queue_max_bytes=self.queue_max_bytes,
            download_window=self.download_window,
            max_package_bytes=int(self.max_package_mib * 2**20),
            min_free_bytes=int(self.min_free_mib * 2**20),
            downgrade_guard=self.downgrade_guard,
        )


_FIELDS = {f.name: f for f in dataclasses.fields(FleetOptions)}
_PATHS = {"state_dir", "password_file"}  # relative: to the config file's directory
_LISTS = {"trust", "tags"}
_NUMBERS = {"telemetry_interval_s", "max_package_mib", "min_free_mib"}
_INTS = {"queue_max_bytes", "download_window"}


def fleet_options_from_dict(table: Mapping[str, Any], base_dir: Path = Path(".")) -> FleetOptions:
    """A :class:`FleetOptions` from a ``[fleet]`` table (relative paths against ``base_dir``)."""
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise ServeConfigError(
            f"[fleet] has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}"
        )
    for key in ("fleet", "device"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ServeConfigError(f'[fleet] needs {key} = "<id>"')
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _LISTS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                raise ServeConfigError(f"[fleet] {key} must be a string or a list of strings")
            values[key] = tuple(base_dir / v for v in items) if key == "trust" else tuple(items)
        elif key == "downgrade_guard":
            if not isinstance(value, bool):
                raise ServeConfigError(f"[fleet] downgrade_guard must be true or false, got {value!r}")
            values[key] = value
        elif key in _NUMBERS or key in _INTS:
            ok = isinstance(value, int) if key in _INTS else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or value <= 0:
                raise ServeConfigError(f"[fleet] {key} must be a positive number, got {value!r}")
            values[key] = value
        elif not isinstance(value, str):
            raise ServeConfigError(f"[fleet] {key} must be a string, got {value!r}")
        else:
            values[key] = base_dir / value if key in _PATHS else value
    return FleetOptions(**values)


def read_fleet_table(path: str | os.PathLike[str]) -> Mapping[str, Any] | None:
    """The ``[fleet]`` table of a serving config file (TOML, or ``.json``), or None when it has none.

    The rest of the file is :func:`edge_runtime.serve.config.load_config`'s.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ServeConfigError(f"cannot read [fleet] from {path}: {exc}") from None
    table = doc.get("fleet") if isinstance(doc, Mapping) else None
    if table is not None and not isinstance(table, Mapping):
        raise ServeConfigError(f"{path}: fleet must be a table")
    return table


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None  # a missing package: the swap itself reports it


class _EmbeddedTarget(ServeTarget):
    """:class:`fleet.targets.ServeTarget` that does not reload what the server loaded at start.

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
        from fleet.agent import Agent
        from fleet.errors import FleetError
        from fleet.mqtt import normalize_fingerprint

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
            raise FleetAgentError(f"fleet agent for device {config.device!r}: {exc}") from exc
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ran = False  # Agent.run() entered: it closes the agent's state itself

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
            broker = self.config.broker
            if broker is None or not broker.url:
                found = self._discover(broker)
                if found is None:
                    return  # stopped while looking
                self.agent.config = dataclasses.replace(self.agent.config, broker=found)
            self._ran = True
            self.agent.run()  # closes its outbox when it returns
        except Exception:
            # The server keeps serving what it has; no update arrives until it restarts.
            log.exception("the fleet agent stopped on an unexpected error; the server keeps serving")

    def _discover(self, login: BrokerConfig | None) -> BrokerConfig | None:
        """Browse zeroconf until the fleet's manager answers (with back-off), or None once stopping."""
        from fleet.discovery import discover
        from fleet.errors import DiscoveryError
        from fleet.mqtt import BrokerConfig

        login = login or BrokerConfig(url="")
        delay = _DISCOVERY_RETRY_S[0]
        while not self._stopping.is_set():
            try:
                found = discover(self.config.fleet, timeout=self.config.discovery_timeout_s)
            except DiscoveryError as exc:
                log.warning("%s; trying again in %.0f s", exc, delay)
                if self._stopping.wait(delay):
                    return None
                delay = min(delay * 2, _DISCOVERY_RETRY_S[1])
                continue
            log.info("found fleet %s manager at %s (broker %s)", found.fleet, found.api_url, found.broker_url)
            return dataclasses.replace(
                login,
                url=found.broker_url,
                tls_fingerprint=login.tls_fingerprint or found.tls_fingerprint,
            )
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the agent: an update in progress is abandoned (and swapped back), status goes offline."""
        self._stopping.set()
        self.agent.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the fleet agent did not stop within %.0f s", timeout)
        if not self._ran:
            self.agent.outbox.close()  # never ran (stopped during discovery): nothing else closes it
