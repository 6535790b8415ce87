"""Every op of the reference executor against onnxruntime, one single-node model at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from graph_testing import assert_matches_ort, make_model, randn, value
from onnx import helper


@dataclass
class Case:
    op: str
    inputs: list[tuple[str, np.ndarray, bool]]  # (name, value, is_constant); "" name = omitted input
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    out_dtype: Any = np.float32
    outputs: int = 1


def x(*shape: int, seed: int = 0) -> tuple[str, np.ndarray, bool]:
    return ("x", randn(*shape, seed=seed), False)


def c(name: str, array: Any, dtype: Any = None) -> tuple[str, np.ndarray, bool]:
    return (name, np.asarray(array, dtype=dtype), True)


def d(name: str, array: Any, dtype: Any = None) -> tuple[str, np.ndarray, bool]:
    return (name, np.asarray(array, dtype=dtype), False)


OMIT = ("", np.zeros(0), True)
I64 = np.int64
F32 = np.float32

CASES: dict[str, Case] = {
    # convolution
    "conv_3x3_pad": Case(
        "Conv",
        [x(2, 3, 7, 7), c("w", randn(4, 3, 3, 3, seed=1)), c("b", randn(4, seed=2))],
        {"pads": [1, 1, 1, 1]},
    ),
    "conv_stride_dilation": Case(
        "Conv",
        [x(1, 3, 11, 9), c("w", randn(5, 3, 3, 2, seed=1))],
        {"strides": [2, 1], "dilations": [2, 2], "pads": [1, 0, 2, 1]},
    ),
    "conv_groups": Case("Conv", [x(1, 4, 6, 6), c("w", randn(6, 2, 3, 3, seed=1))], {"group": 2}),
    "conv_depthwise_same_upper": Case(
        "Conv",
        [x(2, 8, 9, 9), c("w", randn(8, 1, 3, 3, seed=1))],
        {"group": 8, "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    ),
    "conv_same_lower": Case(
        "Conv",
        [x(1, 2, 8, 8), c("w", randn(3, 2, 4, 4, seed=1))],
        {"auto_pad": "SAME_LOWER", "strides": [3, 3]},
    ),
    "conv_valid_1d": Case(
        "Conv", [x(2, 3, 10), c("w", randn(4, 3, 3, seed=1))], {"auto_pad": "VALID", "strides": [2]}
    ),
    "conv_transpose_stride": Case(
        "ConvTranspose",
        [x(1, 4, 5, 5), c("w", randn(4, 3, 3, 3, seed=1)), c("b", randn(3, seed=2))],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    ),
    "conv_transpose_groups_dilation": Case(
        "ConvTranspose",
        [x(2, 4, 4, 3), c("w", randn(4, 2, 2, 3, seed=1))],
        {"group": 2, "dilations": [2, 1], "strides": [1, 2]},
    ),
    "conv_transpose_output_shape": Case(
        "ConvTranspose",
        [x(1, 2, 4, 4), c("w", randn(2, 2, 3, 3, seed=1))],
        {"strides": [2, 2], "output_shape": [8, 8]},
    ),
    # GEMM
    "gemm_plain": Case("Gemm", [x(4, 6), c("b", randn(6, 5, seed=1)), c("c", randn(5, seed=2))]),
    "gemm_trans_alpha_beta": Case(
        "Gemm",
        [x(6, 4), c("b", randn(5, 6, seed=1)), c("c", randn(4, 5, seed=2))],
        {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
    ),
    "gemm_no_c": Case("Gemm", [x(3, 6), c("b", randn(5, 6, seed=1))], {"transB": 1}),
    "matmul_batched": Case("MatMul", [x(2, 3, 4), c("b", randn(4, 5, seed=1))]),
    "matmul_4d": Case("MatMul", [x(2, 3, 4, 5), d("b", randn(2, 3, 5, 2, seed=1))]),
    # elementwise
    "add_broadcast": Case("Add", [x(2, 3, 4), d("b", randn(3, 1, seed=1))]),
    "sub": Case("Sub", [x(2, 3), c("b", randn(3, seed=1))]),
    "mul_scalar": Case("Mul", [x(2, 3), c("b", np.float32(0.5))]),
    "div": Case("Div", [x(2, 3), d("b", randn(2, 3, seed=1) + 3)]),
    "pow": Case("Pow", [("x", np.abs(randn(2, 5)) + 0.1, False), c("e", np.float32(2.0))]),
    "relu": Case("Relu", [x(3, 4)]),
    "sigmoid": Case("Sigmoid", [x(3, 4)]),
    "tanh": Case("Tanh", [x(3, 4)]),
    "erf": Case("Erf", [x(3, 4)]),
    "sqrt": Case("Sqrt", [("x", np.abs(randn(3, 4)), False)]),
    "hard_sigmoid": Case("HardSigmoid", [x(3, 4)], {"alpha": 0.25, "beta": 0.4}),
    "hard_swish": Case("HardSwish", [("x", randn(4, 5, scale=4), False)]),
    "gelu": Case("Gelu", [x(3, 4)], opset=20),
    "gelu_tanh": Case("Gelu", [x(3, 4)], {"approximate": "tanh"}, opset=20),
    "clip_min_max": Case("Clip", [x(3, 4), c("lo", np.float32(-0.5)), c("hi", np.float32(0.7))]),
    "clip_min_only": Case("Clip", [x(3, 4), c("lo", np.float32(0.0))]),
    "clip_max_only": Case("Clip", [x(3, 4), OMIT, c("hi", np.float32(0.2))]),
    "identity": Case("Identity", [x(2, 2)]),
    "dropout": Case("Dropout", [x(2, 2)]),
    # normalization
    "softmax_axis1": Case("Softmax", [x(2, 3, 4)], {"axis": 1}),
    "softmax_last": Case("Softmax", [x(2, 3, 4)]),
    "softmax_opset11_last": Case("Softmax", [x(2, 5)], {"axis": 1}, opset=11),
    "layer_norm_last": Case(
        "LayerNormalization", [x(2, 3, 8), c("g", randn(8, seed=1)), c("b", randn(8, seed=2))]
    ),
    "layer_norm_two_axes": Case(
        "LayerNormalization", [x(2, 3, 4), c("g", randn(3, 4, seed=1))], {"axis": -2, "epsilon": 1e-3}
    ),
    "batch_norm": Case(
        "BatchNormalization",
        [
            x(2, 3, 4, 4),
            c("s", randn(3, seed=1)),
            c("b", randn(3, seed=2)),
            c("m", randn(3, seed=3)),
            c("v", np.abs(randn(3, seed=4)) + 0.5),
        ],
    ),
    "reduce_mean_attr": Case("ReduceMean", [x(2, 3, 4)], {"axes": [-1], "keepdims": 1}, opset=13),
    "reduce_mean_input": Case("ReduceMean", [x(2, 3, 4), c("axes", [1, 2], I64)], {"keepdims": 0}, opset=18),
    # pooling
    "maxpool_pad_stride": Case(
        "MaxPool", [x(1, 2, 9, 9)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    ),
    "maxpool_ceil": Case(
        "MaxPool", [x(1, 2, 8, 8)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}
    ),
    # (not auto_pad with dilations: onnxruntime pads for the undilated kernel there, against the spec)
    "maxpool_dilation": Case(
        "MaxPool", [x(1, 2, 9, 9)], {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 0, 0, 2]}
    ),
    "maxpool_same_upper": Case(
        "MaxPool", [x(1, 2, 7, 7)], {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}
    ),
    "avgpool_exclude_pad": Case(
        "AveragePool", [x(1, 2, 7, 7)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    ),
    "avgpool_include_pad": Case(
        "AveragePool",
        [x(1, 2, 7, 7)],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ),
    "avgpool_ceil_include_pad": Case(
        "AveragePool",
        [x(1, 2, 8, 8)],
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "pads": [1, 1, 0, 0],
            "ceil_mode": 1,
            "count_include_pad": 1,
        },
    ),
    "avgpool_ceil": Case(
        "AveragePool", [x(1, 2, 8, 8)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}
    ),
    "global_avgpool": Case("GlobalAveragePool", [x(2, 3, 5, 4)]),
    # resize
    "resize_nearest_asymmetric_floor": Case(
        "Resize",
        [x(1, 2, 3, 4), OMIT, c("scales", [1, 1, 2, 2], F32)],
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        opset=13,
    ),
    "resize_nearest_half_pixel": Case(
        "Resize", [x(1, 2, 3, 4), OMIT, c("scales", [1, 1, 3, 2], F32)], {"mode": "nearest"}, opset=13
    ),
    "resize_nearest_down_sizes": Case(
        "Resize",
        [x(1, 2, 7, 9), OMIT, OMIT, c("sizes", [1, 2, 3, 4], I64)],
        {"mode": "nearest", "nearest_mode": "round_prefer_ceil"},
        opset=13,
    ),
    "resize_nearest_opset11_roi": Case(
        "Resize",
        [x(1, 1, 3, 3), c("roi", [], F32), c("scales", [1, 1, 2, 2], F32)],
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        opset=11,
    ),
    "resize_linear_half_pixel": Case(
        "Resize", [x(1, 2, 3, 4), OMIT, c("scales", [1, 1, 2, 2], F32)], {"mode": "linear"}, opset=13
    ),
    "resize_linear_align_corners": Case(
        "Resize",
        [x(1, 2, 3, 4), OMIT, OMIT, c("sizes", [1, 2, 7, 5], I64)],
        {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
        opset=13,
    ),
    "resize_linear_pytorch_half_pixel_down": Case(
        "Resize",
        [x(1, 2, 8, 6), OMIT, c("scales", [1, 1, 0.5, 0.5], F32)],
        {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
        opset=13,
    ),
    "resize_linear_asymmetric": Case(
        "Resize",
        [x(1, 1, 4, 4), OMIT, c("scales", [1, 1, 1.5, 2.5], F32)],
        {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
        opset=19,
    ),
    # data movement
    "concat": Case(
        "Concat", [x(2, 3), d("x2", randn(2, 4, seed=1)), c("z", randn(2, 1, seed=2))], {"axis": 1}
    ),
    "reshape_zero_minus_one": Case("Reshape", [x(2, 3, 4), c("shape", [0, -1], I64)]),
    "flatten": Case("Flatten", [x(2, 3, 4, 5)], {"axis": 2}),
    "transpose": Case("Transpose", [x(2, 3, 4)], {"perm": [2, 0, 1]}),
    "transpose_default": Case("Transpose", [x(2, 3, 4)]),
    "squeeze_opset11": Case("Squeeze", [x(2, 1, 3, 1)], {"axes": [1, -1]}, opset=11),
    "squeeze_opset13": Case("Squeeze", [x(2, 1, 3, 1), c("axes", [1], I64)], opset=13),
    "unsqueeze_opset11": Case("Unsqueeze", [x(2, 3)], {"axes": [0, 3]}, opset=11),
    "unsqueeze_opset13": Case("Unsqueeze", [x(2, 3), c("axes", [-1, 1], I64)], opset=13),
    "slice_steps": Case(
        "Slice",
        [
            x(5, 6, 7),
            c("s", [1, -1], I64),
            c("e", [100, -6], I64),
            c("a", [0, 2], I64),
            c("st", [2, -2], I64),
        ],
    ),
    "slice_negative_start": Case("Slice", [x(5, 6), c("s", [-3], I64), c("e", [-1], I64)]),
    "slice_reverse_all": Case(
        "Slice", [x(5, 6), c("s", [-1], I64), c("e", [-(2**62)], I64), c("a", [1], I64), c("st", [-1], I64)]
    ),
    "gather_embedding": Case(
        "Gather", [("table", randn(10, 4), True), d("ids", [[1, 9, -1], [0, 0, 3]], I64)]
    ),
    "gather_axis1": Case("Gather", [x(3, 5, 2), c("i", 2, I64)], {"axis": 1}),
    # shape arithmetic
    "shape": Case("Shape", [x(2, 3, 4)], out_dtype=I64),
    "shape_start_end": Case("Shape", [x(2, 3, 4, 5)], {"start": 1, "end": -1}, opset=15, out_dtype=I64),
    "cast": Case("Cast", [x(2, 3)], {"to": 7}, out_dtype=I64),
    "range": Case("Range", [d("start", 2, I64), d("limit", 11, I64), d("delta", 3, I64)], out_dtype=I64),
    "constant_of_shape": Case(
        "ConstantOfShape", [d("shape", [2, 3], I64)], {"value": helper.make_tensor("v", 1, [1], [1.5])}
    ),
    "equal": Case("Equal", [d("a", [1, 2, 3], I64), c("b", [1, 0, 3], I64)], out_dtype=bool),
    "where": Case("Where", [d("cond", [True, False, True], bool), x(3), c("b", randn(3, seed=1))]),
}


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_reference_op_matches_onnxruntime(case_id: str) -> None:
    case = CASES[case_id]
    names = [name for name, _, _ in case.inputs]
    initializers = {name: v for name, v, const in case.inputs if const and name}
    feeds = {name: v for name, v, const in case.inputs if not const}
    inputs = [value(name, v.shape, v.dtype) for name, v in feeds.items()]
    outputs = [value("y", None, case.out_dtype)]
    node_outputs = ["y"]
    if case.op == "Dropout":
        node_outputs, outputs = ["y", "mask"], outputs + [value("mask", None, bool)]
    node = helper.make_node(case.op, names, node_outputs, name=f"{case.op}_0", **case.attrs)
    model = make_model([node], inputs, outputs, initializers, opset=case.opset)
    assert_matches_ort(model, feeds)


def test_constant_node() -> None:
    const = helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", 1, [3], [1.0, 2.0, 3.0]))
    add = helper.make_node("Add", ["x", "k"], ["y"])
    model = make_model([const, add], [value("x", [2, 3])], [value("y", [2, 3])])
    assert_matches_ort(model, {"x": randn(2, 3)})
