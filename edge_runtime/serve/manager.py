"""Models being served: loading, self-testing, hot swapping and reference counting.

Each served model has one *current* :class:`LoadedVersion` (a model, its
batcher and a reference count). A swap loads and self-tests the new version
beside the running one, then switches the current pointer under a lock::

    swap(name, path) ─► loader(path) ─► selftest() ─► start its batcher ─► switch ─► retire old
                             │ fails          │ fails
                             └────────────────┴──► close the new one; the old keeps serving

Every request holds a reference on the version it was queued on from
:meth:`ModelManager.submit` until its result is ready, so a retired version
finishes what it accepted and is closed when its last reference goes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.serve.batcher import BatchingConfig, BatchStats, DynamicBatcher
from edge_runtime.serve.errors import (
    ModelLoadError,
    ModelNotReadyError,
    ModelUnavailableError,
)
from edge_runtime.serve.metrics import ServeMetrics
from edge_runtime.serve.protocol import ModelLike, TensorSpecLike, datatype_of, tensor_metadata

__all__ = ["LoadedVersion", "Loader", "ModelManager", "SwapResult", "default_loader"]

log = logging.getLogger(__name__)

Loader = Callable[[Path], ModelLike]


def default_loader(backend: str = "auto", threads: int | None = None, trust_store: Any = None) -> Loader:
    """A loader through :func:`edge_runtime.load` (imported on first use)."""

    def load(path: Path) -> ModelLike:
        from edge_runtime import load as edge_load  # type: ignore[attr-defined]

        return edge_load(path, backend=backend, threads=threads, trust_store=trust_store)  # type: ignore[no-any-return]

    return load


@dataclass(frozen=True)
class SwapResult:
    """The outcome of a load or swap. On failure the previous version (if any) is still serving."""

    name: str
    ok: bool
    version: str | None  # the version serving now
    previous_version: str | None  # what served before the call
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "version": self.version,
            "previous_version": self.previous_version,
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
    path: Path
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

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata response."""
        return {
            "name": self.name,
            "versions": [self.version],
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
    :meth:`submit`.
    """

    def __init__(
        self,
        loader: Loader | None = None,
        metrics: ServeMetrics | None = None,
        default_batching: BatchingConfig | None = None,
        require_selftest: bool = False,
    ) -> None:
        self._loader = loader or default_loader()
        self.require_selftest = require_selftest
        self.metrics = metrics or ServeMetrics(device=False)
        self.default_batching = default_batching or BatchingConfig()
        self._current: dict[str, LoadedVersion] = {}
        self._batching: dict[str, BatchingConfig] = {}
        self._paths: dict[str, Path] = {}  # where each model was last loaded from (a reload without path)
        self._wanted: set[str] = set()  # models that should be serving: readiness waits for them
        self._last_error: dict[str, str] = {}
        self._lock = threading.Lock()
        self._swap_locks: dict[str, threading.Lock] = {}
        self._closing = False

    # --- loading and swapping ---

    def swap(
        self,
        name: str,
        package_path: str | Path,
        batching: BatchingConfig | None = None,
        selftest: bool = True,
    ) -> SwapResult:
        """Load ``package_path`` as model ``name`` beside the running version, self-test it, switch.

        Never raises for a bad package: the result says why, and the old
        version (if any) keeps serving. Swaps of one model are serialised;
        swaps of different models run in parallel.
        """
        path = Path(package_path)
        with self._lock:
            if self._closing:
                return SwapResult(name, False, None, None, "the server is shutting down")
            swap_lock = self._swap_locks.setdefault(name, threading.Lock())
            self._wanted.add(name)
        with swap_lock:
            old = self._current.get(name)
            old_version = old.version if old else None
            batching = batching or self._batching.get(name) or self.default_batching
            start = time.monotonic()
            try:
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
                return SwapResult(name, False, old_version, old_version, reason, seconds)
            with self._lock:
                if self._closing:
                    new.close_now(timeout=5)
                    return SwapResult(name, False, None, old_version, "the server is shutting down")
                self._current[name] = new
                self._batching[name] = batching
                self._paths[name] = path
            self._last_error.pop(name, None)
            seconds = time.monotonic() - start
            self.metrics.load_total.labels(name, "success").inc()
            self.metrics.load_seconds.labels(name).observe(seconds)
            self.metrics.set_current_version(name, new.version, old_version)
            if old is not None:
                old.retire()
                log.info(
                    "model %s: swapped version %s -> %s (%.2fs)", name, old_version, new.version, seconds
                )
            else:
                log.info("model %s: serving version %s from %s (%.2fs)", name, new.version, path, seconds)
            return SwapResult(name, True, new.version, old_version, None, seconds)

    def _load(self, name: str, path: Path, batching: BatchingConfig, selftest: bool) -> LoadedVersion:
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
            loaded.batcher = DynamicBatcher(
                model.run,
                batching,
                batchable=batchable,
                name=f"{name}:{version}",
                on_batch=lambda stats: self._observe_batch(loaded, stats),
            )
            return loaded
        except Exception:
            try:
                model.close()
            except Exception:
                log.exception("closing the refused model %s failed", name)
            raise

    def unload(self, name: str) -> None:
        """Stop serving ``name``; in-flight requests finish first."""
        with self._lock:
            old = self._current.pop(name, None)
            self._wanted.discard(name)
        if old is None:
            raise ModelUnavailableError(f"model {name!r} is not loaded")
        self.metrics.set_current_version(name, None, old.version)
        old.retire()
        log.info("model %s: unloaded version %s", name, old.version)

    # --- requests ---

    def get(self, name: str, version: str | None = None) -> LoadedVersion:
        """The current version of ``name`` (which must be ``version`` when given)."""
        loaded = self._current.get(name)
        if loaded is None:
            if self._closing and name in self._paths:
                raise ModelNotReadyError(f"model {name!r} is shutting down")
            raise ModelUnavailableError(f"unknown model {name!r}")
        if version is not None and version != loaded.version:
            raise ModelUnavailableError(
                f"model {name!r} has no version {version!r}; serving version {loaded.version!r}"
            )
        return loaded

    def submit(
        self, name: str, version: str | None, inputs: Mapping[str, np.ndarray]
    ) -> tuple[LoadedVersion, Future[dict[str, np.ndarray]]]:
        """Queue a request on the current version; the reference is held until the future is done."""
        if self._closing:
            raise ModelNotReadyError("the server is shutting down")
        while True:
            loaded = self.get(name, version)
            try:
                loaded.acquire()
                break
            except ModelNotReadyError:
                if version is not None:
                    raise
                # Lost a race with a swap: the current pointer already names the new version.
                if self._current.get(name) is loaded:
                    raise
        assert loaded.batcher is not None
        try:
            future = loaded.batcher.submit(inputs)
        except BaseException:
            loaded.release()
            raise
        self.metrics.pending.labels(name, loaded.version).set(loaded.batcher.queued())
        future.add_done_callback(lambda _: loaded.release())
        return loaded, future

    def _observe_batch(self, loaded: LoadedVersion, stats: BatchStats) -> None:
        m, labels = self.metrics, (loaded.name, loaded.version)
        if loaded.batcher is not None:
            m.pending.labels(*labels).set(loaded.batcher.queued())
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
        labels = (name, version)
        if reason is None:
            self.metrics.request_success.labels(*labels).inc()
            self.metrics.request_duration_us.labels(*labels).inc(seconds * 1e6)
        else:
            self.metrics.request_failure.labels(*labels, reason).inc()

    # --- state ---

    def names(self) -> list[str]:
        return sorted(set(self._current) | set(self._paths))

    def ready(self, names: list[str] | None = None) -> bool:
        """Whether every model (or the ``names`` given) is loaded and the server is not draining."""
        wanted = names if names is not None else list(self._wanted)
        return not self._closing and all(n in self._current for n in wanted)

    def missing(self) -> list[str]:
        """Models that should be serving but are not loaded (a failed initial load)."""
        return sorted(n for n in self._wanted if n not in self._current)

    def path_of(self, name: str) -> Path | None:
        return self._paths.get(name)

    def last_error(self, name: str) -> str | None:
        return self._last_error.get(name)

    def index(self) -> list[dict[str, Any]]:
        """The repository index: one entry per known model with its state."""
        entries = []
        for name in self.names():
            loaded = self._current.get(name)
            entry: dict[str, Any] = {"name": name}
            if loaded is not None:
                entry |= {"version": loaded.version, "state": "READY"}
            else:
                entry |= {"state": "UNAVAILABLE", "reason": self._last_error.get(name, "unloaded")}
            entries.append(entry)
        return entries

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests, run what was accepted, close every model."""
        with self._lock:
            self._closing = True
            loaded = list(self._current.values())
            self._current.clear()
        deadline = time.monotonic() + timeout
        for version in loaded:
            version.close_now(max(0.0, deadline - time.monotonic()))
