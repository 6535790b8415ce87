"""Symbolic input height and width: one plan (weights packed once) for every input size.

A small conv net with input [N, 3, H, W] (stride-2 SAME_UPPER stem, depthwise, residual
add, a ceil-mode max pool, a head) is quantized once and run natively at several sizes:
each size matches onnxruntime float within a few output steps, gives the very bits of a
plan lowered for that static size, and the per-shape buffer sets stay within their LRU
bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from native_models import make_model, prepare, rng, value
from onnx import helper

from edge_runtime.plan import NativeSession, QuantizedPlan, calibrate, lower
from edge_runtime.plan import executor as executor_module

ort = pytest.importorskip("onnxruntime")

SIZES = [(32, 32), (48, 40), (33, 31)]


def _weights(r, *shape):
    return (r.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _model(h="H", w="W"):
    r = rng(11)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="stem", strides=[2, 2], auto_pad="SAME_UPPER",
          kernel_shape=[3, 3]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"),
        n("Conv", ["r2", "w3", "b3"], ["c3"], name="project", kernel_shape=[1, 1]),
        n("Add", ["c3", "r1"], ["a1"], name="residual"),
        n("MaxPool", ["a1"], ["p1"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0],
          ceil_mode=1),
        n("Conv", ["p1", "w4", "b4"], ["c4"], name="head", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Sigmoid", ["c4"], ["y"], name="score"),
    ]  # fmt: skip
    inits = {
        "w1": _weights(r, 8, 3, 3, 3), "b1": (r.standard_normal(8) * 0.1).astype(np.float32),
        "w2": _weights(r, 8, 1, 3, 3), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
        "w3": _weights(r, 8, 8, 1, 1), "b3": np.full(8, 0.1, np.float32),
        "w4": _weights(r, 4, 8, 3, 3), "b4": np.zeros(4, np.float32),
    }  # fmt: skip
    return make_model(nodes, [value("x", ["N", 3, h, w])], [value("y", None)], inits)


def _images(shape, seed):
    return rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def dynamic():
    model = _model()
    graph = prepare(model)
    batches = [{"x": _images((2, 3, h, w), i)} for i, (h, w) in enumerate(SIZES)]
    params = calibrate(graph, batches, progress=False)
    plan = QuantizedPlan.from_bytes(lower(graph, params).to_bytes())
    return model, params, plan


def _ort(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_one_plan_runs_every_size_and_matches_onnxruntime(dynamic) -> None:
    model, params, plan = dynamic
    assert plan.format_version() == 4
    assert any(s.op == "conv" and s.attrs.get("dynamic_hw") for s in plan.steps)
    step = params["y"].scale
    session = NativeSession(plan, cache_dir=False)
    try:
        packed = {i: b.ctypes.data for i, b in session._packed.items()}
        for i, (h, w) in enumerate([*SIZES, (64, 48)]):
            x = _images((1 + i % 2, 3, h, w), 100 + i)
            got = session.run({"x": x})["y"]
            want = _ort(model, x)
            assert got.shape == want.shape
            # INT8 against float: a couple of output steps on average, never far off
            # (64x48 was never calibrated).
            error = np.abs(got - want)
            assert error.mean() <= 2 * step and error.max() <= 20 * step, (h, w, error.mean(), error.max())
        # Packed once: the same buffers served every size.
        assert {i: b.ctypes.data for i, b in session._packed.items()} == packed
    finally:
        session.close()


def test_dynamic_plan_gives_the_bits_of_a_static_plan(dynamic) -> None:
    _, params, plan = dynamic
    session = NativeSession(plan, cache_dir=False)
    try:
        for i, (h, w) in enumerate(SIZES):
            static_graph = prepare(_model(h, w))
            static = NativeSession(lower(static_graph, params), cache_dir=False)
            assert not any(s.attrs.get("dynamic_hw") for s in static.plan.steps)
            # A plan without the new features is still written as version 3 (older runtimes read it).
            assert static.plan.format_version() == 3 and b'"version":3' in static.plan.to_bytes()
            x = _images((2, 3, h, w), 200 + i)
            np.testing.assert_array_equal(session.run({"x": x})["y"], static.run({"x": x})["y"])
            # Back to an earlier size: the rewritten packed headers follow.
            np.testing.assert_array_equal(session.run({"x": x[:1]})["y"], static.run({"x": x[:1]})["y"])
            static.close()
    finally:
        session.close()


def test_buffer_plans_are_cached_per_shape_with_an_lru_bound(dynamic) -> None:
    _, _, plan = dynamic
    session = NativeSession(plan, cache_dir=False)
    try:
        bound = executor_module._MAX_SIGNATURES
        first = _images((1, 3, 32, 32), 1)
        want = session.run({"x": first})["y"]
        for k in range(bound + 3):
            session.run({"x": _images((1, 3, 24 + 2 * k, 30), 300 + k)})
            assert len(session._buffers) <= bound
        assert session.describe()["input_shapes_cached"] == bound
        # The first shape was evicted; it is planned again and gives the same bits.
        np.testing.assert_array_equal(session.run({"x": first})["y"], want)
    finally:
        session.close()


def test_too_small_an_input_is_a_shape_error(dynamic) -> None:
    from edge_runtime.errors import ShapeError

    _, _, plan = dynamic
    session = NativeSession(plan, cache_dir=False)
    try:
        with pytest.raises(ShapeError):
            session.run({"x": _images((1, 3, 1, 1), 5)})
    finally:
        session.close()


def test_an_add_of_symbolic_maps_broadcasting_at_run_time() -> None:
    """Two maps whose heights and widths are symbols the lowering cannot compare run on the
    int8 add kernel; a call where one broadcasts (1x1) in a way the kernel does not run
    falls back to float for that shape, and still matches onnxruntime."""
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="join")]
    model = make_model(nodes, [value("a", ["N", 4, "H", "W"]), value("b", ["N", 4, "P", "Q"])],
                       [value("y", None)])  # fmt: skip
    graph = prepare(model)
    r = rng(7)
    feeds = [{"a": r.standard_normal((2, 4, 6, 5)).astype(np.float32),
              "b": r.standard_normal((2, 4, 6, 5)).astype(np.float32)}]  # fmt: skip
    params = calibrate(graph, feeds, progress=False)
    plan = lower(graph, params)
    assert [s.op for s in plan.steps if s.node == "join"] == ["add"]
    session = NativeSession(plan, cache_dir=False)
    try:
        for b_shape in ((2, 4, 6, 5), (2, 4, 1, 1)):
            x = {"a": feeds[0]["a"], "b": np.clip(r.standard_normal(b_shape), -2, 2).astype(np.float32)}
            got = session.run(x)["y"]
            want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, x
            )[0]
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 2 * params["y"].scale + 1e-6, b_shape
    finally:
        session.close()
