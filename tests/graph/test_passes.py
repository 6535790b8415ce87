"""Each rewrite pass: what it rewrites, what it leaves alone, and that numerics hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from graph_testing import assert_matches_ort, make_model, randn, value
from onnx import helper

from edge_runtime.graph import import_onnx, optimize, passes

I64 = np.int64


def _graph_and_check(model, feeds, *pass_list):
    """Import, run the given passes to a fixed point, compare with onnxruntime, return the graph."""
    graph = optimize(import_onnx(model), passes=list(pass_list) + [passes.eliminate_dead_code])
    assert_matches_ort(model, feeds, graph)
    return graph


# -- constant folding ---------------------------------------------------------


def test_fold_constants_evaluates_constant_subgraphs_only() -> None:
    nodes = [
        helper.make_node("Add", ["a", "b"], ["ab"], name="const_add"),
        helper.make_node("Mul", ["x", "ab"], ["y"], name="dynamic_mul"),
    ]
    model = make_model(
        nodes,
        [value("x", [2, 3])],
        [value("y", [2, 3])],
        {"a": np.ones(3, np.float32), "b": np.full(3, 2, np.float32)},
    )
    graph = _graph_and_check(model, {"x": randn(2, 3)}, passes.fold_constants)
    assert graph.op_types() == ["Mul"]
    np.testing.assert_array_equal(graph.constant(graph.nodes[0].inputs[1]), np.full(3, 3, np.float32))


def test_static_shape_folds_to_a_constant() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape"),
    ]
    model = make_model(nodes, [value("x", [2, 3])], [value("y", [2, 3])])
    graph = _graph_and_check(model, {"x": randn(2, 3)}, passes.fold_constants)
    assert graph.op_types() == ["Reshape"]
    assert graph.constant(graph.nodes[0].inputs[1]).tolist() == [2, 3]


def _flatten_heads_model(x_shape, target_parts):
    """Reshape x to Concat(parts) where a part is either an int list or ("dim", i) of x's shape."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="/Shape")]
    inits, inputs = {}, []
    for i, part in enumerate(target_parts):
        if isinstance(part, tuple):
            inits[f"idx{i}"] = np.array(part[1], I64)
            nodes.append(
                helper.make_node("Gather", ["shape", f"idx{i}"], [f"g{i}"], name=f"/Gather_{i}", axis=0)
            )
            inits[f"ax{i}"] = np.array([0], I64)
            nodes.append(
                helper.make_node("Unsqueeze", [f"g{i}", f"ax{i}"], [f"p{i}"], name=f"/Unsqueeze_{i}")
            )
        else:
            inits[f"p{i}"] = np.array(part, I64)
        inputs.append(f"p{i}")
    nodes.append(helper.make_node("Concat", inputs, ["target"], name="/Concat", axis=0))
    nodes.append(helper.make_node("Reshape", ["x", "target"], ["y"], name="/Reshape"))
    return make_model(nodes, [value("x", x_shape)], [value("y", None)], inits)


@pytest.mark.parametrize(
    ("x_shape", "parts", "expected", "feed_shape"),
    [
        (["batch", 4, 6], [("dim", 0), [-1]], [0, -1], (3, 4, 6)),
        (["batch", 4, 6], [("dim", 0), [4, 2, 3]], [0, 4, 2, 3], (2, 4, 6)),
        (["batch", "seq", 6], [("dim", 0), ("dim", 1), [2, 3]], [0, 0, 2, 3], (2, 5, 6)),
        (["batch", "seq", 6], [[1], ("dim", 1), ("dim", 0), [6]], [1, 0, -1, 6], (2, 3, 6)),
    ],
)
def test_shape_chain_with_symbolic_dims_folds_to_zero_and_minus_one(
    x_shape, parts, expected, feed_shape
) -> None:
    model = _flatten_heads_model(x_shape, parts)
    graph = _graph_and_check(model, {"x": randn(*feed_shape)}, passes.fold_constants)
    assert graph.op_types() == ["Reshape"]
    assert graph.constant(graph.nodes[0].inputs[1]).tolist() == expected


def test_shape_chain_with_two_unknowns_stays_dynamic() -> None:
    # [seq, batch, 6]: neither symbol sits at its input position, so 0 cannot copy it.
    model = _flatten_heads_model(["batch", "seq", 6], [("dim", 1), ("dim", 0), [6]])
    graph = optimize(import_onnx(model))
    assert "Shape" in graph.op_types()
    assert_matches_ort(model, {"x": randn(2, 3, 6)}, graph)


