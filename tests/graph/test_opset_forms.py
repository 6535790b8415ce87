"""Operators of real models, in the form each opset (7-21) gives them, on the reference executor
and after the passes, against onnxruntime: one single-node model per case."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from graph_testing import assert_matches_ort, make_model, randn, value
from onnx import helper

from edge_runtime.graph import check_supported, import_onnx, optimize

I64 = np.int64
F32 = np.float32


@dataclass
class Case:
    op: str
    inputs: list[tuple[str, Any, bool]]  # (name, value, constant); "" = omitted input
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    outputs: int = 1
    out_dtype: Any = F32
    supported: bool = True  # whether check_supported takes the optimized graph


def x(*shape: int, seed: int = 0, positive: bool = False) -> tuple[str, np.ndarray, bool]:
    v = randn(*shape, seed=seed)
    return ("x", np.abs(v) + np.float32(0.1) if positive else v, False)


def d(name: str, v: Any, dtype: Any = F32) -> tuple[str, np.ndarray, bool]:
    return (name, np.asarray(v, dtype), False)


def c(name: str, v: Any, dtype: Any = None) -> tuple[str, np.ndarray, bool]:
    return (name, np.asarray(v, dtype), True)


OMIT = ("", None, True)


def lstm_weights(
    directions: int, hidden: int, inputs: int, gates: int = 4
) -> list[tuple[str, np.ndarray, bool]]:
    return [
        c("W", randn(directions, gates * hidden, inputs, seed=11) * 0.5),
        c("R", randn(directions, gates * hidden, hidden, seed=12) * 0.5),
        c("B", randn(directions, 2 * gates * hidden, seed=13) * 0.1),
    ]


CASES: dict[str, Case] = {
    # Softmax family before and after opset 13
    "softmax_11_over_two_axes": Case("Softmax", [x(2, 3, 4)], {"axis": 1}, opset=11),
    "softmax_11_default_axis_rank4": Case("Softmax", [x(2, 3, 2, 2)], {}, opset=11),
    "softmax_11_classes_then_ones": Case("Softmax", [x(2, 5, 1, 1)], {"axis": 1}, opset=11),
    "softmax_13_middle_axis": Case("Softmax", [x(2, 3, 4)], {"axis": 1}, opset=13),
    "logsoftmax_11_rank4": Case("LogSoftmax", [x(2, 3, 4, 2)], {"axis": 2}, opset=11),
    "logsoftmax_13": Case("LogSoftmax", [x(2, 7)], {"axis": -1}, opset=13),
    "hardmax_11": Case("Hardmax", [x(2, 3, 4)], {"axis": 1}, opset=11),
    "hardmax_13": Case("Hardmax", [x(2, 3, 4)], {"axis": 1}, opset=13),
    # activations
    "leaky_relu": Case("LeakyRelu", [x(2, 3, 4)], {"alpha": 0.1}),
    "prelu_channels": Case("PRelu", [x(2, 3, 4, 4), c("slope", randn(3, 1, 1, seed=2))]),
    "prelu_scalar_opset7": Case("PRelu", [x(2, 3, 4), c("slope", np.float32([0.25]))], opset=7),
    "elu": Case("Elu", [x(2, 8)], {"alpha": 0.7}),
    "selu": Case("Selu", [x(2, 8)]),
    "softplus": Case("Softplus", [x(2, 8)]),
    "hard_swish_op": Case("HardSwish", [x(2, 8)], opset=14),
    "exp": Case("Exp", [x(2, 8)]),
    "abs": Case("Abs", [x(2, 8)]),
    "neg": Case("Neg", [x(2, 8)]),
    "sqrt": Case("Sqrt", [x(2, 8, positive=True)]),
    "pow_square": Case("Pow", [x(2, 8), c("e", np.float32(2.0))]),
    "reciprocal": Case("Reciprocal", [x(2, 8, positive=True)]),
    "max_of_two": Case("Max", [x(2, 8), d("b", randn(2, 8, seed=3))]),
    # Clip: attributes (< 11) and inputs
    "clip_7_attrs": Case("Clip", [x(2, 8)], {"min": -0.5, "max": 0.5}, opset=7),
    "clip_11_inputs": Case("Clip", [x(2, 8), c("lo", np.float32(0)), c("hi", np.float32(6))], opset=11),
    # Pad: attributes (< 11), inputs (11+), axes (18+), modes
    "pad_7_attrs": Case("Pad", [x(1, 2, 3, 3)], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": 0.5}, opset=7),
    "pad_11_constant": Case(
        "Pad", [x(1, 2, 3, 3), c("p", [0, 0, 1, 1, 0, 0, 1, 1], I64), c("v", np.float32(0))], opset=11
    ),
    "pad_11_reflect": Case(
        "Pad", [x(1, 2, 5), c("p", [0, 0, 2, 0, 0, 2], I64)], {"mode": "reflect"}, opset=11
    ),
    "pad_13_edge": Case("Pad", [x(2, 5), c("p", [0, 1, 0, 3], I64)], {"mode": "edge"}, opset=13),
    "pad_18_axes": Case(
        "Pad", [x(1, 2, 4, 4), c("p", [1, 2, 3, 0], I64), OMIT, c("axes", [2, 3], I64)], opset=18
    ),
    "pad_negative_crops": Case("Pad", [x(1, 2, 5, 5), c("p", [0, 0, -1, 1, 0, 0, 1, -2], I64)], opset=13),
    # Split: attribute (< 13), input (13+), num_outputs (18+)
    "split_11_attr": Case("Split", [x(2, 6)], {"axis": 1, "split": [2, 4]}, opset=11, outputs=2),
    "split_11_equal": Case("Split", [x(2, 6)], {"axis": 1}, opset=11, outputs=3),
    "split_13_input": Case("Split", [x(4, 3), c("s", [1, 3], I64)], {"axis": 0}, opset=13, outputs=2),
    "split_18_uneven": Case("Split", [x(2, 7)], {"axis": 1, "num_outputs": 3}, opset=18, outputs=3),
    # reductions: axes attribute (< 18, ReduceSum < 13) or input
    "reduce_mean_11": Case("ReduceMean", [x(2, 3, 4)], {"axes": [1], "keepdims": 0}, opset=11),
    "reduce_mean_18_input": Case("ReduceMean", [x(2, 3, 4), c("axes", [-1], I64)], opset=18),
    "reduce_max_11": Case("ReduceMax", [x(2, 3, 4)], {"axes": [2]}, opset=11),
    "reduce_max_18_all": Case("ReduceMax", [x(2, 3, 4)], {"keepdims": 0}, opset=18),
    "reduce_sum_11_attr": Case("ReduceSum", [x(2, 3, 4)], {"axes": [0, 2]}, opset=11),
    "reduce_sum_13_input": Case("ReduceSum", [x(2, 3, 4), c("axes", [1], I64)], {"keepdims": 0}, opset=13),
    "reduce_l2": Case("ReduceL2", [x(2, 3, 4)], {"axes": [1]}, opset=13),
    "argmax_11": Case("ArgMax", [x(2, 3, 4)], {"axis": 1, "keepdims": 0}, opset=11, out_dtype=I64),
    "argmax_last_index": Case(
        "ArgMax",
        [d("x", [[1, 3, 3], [2, 2, 0]])],
        {"axis": 1, "select_last_index": 1},
        opset=13,
        out_dtype=I64,
    ),
    "argmin_13": Case("ArgMin", [x(2, 3, 4)], {"axis": -1}, opset=13, out_dtype=I64),
    "global_max_pool": Case("GlobalMaxPool", [x(2, 3, 4, 5)]),
    # broadcasting and data movement
    "expand": Case("Expand", [x(3, 1), c("shape", [2, 3, 4], I64)]),
    "tile": Case("Tile", [x(2, 3), c("r", [2, 1], I64)]),
    "matmul_broadcast_weights": Case("MatMul", [x(2, 3, 4, 5), c("w", randn(5, 6, seed=1))]),
    "matmul_broadcast_batch": Case("MatMul", [x(3, 4), d("b", randn(2, 4, 5, seed=1))]),
    "einsum_batched_matmul": Case(
        "Einsum", [x(2, 3, 4), d("b", randn(2, 4, 5, seed=1))], {"equation": "bij,bjk->bik"}
    ),
    "einsum_attention_scores": Case(
        "Einsum", [x(2, 2, 3, 4), d("b", randn(2, 2, 5, 4, seed=1))], {"equation": "bhid,bhjd->bhij"}
    ),
    "depth_to_space_dcr": Case("DepthToSpace", [x(1, 8, 2, 3)], {"blocksize": 2}),
    "depth_to_space_crd": Case("DepthToSpace", [x(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}),
    "space_to_depth": Case("SpaceToDepth", [x(1, 2, 4, 6)], {"blocksize": 2}),
    "instance_norm": Case(
        "InstanceNormalization", [x(2, 3, 4, 5), c("s", randn(3, seed=1)), c("b", randn(3, seed=2))]
    ),
    # Upsample (7-9) and Resize (10, 11+)
    "upsample_7_nearest": Case("Upsample", [x(1, 2, 3, 3)], {"scales": [1.0, 1.0, 2.0, 2.0]}, opset=7),
    "upsample_9_linear": Case(
        "Upsample", [x(1, 2, 3, 3), c("s", np.float32([1, 1, 2, 3]))], {"mode": "linear"}, opset=9
    ),
    "resize_10_nearest": Case("Resize", [x(1, 2, 3, 3), c("s", np.float32([1, 1, 2, 2]))], opset=10),
    "resize_10_linear": Case(
        "Resize", [x(1, 2, 3, 4), c("s", np.float32([1, 1, 2, 1.5]))], {"mode": "linear"}, opset=10
    ),
    "resize_11_align_corners": Case(
        "Resize",
        [x(1, 2, 3, 4), c("roi", np.zeros(0, F32)), c("s", np.float32([1, 1, 2, 2]))],
        {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
        opset=11,
    ),
    "resize_13_sizes_ceil": Case(
        "Resize",
        [x(1, 2, 3, 4), OMIT, OMIT, c("sizes", [1, 2, 7, 5], I64)],
        {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "round_prefer_ceil"},
        opset=13,
    ),
    "resize_11_cubic_half_pixel": Case(
        "Resize",
        [x(1, 2, 5, 6), c("roi", np.zeros(0, F32)), c("s", np.float32([1, 1, 2, 1.5]))],
        {"mode": "cubic"},
        opset=11,
    ),
    "resize_13_cubic_exclude_outside_down": Case(
        "Resize",
        [x(1, 2, 8, 9), OMIT, OMIT, c("sizes", [1, 2, 5, 4], I64)],
        {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5},
        opset=13,
    ),
    "resize_18_cubic_align_corners": Case(
        "Resize",
        [x(1, 2, 4, 4), OMIT, c("s", np.float32([1, 1, 2, 2]))],
        {"mode": "cubic", "coordinate_transformation_mode": "align_corners"},
        opset=18,
    ),
    # ConvTranspose: output padding, explicit output shape, groups
    "conv_transpose_output_padding": Case(
        "ConvTranspose",
        [x(1, 4, 5, 5), c("w", randn(4, 3, 3, 3, seed=1)), c("b", randn(3, seed=2))],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    ),
    "conv_transpose_output_shape": Case(
        "ConvTranspose",
        [x(1, 2, 4, 4), c("w", randn(2, 2, 2, 2, seed=1))],
        {"strides": [2, 2], "output_shape": [9, 9]},
    ),
    "conv_transpose_groups_2x2": Case(
        "ConvTranspose", [x(1, 4, 3, 3), c("w", randn(4, 1, 2, 2, seed=1))], {"strides": [2, 2], "group": 2}
    ),
    "conv1d_stft_like": Case(
        "Conv", [x(2, 1, 40), c("w", randn(6, 1, 8, seed=1))], {"strides": [4], "pads": [2, 2]}
    ),
    # recurrent layers
    "lstm_forward_states": Case(
        "LSTM",
        [
            x(5, 2, 3),
            *lstm_weights(1, 4, 3),
            OMIT,
            d("h0", randn(1, 2, 4, seed=5)),
            d("c0", randn(1, 2, 4, seed=6)),
        ],
        {"hidden_size": 4},
        outputs=3,
    ),
    "lstm_bidirectional": Case(
        "LSTM",
        [x(4, 2, 3), *lstm_weights(2, 3, 3)],
        {"hidden_size": 3, "direction": "bidirectional"},
        outputs=3,
    ),
    "gru_forward": Case("GRU", [x(5, 2, 3), *lstm_weights(1, 4, 3, gates=3)], {"hidden_size": 4}, outputs=2),
    "gru_linear_before_reset_reverse": Case(
        "GRU",
        [x(5, 2, 3), *lstm_weights(1, 4, 3, gates=3)],
        {"hidden_size": 4, "linear_before_reset": 1, "direction": "reverse"},
        outputs=2,
    ),
}


def _model(case: Case):
    names = [name for name, _, _ in case.inputs]
    initializers = {name: v for name, v, const in case.inputs if const and name}
    feeds = {name: v for name, v, const in case.inputs if not const and name}
    inputs = [value(name, v.shape, v.dtype) for name, v in feeds.items()]
    outs = [f"y{i}" for i in range(case.outputs)]
    outputs = [value(o, None, case.out_dtype) for o in outs]
    node = helper.make_node(case.op, names, outs, name=f"{case.op}_0", **case.attrs)
    return make_model([node], inputs, outputs, initializers, opset=case.opset), feeds


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_opset_form_matches_onnxruntime(case_id: str) -> None:
    case = CASES[case_id]
    model, feeds = _model(case)
    assert_matches_ort(model, feeds)  # the imported graph on the reference executor
    graph = optimize(import_onnx(model))  # and after the passes
    assert_matches_ort(model, feeds, graph)
    if case.supported:
        check_supported(graph)


def test_old_softmax_becomes_one_axis_once_the_shape_is_known() -> None:
    model, _ = _model(CASES["softmax_11_classes_then_ones"])
    graph = optimize(import_onnx(model))
    (node,) = graph.nodes
    assert node.op_type == "Softmax" and "coerce_2d" not in node.attrs and node.attrs["axis"] == -3
    model, _ = _model(CASES["softmax_11_over_two_axes"])
    graph = optimize(import_onnx(model))
    assert graph.op_types() == ["Reshape", "Softmax", "Reshape"]


def test_exporter_patterns_fuse() -> None:
    """paddle2onnx's hard-swish (x * clip(x + 3, 0, 6) / 6) and a zero Pad before a Conv are
    rewritten to the backends' forms (torch's SiLU stays ONNX: the lowering makes it one table)."""
    nodes = [
        helper.make_node("Add", ["x", "three"], ["a"]),
        helper.make_node("Clip", ["a", "zero", "six"], ["cl"]),
        helper.make_node("Mul", ["x", "cl"], ["m"]),
        helper.make_node("Div", ["m", "six"], ["hs"]),
        helper.make_node("Sigmoid", ["hs"], ["s"]),
        helper.make_node("Mul", ["hs", "s"], ["silu"]),
        helper.make_node("Pad", ["silu", "pads"], ["p"]),
        helper.make_node("Conv", ["p", "w"], ["y"], kernel_shape=[3, 3]),
    ]
    inits = {
        "three": np.float32(3), "zero": np.float32(0), "six": np.float32(6),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], I64), "w": randn(4, 2, 3, 3, seed=1),
    }  # fmt: skip
    model = make_model(nodes, [value("x", ["batch", 2, 5, 5])], [value("y", None)], inits, opset=13)
    graph = optimize(import_onnx(model))
    assert graph.op_types() == ["HardSwish", "Sigmoid", "Mul", "Conv"]  # SiLU: one table in the lowering
    assert graph.nodes[-1].attrs["pads"] == [1, 1, 1, 1]
    assert_matches_ort(model, {"x": randn(2, 2, 5, 5) * 4}, graph)


def test_negative_and_anonymous_input_dims_become_symbols() -> None:
    """paddle2onnx writes a dynamic batch as -1: shape inference must not take it for a size."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
        helper.make_node("Cast", ["n"], ["n32"], to=6),
        helper.make_node("Cast", ["n32"], ["n64"], to=7),
        helper.make_node("Concat", ["n64", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Softmax", ["flat"], ["y"], axis=1),
    ]
    inits = {"zero": np.array([0], I64), "one": np.array([1], I64), "minus_one": np.array([-1], I64)}
    model = make_model(nodes, [value("x", [-1, 2, None, 3])], [value("y", [-1, None])], inits, opset=11)
    graph = optimize(import_onnx(model))
    check_supported(graph)
    assert all(d is None or isinstance(d, str) or d >= 0 for d in graph.inputs[0].shape)
    assert graph.op_types() == ["Reshape", "Softmax"]
    assert_matches_ort(model, {"x": randn(2, 2, 4, 3)}, graph)


def test_batch_first_layout_is_the_transposed_sequence_layout() -> None:
    """LSTM layout=1 (opset 14; onnxruntime's CPU kernels refuse it): the same numbers as
    layout 0 on the transposed input."""
    from edge_runtime.graph import Node, reference

    weights = [v for _, v, _ in lstm_weights(1, 4, 3)]
    xs = randn(2, 5, 3)
    h0 = randn(2, 1, 4, seed=5)
    outs = ["y", "yh", "yc"]
    batch_first = reference.evaluate_node(
        Node("LSTM", "l1", ["x", "W", "R", "B", "", "h0"], outs, {"hidden_size": 4, "layout": 1}),
        [xs, *weights, None, h0],
    )
    seq_first = reference.evaluate_node(
        Node("LSTM", "l0", ["x", "W", "R", "B", "", "h0"], outs, {"hidden_size": 4}),
        [xs.transpose(1, 0, 2), *weights, None, h0.transpose(1, 0, 2)],
    )
    np.testing.assert_allclose(batch_first[0], seq_first[0].transpose(2, 0, 1, 3), rtol=1e-6)
    np.testing.assert_allclose(batch_first[1], seq_first[1].transpose(1, 0, 2), rtol=1e-6)
    np.testing.assert_allclose(batch_first[2], seq_first[2].transpose(1, 0, 2), rtol=1e-6)
