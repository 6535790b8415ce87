"""Measure a model on this device: cold start, latency percentiles, throughput, peak memory.

What ``edge bench`` prints, as a function other tools (``bench/``, the agent)
can call. Inputs are generated from the model's input specs with a seeded
generator, so two runs of the same command feed the same data.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.errors import ModelInputError
from edge_runtime.model import load

if TYPE_CHECKING:
    from device_profiles import Profile
    from edge_runtime.package import TensorSpec, TrustStore

__all__ = ["BenchResult", "benchmark", "peak_rss_mib", "random_inputs"]

# Integer inputs are usually indices (tokens, classes): keep them small and valid.
_MAX_INDEX = 100


def random_inputs(
    specs: tuple[TensorSpec, ...],
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One array per spec: floats ~ N(0, 1), integers in [0, 100) (uint8/int8: full range), bools 50/50.

    A dynamic dimension takes its size from ``dims`` by name; otherwise the
    first dimension is the batch. Any other dynamic dimension must be in
    ``dims`` (ModelInputError saying which).
    """
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                shape.append(d)
            elif d in dims:
                shape.append(dims[d])
            elif axis == 0:
                shape.append(batch)
            else:
                raise ModelInputError(
                    f"input '{spec.name}' has the dynamic dimension {d!r} at axis {axis}; give its size "
                    f"(--dim {d}=N)"
                )
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            high = info.max + 1 if dtype.itemsize == 1 else _MAX_INDEX
            low = info.min if dtype.itemsize == 1 else 0
            arrays[spec.name] = rng.integers(low, high, size=shape, dtype=dtype)
        else:
            raise ModelInputError(f"input '{spec.name}': cannot generate data of dtype {spec.dtype}")
    return arrays


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run. Times in milliseconds; throughput in samples (batch rows) per second."""

    model: str
    backend: str
    reason: str
    threads: int
    batch: int
    warmup: int
    iterations: int
    load_ms: float
    first_run_ms: float
    cold_start_ms: float  # load() called -> first result returned (input generation excluded)
    latency_ms: dict[str, float]  # p50, p90, p99, mean, min, max
    throughput: float
    peak_rss_mib: float
    session: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark(
    path: str | os.PathLike[str],
    *,
    backend: str = "auto",
    profile: str | Profile | None = "auto",
    threads: int | None = None,
    trust_store: TrustStore | None = None,
    artifact: str | None = None,
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    warmup: int = 5,
    iterations: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
) -> BenchResult:
    """Load ``path``, time the first run, warm up, then time ``iterations`` runs or ``seconds`` of runs.

    With neither ``iterations`` nor ``seconds``, runs 100 iterations. At
    least one timed run is always made.
    """
    if batch < 1 or warmup < 0:
        raise ValueError(f"batch must be >= 1 and warmup >= 0, got batch {batch}, warmup {warmup}")
    if iterations is not None and seconds is not None:
        raise ValueError("give iterations or seconds, not both")
    if iterations is None and seconds is None:
        iterations = 100

    t0 = time.perf_counter()
    model = load(
        path, backend=backend, profile=profile, threads=threads, trust_store=trust_store, artifact=artifact
    )
    load_s = time.perf_counter() - t0
    with model:
        inputs = random_inputs(model.inputs, batch=batch, dims=dims, seed=seed)
        t1 = time.perf_counter()
        model.run(inputs)
        first_s = time.perf_counter() - t1
        for _ in range(warmup):
            model.run(inputs)

        latencies: list[float] = []
        deadline = time.perf_counter() + seconds if seconds is not None else None
        while True:
            start = time.perf_counter()
            model.run(inputs)
            latencies.append(time.perf_counter() - start)
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if iterations is not None and len(latencies) >= iterations:
                break
        info = model.info()

    lat_ms = np.asarray(latencies) * 1e3
    p50, p90, p99 = np.percentile(lat_ms, [50, 90, 99])
    return BenchResult(
        model=info["name"] + (f" {info['version']}" if info["version"] else ""),
        backend=info["backend"],
        reason=info["reason"],
        threads=info["threads"],
        batch=batch,
        warmup=warmup,
        iterations=len(latencies),
        load_ms=load_s * 1e3,
        first_run_ms=first_s * 1e3,
        cold_start_ms=(load_s + first_s) * 1e3,
        latency_ms={
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "mean": float(lat_ms.mean()),
            "min": float(lat_ms.min()),
            "max": float(lat_ms.max()),
        },
        throughput=batch * len(latencies) / float(np.sum(latencies)),
        peak_rss_mib=peak_rss_mib(),
        session=info.get("session", {}),
    )
