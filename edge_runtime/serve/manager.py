"""Models being served: loading, self-testing, hot swapping and reference counting.

Each served model has one *current* :class:`LoadedVersion` (a model, its
batcher and a reference count), which unversioned requests go to. A swap loads
and self-tests the new version beside the running one, then switches the
current pointer under a lock::

    swap(name, path) ─► loader(path) ─► selftest() ─► start its batcher ─► switch ─► retire old
                             │ fails          │ fails
                             └────────────────┴──► close the new one; the old keeps serving

``keep_versions`` (default 1: only the current one) keeps that many versions
loaded: after a swap the previous ones stay and answer requests addressed to
``/v2/models/{name}/versions/{version}`` until they are unloaded
(:meth:`ModelManager.unload` with a version) or pushed out by newer ones.

``path`` may be a package file or a model store directory: a version
directory, its ``current`` link, or ``models/<name>`` (meaning its
``current``). Links are resolved once per swap (:func:`resolve_source`), so an
atomic switch of ``current`` followed by a swap (or SIGHUP) moves cleanly from
one complete version to the next.

Every request holds a reference on the version it was queued on from
:meth:`ModelManager.submit` until its result is ready, so a retired version
finishes what it accepted and is closed when its last reference goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge_runtime.serve.batcher import BatchingConfig, BatchStats, DynamicBatcher
from edge_runtime.serve.errors import (
    InferenceRequestError,
    ModelLoadError,
    ModelNameError,
    ModelNotReadyError,
    ModelUnavailableError,
    OverloadedError,
    ServeConfigError,
)
from edge_runtime.serve.metrics import ServeMetrics
from edge_runtime.serve.protocol import (
    InferRequest,
    ModelLike,
    TensorSpecLike,
    datatype_of,
    tensor_metadata,
)

__all__ = [
    "LoadedVersion",
    "Loader",
    "ModelManager",
    "SwapResult",
    "check_model_name",
    "check_source",
    "default_loader",
    "resolve_source",
]

log = logging.getLogger(__name__)

Loader = Callable[[Path], ModelLike]
Answer = TypeVar("Answer")


# While a model loads, the interpreter hands the GIL to another thread every
# _LOAD_SWITCH_INTERVAL seconds (default 5 ms): the loader's pure-Python stretches
# (package reading, graph checks) then stall the event loop and the batchers for
# half a millisecond at most, not five, and in-flight requests keep their latency.
_LOAD_SWITCH_INTERVAL = 0.0005
_loads_lock = threading.Lock()
_loads_running = 0
_saved_switch_interval = 0.0


@contextlib.contextmanager
def _responsive_gil() -> Iterator[None]:
    """Lowers the GIL switch interval while any load runs (process-wide, counted)."""
    global _loads_running, _saved_switch_interval
    with _loads_lock:
        if _loads_running == 0:
            _saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_switch_interval, _LOAD_SWITCH_INTERVAL))
        _loads_running += 1
    try:
        yield
    finally:
        with _loads_lock:
            _loads_running -= 1
            if _loads_running == 0:
                sys.setswitchinterval(_saved_switch_interval)


def default_loader(backend: str = "auto", threads: int | None = None, trust_store: Any = None) -> Loader:
    """A loader through :func:`edge_runtime.load` (imported on first use)."""

    def load(path: Path) -> ModelLike:
        from edge_runtime import load as edge_load  # type: ignore[attr-defined]
        from edge_runtime.llm.package import is_llm_package
        from edge_runtime.llm.package import load as llm_load

        if is_llm_package(path):  # a language model: edge_runtime.llm (OpenAI API, generate extension)
            return llm_load(path, threads=threads, trust_store=trust_store)  # type: ignore[no-any-return]

        return edge_load(path, backend=backend, threads=threads, trust_store=trust_store)  # type: ignore[no-any-return]

    return load


# A served model's name is a URL segment, a metrics label and, in the agent's store, a directory:
# one path segment of a safe charset, bounded (the package manifest's rule for names).
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_model_name(name: object) -> str:
    """``name`` if it can name a served model, else ModelNameError (a ValueError, HTTP 400)."""
    if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name):
        shown = (
            repr(name)
            if not isinstance(name, str) or len(name) <= 64
            else f"{name[:64]!r}... ({len(name)} characters)"
        )
        raise ModelNameError(
            f"model name {shown} is not valid: 1-128 characters of A-Z a-z 0-9 . _ -, starting with a "
            "letter or digit (one path segment)"
        )
    return name


def check_source(path: Path) -> None:
    """Refuse a model source that is neither a regular file nor a directory (a FIFO would block the
    load forever); a path that does not exist is left to the loader to report."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ModelLoadError(f"cannot load {path}: {exc.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ModelLoadError(
            f"cannot load {path}: not a regular file or a directory (a FIFO, device or socket)"
        )


_MANIFEST_NAME = "manifest.json"  # edge_runtime.package.MANIFEST_NAME, without importing the reader here
_STORE_CURRENT = "current"  # the link edge_runtime.store.ModelStore switches


def resolve_source(path: str | Path) -> Path:
    """What a configured model path means now: the package file, or the store version it links to.

    A directory without a manifest but with a ``current`` link (the store's
    ``models/<name>``) stands for that link; links are resolved, so the
    result names one immutable version even if ``current`` is switched later.
    A path that does not exist is returned as given, for the loader to report.
    """
    p = Path(path)
    if p.is_dir() and not (p / _MANIFEST_NAME).exists() and (p / _STORE_CURRENT).exists():
        p = p / _STORE_CURRENT
    return p.resolve() if p.exists() else p


@dataclass(frozen=True)
class SwapResult:
    """The outcome of a load or swap. On failure the previous version (if any) is still serving."""

    name: str
    ok: bool
    version: str | None  # the version serving now
    previous_version: str | None  # what served before the call
    error: str | None = None
    seconds: float = 0.0
    loaded_versions: tuple[str, ...] = ()  # every version loaded after the call, oldest first

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "version": self.version,
            "previous_version": self.previous_version,
            "loaded_versions": list(self.loaded_versions),
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


def _is_batch_dim(dim: int | str) -> bool:
    return isinstance(dim, str) or (isinstance(dim, int) and dim < 0)


def _model_version(model: ModelLike, path: Path) -> str:
    """The manifest version: from ``Model.info()``, else read from the package; "1" if unknown."""
    info = model.info() or {}
    for source in (info, info.get("manifest") or {}, info.get("package") or {}):
        if isinstance(source, Mapping) and isinstance(source.get("version"), str):
            return source["version"]
    try:
        if path.is_file():
            from edge_runtime.package import open_package

            with open_package(path) as pkg:
                return pkg.manifest.version
    except Exception as exc:  # noqa: BLE001 - an unreadable manifest would have failed the load already
        log.debug("no manifest version for %s: %s", path, exc)
    return "1"


def _selftest(model: ModelLike) -> None:
    """Run the model's self-test; raise ModelLoadError unless it passed."""
    result = model.selftest()
    passed = result
    if isinstance(result, Mapping):
        passed = result.get("passed", result.get("ok", True))
    elif result is not None and not isinstance(result, bool):
        passed = getattr(result, "passed", getattr(result, "ok", True))
    if passed is False:
        summary = getattr(result, "summary", None)
        raise ModelLoadError(summary() if callable(summary) else f"self-test failed: {result}")


def _check_keep(keep: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ServeConfigError(f"keep_versions must be an integer >= 1, got {keep!r}")
    return keep


def _warm_up(model: ModelLike) -> None:
    """One run on zeros (dynamic dimensions as 1), for models loaded without a self-test."""
    feeds = {
        s.name: np.zeros([1 if _is_batch_dim(d) else d for d in s.shape], dtype=np.dtype(s.dtype))
        for s in model.inputs
    }
    model.run(feeds)


@dataclass(eq=False)
class LoadedVersion:
    """One loaded version of a model, with its batcher and the references held on it."""

    name: str
    version: str
    path: Path  # what was loaded: a package file or a resolved store directory
    model: ModelLike
    batching: BatchingConfig
    platform: str
    inputs: tuple[TensorSpecLike, ...]
    outputs: tuple[TensorSpecLike, ...]
    batchable: bool
    loaded_at: float = field(default_factory=time.time)
    batcher: DynamicBatcher | None = None
    _refs: int = 0
    _retired: bool = False
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def metadata(self, versions: list[str] | None = None) -> dict[str, Any]:
        """The protocol's model metadata response; ``versions``: every loaded one (default: this one)."""
        return {
            "name": self.name,
            "versions": versions or [self.version],
            "platform": self.platform,
            "inputs": [tensor_metadata(s) for s in self.inputs],
            "outputs": [tensor_metadata(s) for s in self.outputs],
        }

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def acquire(self) -> None:
        with self._lock:
            if self._retired:
                raise ModelNotReadyError(f"model {self.name} version {self.version} is being replaced")
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            close = self._retired and self._refs == 0 and not self._closed
            if close:
                self._closed = True
        if close:
            self._close_later()

    def retire(self) -> None:
        """Take no new requests; close once the last in-flight one is answered."""
        with self._lock:
            self._retired = True
            close = self._refs == 0 and not self._closed
            if close:
                self._closed = True
        if close:
            self._close_later()

    def _close_later(self) -> None:
        # Never on the caller's thread: that may be one of this version's batch workers.
        threading.Thread(target=self._close, name=f"close-{self.name}-{self.version}", daemon=True).start()

    def _close(self) -> None:
        if self.batcher is not None:
            self.batcher.close(timeout=30)
        try:
            self.model.close()
        except Exception:
            log.exception("closing %s version %s failed", self.name, self.version)
        log.info("closed %s version %s", self.name, self.version)

    def close_now(self, timeout: float | None = None) -> None:
        """Shutdown: drain the batcher (queued requests still run), then close the model."""
        with self._lock:
            self._retired = True
            if self._closed:
                return
            self._closed = True
        if self.batcher is not None:
            self.batcher.close(timeout)
        try:
            self.model.close()
        except Exception:
            log.exception("closing %s version %s failed", self.name, self.version)


class ModelManager:
    """The models a server serves, by name; thread-safe.

    ``loader`` turns a package path into a model (default: :func:`edge_runtime.load`).
    The fleet agent and the HTTP admin API call :meth:`swap`; request handlers call
    :meth:`submit`. ``keep_versions`` is how many versions of a model stay loaded
    (the current one included) unless a swap says otherwise.
    """

    def __init__(
        self,
        loader: Loader | None = None,
        metrics: ServeMetrics | None = None,
        default_batching: BatchingConfig | None = None,
        require_selftest: bool = False,
        keep_versions: int = 1,
    ) -> None:
        self._loader = loader or default_loader()
        self.require_selftest = require_selftest
        self.metrics = metrics or ServeMetrics(device=False)
        self.default_batching = default_batching or BatchingConfig()
        self.keep_versions = _check_keep(keep_versions)
        self._current: dict[str, LoadedVersion] = {}
        # Every loaded version by name, then by version in load order (oldest first); holds the current.
        self._loaded: dict[str, dict[str, LoadedVersion]] = {}
        self._keep: dict[str, int] = {}
        self._batching: dict[str, BatchingConfig] = {}
        self._paths: dict[str, Path] = {}  # where each model was last loaded from (a reload without path)
        self._wanted: set[str] = set()  # models that should be serving: readiness waits for them
        self._last_error: dict[str, str] = {}
        self._lock = threading.Lock()
        self._swap_locks: dict[str, threading.Lock] = {}
        self._closing = False
        self._success_counters: dict[tuple[str, str], tuple[Any, Any]] = {}

    # --- loading and swapping ---

    def swap(
        self,
        name: str,
        package_path: str | Path,
        batching: BatchingConfig | None = None,
        selftest: bool = True,
        keep_versions: int | None = None,
    ) -> SwapResult:
        """Load ``package_path`` as model ``name`` beside the running version, self-test it, switch.

        ``package_path`` is a package file or a store directory (see
        :func:`resolve_source`). Never raises for a bad package: the result
        says why, and the old version (if any) keeps serving. Swaps of one
        model are serialised; swaps of different models run in parallel.
        ``keep_versions`` (default: as before for this model, else the
        manager's) is how many versions stay loaded after the switch.
        Raises ModelNameError for a name that is not one safe path segment.
        """
        check_model_name(name)
        configured = Path(package_path)
        path = resolve_source(configured)
        with self._lock:
            if self._closing:
                return SwapResult(name, False, None, None, "the server is shutting down")
            swap_lock = self._swap_locks.setdefault(name, threading.Lock())
            self._wanted.add(name)
        with swap_lock:
            old = self._current.get(name)
            old_version = old.version if old else None
            batching = batching or self._batching.get(name) or self.default_batching
            keep = _check_keep(keep_versions or self._keep.get(name) or self.keep_versions)
            start = time.monotonic()
            try:
                with _responsive_gil():
                    new = self._load(name, path, batching, selftest)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the old version serving
                seconds = time.monotonic() - start
                reason = f"{type(exc).__name__}: {exc}"
                self._last_error[name] = reason
                self.metrics.load_total.labels(name, "failure").inc()
                log.error(
                    "model %s: loading %s failed, %s: %s",
                    name,
                    path,
                    f"version {old_version} keeps serving" if old else "not serving",
                    reason,
                )
                return SwapResult(
                    name, False, old_version, old_version, reason, seconds, tuple(self.versions(name))
                )
            with self._lock:
                if self._closing:
                    new.close_now(timeout=5)
                    return SwapResult(name, False, None, old_version, "the server is shutting down")
                versions = self._loaded.setdefault(name, {})
                # The same version loaded again replaces its running instance (e.g. a rebuilt package).
                retired = [v for v in (versions.pop(new.version, None),) if v is not None]
                versions[new.version] = new
                while len(versions) > keep:
                    retired.append(versions.pop(next(iter(versions))))  # the oldest goes first
                self._current[name] = new
                self._batching[name] = batching
                self._keep[name] = keep
                self._paths[name] = configured
                loaded_versions = tuple(versions)
            self._last_error.pop(name, None)
            seconds = time.monotonic() - start
            self.metrics.load_total.labels(name, "success").inc()
            self.metrics.load_seconds.labels(name).observe(seconds)
            self.metrics.set_current_version(name, new.version, old_version)
            self._retire(retired)
            if old is not None:
                kept = [v for v in loaded_versions if v != new.version]
                log.info(
                    "model %s: swapped version %s -> %s (%.2fs)%s",
                    name,
                    old_version,
                    new.version,
                    seconds,
                    f"; still loaded: {', '.join(kept)}" if kept else "",
                )
            else:
                log.info("model %s: serving version %s from %s (%.2fs)", name, new.version, path, seconds)
            return SwapResult(name, True, new.version, old_version, None, seconds, loaded_versions)

    def _load(self, name: str, path: Path, batching: BatchingConfig, selftest: bool) -> LoadedVersion:
        check_source(path)
        try:
            model = self._loader(path)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path}: {exc}") from exc
        try:
            if selftest and getattr(model, "has_selftest", True):
                _selftest(model)
            elif self.require_selftest:
                raise ModelLoadError(f"{path} carries no self-test vectors and the server requires them")
            else:
                if selftest:
                    log.warning("model %s: %s has no self-test vectors; warming up on zeros only", name, path)
                _warm_up(model)
            version = _model_version(model, path)
            inputs, outputs = tuple(model.inputs), tuple(model.outputs)
            for spec in (*inputs, *outputs):
                datatype_of(spec.dtype)  # refuse a dtype the protocol cannot carry now, not per request
            batchable = all(len(s.shape) > 0 and _is_batch_dim(s.shape[0]) for s in (*inputs, *outputs))
            info = model.info() or {}
            backend = info.get("backend") or "python"
            loaded = LoadedVersion(
                name=name,
                version=str(version),
                path=path,
                model=model,
                batching=batching,
                platform=f"edge_{backend}",
                inputs=inputs,
                outputs=outputs,
                batchable=batchable,
            )
            if not batchable and batching.max_batch_size > 1:
                log.info("model %s: inputs have a fixed first dimension, requests run one at a time", name)
            batcher = loaded.batcher = DynamicBatcher(
                model.run,
                batching,
                batchable=batchable,
                name=f"{name}:{version}",
                on_batch=lambda stats: self._observe_batch(loaded, stats),
            )
            # Read when scraped: no gauge update on the request path.
            self.metrics.pending.labels(name, loaded.version).set_function(batcher.queued)
            return loaded
        except Exception:
            try:
                model.close()
            except Exception:
                log.exception("closing the refused model %s failed", name)
            raise

    def unload(self, name: str, version: str | None = None) -> None:
        """Stop serving ``name`` (every version), or only its non-current ``version``.

        In-flight requests finish first. Raises ModelUnavailableError for an
        unknown model or version, InferenceRequestError for the current
        version alone (swap to another one first, or unload the model).
        """
        with self._lock:
            versions = self._loaded.get(name, {})
            current = self._current.get(name)
            if version is None:
                retired = list(versions.values())
                self._loaded.pop(name, None)
                self._current.pop(name, None)
                self._wanted.discard(name)
            elif version not in versions:
                raise ModelUnavailableError(
                    f"model {name!r} has no version {version!r} loaded"
                    + (f"; loaded: {', '.join(versions)}" if versions else "")
                )
            elif current is not None and current.version == version:
                raise InferenceRequestError(
                    f"version {version!r} is the current version of model {name!r}; "
                    "swap to another version first, or unload the model"
                )
            else:
                retired = [versions.pop(version)]
        if not retired:
            raise ModelUnavailableError(f"model {name!r} is not loaded")
        if version is None and current is not None:
            self.metrics.set_current_version(name, None, current.version)
        self._retire(retired)
        log.info("model %s: unloaded version(s) %s", name, ", ".join(v.version for v in retired))

    def _retire(self, versions: list[LoadedVersion]) -> None:
        for old in versions:
            old.retire()
            if old.version not in self.versions(old.name):  # not reloaded under the same version
                try:
                    self.metrics.pending.remove(old.name, old.version)
                except KeyError:
                    pass

    # --- requests ---

    def get(self, name: str, version: str | None = None) -> LoadedVersion:
        """The current version of ``name``, or its loaded ``version`` when given.

        ModelUnavailableError (404, gRPC NOT_FOUND) for a model this server does not serve or a
        version not loaded; ModelNotReadyError (503, UNAVAILABLE) for one that should be serving but
        is not: its first load still running or failed, or the server shutting down.
        """
        loaded = self._current.get(name)
        if loaded is None:
            if self._closing and name in self._paths:
                raise ModelNotReadyError(f"model {name!r} is shutting down")
            if name in self._wanted:
                error = self._last_error.get(name)
                raise ModelNotReadyError(
                    f"model {name!r} is not loaded: "
                    + (f"its last load failed ({error})" if error else "it is loading")
                )
            raise ModelUnavailableError(f"unknown model {name!r}")
        if version is None or version == loaded.version:
            return loaded
        other = self._loaded.get(name, {}).get(version)
        if other is None:
            raise ModelUnavailableError(
                f"model {name!r} has no version {version!r} loaded; "
                f"loaded: {', '.join(self.versions(name))} (current {loaded.version!r})"
            )
        return other

    def versions(self, name: str) -> list[str]:
        """The loaded versions of ``name``, oldest load first (the current one is among them)."""
        return list(self._loaded.get(name, {}))

    def loaded_versions(self) -> list[LoadedVersion]:
        """Every loaded version of every model."""
        with self._lock:
            return [v for versions in self._loaded.values() for v in versions.values()]

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The protocol's model metadata: of ``version`` (default current), listing every loaded version."""
        return self.get(name, version).metadata(self.versions(name))

    def submit(
        self, name: str, version: str | None, inputs: Mapping[str, np.ndarray]
    ) -> tuple[LoadedVersion, Future[dict[str, np.ndarray]]]:
        """Queue a request on the current version; the reference is held until the future is done."""
        return self._queue(name, version, lambda batcher: batcher.submit(inputs))

    def submit_async(
        self, name: str, version: str | None, inputs: Mapping[str, np.ndarray]
    ) -> tuple[LoadedVersion, asyncio.Future[dict[str, np.ndarray]]]:
        """:meth:`submit` from the event loop: an asyncio future (what the HTTP handlers use)."""
        return self._queue(name, version, lambda batcher: batcher.submit_async(inputs))

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[LoadedVersion], Awaitable[InferRequest]],
        encode: Callable[[LoadedVersion, InferRequest, dict[str, np.ndarray]], Answer],
    ) -> Answer:
        """One inference request from the event loop, whatever its wire (HTTP or gRPC).

        ``decode`` builds the request against the version it is addressed to, the batcher runs
        it, ``encode`` turns the outputs into the answer; the request is counted in the
        metrics with Triton's failure reason (REJECTED: queue full, BACKEND: the model
        failed, CANCELED: the client left, OTHER: anything else) or as a success.
        """
        start = time.monotonic()
        loaded = self.get(name, version)
        labels = (name, loaded.version)
        reason = "OTHER"
        try:
            parsed = await decode(loaded)
            try:
                loaded, future = self.submit_async(name, version, parsed.inputs)
            except OverloadedError:
                reason = "REJECTED"
                raise
            labels = (name, loaded.version)
            reason = "BACKEND"
            try:
                results = await future
            except asyncio.CancelledError:
                reason = "CANCELED"
                raise
            reason = "OTHER"
            answer = encode(loaded, parsed, results)
        except BaseException:
            self.record_result(*labels, time.monotonic() - start, reason)
            raise
        self.record_result(*labels, time.monotonic() - start, None)
        return answer

    def _queue(
        self, name: str, version: str | None, put: Callable[[DynamicBatcher], Any]
    ) -> tuple[LoadedVersion, Any]:
        """``put`` the request on the version's batcher, holding a reference until its future is done."""
        loaded = self._acquire(name, version)
        assert loaded.batcher is not None
        try:
            future = put(loaded.batcher)
        except BaseException:
            loaded.release()
            raise
        future.add_done_callback(lambda _: loaded.release())
        return loaded, future

    def _acquire(self, name: str, version: str | None) -> LoadedVersion:
        """The version a request goes to, with a reference held on it (release() when answered)."""
        if self._closing:
            raise ModelNotReadyError("the server is shutting down")
        while True:
            loaded = self.get(name, version)
            try:
                loaded.acquire()
                return loaded
            except ModelNotReadyError:
                if version is not None:
                    raise
                # Lost a race with a swap: the current pointer already names the new version.
                if self._current.get(name) is loaded:
                    raise

    def _observe_batch(self, loaded: LoadedVersion, stats: BatchStats) -> None:
        m, labels = self.metrics, (loaded.name, loaded.version)
        if stats.error is not None:
            return
        m.exec_count.labels(*labels).inc()
        m.inference_count.labels(*labels).inc(stats.rows)
        m.batch_size.labels(*labels).observe(stats.rows)
        m.compute_seconds.labels(*labels).observe(stats.compute_seconds)
        m.compute_infer_duration_us.labels(*labels).inc(stats.compute_seconds * 1e6 * stats.requests)
        for q in stats.queue_seconds:
            m.queue_seconds.labels(*labels).observe(q)
        m.queue_duration_us.labels(*labels).inc(sum(stats.queue_seconds) * 1e6)

    def record_result(self, name: str, version: str, seconds: float, reason: str | None) -> None:
        """Count one answered request (reason: None for success, else Triton's failure reason)."""
        if reason is None:
            # The labelled counters are looked up once per version: labels() costs more than inc().
            counters = self._success_counters.get((name, version))
            if counters is None:
                m = self.metrics
                counters = (
                    m.request_success.labels(name, version),
                    m.request_duration_us.labels(name, version),
                )
                self._success_counters[(name, version)] = counters
            counters[0].inc()
            counters[1].inc(seconds * 1e6)
        else:
            self.metrics.request_failure.labels(name, version, reason).inc()

    # --- state ---

    def names(self) -> list[str]:
        return sorted(set(self._loaded) | set(self._paths))

    def ready(self, names: list[str] | None = None) -> bool:
        """Whether every model (or the ``names`` given) is loaded and the server is not draining."""
        wanted = names if names is not None else list(self._wanted)
        return not self._closing and all(n in self._current for n in wanted)

    def missing(self) -> list[str]:
        """Models that should be serving but are not loaded (a failed initial load)."""
        return sorted(n for n in self._wanted if n not in self._current)

    def path_of(self, name: str) -> Path | None:
        """The path ``name`` was last swapped to, as given (a ``current`` link stays a link)."""
        return self._paths.get(name)

    def is_stale(self, name: str, path: str | Path) -> bool:
        """Whether ``path`` now resolves to something other than what the current version came from.

        True after the store switched ``current`` to another version (SIGHUP then swaps).
        """
        loaded = self._current.get(name)
        return loaded is None or resolve_source(path) != loaded.path

    def index(self) -> list[dict[str, Any]]:
        """The repository index: one entry per known model with its state."""
        entries: list[dict[str, Any]] = []
        for name in self.names():
            versions = self.versions(name)
            if not versions:
                reason = self._last_error.get(name, "unloaded")
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
            current = self._current.get(name)
            for version in versions:  # the current version last, so that it wins a lookup by name
                if current is None or version != current.version:
                    entries.append({"name": name, "version": version, "state": "READY"})
            if current is not None and versions:
                entries.append({"name": name, "version": current.version, "state": "READY"})
        return entries

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests, run what was accepted, close every model."""
        with self._lock:
            self._closing = True
            loaded = [v for versions in self._loaded.values() for v in versions.values()]
            self._current.clear()
            self._loaded.clear()
        deadline = time.monotonic() + timeout
        for version in loaded:
            version.close_now(max(0.0, deadline - time.monotonic()))