# -- identities, division, subtraction -----------------------------------------


def test_identity_and_dropout_are_removed_but_output_names_survive() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["i"], name="identity"),
        helper.make_node("Dropout", ["i"], ["d"], name="dropout"),
        helper.make_node("Identity", ["d"], ["y"], name="to_output"),
    ]
    model = make_model(nodes, [value("x", [2, 3])], [value("y", [2, 3])])
    graph = _graph_and_check(model, {"x": randn(2, 3)}, passes.remove_identities)
    assert graph.op_types() == ["Relu"]
    assert graph.nodes[0].outputs == ["y"]


def test_identity_from_input_to_output_is_kept() -> None:
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [value("x", [2])], [value("y", [2])])
    graph = _graph_and_check(model, {"x": randn(2)}, passes.remove_identities)
    assert graph.op_types() == ["Identity"]


def test_div_and_sub_by_constants_become_mul_and_add() -> None:
    nodes = [
        helper.make_node("Div", ["x", "c"], ["a"], name="div_const"),
        helper.make_node("Sub", ["a", "c"], ["b"], name="sub_const"),
        helper.make_node("Div", ["b", "x"], ["e"], name="div_tensor"),
        helper.make_node("Sub", ["c", "e"], ["y"], name="const_minus"),
    ]
    model = make_model(nodes, [value("x", [2, 3])], [value("y", [2, 3])], {"c": np.float32([2.0, 4.0, 8.0])})
    graph = _graph_and_check(model, {"x": randn(2, 3) + 3}, passes.sub_div_by_constant)
    assert graph.op_types() == ["Mul", "Add", "Div", "Sub"]
    np.testing.assert_array_equal(graph.constant(graph.nodes[0].inputs[1]), [0.5, 0.25, 0.125])
    np.testing.assert_array_equal(graph.constant(graph.nodes[1].inputs[1]), [-2.0, -4.0, -8.0])


# -- batch norm -------------------------------------------------------------


def _bn_inits(channels: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(3)
    return {
        "s": r.uniform(0.5, 1.5, channels).astype(np.float32), "bb": r.normal(0, 1, channels).astype(np.float32),
        "m": r.normal(0, 1, channels).astype(np.float32), "v": r.uniform(0.5, 2, channels).astype(np.float32),
    }  # fmt: skip


def test_batch_norm_folds_into_conv() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"], name="bn"),
    ]
    model = make_model(
        nodes, [value("x", ["n", 3, 6, 6])], [value("y", None)], {"w": randn(4, 3, 3, 3), **_bn_inits(4)}
    )
    graph = _graph_and_check(model, {"x": randn(2, 3, 6, 6)}, passes.fold_batch_norm)
    assert graph.op_types() == ["Conv"]
    assert len(graph.nodes[0].inputs) == 3 and graph.nodes[0].outputs == ["y"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_batch_norm_folds_into_gemm(trans_b: int) -> None:
    w = randn(5, 4) if trans_b else randn(4, 5)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="gemm", transB=trans_b, beta=0.5),
        helper.make_node("BatchNormalization", ["g", "s", "bb", "m", "v"], ["y"], name="bn"),
    ]
    model = make_model(
        nodes, [value("x", [3, 4])], [value("y", [3, 5])], {"w": w, "c": randn(5), **_bn_inits(5)}
    )
    graph = _graph_and_check(model, {"x": randn(3, 4)}, passes.fold_batch_norm)
    assert graph.op_types() == ["Gemm"]


def test_batch_norm_without_foldable_producer_becomes_mul_add() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["b"], name="bn"),
        helper.make_node("Add", ["b", "c"], ["y"], name="conv_read_twice"),
    ]
    model = make_model(
        nodes, [value("x", [1, 2, 4, 4])], [value("y", None)], {"w": randn(3, 2, 1, 1), **_bn_inits(3)}
    )
    graph = _graph_and_check(model, {"x": randn(1, 2, 4, 4)}, passes.fold_batch_norm)
    assert graph.op_types() == ["Conv", "Mul", "Add", "Add"]
    assert graph.constant(graph.nodes[1].inputs[1]).shape == (3, 1, 1)


# -- GELU ---------------------------------------------------------------------


