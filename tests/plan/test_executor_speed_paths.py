"""The executor's fast paths give the bits of the plain paths they replace.

- a Relu after a residual Add is done by the add kernel's own clamp (fused);
- a convolution with few input channels (an image stem) runs as numpy im2col + GEMM;
- warm calls reuse bound buffers, and a new batch size binds afresh;
- a large batch runs its leading per-sample steps in slices of a few samples;
- the BLAS thread setting is restored after a call, and a closed session refuses to run.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edge_runtime.errors import KernelArgumentError, ShapeError
from edge_runtime.plan import NativeSession, lower
from edge_runtime.plan import executor as executor_module
from tests.plan.native_models import (
    calibrated,
    make_model,
    prepare,
    rng,
    small_cnn,
    small_transformer,
    value,
)


def _residual_relu():
    r = rng(3)
    init = {"w": (r.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32),
            "b": (r.standard_normal(4) * 0.1).astype(np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Add", ["c", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    return make_model(nodes, [value("x", ["batch", 4, 6, 6])], [value("y", None)], init, name="residual")


def _plan(model, shape, batches=3):
    graph = prepare(model)
    feeds = [{"x": rng(i).standard_normal((2, *shape)).astype(np.float32)} for i in range(batches)]
    return lower(graph, calibrated(graph, feeds))


def _x(shape, batch, seed=11):
    return {"x": rng(seed).standard_normal((batch, *shape)).astype(np.float32)}


def test_relu_after_add_is_fused_with_the_same_bits(monkeypatch) -> None:
    plan = _plan(_residual_relu(), (4, 6, 6))
    assert [s.op for s in plan.steps].count("clamp") == 1
    fused = NativeSession(plan, cache_dir=False)
    assert fused.describe()["fused_activations"] == 1
    monkeypatch.setattr(NativeSession, "_find_fusions", lambda self: {})
    plain = NativeSession(plan, cache_dir=False)
    assert plain.describe()["fused_activations"] == 0
    for batch in (1, 3):
        feeds = _x((4, 6, 6), batch)
        got, want = fused.run(feeds)["y"], plain.run(feeds)["y"]
        np.testing.assert_array_equal(got, want)
        assert (got >= 0).all()


def test_stem_convolution_as_numpy_im2col_has_the_same_bits(monkeypatch) -> None:
    plan = _plan(small_cnn(), (3, 16, 16))
    stem = next(s for s in plan.steps if s.op == "conv")
    assert stem.attrs["input_hwc"][2] == 3  # the path applies to this conv
    fast = NativeSession(plan, cache_dir=False)
    monkeypatch.setattr(executor_module, "_numpy_im2col", lambda params, depthwise: False)
    plain = NativeSession(plan, cache_dir=False)
    for batch in (1, 4, 1):
        feeds = _x((3, 16, 16), batch, seed=batch)
        np.testing.assert_array_equal(fast.run(feeds)["logits"], plain.run(feeds)["logits"])


def test_outputs_are_not_overwritten_by_the_next_call() -> None:
    plan = _plan(small_cnn(), (3, 16, 16))
    session = NativeSession(plan, cache_dir=False)
    first = session.run(_x((3, 16, 16), 2, seed=1))["logits"]
    kept = first.copy()
    session.run(_x((3, 16, 16), 2, seed=2))
    np.testing.assert_array_equal(first, kept)


def test_wrong_shape_raises_a_typed_error_after_binding() -> None:
    plan = _plan(small_cnn(), (3, 16, 16))
    session = NativeSession(plan, cache_dir=False)
    session.run(_x((3, 16, 16), 1))
    with pytest.raises(ShapeError):
        session.run(_x((3, 12, 12), 1))


def test_closed_session_refuses_to_run() -> None:
    plan = _plan(small_cnn(), (3, 16, 16))
    session = NativeSession(plan, cache_dir=False)
    session.close()
    with pytest.raises(KernelArgumentError, match="closed"):
        session.run(_x((3, 16, 16), 1))


def test_blas_threads_are_restored_after_a_call() -> None:
    blas = executor_module._BlasThreads.get()
    if blas is None:
        pytest.skip("threadpoolctl or a BLAS library is not available")
    before = [c.get_num_threads() for c in blas._controllers]
    previous = blas.limit(1)
    assert [c.get_num_threads() for c in blas._controllers] == [1] * len(before)
    blas.restore(previous)
    assert [c.get_num_threads() for c in blas._controllers] == before


def test_batch_slices_of_the_per_sample_prefix_give_the_same_bits(monkeypatch) -> None:
    plan = _plan(small_cnn(), (3, 16, 16))
    whole = NativeSession(plan, cache_dir=False)
    assert whole.describe()["batch_slices"]["samples"] > 8  # a tiny model: no slicing at these batches
    # 16x16x8 bytes a sample, 2.5 samples' worth: slices of 2 samples, and a last one of 1.
    monkeypatch.setattr(executor_module, "_CHUNK_BYTES", 16 * 16 * 8 * 5 // 2)
    sliced = NativeSession(plan, cache_dir=False)
    info = sliced.describe()["batch_slices"]
    assert info["samples"] == 2
    assert [s.op for s in plan.steps[info["steps"] :]][:2] == ["move", "gemm"]  # the prefix stops at flatten
    for batch in (1, 2, 5, 4, 5):
        feeds = _x((3, 16, 16), batch, seed=batch)
        np.testing.assert_array_equal(sliced.run(feeds)["logits"], whole.run(feeds)["logits"])


def test_only_a_leading_run_of_per_sample_nhwc_steps_is_sliced(monkeypatch) -> None:
    monkeypatch.setattr(executor_module, "_CHUNK_BYTES", 1)  # one sample a slice
    plan = _plan(_residual_relu(), (4, 6, 6))  # all per sample up to the exit dequantization
    sliced = NativeSession(plan, cache_dir=False)
    assert sliced.describe()["batch_slices"] == {"steps": len(plan.steps) - 1, "samples": 1}
    monkeypatch.setattr(NativeSession, "_find_batch_split", lambda self: None)
    whole = NativeSession(plan, cache_dir=False)
    feeds = _x((4, 6, 6), 3)
    np.testing.assert_array_equal(sliced.run(feeds)["y"], whole.run(feeds)["y"])
    monkeypatch.undo()
    graph = prepare(small_transformer())  # token rows, not NHWC images: never sliced
    feeds = [{"x": rng(i).standard_normal((2, 6, 16)).astype(np.float32)} for i in range(2)]
    session = NativeSession(lower(graph, calibrated(graph, feeds)), cache_dir=False)
    assert session.describe()["batch_slices"] is None


def test_several_threads_run_the_whole_batch_at_once(monkeypatch) -> None:
    monkeypatch.setattr(executor_module, "_CHUNK_BYTES", 1)
    plan = _plan(small_cnn(), (3, 16, 16))
    assert NativeSession(plan, threads=2, cache_dir=False).describe()["batch_slices"] is None
