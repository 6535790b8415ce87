"""2:4 layers on the native plan: convolutions on conv2d24, and a Gemm after a Flatten of a
4-D map, whose 2:4 order is the plan's (h, w, c) and which is never pruned twice."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from native_models import cosine, make_model, prepare, rng, value
from onnx import helper

from edge_runtime import kernels
from edge_runtime.graph import reference
from edge_runtime.plan import NativeSession, calibrate, lower
from edge_runtime.quantize.pipeline import prune_model_2_4

SHAPE = (4, 6, 6)
# The plan's INT8 output against the float model it was made from (the pruned one).
MIN_COSINE = 0.999


def _cnn(extra_flat_reader: bool = False) -> onnx.ModelProto:
    """conv3x3 4->16 + relu (K = 36, the numpy-im2col stem path), conv3x3 16->16 + relu
    (K = 144, the C im2col), flatten, fc 576 -> 10. ``extra_flat_reader``: the flatten is
    also a graph output, so the plan cannot hand the GEMM the NHWC bytes for free."""
    r = rng(5)
    init = {
        "w1": (r.standard_normal((16, 4, 3, 3)) * 0.3).astype(np.float32),
        "b1": (r.standard_normal(16) * 0.1).astype(np.float32),
        "w2": (r.standard_normal((16, 16, 3, 3)) * 0.15).astype(np.float32),
        "b2": (r.standard_normal(16) * 0.1).astype(np.float32),
        "fc_w": (r.standard_normal((10, 16 * 6 * 6)) * 0.08).astype(np.float32),
        "fc_b": (r.standard_normal(10) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    outputs = [value("logits", None)] + ([value("flat", None)] if extra_flat_reader else [])
    return make_model(nodes, [value("x", ["batch", *SHAPE])], outputs, init, name="cnn24")


def _feeds(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": rng(seed).standard_normal((batch, *SHAPE)).astype(np.float32)}


def _calibrated(graph):
    return calibrate(graph, [_feeds(8, s) for s in range(3)], progress=False)


def _step(plan, node: str):
    (step,) = [s for s in plan.steps if s.node == node and s.op in ("gemm", "conv")]
    return step


def test_2_4_convs_run_on_conv2d24_bit_exact_with_dense() -> None:
    pruned, layers = prune_model_2_4(_cnn())
    assert {n for n, _ in layers} == {"conv1", "conv2", "fc"}
    graph = prepare(pruned)
    params = _calibrated(graph)
    plan = lower(graph, params)
    assert [_step(plan, n).kernel for n in ("conv1", "conv2", "fc")] == ["conv2d24", "conv2d24", "gemm24"]
    feeds = _feeds(5, 99)
    dense = NativeSession(lower(graph, params, sparse_kernels=False), cache_dir=False).run(feeds)["logits"]
    for threads in (1, 2):
        session = NativeSession(plan, threads=threads, cache_dir=False)
        assert sorted(session.describe()["sparse_layers"]) == ["conv1", "conv2", "fc"]
        assert session.describe()["ops"]["conv2d24"] == 2
        np.testing.assert_array_equal(session.run(feeds)["logits"], dense)


def test_a_dense_conv_listed_in_sparsity_is_pruned_along_its_im2col_order() -> None:
    graph = prepare(_cnn())
    plan = lower(graph, _calibrated(graph), sparsity={"conv2"})
    step = _step(plan, "conv2")
    assert step.kernel == "conv2d24"
    assert kernels.is_2_4(step.arrays["weights"].transpose(0, 2, 3, 1).reshape(16, -1))
    assert plan.sparse_layers() == ["conv2"]  # random weights are not auto-detected


@pytest.mark.parametrize("extra_flat_reader", [False, True], ids=["flatten-free", "flatten-shared"])
def test_pipeline_pruned_gemm_after_flatten_runs_gemm24_as_pruned(extra_flat_reader: bool) -> None:
    """prune_model_2_4 prunes fc in the (h, w, c) order the plan reads: the plan runs it on
    gemm24 without pruning it again, listed in ``sparsity`` (as a package's manifest does) or not."""
    pruned, layers = prune_model_2_4(_cnn(extra_flat_reader))
    fc_w = next(t for t in pruned.graph.initializer if t.name == "fc_w")
    logical = onnx.numpy_helper.to_array(fc_w)
    assert kernels.is_2_4(logical.reshape(10, 16, 6, 6).transpose(0, 2, 3, 1).reshape(10, -1))
    assert not kernels.is_2_4(logical)  # so an order mix-up would show
    graph = prepare(pruned)
    params = _calibrated(graph)
    auto = lower(graph, params)
    listed = lower(graph, params, sparsity={n for n, _ in layers})
    for plan in (auto, listed):
        assert _step(plan, "fc").kernel == "gemm24"
    np.testing.assert_array_equal(_step(auto, "fc").arrays["weights"], _step(listed, "fc").arrays["weights"])
    feeds = _feeds(16, 7)
    want = reference.run(graph, feeds)["logits"]
    got = NativeSession(listed, cache_dir=False).run(feeds)["logits"]
    assert cosine(got, want) >= MIN_COSINE


def test_gemm_2_4_in_the_logical_order_is_not_pruned_again() -> None:
    """Weights 2:4 along the ONNX (c, h, w) columns (not the defined order, e.g. from an older
    tool) run sparse in that order, through a transposed copy of the map, not re-pruned."""
    model = _cnn()
    fc_w = next(t for t in model.graph.initializer if t.name == "fc_w")
    fc_w.CopyFrom(onnx.numpy_helper.from_array(kernels.prune_2_4(onnx.numpy_helper.to_array(fc_w)), "fc_w"))
    graph = prepare(model)
    params = _calibrated(graph)
    plan = lower(graph, params, sparsity={"fc"})
    step = _step(plan, "fc")
    assert step.kernel == "gemm24"
    dense_step = _step(lower(graph, params, sparse_kernels=False), "fc")
    np.testing.assert_array_equal(  # the same int8 values, columns in (c, h, w) order
        step.arrays["weights"],
        dense_step.arrays["weights"].reshape(10, 6, 6, 16).transpose(0, 3, 1, 2).reshape(10, -1),
    )
    feeds = _feeds(16, 8)
    got = NativeSession(plan, cache_dir=False).run(feeds)["logits"]
    assert cosine(got, reference.run(graph, feeds)["logits"]) >= MIN_COSINE
