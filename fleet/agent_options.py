"""The device agent's options: one definition for ``edge agent``, ``edge serve --fleet`` and the demo.

Each option is written once, in :data:`OPTIONS`: its field, flag, type, default and help. From it
come the flags of ``edge agent`` and of ``edge serve`` (:func:`add_arguments`), the ``[fleet]``
table of a serving config file (:func:`options_from_table`, the same names as the fields), and the
:class:`~fleet.agent.AgentConfig` the agent runs with (:meth:`AgentOptions.agent_config`)::

    [fleet]
    fleet = "home"
    device = "pi4-kitchen"
    broker = "mqtts://broker.lan:8883"   # omit: find the manager with zeroconf
    password_file = "/etc/edge/mqtt-password"   # else $EDGE_MQTT_PASSWORD
    trust = ["/etc/edge/trust"]          # relative paths: against the config file's directory
    tags = ["kitchen"]

Flags given on the command line override the table. A password is never an option of
``edge serve`` (a command line is visible to every user); ``edge agent`` keeps ``--password`` for
compatibility and says to prefer the file or the environment variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import AgentOptionsError, ProtocolError

if TYPE_CHECKING:
    from edge_runtime.serve.manager import ModelManager
    from fleet.agent import AgentConfig
    from fleet.mqtt import BrokerConfig
    from fleet.serve_agent import EmbeddedAgent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_STATE_DIR",
    "OPTIONS",
    "PASSWORD_ENV",
    "SERVE_PLUGIN",
    "AgentOptions",
    "FleetServePlugin",
    "add_arguments",
    "default_state_dir",
    "options_from_args",
    "read_fleet_table",
]

DEFAULT_STATE_DIR = Path("/var/lib/edge")
PASSWORD_ENV = "EDGE_MQTT_PASSWORD"


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; the first when several), else /var/lib/edge."""
    value = environ.get("STATE_DIRECTORY", "")
    return Path(value.split(":")[0]) if value else DEFAULT_STATE_DIR


@dataclass(frozen=True)
class AgentOptions:
    """The agent's settings as a person gives them (see :data:`OPTIONS` for each one's meaning)."""

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
    profile: str | None = None  # None: detected
    telemetry_interval_s: float = 10.0
    queue_max_bytes: int = 8 << 20
    download_window: int = 8
    max_package_mib: float = 512
    min_free_mib: float = 64
    downgrade_guard: bool = True

    def __post_init__(self) -> None:
        """Refuse tags, a group or a profile that the manager would refuse in every status (the ids
        are checked where the agent is made)."""
        from fleet.protocol import MAX_TAGS, check_text

        try:
            if len(self.tags) > MAX_TAGS:
                raise AgentOptionsError(f"{len(self.tags)} tags, over the limit of {MAX_TAGS}")
            for tag in self.tags:
                check_text(tag, "a tag")
            for key in ("group", "profile"):
                if getattr(self, key) is not None:
                    check_text(getattr(self, key), key)
        except ProtocolError as exc:
            raise AgentOptionsError(str(exc)) from None

    def password(self, environ: Mapping[str, str] = os.environ, flag: str | None = None) -> str | None:
        """The first line of ``password_file``, else ``flag`` (``edge agent --password``), else
        ``$EDGE_MQTT_PASSWORD``, else None."""
        if self.password_file is None:
            return flag or environ.get(PASSWORD_ENV) or None
        try:
            lines = self.password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise AgentOptionsError(
                f"cannot read the MQTT password file {self.password_file}: {exc.strerror or exc}"
            ) from None
        return lines[0].strip() if lines else ""

    def broker_config(
        self, environ: Mapping[str, str] = os.environ, password: str | None = None
    ) -> BrokerConfig | None:
        """None (zeroconf, anonymous) unless something is configured (``password``: :meth:`password`)."""
        from fleet.mqtt import BrokerConfig

        password = self.password(environ, password)
        user = self.username or (self.device if password else None)
        if not (self.broker or user or self.ca_file or self.tls_fingerprint):
            return None
        # No broker URL: "" means "found by zeroconf", logging in with these settings.
        return BrokerConfig(self.broker or "", user, password, self.ca_file, self.tls_fingerprint)

    def agent_config(
        self, environ: Mapping[str, str] = os.environ, password: str | None = None, **more: Any
    ) -> AgentConfig:
        """The :class:`AgentConfig` to run; ``more`` sets its other fields (``profile=...``)."""
        from fleet.agent import AgentConfig

        return AgentConfig(
            fleet=self.fleet,
            device=self.device,
            state_dir=self.state_dir,
            broker=self.broker_config(environ, password),
            trust=self.trust,
            tags=self.tags,
            group=self.group,
            profile=self.profile,
            telemetry_interval_s=self.telemetry_interval_s,
            queue_max_bytes=self.queue_max_bytes,
            download_window=self.download_window,
            max_package_bytes=int(self.max_package_mib * 2**20),
            min_free_bytes=int(self.min_free_mib * 2**20),
            downgrade_guard=self.downgrade_guard,
            **more,
        )

    def create(self, manager: ModelManager) -> EmbeddedAgent:
        """The agent hosted by ``edge serve`` (:class:`edge_runtime.serve.hosting.AgentSpec`)."""
        from fleet.serve_agent import EmbeddedAgent

        return EmbeddedAgent(self.agent_config(), manager)


