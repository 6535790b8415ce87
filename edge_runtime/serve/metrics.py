"""Prometheus metrics of the server, with Triton's names so that existing dashboards mostly fit.

prometheus-client adds ``_total`` to every counter in the text format, so
Triton's ``nv_inference_count`` is scraped as ``nv_inference_count_total``
(and so on); otherwise names and labels (``model``, ``version``) are Triton's.
``nv_inference_count / nv_inference_exec_count`` is the average batch size.

Each :class:`ServeMetrics` owns its registry, so several servers (tests, or
one process embedding two) never collide in the global one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "FAILURE_REASONS", "DeviceCollector", "ServeMetrics"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Triton's reasons for nv_inference_request_failure.
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

# Seconds. Small devices answer in 0.1 ms to 1 s; queue waits are shorter.
_COMPUTE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_QUEUE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Language models (edge_runtime.serve.openai): seconds, and tokens per second.
LLM_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LLM_ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0)
LLM_QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LLM_RATE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 200, 500)


class DeviceCollector(Collector):
    """Temperature and throttling read from device_profiles at scrape time (absent when unreadable)."""

    def __init__(self) -> None:
        self._profile: object | None = None
        self._failed = False
        self._lock = threading.Lock()

    def _get_profile(self) -> object | None:
        with self._lock:
            if self._profile is None and not self._failed:
                try:
                    from device_profiles import detect_profile

                    self._profile = detect_profile()
                except Exception as exc:  # noqa: BLE001 - a sensor must never break a scrape
                    log.warning("no device profile for temperature metrics: %s", exc)
                    self._failed = True
            return self._profile

    def collect(self) -> Iterator[Metric]:
        profile = self._get_profile()
        if profile is None:
            return
        from device_profiles import read_temperature_c, read_throttled

        temperature = read_temperature_c(profile)  # type: ignore[arg-type]
        if temperature is not None:
            yield GaugeMetricFamily(
                "edge_device_temperature_celsius", "SoC temperature (device_profiles)", value=temperature
            )
        throttling = read_throttled(profile)  # type: ignore[arg-type]
        if throttling is not None:
            family = GaugeMetricFamily(
                "edge_device_throttled",
                "Raspberry Pi firmware throttling flags, 1 when in force now",
                labels=["condition"],
            )
            for condition in ("under_voltage", "frequency_capped", "throttled", "soft_temperature_limit"):
                family.add_metric([condition], float(getattr(throttling, condition)))
            yield family


class ServeMetrics:
    """Every metric the server exports, in one registry."""

    def __init__(self, device: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ["model", "version"]
        self.request_success = Counter(
            "nv_inference_request_success", "Successful inference requests", labels, registry=r
        )
        self.request_failure = Counter(
            "nv_inference_request_failure",
            "Failed inference requests, by reason (REJECTED: queue full, BACKEND: model error)",
            [*labels, "reason"],
            registry=r,
        )
        self.inference_count = Counter(
            "nv_inference_count", "Inferences performed (a batch of 8 counts 8)", labels, registry=r
        )
        self.exec_count = Counter(
            "nv_inference_exec_count", "Model executions (a batch of 8 counts 1)", labels, registry=r
        )
        self.request_duration_us = Counter(
            "nv_inference_request_duration_us",
            "Cumulative end-to-end inference request time, microseconds",
            labels,
            registry=r,
        )
        self.queue_duration_us = Counter(
            "nv_inference_queue_duration_us",
            "Cumulative time requests waited in the queue, microseconds",
            labels,
            registry=r,
        )
        self.compute_infer_duration_us = Counter(
            "nv_inference_compute_infer_duration_us",
            "Cumulative time the model computed, microseconds (per request, batch time shared)",
            labels,
            registry=r,
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count", "Requests waiting in the queue", labels, registry=r
        )
        self.queue_seconds = Histogram(
            "edge_inference_queue_duration_seconds",
            "Time a request waited in the queue",
            labels,
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "edge_inference_compute_duration_seconds",
            "Time one model execution (one batch) took",
            labels,
            buckets=_COMPUTE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "edge_inference_batch_size",
            "Rows per model execution (before padding)",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.load_total = Counter(
            "edge_model_load",
            "Model load attempts (initial load or swap), by result",
            ["model", "result"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "edge_model_load_duration_seconds",
            "Time to load and self-test a model version",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.current_version = Gauge(
            "edge_model_current_version", "1 for the version of each model now serving", labels, registry=r
        )
        # Language models: one observation per generation (TTFT, queue, rate) or per token (ITL).
        self.llm_ttft_seconds = Histogram(
            "edge_llm_time_to_first_token_seconds",
            "Time from a generation's request to its first token (queue and prefill included)",
            labels,
            buckets=LLM_TTFT_BUCKETS,
            registry=r,
        )
        self.llm_itl_seconds = Histogram(
            "edge_llm_inter_token_latency_seconds",
            "Time between two tokens of a generation",
            labels,
            buckets=LLM_ITL_BUCKETS,
            registry=r,
        )
        self.llm_tokens_per_second = Histogram(
            "edge_llm_tokens_per_second",
            "Decode rate of each finished generation (tokens after the first / their time)",
            labels,
            buckets=LLM_RATE_BUCKETS,
            registry=r,
        )
        self.llm_queue_seconds = Histogram(
            "edge_llm_queue_duration_seconds",
            "Time a generation waited for a slot in the batch (bounded queue)",
            labels,
            buckets=LLM_QUEUE_BUCKETS,
            registry=r,
        )
        self.llm_batch_sequences = Histogram(
            "edge_llm_batch_sequences",
            "Sequences decoding together in one forward pass (continuous batching)",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.llm_prompt_tokens = Counter(
            "edge_llm_prompt_tokens", "Prompt tokens processed", labels, registry=r
        )
        self.llm_generated_tokens = Counter(
            "edge_llm_generated_tokens", "Tokens generated", labels, registry=r
        )
        self.llm_requests = Counter(
            "edge_llm_requests",
            "Generations by how they ended (stop, length, cancelled, rejected, error)",
            [*labels, "finish_reason"],
            registry=r,
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        if device:
            r.register(DeviceCollector())

    def set_current_version(self, model: str, version: str | None, previous: str | None) -> None:
        """Point the version gauge at ``version`` (None: the model is no longer served)."""
        if previous is not None and previous != version:
            try:
                self.current_version.remove(model, previous)
            except KeyError:
                pass
        if version is not None:
            self.current_version.labels(model, version).set(1)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