def _gelu_nodes(order: str, div_form: bool) -> list:
    scaled = (
        helper.make_node("Div", ["x", "sqrt2"], ["xs"], name="/act/Div")
        if div_form
        else helper.make_node("Mul", ["x", "inv_sqrt2"], ["xs"], name="/act/Mul_s")
    )
    nodes = [
        scaled,
        helper.make_node("Erf", ["xs"], ["e"], name="/act/Erf"),
        helper.make_node("Add", ["one", "e"], ["e1"], name="/act/Add"),
    ]
    if order == "torch":  # (x * (1 + erf)) * 0.5
        nodes += [
            helper.make_node("Mul", ["x", "e1"], ["m"], name="/act/Mul"),
            helper.make_node("Mul", ["m", "half"], ["y"], name="/act/Mul_1"),
        ]
    elif order == "half_first":  # (x * 0.5) * (1 + erf)
        nodes += [
            helper.make_node("Mul", ["half", "x"], ["xh"], name="/act/Mul"),
            helper.make_node("Mul", ["xh", "e1"], ["y"], name="/act/Mul_1"),
        ]
    else:  # x * ((1 + erf) * 0.5)
        nodes += [
            helper.make_node("Mul", ["e1", "half"], ["m"], name="/act/Mul"),
            helper.make_node("Mul", ["x", "m"], ["y"], name="/act/Mul_1"),
        ]
    return nodes


GELU_CONSTANTS = {
    "sqrt2": np.float32(math.sqrt(2)),
    "inv_sqrt2": np.float32(1 / math.sqrt(2)),
    "one": np.float32(1.0),
    "half": np.float32(0.5),
}


@pytest.mark.parametrize("div_form", [True, False])
@pytest.mark.parametrize("order", ["torch", "half_first", "scaled_erf"])
def test_gelu_erf_pattern_fuses(order: str, div_form: bool) -> None:
    model = make_model(
        _gelu_nodes(order, div_form), [value("x", [2, 8])], [value("y", [2, 8])], GELU_CONSTANTS
    )
    graph = _graph_and_check(model, {"x": randn(2, 8, scale=3)}, passes.sub_div_by_constant, passes.fuse_gelu)
    assert graph.op_types() == ["Gelu"]
    assert graph.nodes[0].inputs == ["x"] and graph.nodes[0].outputs == ["y"]
    assert graph.nodes[0].name == "/act/Gelu"


def test_gelu_pattern_with_wrong_constant_is_left_alone() -> None:
    constants = dict(GELU_CONSTANTS, sqrt2=np.float32(2.0))
    model = make_model(_gelu_nodes("torch", True), [value("x", [2, 8])], [value("y", [2, 8])], constants)
    graph = _graph_and_check(model, {"x": randn(2, 8)}, passes.fuse_gelu)
    assert "Gelu" not in graph.op_types() and "Erf" in graph.op_types()


# -- layer norm ---------------------------------------------------------------


def _layer_norm_model(axes, use_pow=True, affine=True, shape=("batch", 4, 8)):
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], name="/ln/ReduceMean", axes=axes),
        helper.make_node("Sub", ["x", "mean"], ["d"], name="/ln/Sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="/ln/Pow")
        if use_pow
        else helper.make_node("Mul", ["d", "d"], ["sq"], name="/ln/Mul_sq"),
        helper.make_node("ReduceMean", ["sq"], ["var"], name="/ln/ReduceMean_1", axes=axes),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="/ln/Add"),
        helper.make_node("Sqrt", ["ve"], ["std"], name="/ln/Sqrt"),
        helper.make_node("Div", ["d", "std"], ["n" if affine else "y"], name="/ln/Div"),
    ]
    if affine:
        nodes += [
            helper.make_node("Mul", ["n", "gamma"], ["g"], name="/ln/Mul"),
            helper.make_node("Add", ["g", "beta"], ["y"], name="/ln/Add_1"),
        ]
    inits = {
        "two": np.float32(2),
        "eps": np.float32(1e-6),
        "gamma": randn(shape[-1], seed=1),
        "beta": randn(shape[-1], seed=2),
    }
    return make_model(nodes, [value("x", list(shape))], [value("y", list(shape))], inits)


@pytest.mark.parametrize(("use_pow", "affine"), [(True, True), (False, True), (True, False)])
def test_layer_norm_pattern_fuses(use_pow: bool, affine: bool) -> None:
    model = _layer_norm_model([-1], use_pow, affine)
    graph = _graph_and_check(model, {"x": randn(3, 4, 8)}, passes.fuse_layer_norm)
    assert graph.op_types() == ["LayerNormalization"]
    node = graph.nodes[0]
    assert node.attrs == {"axis": -1, "epsilon": pytest.approx(1e-6)}
    assert graph.constant(node.inputs[1]).shape == (8,)


