"""The native plan of the real models' operators (edge_runtime.plan.lower) against the reference
executor: one small model per operator, inputs on the quantization grid of the calibrated input,
outputs within a few quantization steps of the float reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from graph_testing import make_model, randn, value
from onnx import helper

from edge_runtime.graph import import_onnx, optimize, reference

native = pytest.importorskip("edge_runtime.plan")
pytest.importorskip("edge_runtime.kernels")

I64 = np.int64


def _run(model, x: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> tuple[dict, dict, Any, Any]:
    """(native outputs, reference outputs, plan, parameters) for float input ``x`` put on the
    input's quantization grid."""
    from edge_runtime import numerics

    graph = optimize(import_onnx(model))
    feeds = {"x": x, **(extra or {})}
    params = native.calibrate(graph, [feeds], progress=False)
    on_grid = {k: numerics.dequantize(numerics.quantize(v, params[k]), params[k]).astype(np.float32)
               if k in params else v for k, v in feeds.items()}  # fmt: skip
    plan = native.lower(graph, params)
    got = native.NativeSession(plan, threads=1).run(on_grid)
    want = reference.run(graph, on_grid)
    return got, want, plan, params


def _steps(plan) -> list[str]:
    return [s.op for s in plan.steps if s.op not in ("quantize", "dequantize")]


def _close(got: np.ndarray, want: np.ndarray, qp, steps: float = 1.01, rel: float = 0.0) -> None:
    span = float(np.ptp(want)) if want.size else 0.0
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    assert err <= steps * qp.scale + rel * span, f"max error {err} vs step {qp.scale} (range {span})"


@pytest.mark.parametrize(
    ("op", "attrs"),
    [("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("Softplus", {}), ("Exp", {}), ("Abs", {}), ("Neg", {})],
)
def test_element_wise_ops_run_as_tables(op: str, attrs: dict) -> None:
    model = make_model(
        [helper.make_node(op, ["x"], ["y"], **attrs)], [value("x", [2, 3, 8])], [value("y", None)]
    )
    got, want, plan, params = _run(model, randn(2, 3, 8))
    assert _steps(plan) == ["lut"]
    _close(got["y"], want["y"], params["y"], steps=2.01)  # saturation at the calibrated range's end


def test_swish_pattern_with_an_affine_block_is_one_table() -> None:
    """x * sigmoid(x), then * a + b (PP-LCNetV3's learnable affine block): one table step."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["sw"]),
        helper.make_node("Mul", ["sw", "a"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    model = make_model(
        nodes, [value("x", [1, 16])], [value("y", None)], {"a": np.float32(0.7), "b": np.float32(0.2)}
    )
    got, want, plan, params = _run(model, randn(1, 16) * 3)
    assert _steps(plan) == ["lut"]
    _close(got["y"], want["y"], params["y"], steps=2.01)


def test_pad_writes_the_code_of_its_value_in_nhwc() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Pad", ["c", "p", "v"], ["y"]),
    ]
    inits = {
        "w": randn(3, 2, 1, 1, seed=1),
        "p": np.array([0, 0, 1, 2, 0, 0, 2, 1], I64),
        "v": np.float32(0.5),
    }
    model = make_model(nodes, [value("x", [1, 2, 4, 4])], [value("y", None)], inits, opset=13)
    got, want, plan, params = _run(model, randn(1, 2, 4, 4))
    assert "move" in _steps(plan)
    _close(got["y"], want["y"], params["c"], steps=2.01, rel=0.03)
    assert np.allclose(got["y"][:, :, 0, :], want["y"][:, :, 0, :], atol=params["c"].scale)  # the padded row


def test_reflect_pad_and_argmax_on_the_bytes() -> None:
    nodes = [
        helper.make_node("Pad", ["x", "p"], ["r"], mode="reflect"),
        helper.make_node("ArgMax", ["r"], ["y"], axis=1, keepdims=0),
    ]
    model = make_model(
        nodes, [value("x", [2, 6, 5])], [value("y", None, I64)], {"p": np.array([0, 0, 2, 0, 0, 2], I64)}
    )
    x = np.arange(60, dtype=np.float32).reshape(2, 6, 5) % 7 - 3  # distinct enough on the grid
    got, want, plan, _ = _run(model, x)
    assert set(_steps(plan)) == {"move"}
    assert got["y"].dtype == np.int64
    np.testing.assert_array_equal(got["y"], want["y"])


def test_strided_depthwise_conv_matches_its_reference() -> None:
    """PaddleOCR's (2, 1) depthwise conv: stride-1 depthwise kernel + every other row."""
    w = randn(8, 1, 3, 3, seed=1)
    for strides in ([2, 1], [1, 2]):
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=8, strides=strides, pads=[1, 1, 1, 1])
        model = make_model(
            [node], [value("x", [1, 8, 7, 9])], [value("y", None)], {"w": w, "b": randn(8, seed=2)}
        )
        got, want, plan, params = _run(model, randn(1, 8, 7, 9))
        assert got["y"].shape == want["y"].shape
        assert _steps(plan) == ["conv", "move", "transpose"] or "conv" in _steps(plan)
        assert next(s for s in plan.steps if s.op == "conv").attrs["depthwise"]
        _close(got["y"], want["y"], params["y"], steps=2.01, rel=0.03)


def test_conv_transpose_and_lstm_run_as_float_steps() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["u"], strides=[2, 2], kernel_shape=[2, 2]),
        helper.make_node("ReduceMean", ["u"], ["m"], axes=[2], keepdims=0),  # [1, 3, 8]
        helper.make_node("Transpose", ["m"], ["seq"], perm=[2, 0, 1]),  # [8, 1, 3]
        helper.make_node("LSTM", ["seq", "W", "R", "B"], ["y", "yh", "yc"], hidden_size=4),
    ]
    inits = {
        "w1": randn(2, 2, 3, 3, seed=5), "wt": randn(2, 3, 2, 2, seed=1), "W": randn(1, 16, 3, seed=2) * 0.5,
        "R": randn(1, 16, 4, seed=3) * 0.5, "B": randn(1, 32, seed=4) * 0.1,
    }  # fmt: skip
    outputs = [value("y", None), value("yh", None), value("yc", None)]
    model = make_model(nodes, [value("x", [1, 2, 4, 4])], outputs, inits, opset=13)
    got, want, plan, params = _run(model, randn(1, 2, 4, 4))
    floats = [s.attrs["node_op"] for s in plan.steps if s.op == "float"]
    moves = [s.attrs["node_op"] for s in plan.steps if s.op == "move"]
    assert "ConvTranspose" not in floats and "DepthToSpace" in moves  # 2x2 stride 2: an int8 GEMM
    assert floats.count("LSTM") == 2  # Y_h is the last step of Y
    for name in ("y", "yh", "yc"):
        _close(got[name], want[name], params[name], steps=3.01, rel=0.05)