@dataclass(frozen=True)
class Option:
    """One agent option: its :class:`AgentOptions` field, command-line flag, value type and help."""

    field: str
    flag: str
    help: str
    kind: type = str  # str, Path, int, float; bool: a --no-... switch that sets False
    metavar: str | None = None
    repeat: bool = False  # a list: the flag is repeatable, the table takes a string or a list

    def add_to(self, group: Any) -> None:
        if self.kind is bool:
            group.add_argument(self.flag, dest=self.field, action="store_false", default=None, help=self.help)
            return
        group.add_argument(
            self.flag,
            dest=self.field,
            type=self.kind,
            metavar=self.metavar,
            action="append" if self.repeat else "store",
            default=None,
            help=self.help,
        )


_DEFAULTS = AgentOptions(fleet="", device="", state_dir=DEFAULT_STATE_DIR)

#: Every agent option, in the order ``--help`` lists them.
OPTIONS: tuple[Option, ...] = (
    Option("fleet", "--fleet", "the fleet's id (letters, digits, '.', '_', '-')", metavar="ID"),
    Option("device", "--device", "this device's id, unique in the fleet (also its MQTT user name)", metavar="ID"),
    Option(
        "state_dir", "--state-dir", "the agent's state and model store "
        "(default: $STATE_DIRECTORY from systemd, else /var/lib/edge)", Path, "DIR",
    ),
    Option("broker", "--broker", "the broker, mqtt://host:port or mqtts://host:port "
           "(default: find the fleet's manager with zeroconf and use its broker)", metavar="URL"),
    Option("username", "--username", "MQTT user name (default: the device id when a password is given)"),
    Option("password_file", "--password-file", f"a file whose first line is the MQTT password "
           f"(default: ${PASSWORD_ENV})", Path, "FILE"),
    Option("ca_file", "--ca-file", "CA certificate (PEM) that signed the broker's, for mqtts://", metavar="PEM"),
    Option("tls_fingerprint", "--tls-fingerprint", "pin the broker's certificate: sha256 of its DER form "
           "(default: the one the manager advertises)", metavar="SHA256"),
    Option("trust", "--trust", "a trusted public key (.pub) or a directory of them; with any, packages "
           "must be signed by one. Repeatable", Path, "KEY_OR_DIR", repeat=True),
    Option("tags", "--tag", "a tag that deployments can target. Repeatable", metavar="TAG", repeat=True),
    Option("group", "--group", "the device's group, which deployments can target", metavar="NAME"),
    Option("profile", "--profile", "the device profile reported to the manager "
           "(default: detected; see edge profile --list)", metavar="NAME"),
    Option("telemetry_interval_s", "--telemetry-interval", "seconds between telemetry reports "
           f"(default {_DEFAULTS.telemetry_interval_s:g})", float, "S"),
    Option("queue_max_bytes", "--queue-max-bytes", "bound of the on-disk telemetry outbox "
           f"(default {_DEFAULTS.queue_max_bytes})", int, "BYTES"),
    Option("download_window", "--download-window", "package blocks requested at once "
           f"(default {_DEFAULTS.download_window})", int, "BLOCKS"),
    Option("max_package_mib", "--max-package-mib", "refuse packages larger than this "
           f"(default {_DEFAULTS.max_package_mib:g})", float, "MIB"),
    Option("min_free_mib", "--min-free-mib", "disk space kept free after an install "
           f"(default {_DEFAULTS.min_free_mib:g})", float, "MIB"),
    Option("downgrade_guard", "--no-downgrade-guard", "install versions lower than the committed one even "
           "when the deployment does not allow downgrades", bool),
)  # fmt: skip
_BY_FIELD = {o.field: o for o in OPTIONS}
assert set(_BY_FIELD) == {f.name for f in dataclasses.fields(AgentOptions)}, "an option without a field"


