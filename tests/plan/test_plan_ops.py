"""One-operator plans against the float reference.

Each model is calibrated on its own test inputs (so nothing is clipped) and run on
them; the reference gets the same inputs fake-quantized (what the plan sees after
its entry), so the error measured is the plan's own: rounding of weights, the
integer requantization and the output's rounding. ``steps`` is the largest error
allowed, in units of the output's quantization step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from native_models import make_model, prepare, rng, value
from onnx import helper

from edge_runtime.graph import reference
from edge_runtime.numerics import fake_quantize
from edge_runtime.plan import NativeSession, calibrate, lower


@dataclass
class Case:
    build: Callable[[], onnx.ModelProto]
    steps: float  # max |native - reference| in output quantization steps
    kernel: str  # a kernel family the plan must use


def _w(*shape: int, scale: float = 0.3, seed: int = 3) -> np.ndarray:
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _single(
    op: str, inputs: list, init: dict | None = None, shape=("batch", 4, 8, 8), extra_inputs=(), **attrs
):
    node = helper.make_node(op, ["x", *inputs], ["y"], **attrs)
    ins = [value("x", list(shape)), *extra_inputs]
    return lambda: make_model([node], ins, [value("y", None)], init or {}, name=op.lower())


CASES: dict[str, Case] = {
    # GEMM-like: weights and bias rounding plus output rounding stay within one step.
    "conv3x3": Case(_single("Conv", ["w", "b"], {"w": _w(6, 4, 3, 3), "b": _w(6)}, pads=[1, 1, 1, 1]), 1.5, "conv2d"),
    "conv_s2_dil": Case(_single("Conv", ["w"], {"w": _w(6, 4, 3, 3)}, strides=[2, 2], dilations=[2, 2]), 1.5, "conv2d"),
    "conv_grouped": Case(_single("Conv", ["w"], {"w": _w(4, 2, 3, 3)}, group=2, pads=[1, 1, 1, 1]), 1.5, "conv2d"),
    "dwconv3x3_s1": Case(_single("Conv", ["w", "b"], {"w": _w(4, 1, 3, 3), "b": _w(4)}, group=4, pads=[1, 1, 1, 1]),
                         1.5, "dwconv2d"),
    "dwconv5x5_s2": Case(_single("Conv", ["w"], {"w": _w(4, 1, 5, 5)}, group=4, pads=[2, 2, 2, 2], strides=[2, 2]),
                         1.5, "dwconv2d"),
    "gemm": Case(_single("Gemm", ["w", "b"], {"w": _w(5, 12), "b": _w(5)}, shape=("batch", 12), transB=1), 1.5, "gemm"),
    "matmul_3d": Case(_single("MatMul", ["w"], {"w": _w(12, 5)}, shape=("batch", 3, 12)), 1.5, "gemm"),
    # Element-wise int8 kernels: one rounding of the rescaled result.
    "add_activations": Case(_single("Add", ["x2"], shape=("batch", 4, 8, 8),
                                    extra_inputs=[value("x2", ["batch", 4, 8, 8])]), 1.0, "add"),
    "add_channel_bias": Case(_single("Add", ["c"], {"c": _w(4, 1, 1)}), 1.5, "add"),
    "mul_scalar": Case(_single("Mul", ["c"], {"c": np.array(0.7, np.float32)}), 1.5, "mul"),
    "mul_activations": Case(_single("Mul", ["x2"], shape=("batch", 6), extra_inputs=[value("x2", ["batch", 6])]),
                            1.5, "mul"),
    # Tables: exact functions of the input byte, one output rounding.
    "sigmoid": Case(_single("Sigmoid", []), 1.0, "lut"),
    "hardsigmoid": Case(_single("HardSigmoid", [], alpha=0.25, beta=0.4), 1.0, "lut"),
    "hardswish": Case(_single("HardSwish", [], ), 1.0, "lut"),
    "tanh": Case(_single("Tanh", []), 1.0, "lut"),
    "relu": Case(_single("Relu", []), 0.0, "clamp"),
    # Pools: max is exact on the codes; averages round once.
    "maxpool": Case(_single("MaxPool", [], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 0.0, "maxpool"),
    "maxpool_ceil": Case(_single("MaxPool", [], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, shape=("batch", 4, 7, 7)),
                         0.0, "maxpool"),
    "avgpool": Case(_single("AveragePool", [], kernel_shape=[2, 2], strides=[2, 2]), 1.0, "avgpool"),
    "global_avgpool": Case(_single("GlobalAveragePool", []), 1.0, "global_avgpool"),
    # Data movement keeps the input's codes: exact.
    "transpose": Case(_single("Transpose", [], perm=[0, 3, 2, 1]), 0.0, "transpose"),
    "flatten": Case(_single("Flatten", []), 0.0, "move"),
    "slice": Case(_single("Slice", ["s", "e", "a"], {"s": np.array([1, 2]), "e": np.array([3, 7]),
                                                     "a": np.array([1, 3])}), 0.0, "move"),
    "resize_nearest": Case(_single("Resize", ["", "sc"], {"sc": np.array([1, 1, 2, 2], np.float32)}, mode="nearest"),
                           0.0, "move"),
    # Float islands: dequantize, compute in float32, one output rounding.
    "resize_linear": Case(_single("Resize", ["", "sc"], {"sc": np.array([1, 1, 2, 2], np.float32)}, mode="linear"),
                          1.0, "float"),
    "softmax": Case(_single("Softmax", [], shape=("batch", 3, 10), axis=-1), 1.0, "softmax"),
    "softmax_axis1": Case(_single("Softmax", [], shape=("batch", 3, 10), axis=1), 1.0, "softmax"),
    "layernorm": Case(_single("LayerNormalization", ["g", "b"], {"g": _w(10) + 1, "b": _w(10)},
                              shape=("batch", 3, 10), axis=-1), 1.0, "layernorm"),
    "layernorm_scale_input": Case(_single("LayerNormalization", ["g"], shape=("batch", 3, 10), axis=-1,
                                          extra_inputs=[value("g", [10])]), 1.0, "layernorm"),
    "matmul_activations": Case(_single("MatMul", ["x2"], shape=("batch", 3, 4),
                                       extra_inputs=[value("x2", ["batch", 4, 5])]), 1.0, "matmul"),
}  # fmt: skip


def _gelu_case() -> onnx.ModelProto:
    node = helper.make_node("Gelu", ["x"], ["y"])
    return make_model([node], [value("x", ["batch", 7])], [value("y", None)], opset=20, name="gelu")


CASES["gelu"] = Case(_gelu_case, 1.0, "lut")


def _concat_case() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["a"]),  # a different range: Concat must requantize it
        helper.make_node("Concat", ["x", "a"], ["y"], axis=1),
    ]
    return make_model(nodes, [value("x", ["batch", 4, 8, 8])], [value("y", None)],
                      {"k": np.array(3.0, np.float32)}, name="concat")  # fmt: skip


CASES["concat_requant"] = Case(_concat_case, 1.5, "concat")


def _embedding_case() -> onnx.ModelProto:
    node = helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)
    return make_model([node], [value("ids", ["batch", 5], np.int64)], [value("y", None)],
                      {"table": _w(20, 6)}, name="embed")  # fmt: skip


CASES["gather_embedding"] = Case(_embedding_case, 0.5, "embed")


def _feeds(graph, batch: int, seed: int) -> dict[str, np.ndarray]:
    r = rng(seed)
    feeds = {}
    for info in graph.inputs:
        shape = [batch if not isinstance(d, int) else d for d in info.shape]
        if info.dtype == np.int64:
            feeds[info.name] = r.integers(0, 20, size=shape).astype(np.int64)
        else:
            feeds[info.name] = (r.standard_normal(shape) * 2).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_reference(name: str) -> None:
    case = CASES[name]
    graph = prepare(case.build())
    feeds = _feeds(graph, batch=2, seed=5)
    params = calibrate(graph, [feeds], progress=False)
    plan = lower(graph, params)
    assert case.kernel in plan.op_histogram(), plan.op_histogram()
    got = NativeSession(plan, cache_dir=False).run(feeds)["y"]
    fq = {k: (fake_quantize(v, params[k]) if k in params else v) for k, v in feeds.items()}
    want = reference.run(graph, fq)["y"]
    assert got.shape == want.shape and got.dtype == np.float32
    out_scale = plan.params[plan.steps[-1].inputs[0]].scale
    error = np.abs(got - want).max() / out_scale
    assert error <= case.steps + 1e-3, f"{name}: {error:.2f} steps (allowed {case.steps})"


def test_embedding_table_is_stored_quantized_and_version_1_float_tables_still_run() -> None:
    graph = prepare(_embedding_case())
    feeds = _feeds(graph, batch=2, seed=5)
    plan = lower(graph, calibrate(graph, [feeds], progress=False))
    (step,) = [s for s in plan.steps if s.op == "embed"]
    assert step.arrays["table"].dtype in (np.uint8, np.int8)  # a quarter of the float table
    expected = NativeSession(plan, cache_dir=False).run(feeds)["y"]
    # A version-1 plan carried the float table: the executor quantizes it at load, same bits.
    step.arrays["table"] = graph.constant("table").astype(np.float32)
    for release in (False, True):
        got = NativeSession(plan, cache_dir=False, release_weights=release).run(feeds)["y"]
        np.testing.assert_array_equal(got, expected)