def test_old_softmax_over_several_axes_runs_natively() -> None:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    model = make_model([node], [value("x", [2, 3, 4])], [value("y", None)], opset=11)
    got, want, _, params = _run(model, randn(2, 3, 4))
    _close(got["y"], want["y"], params["y"], steps=2.01)
    np.testing.assert_allclose(got["y"].reshape(2, -1).sum(axis=1), 1.0, atol=12 * params["y"].scale)


def test_conv_channel_whose_bias_dwarfs_its_weights_still_lowers() -> None:
    """A channel with weights ~1e-9 and a bias of 3 (its int32 bias would overflow at the
    weights' own scale) gets a larger weight scale instead of failing the model."""
    w = randn(4, 2, 3, 3, seed=1)
    w[2] *= 1e-9
    b = np.float32([0.1, -0.2, 3.0, 0.0])
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    model = make_model([node], [value("x", [1, 2, 5, 5])], [value("y", None)], {"w": w, "b": b})
    got, want, _, params = _run(model, randn(1, 2, 5, 5))
    _close(got["y"], want["y"], params["y"], steps=2.01, rel=0.03)


@pytest.mark.parametrize(
    ("attrs", "gemm"),
    [
        ({"strides": [2, 2]}, True),
        ({"strides": [3, 3], "kernel_shape": [3, 3]}, True),
        ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, False),
    ],
)
def test_conv_transpose_upsamplers_run_on_the_gemm(attrs: dict, gemm: bool) -> None:
    k = attrs.get("kernel_shape", [2, 2])
    if not gemm:
        k = [3, 3]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt", "bt"], ["y"], **attrs),
    ]
    inits = {"w1": randn(4, 3, 1, 1, seed=1), "wt": randn(4, 5, *k, seed=2), "bt": randn(5, seed=3)}
    model = make_model(nodes, [value("x", [1, 3, 5, 6])], [value("y", None)], inits)
    got, want, plan, params = _run(model, randn(1, 3, 5, 6))
    floats = [s.attrs["node_op"] for s in plan.steps if s.op == "float"]
    assert ("ConvTranspose" not in floats) == gemm
    assert got["y"].shape == want["y"].shape
    _close(got["y"], want["y"], params["y"], steps=2.01, rel=0.03)
