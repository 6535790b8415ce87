"""The agent's hook into the runtime: swap a model, probe it, read its health.

:class:`RuntimeTarget` is the small interface the agent drives; two
implementations:

- :class:`StandaloneTarget` (``edge agent`` on its own) loads packages with
  :func:`edge_runtime.load`, self-tests them, and serves ``run`` calls from
  the embedding program, recording errors and latency per version;
- :class:`ServeTarget` (the agent inside ``edge serve``) drives the server's
  :class:`edge_runtime.serve.ModelManager`, whose ``swap`` loads and
  self-tests the new version beside the old one, and reads the server's
  Prometheus counters for health.

Both count probe runs (the package's self-test vectors, run by the agent
during a health window as a watchdog) as ordinary inferences, so a device
with no traffic is still judged on something.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fleet.errors import UpdateError

__all__ = [
    "LATENCY_BUCKETS_MS",
    "LLMStats",
    "LatencyHistogram",
    "RuntimeTarget",
    "ServeTarget",
    "StandaloneTarget",
    "VersionStats",
]

log = logging.getLogger(__name__)

# Upper bounds (ms) of the latency histogram sent in telemetry; one more bucket holds +Inf.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass
class LatencyHistogram:
    """Counts per latency bucket (ms); mergeable and subtractable, with a p95 estimate."""

    le: tuple[float, ...] = LATENCY_BUCKETS_MS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(self.le, ms)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile, interpolated inside its bucket (the last finite bound for +Inf); None if empty."""
        total = self.total
        if total == 0:
            return None
        rank, seen = q * total, 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                lo = self.le[i - 1] if i > 0 else 0.0
                hi = self.le[i] if i < len(self.le) else self.le[-1]
                return lo + (hi - lo) * (rank - seen) / c
            seen += c
        return self.le[-1]

    def minus(self, other: LatencyHistogram) -> LatencyHistogram:
        return LatencyHistogram(self.le, [a - b for a, b in zip(self.counts, other.counts)])

    def to_dict(self) -> dict[str, Any]:
        return {"le": list(self.le), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyHistogram:
        return cls(tuple(d["le"]), list(d["counts"]))


def _empty() -> LatencyHistogram:
    return LatencyHistogram((1.0,), [0, 0])


@dataclass(frozen=True)
class LLMStats:
    """Cumulative generation metrics of a language model version (the server's ``edge_llm_*``).

    ``ttft_ms``, ``itl_ms`` and ``queue_ms``: time to first token, inter-token
    latency and queue time (ms); ``tokens_per_s``: each finished generation's
    decode rate. Bounds are the server's Prometheus buckets.
    """

    generations: int = 0  # generations that produced a first token
    tokens: int = 0  # tokens generated
    ttft_ms: LatencyHistogram = field(default_factory=_empty)
    itl_ms: LatencyHistogram = field(default_factory=_empty)
    queue_ms: LatencyHistogram = field(default_factory=_empty)
    tokens_per_s: LatencyHistogram = field(default_factory=_empty)

    HISTOGRAMS = ("ttft_ms", "itl_ms", "queue_ms", "tokens_per_s")

    def since(self, earlier: LLMStats) -> LLMStats:
        def minus(a: LatencyHistogram, b: LatencyHistogram) -> LatencyHistogram:
            return a.minus(b) if a.le == b.le else a

        return LLMStats(
            self.generations - earlier.generations,
            self.tokens - earlier.tokens,
            *(minus(getattr(self, h), getattr(earlier, h)) for h in self.HISTOGRAMS),
        )

    def to_dict(self) -> dict[str, Any]:
        """The telemetry's ``models[name].llm`` (fleet.protocol validates it)."""
        return {"generations": self.generations, "tokens": self.tokens} | {
            h: getattr(self, h).to_dict() for h in self.HISTOGRAMS
        }


@dataclass(frozen=True)
class VersionStats:
    """Cumulative counts of one served version since it started serving."""

    version: str
    inferences: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    llm: LLMStats | None = None  # a language model's generation metrics

    def since(self, earlier: VersionStats) -> VersionStats:
        """The counts between ``earlier`` (same version) and now."""
        if earlier.version != self.version:
            return self
        llm = self.llm
        if llm is not None and earlier.llm is not None:
            llm = llm.since(earlier.llm)
        return VersionStats(
            self.version,
            self.inferences - earlier.inferences,
            self.errors - earlier.errors,
            self.latency.minus(earlier.latency),
            llm,
        )


@runtime_checkable
class RuntimeTarget(Protocol):
    """What the agent needs from whatever serves the models."""

    def swap(self, name: str, package_path: Path) -> str:
        """Load, self-test and switch to the package; returns the version now serving.

        Raises UpdateError (step ``load`` or ``selftest``) and leaves the old version serving.
        """

    def current_version(self, name: str) -> str | None:
        """The version of ``name`` serving now, or None."""

    def stats(self, name: str) -> VersionStats | None:
        """Cumulative counts of the version of ``name`` serving now."""

    def probe(self, name: str) -> None:
        """Run the serving version's self-test once, counted in its stats (errors included)."""

    def close(self) -> None:
        """Release every model."""


class _Served:
    """One model version held by :class:`StandaloneTarget`, with its counters."""

    def __init__(self, model: Any, version: str) -> None:
        self.model = model
        self.version = version
        self.inferences = 0
        self.errors = 0
        self.latency = LatencyHistogram()
        self.lock = threading.Lock()
        self.in_flight = 0  # runs still using this version: it is closed only when they end
        self.idle = threading.Condition(self.lock)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.notify_all()

    def close_when_idle(self, timeout_s: float = 30.0) -> None:
        """Close the model once the runs in flight on it have finished (or after ``timeout_s``)."""
        with self.lock:
            if not self.idle.wait_for(lambda: self.in_flight == 0, timeout=timeout_s):
                log.warning(
                    "closing %s with %d runs still in flight after %.0f s",
                    self.version,
                    self.in_flight,
                    timeout_s,
                )
        self.model.close()

    def record(self, ms: float, ok: bool) -> None:
        with self.lock:
            self.inferences += 1
            self.errors += 0 if ok else 1
            self.latency.observe(ms)

    def snapshot(self) -> VersionStats:
        with self.lock:
            return VersionStats(
                self.version, self.inferences, self.errors, LatencyHistogram(counts=list(self.latency.counts))
            )


class StandaloneTarget:
    """Models loaded in this process with :func:`edge_runtime.load`; the agent is the server.

    ``trust_store`` is passed to ``load`` so a package is verified again when
    it is loaded, not only when it was installed.
    """

    def __init__(self, trust_store: Any = None, backend: str = "auto", threads: int | None = 1) -> None:
        self._trust_store = trust_store
        self._backend = backend
        self._threads = threads
        self._models: dict[str, _Served] = {}
        self._lock = threading.Lock()

    def swap(self, name: str, package_path: Path) -> str:
        import edge_runtime

        try:
            model = edge_runtime.load(
                package_path, backend=self._backend, threads=self._threads, trust_store=self._trust_store
            )
        except Exception as exc:
            raise UpdateError("load", f"{type(exc).__name__}: {exc}") from exc
        try:
            if model.has_selftest:
                result = model.selftest()
                if not result.passed:
                    raise UpdateError("selftest", result.summary())
            else:
                log.warning(
                    "model %s %s carries no self-test vectors; swapping untested", name, model.version
                )
        except UpdateError:
            model.close()
            raise
        except Exception as exc:
            model.close()
            raise UpdateError("selftest", f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            old = self._models.get(name)
            self._models[name] = _Served(model, model.version or "unknown")
        if old is not None:
            old.close_when_idle()  # requests in flight finish on the old version
        return model.version or "unknown"

    def run(self, name: str, inputs: Any) -> dict[str, Any]:
        """Run the serving version of ``name``; errors and latency count towards its health."""
        with self._lock:  # taken together with enter() so a swap cannot close it in between
            served = self._models[name]
            served.enter()
        start = time.perf_counter()
        ok = False
        try:
            out: dict[str, Any] = served.model.run(inputs)
            ok = True
            return out
        finally:
            served.record((time.perf_counter() - start) * 1e3, ok)
            served.leave()

    def current_version(self, name: str) -> str | None:
        served = self._models.get(name)
        return served.version if served else None

    def stats(self, name: str) -> VersionStats | None:
        served = self._models.get(name)
        return served.snapshot() if served else None

    def probe(self, name: str) -> None:
        served = self._models.get(name)
        if served is None or not served.model.has_selftest:
            return
        start = time.perf_counter()
        try:
            passed = served.model.selftest().passed
        except Exception as exc:  # noqa: BLE001 - a crashing probe is an error, not an agent crash
            log.warning("probe of %s %s raised %s", name, served.version, exc)
            passed = False
        served.record((time.perf_counter() - start) * 1e3, passed)

    def close(self) -> None:
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for served in models:
            served.close_when_idle()


def _is_llm(model: Any) -> bool:
    return callable(getattr(model, "engine", None)) and hasattr(model, "tokenizer")


class ServeTarget:
    """The models of a running ``edge serve`` (its :class:`~edge_runtime.serve.ModelManager`)."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._probes: dict[tuple[str, str], _Served] = {}

    def swap(self, name: str, package_path: Path) -> str:
        result = self._manager.swap(name, package_path)
        if not result.ok:
            error = result.error or "unknown error"
            step = "selftest" if "self-test" in error or "SelfTest" in error else "load"
            raise UpdateError(step, error)
        return str(result.version)

    def current_version(self, name: str) -> str | None:
        try:
            return str(self._manager.get(name).version)
        except Exception:  # noqa: BLE001 - unknown or unloaded model
            return None

    def _samples(self, metric: Any, name: str, version: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for family in metric.collect():
            for s in family.samples:
                # prometheus_client adds `*_created` samples holding timestamps: not counts.
                if s.name.endswith("_created"):
                    continue
                if s.labels.get("model") == name and s.labels.get("version") == version:
                    key = s.name + ("|" + s.labels["le"] if "le" in s.labels else "")
                    out[key] = out.get(key, 0.0) + s.value
        return out

    def _histogram(self, metric: Any, name: str, version: str, scale: float) -> LatencyHistogram:
        """A Prometheus histogram of (name, version) as per-bucket counts, bounds times ``scale``."""
        samples = self._samples(metric, name, version)
        buckets = {k.split("|")[1]: v for k, v in samples.items() if "_bucket|" in k}
        total = buckets.pop("+Inf", 0.0)
        cumulative = sorted((float(le), v) for le, v in buckets.items())
        if not cumulative:
            return _empty()
        counts, previous = [], 0.0
        for _, value in cumulative:
            counts.append(int(value - previous))
            previous = value
        counts.append(int(total - previous))
        return LatencyHistogram(tuple(b * scale for b, _ in cumulative), counts)

    def _llm_stats(self, name: str, version: str) -> LLMStats | None:
        m = self._manager.metrics
        if not hasattr(m, "llm_ttft_seconds"):
            return None
        ttft = self._histogram(m.llm_ttft_seconds, name, version, 1e3)
        requests = self._samples(m.llm_requests, name, version)
        if not requests and not ttft.total:
            return None  # not a language model, or none of its generations yet
        return LLMStats(
            generations=ttft.total,
            tokens=int(sum(self._samples(m.llm_generated_tokens, name, version).values())),
            ttft_ms=ttft,
            itl_ms=self._histogram(m.llm_itl_seconds, name, version, 1e3),
            queue_ms=self._histogram(m.llm_queue_seconds, name, version, 1e3),
            tokens_per_s=self._histogram(m.llm_tokens_per_second, name, version, 1.0),
        )

    def stats(self, name: str) -> VersionStats | None:
        version = self.current_version(name)
        if version is None:
            return None
        m = self._manager.metrics
        ok = sum(self._samples(m.request_success, name, version).values())
        failed = sum(self._samples(m.request_failure, name, version).values())
        hist = LatencyHistogram()
        # The server's compute histogram is cumulative per bound (seconds); re-bucket it in ms.
        buckets = self._samples(m.compute_seconds, name, version)
        previous = 0.0
        for key, value in sorted(
            ((k, v) for k, v in buckets.items() if k.endswith(tuple("0123456789")) and "_bucket|" in k),
            key=lambda kv: float(kv[0].split("|")[1]),
        ):
            hist.counts[bisect.bisect_left(hist.le, float(key.split("|")[1]) * 1e3)] += int(value - previous)
            previous = value
        probe = self._probes.get((name, version))
        llm = self._llm_stats(name, version)
        stats = VersionStats(version, int(ok + failed), int(failed), hist, llm)
        if probe is not None:
            p = probe.snapshot()
            stats = VersionStats(
                version,
                stats.inferences + p.inferences,
                stats.errors + p.errors,
                LatencyHistogram(counts=[a + b for a, b in zip(hist.counts, p.latency.counts)]),
                llm,
            )
        return stats

    def probe(self, name: str) -> None:
        try:
            loaded = self._manager.get(name)
        except Exception:  # noqa: BLE001
            return
        served = self._probes.setdefault((name, loaded.version), _Served(None, loaded.version))
        start = time.perf_counter()
        try:
            result = loaded.model.selftest()
            passed = bool(
                result.get("passed", True) if isinstance(result, Mapping) else getattr(result, "passed", True)
            )
            if passed and _is_llm(loaded.model):
                # A short generation through the engine: the window then has TTFT and tokens/s to judge.
                from edge_runtime.serve.openai import probe_generation

                passed = probe_generation(self._manager, loaded)
        except Exception as exc:  # noqa: BLE001
            log.warning("probe of %s %s raised %s", name, loaded.version, exc)
            passed = False
        served.record((time.perf_counter() - start) * 1e3, passed)

    def close(self) -> None:
        """The server owns its models and closes them itself."""