def test_layer_norm_over_last_two_axes_fuses_with_positive_axes() -> None:
    model = _layer_norm_model([1, 2], shape=("batch", 4, 8))
    model.graph.initializer[2].CopyFrom(helper.make_tensor("gamma", 1, [4, 8], randn(4, 8).ravel().tolist()))
    model.graph.initializer[3].CopyFrom(helper.make_tensor("beta", 1, [8], randn(8).ravel().tolist()))
    graph = _graph_and_check(model, {"x": randn(2, 4, 8)}, passes.fuse_layer_norm)
    assert graph.op_types() == ["LayerNormalization"] and graph.nodes[0].attrs["axis"] == -2


def test_reduction_over_a_middle_axis_is_not_a_layer_norm() -> None:
    model = _layer_norm_model([1], shape=("batch", 4, 8))
    graph = _graph_and_check(model, {"x": randn(2, 4, 8)}, passes.fuse_layer_norm)
    assert "LayerNormalization" not in graph.op_types()


# -- MatMul + Add, activations, mean pooling --------------------------------------


def test_matmul_add_becomes_gemm_only_for_a_constant_bias_vector() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="/fc/MatMul"),
        helper.make_node("Add", ["m", "b"], ["h"], name="/fc/Add"),
        helper.make_node("MatMul", ["h", "w2"], ["m2"], name="/fc2/MatMul"),
        helper.make_node("Add", ["m2", "x2"], ["y"], name="/fc2/Add_tensor"),
    ]
    inits = {"w": randn(8, 6), "b": randn(1, 6), "w2": randn(6, 4)}
    model = make_model(
        nodes, [value("x", ["batch", 5, 8]), value("x2", ["batch", 5, 4])], [value("y", None)], inits
    )
    graph = _graph_and_check(model, {"x": randn(2, 5, 8), "x2": randn(2, 5, 4)}, passes.fuse_matmul_add)
    assert graph.op_types() == ["Gemm", "MatMul", "Add"]
    assert graph.constant(graph.nodes[0].inputs[2]).shape == (6,)


@pytest.mark.parametrize(
    ("act", "kind"),
    [("relu", "relu"), ("clip6", "relu6"), ("clip_min", "relu"), ("clip5", None)],
)
def test_conv_activation_fusion(act: str, kind: str | None) -> None:
    inits = {"w": randn(4, 3, 3, 3), "zero": np.float32(0), "six": np.float32(6), "five": np.float32(5)}
    activation = {
        "relu": helper.make_node("Relu", ["c"], ["y"], name="act"),
        "clip6": helper.make_node("Clip", ["c", "zero", "six"], ["y"], name="act"),
        "clip_min": helper.make_node("Clip", ["c", "zero"], ["y"], name="act"),
        "clip5": helper.make_node("Clip", ["c", "zero", "five"], ["y"], name="act"),
    }[act]
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), activation],
        [value("x", [1, 3, 5, 5])],
        [value("y", None)],
        inits,
    )
    graph = _graph_and_check(
        model, {"x": randn(1, 3, 5, 5, scale=4)}, passes.inputs_to_attributes, passes.fuse_activation
    )
    if kind is None:
        assert graph.op_types() == ["Conv", "Clip"]
    else:
        assert graph.op_types() == ["Conv"] and graph.nodes[0].attrs["activation"] == kind


def test_activation_not_fused_when_the_conv_output_is_read_elsewhere() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["g"], name="gemm"),
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "g"], ["y"], name="add"),
    ]
    model = make_model(nodes, [value("x", [2, 3])], [value("y", [2, 4])], {"w": randn(3, 4)})
    graph = _graph_and_check(model, {"x": randn(2, 3)}, passes.fuse_activation)
    assert graph.op_types() == ["Gemm", "Relu", "Add"]


@pytest.mark.parametrize("keepdims", [0, 1])
def test_spatial_reduce_mean_becomes_global_average_pool(keepdims: int) -> None:
    node = helper.make_node("ReduceMean", ["x"], ["y"], name="mean", axes=[-1, 2], keepdims=keepdims)
    model = make_model([node], [value("x", ["n", 3, 4, 5])], [value("y", None)])
    graph = _graph_and_check(model, {"x": randn(2, 3, 4, 5)}, passes.reduce_mean_to_global_pool)
    assert graph.op_types() == (["GlobalAveragePool"] if keepdims else ["GlobalAveragePool", "Flatten"])
