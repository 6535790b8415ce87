"""Inference traffic over the Open Inference Protocol (KServe v2 REST, JSON tensors), standard library only.

:func:`infer` sends one request; :class:`TrafficGenerator` keeps a slow stream of
requests going to every device in background threads (bounded in rate and time),
recording each request's latency, the version that answered and whether it failed,
for the demo's latency-over-time plot; :func:`evaluate` runs a whole split through
one device and measures accuracy and latency.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Evaluation", "Sample", "TrafficGenerator", "evaluate", "infer"]


@dataclass(frozen=True)
class Sample:
    """One request of the background traffic."""

    t: float  # seconds since the demo started
    device: str
    ms: float
    ok: bool
    version: str | None
    error: str | None = None


def infer(url: str, model: str, x: np.ndarray, timeout: float = 10.0) -> tuple[np.ndarray, str]:
    """POST ``x`` (float32, with its batch dimension) to ``url``; returns (the first output, model_version).

    Raises urllib.error.HTTPError (with the server's ``{"error": ...}`` body) on a failed request.
    """
    body = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    out = answer["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), str(answer.get("model_version"))


def _error_text(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            return f"HTTP {exc.code}: {json.loads(exc.read()).get('error', exc.reason)}"
        except (ValueError, OSError):
            return f"HTTP {exc.code}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Evaluation:
    """A split run through one device, one image per request."""

    device: str
    version: str | None
    requests: int
    errors: int
    accuracy: float | None
    latency_ms: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
        }


def latency_summary(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean())}


def evaluate(device: str, url: str, model: str, x: np.ndarray, y: np.ndarray) -> Evaluation:
    """Send every image of ``x`` as its own request; accuracy against ``y`` over the answered ones."""
    correct, answered, errors = 0, 0, 0
    latencies: list[float] = []
    versions: set[str] = set()
    for i in range(len(x)):
        start = time.perf_counter()
        try:
            logits, version = infer(url, model, x[i : i + 1])
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            errors += 1
            continue
        latencies.append((time.perf_counter() - start) * 1e3)
        versions.add(version)
        answered += 1
        correct += int(int(np.argmax(logits[0])) == int(y[i]))
    return Evaluation(
        device=device,
        version=", ".join(sorted(versions)) or None,
        requests=len(x),
        errors=errors,
        accuracy=correct / answered if answered else None,
        latency_ms=latency_summary(latencies),
    )


@dataclass
class TrafficGenerator:
    """One thread per device sending an image every ``interval_s`` until :meth:`stop` (or ``max_s``)."""

    devices: dict[str, str]  # device -> base URL
    model: str
    x: np.ndarray
    t0: float
    interval_s: float = 0.1
    max_s: float = 900.0  # a hard bound, whatever happens to the caller
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> TrafficGenerator:
        for device, url in self.devices.items():
            t = threading.Thread(target=self._loop, args=(device, url), name=f"traffic-{device}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self, device: str, url: str) -> None:
        deadline = time.monotonic() + self.max_s
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            x = self.x[i % len(self.x) : i % len(self.x) + 1]
            i += 1
            start = time.perf_counter()
            version: str | None = None
            error: str | None = None
            try:
                _, version = infer(url, self.model, x, timeout=5.0)
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                error = _error_text(exc)
            ms = (time.perf_counter() - start) * 1e3
            sample = Sample(time.time() - self.t0, device, ms, error is None, version, error)
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(self.interval_s)

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
