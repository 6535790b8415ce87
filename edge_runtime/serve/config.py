"""The serving config: a TOML or JSON file, overridable by command-line flags.

TOML needs nothing beyond the standard library on Python 3.11+ (``tomllib``;
``tomli`` on 3.10); JSON is accepted for files ending in ``.json``. Schema
(every field optional except each model's ``path``)::

    [server]
    host = "127.0.0.1"          # listen address; "0.0.0.0" to serve the network
    port = 8000
    grpc = ""                   # "HOST:PORT": also serve the gRPC API there (Triton's port is 8001;
                                # port 0 picks a free one); "" (default): HTTP only
    grpc_max_concurrent_rpcs = 256   # gRPC calls in progress at once; more: RESOURCE_EXHAUSTED
    drain_timeout_s = 30        # SIGTERM: how long in-flight requests may take to finish
    repository_api = true       # POST /v2/repository/... (load, unload, index) by the admin
    max_request_mib = 64        # largest request body (a larger Content-Length: 413 before reading)
    max_request_elements = 16777216  # tensor elements over a request's inputs (declared shapes)
    max_json_values = 2097152   # values in a request's JSON part (larger tensors: binary extension)
    header_timeout_s = 15       # to send a request head (after connecting or the previous response)
    body_timeout_s = 60         # to send a request body (408 after it)
    backend = "auto"            # edge_runtime.load(backend=...)
    threads = 0                 # intra-op threads per model, 0: the device profile's default
    trust_dir = ""              # a trust store directory: packages must be signed by one of its keys
    require_selftest = false    # refuse packages without self-test vectors
    keep_versions = 1           # versions of a model kept loaded after a swap, the current one
                                # included; older ones answer /v2/models/{m}/versions/{v}/...

    [fleet]                     # optional: run the fleet agent in this process; read by
    fleet = "home"              # the fleet agent's options (fleet.agent_options; every field documented there)
    device = "pi4-kitchen"

    [batching]                  # defaults for every model (see BatchingConfig)
    max_batch_size = 8
    max_queue_delay_us = 0        # as Triton: a batch is what queued while the worker was busy
    preferred_batch_sizes = []
    pad_to_preferred = false
    max_queue_size = 64
    latency_target_us = 5000    # omit for none
    workers = 1

    [llm]                       # language models' engines (edge_runtime.serve.llm_limits.LLMLimits)
    max_sequences = 8           # generations decoding together (one batched decode step)
    max_queue = 64              # generations waiting for a slot; one more: 503
    max_context = 0             # prompt + max_tokens per request (over it: 400); 0: the model's context
    prefill_tokens = 128        # prompt tokens per forward pass beside the running generations

    [models.digits]             # one table per served model; the key is its name in the URLs
    path = "/var/lib/edge/models/digits.edgepkg"   # relative paths: to the config file
    # or a model store directory: "/var/lib/edge/models/digits/current" (or ".../digits",
    # meaning its current link); links are resolved at each load, so after the store
    # switches `current`, SIGHUP (or `edge swap digits`) serves the new version
    selftest = true
    keep_versions = 2           # overrides [server] keep_versions for this model
    [models.digits.batching]    # overrides of [batching] for this model
    max_batch_size = 16
    [models.smollm2.llm]        # overrides of [llm] for one language model
    max_sequences = 4
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.serve.batcher import BatchingConfig
from edge_runtime.serve.errors import ModelNameError, ServeConfigError
from edge_runtime.serve.llm_limits import LLMLimits
from edge_runtime.serve.manager import check_model_name
from edge_runtime.serve.protocol import RequestLimits

__all__ = ["ModelConfig", "ServeConfig", "grpc_address", "load_config"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class ModelConfig:
    """One served model: its name in the URLs, its package and its batching."""

    name: str
    path: Path
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    selftest: bool = True
    keep_versions: int | None = None  # None: the server's keep_versions
    llm: LLMLimits = field(default_factory=LLMLimits)  # a language model's engine limits

    def __post_init__(self) -> None:
        try:
            check_model_name(self.name)
        except ModelNameError as exc:
            raise ServeConfigError(f"[models.{self.name[:64]}]: {exc}") from None
        _check_keep_versions(self.keep_versions, f"[models.{self.name}] keep_versions", optional=True)


def _check_keep_versions(value: Any, where: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ServeConfigError(f"{where} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``edge serve`` needs; build it with :func:`load_config` or directly."""

    host: str = "127.0.0.1"
    port: int = 8000
    grpc: str = ""  # "HOST:PORT" of the gRPC API; "": none
    grpc_max_concurrent_rpcs: int = 256
    drain_timeout_s: float = 30.0
    repository_api: bool = True
    max_request_mib: int = 64
    max_request_elements: int = 1 << 24
    max_json_values: int = 1 << 21
    header_timeout_s: float = 15.0
    body_timeout_s: float = 60.0
    backend: str = "auto"
    threads: int = 0
    trust_dir: Path | None = None
    require_selftest: bool = False
    keep_versions: int = 1  # versions of each model kept loaded (the current one included)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    llm: LLMLimits = field(default_factory=LLMLimits)  # every language model's, unless its entry says
    models: tuple[ModelConfig, ...] = ()
    source: Path | None = None  # the file it was read from (SIGHUP re-reads it)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ServeConfigError(f"server.port must be in 0..65535, got {self.port}")
        _check_keep_versions(self.keep_versions, "server.keep_versions")
        if self.grpc:
            grpc_address(self.grpc)
        for key in ("max_request_mib", "max_request_elements", "max_json_values", "grpc_max_concurrent_rpcs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeConfigError(f"server.{key} must be an integer >= 1, got {value!r}")
        for key in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86400:
                raise ServeConfigError(
                    f"server.{key} must be a number of seconds in (0, 86400), got {value!r}"
                )
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ServeConfigError(f"model(s) {', '.join(duplicates)} configured twice")

    def llm_limits(self, name: str) -> LLMLimits:
        """The engine limits of language model ``name``: its entry's, else the server's ``[llm]``."""
        for m in self.models:
            if m.name == name:
                return m.llm
        return self.llm

    @property
    def grpc_host_port(self) -> tuple[str, int] | None:
        """Where the gRPC API listens, or None when it is off."""
        return grpc_address(self.grpc) if self.grpc else None

    def request_limits(self) -> RequestLimits:
        return RequestLimits(max_elements=self.max_request_elements, max_json_values=self.max_json_values)

    def replace(self, **changes: Any) -> ServeConfig:
        return dataclasses.replace(self, **changes)


def grpc_address(text: Any) -> tuple[str, int]:
    """``(host, port)`` of ``"HOST:PORT"`` (``"[::1]:8001"`` for IPv6); ServeConfigError if not one."""
    host, sep, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServeConfigError(
            f"server.grpc must be HOST:PORT with a port in 0..65535 (e.g. 127.0.0.1:8001), got {text!r}"
        )
    return host, int(port)


_SERVER_KEYS = {f.name for f in dataclasses.fields(ServeConfig)} - {"batching", "llm", "models", "source"}
_MODEL_KEYS = {"path", "batching", "selftest", "keep_versions", "llm"}


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ServeConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _table(d: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = d.get(key, {})
    if not isinstance(value, Mapping):
        raise ServeConfigError(f"{where}{key} must be a table")
    return value


def config_from_dict(
    doc: Mapping[str, Any], base_dir: Path = Path("."), source: Path | None = None
) -> ServeConfig:
    """A :class:`ServeConfig` from the parsed file (relative paths resolved against ``base_dir``)."""
    # [fleet] is the hosted agent's (fleet.agent_options.read_fleet_table), not the server's.
    _check_keys(doc, {"server", "batching", "llm", "models", "fleet"}, "the config")
    server = dict(_table(doc, "server", ""))
    _check_keys(server, _SERVER_KEYS, "[server]")
    default_batching = _table(doc, "batching", "")
    batching = BatchingConfig.from_dict(default_batching, "[batching]")
    default_llm = _table(doc, "llm", "")
    llm = LLMLimits.from_dict(default_llm, "[llm]")
    models = []
    for name, entry in _table(doc, "models", "").items():
        where = f"[models.{name}]"
        if not isinstance(entry, Mapping):
            raise ServeConfigError(f"{where} must be a table")
        _check_keys(entry, _MODEL_KEYS, where)
        if not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ServeConfigError(f'{where} needs path = "<package>"')
        merged = {**default_batching, **_table(entry, "batching", f"{where}.")}
        models.append(
            ModelConfig(
                name=name,
                # Normalised but not resolved: a store `current` link stays a link, resolved per load.
                path=Path(os.path.normpath(base_dir / entry["path"])),
                batching=BatchingConfig.from_dict(merged, f"{where}.batching"),
                selftest=bool(entry.get("selftest", True)),
                keep_versions=entry.get("keep_versions"),
                llm=LLMLimits.from_dict({**default_llm, **_table(entry, "llm", f"{where}.")}, f"{where}.llm"),
            )
        )
    if server.get("trust_dir"):
        server["trust_dir"] = base_dir / server["trust_dir"]
    else:
        server.pop("trust_dir", None)
    try:
        return ServeConfig(**server, batching=batching, llm=llm, models=tuple(models), source=source)
    except TypeError as exc:
        raise ServeConfigError(f"[server]: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> ServeConfig:
    """Read a TOML (or ``.json``) serving config; ServeConfigError names what is wrong."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ServeConfigError(f"cannot read the config {path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServeConfigError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}"
        ) from None
    if not isinstance(doc, Mapping):
        raise ServeConfigError(f"{path} must hold a table at the top level")
    return config_from_dict(doc, path.parent.resolve(), path.resolve())