def add_arguments(parser: argparse.ArgumentParser, title: str, description: str) -> None:
    """Add every agent option to ``parser`` in an argument group (defaults None: "not given")."""
    group = parser.add_argument_group(title, description)
    for option in OPTIONS:
        option.add_to(group)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The agent options given on the command line, as :class:`AgentOptions` values."""
    values = {}
    for option in OPTIONS:
        value = getattr(args, option.field, None)
        if value is None:
            continue
        if option.kind is Path:  # a service may start in another directory
            value = [p.absolute() for p in value] if option.repeat else value.absolute()
        values[option.field] = tuple(value) if option.repeat else value
    return values


def options_from_args(
    args: argparse.Namespace, table: Mapping[str, Any] | None = None, base_dir: Path = Path(".")
) -> AgentOptions | None:
    """The ``[fleet]`` table (if any; its relative paths against ``base_dir``) with the flags given on
    top; None when neither asks for an agent."""
    given = _given(args)
    if table is None and not given:
        return None
    values = dict(_table_values(table, base_dir)) if table is not None else {}
    values.update(given)
    missing = [f"--{key}" for key in ("fleet", "device") if not values.get(key)]
    if missing:
        raise AgentOptionsError(
            f"the fleet agent needs {' and '.join(missing)} (or a [fleet] table giving them)"
        )
    return AgentOptions(**values)


def _table_values(table: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    unknown = sorted(set(table) - set(_BY_FIELD))
    if unknown:
        raise AgentOptionsError(
            f"[fleet] has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_BY_FIELD))}"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        option = _BY_FIELD[key]
        if option.repeat:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                raise AgentOptionsError(f"[fleet] {key} must be a string or a list of strings")
            values[key] = tuple(base_dir / v if option.kind is Path else v for v in items)
        elif option.kind is bool:
            if not isinstance(value, bool):
                raise AgentOptionsError(f"[fleet] {key} must be true or false, got {value!r}")
            values[key] = value
        elif option.kind in (int, float):
            ok = isinstance(value, int) if option.kind is int else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or not 0 < value < float("inf"):
                raise AgentOptionsError(f"[fleet] {key} must be a positive number, got {value!r}")
            values[key] = value
        elif not isinstance(value, str):
            raise AgentOptionsError(f"[fleet] {key} must be a string, got {value!r}")
        else:
            values[key] = base_dir / value if option.kind is Path else value
    return values


def read_fleet_table(path: str | os.PathLike[str]) -> Mapping[str, Any] | None:
    """The ``[fleet]`` table of a serving config file (TOML, or ``.json``), or None when it has none."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise AgentOptionsError(f"cannot read [fleet] from {path}: {exc}") from None
    table = doc.get("fleet") if isinstance(doc, Mapping) else None
    if table is not None and not isinstance(table, Mapping):
        raise AgentOptionsError(f"{path}: fleet must be a table")
    return table


class FleetServePlugin:
    """``edge serve``'s fleet options (:class:`edge_runtime.serve.hosting.ServePlugin`)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_arguments(
            parser,
            "fleet agent",
            "run the fleet agent (`edge agent`) in this process: deployments hot-swap the served models, "
            "and the models committed in STATE_DIR/models serve at start; --fleet and --device start it, "
            "or a [fleet] table of the config file (see docs/serving.md)",
        )

    def from_args(self, args: argparse.Namespace) -> AgentOptions | None:
        config = getattr(args, "config", None)
        table = read_fleet_table(config) if config else None
        return options_from_args(args, table, config.parent.absolute() if config else Path("."))


SERVE_PLUGIN = FleetServePlugin()
