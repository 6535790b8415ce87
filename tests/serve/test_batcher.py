"""The dynamic batcher on its own: batches form, split, pad, refuse when full, meet a latency target."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import numpy as np
import pytest
from serve_helpers import LinearModel, expected_logits, weights

from edge_runtime.serve import BatchingConfig, DynamicBatcher, OverloadedError, ServeConfigError


def _model(delay_s: float = 0.0) -> LinearModel:
    w, b = weights(3)
    return LinearModel("linear", "1", w, b, delay_s)


def _x(rows: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + start) / 10


def test_concurrent_requests_form_batches_and_split_back():
    model = _model(delay_s=0.01)
    batcher = DynamicBatcher(
        model.run, BatchingConfig(max_batch_size=8, max_queue_delay_us=20_000), batchable=True
    )
    try:
        xs = [_x(1, i) for i in range(16)]
        futures = [batcher.submit({"x": x}) for x in xs]
        wait(futures, timeout=10)
        for x, f in zip(xs, futures):
            np.testing.assert_allclose(f.result()["logits"], expected_logits(x, 3), rtol=1e-5)
        assert len(model.batch_sizes) < 16 and max(model.batch_sizes) > 1
        assert max(model.batch_sizes) <= 8
    finally:
        batcher.close(5)


def test_request_larger_than_max_batch_is_split_and_reassembled():
    model = _model()
    batcher = DynamicBatcher(
        model.run, BatchingConfig(max_batch_size=4, max_queue_delay_us=0), batchable=True
    )
    try:
        x = _x(10)
        out = batcher.submit({"x": x}).result(10)
        np.testing.assert_allclose(out["logits"], expected_logits(x, 3), rtol=1e-5)
        assert out["label"].shape == (10,)
        assert all(n <= 4 for n in model.batch_sizes) and sum(model.batch_sizes) == 10
    finally:
        batcher.close(5)


def test_pads_to_the_preferred_size_and_drops_the_padding():
    model = _model()
    config = BatchingConfig(
        max_batch_size=8, max_queue_delay_us=0, preferred_batch_sizes=(4, 8), pad_to_preferred=True
    )
    batcher = DynamicBatcher(model.run, config, batchable=True)
    try:
        x = _x(3)
        out = batcher.submit({"x": x}).result(10)
        assert model.batch_sizes == [4]
        np.testing.assert_allclose(out["logits"], expected_logits(x, 3), rtol=1e-5)
    finally:
        batcher.close(5)


def test_full_queue_refuses_instead_of_growing():
    gate = threading.Event()

    def run(inputs):
        gate.wait(10)
        return {"y": inputs["x"]}

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=1, max_queue_size=2), batchable=True)
    try:
        first = batcher.submit({"x": _x(1)})
        deadline = time.monotonic() + 5
        while batcher.queued() and time.monotonic() < deadline:  # the worker takes the first one
            time.sleep(0.001)
        queued = [batcher.submit({"x": _x(1)}) for _ in range(2)]
        with pytest.raises(OverloadedError, match="queue is full"):
            batcher.submit({"x": _x(1)})
        gate.set()
        wait([first, *queued], timeout=10)
        assert all(f.exception() is None for f in [first, *queued])
    finally:
        gate.set()
        batcher.close(5)


def test_latency_target_dispatches_before_the_queue_delay():
    model = _model()
    config = BatchingConfig(max_batch_size=64, max_queue_delay_us=2_000_000, latency_target_us=20_000)
    batcher = DynamicBatcher(model.run, config, batchable=True)
    try:
        start = time.monotonic()
        batcher.submit({"x": _x(1)}).result(10)
        assert time.monotonic() - start < 1.0  # the 2 s queue delay was cut short by the 20 ms target
    finally:
        batcher.close(5)


def test_close_drains_what_was_accepted():
    model = _model(delay_s=0.005)
    batcher = DynamicBatcher(
        model.run, BatchingConfig(max_batch_size=2, max_queue_delay_us=50_000), batchable=True
    )
    futures = [batcher.submit({"x": _x(1, i)}) for i in range(6)]
    assert batcher.close(10)
    assert all(f.done() and f.exception() is None for f in futures)


def test_model_error_reaches_every_request_of_the_batch():
    def run(inputs):
        raise RuntimeError("kernel exploded")

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=4, max_queue_delay_us=10_000), batchable=True)
    try:
        futures = [batcher.submit({"x": _x(1)}) for _ in range(3)]
        wait(futures, timeout=10)
        assert all(isinstance(f.exception(), RuntimeError) for f in futures)
    finally:
        batcher.close(5)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_batch_size": 0},
        {"preferred_batch_sizes": (16,)},
        {"pad_to_preferred": True},
        {"max_queue_delay_us": -1},
    ],
)
def test_bad_batching_config_is_refused(fields):
    with pytest.raises(ServeConfigError):
        BatchingConfig(**fields)
