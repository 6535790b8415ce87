"""The ONNX importer: checks, typed errors, constants, opset normalization, shapes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graph_testing import assert_matches_ort, make_model, randn, value
from onnx import helper

from edge_runtime.errors import GraphError, UnsupportedOperatorError
from edge_runtime.graph import Graph, Node, ValueInfo, check_supported, import_onnx, optimize, reference

I64 = np.int64


def test_unsupported_operators_are_all_named_with_their_nodes() -> None:
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_a", axis=-1),
        helper.make_node("Relu", ["v"], ["r"], name="fine"),
        helper.make_node("Unique", ["r"], ["l1"], name="leaky_1"),
        helper.make_node("Unique", ["l1"], ["y"], name="leaky_2"),
    ]
    model = make_model(nodes, [value("x", [2, 8])], [value("y", None)], {"k": np.array([3], I64)})
    with pytest.raises(UnsupportedOperatorError) as info:
        import_onnx(model)
    message = str(info.value)
    assert "TopK (nodes 'topk_a')" in message
    assert "Unique (nodes 'leaky_1', 'leaky_2')" in message
    assert "fine" not in message.split("Supported")[0]


def test_custom_domain_operators_are_unsupported() -> None:
    graph = helper.make_graph(
        [helper.make_node("FusedGemm", ["x"], ["y"], name="ms", domain="com.microsoft")],
        "g",
        [value("x", [2])],
        [value("y", [2])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )
    with pytest.raises(UnsupportedOperatorError, match=r"com\.microsoft::FusedGemm \(nodes 'ms'\)"):
        import_onnx(model)


def test_checker_failure_is_a_graph_error() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"], name="r")], "g", [value("x", [2])], [value("y", [2])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(GraphError, match="checker"):
        import_onnx(model)


def test_unreadable_file_is_a_graph_error(tmp_path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf at all \xff\xff")
    with pytest.raises(GraphError):
        import_onnx(path)


@pytest.mark.parametrize("opset", [6, 24])
def test_opsets_outside_the_supported_range_are_refused(opset: int) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [value("x", [2])], [value("y", [2])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    with pytest.raises(UnsupportedOperatorError, match=f"opset {opset}"):
        import_onnx(model)


def test_loads_from_path_and_bytes_with_symbolic_dims(tmp_path) -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")],
        [value("x", ["batch", 3])],
        [value("y", ["batch", 3])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for source in (path, str(path), model.SerializeToString()):
        graph = import_onnx(source)
        assert graph.inputs == [ValueInfo("x", np.dtype(np.float32), ("batch", 3))]
        assert graph.opset == 17


def test_constants_and_initializers_become_constants_and_inputs_exclude_them() -> None:
    const = helper.make_node("Constant", [], ["c"], name="const", value_floats=[1.0, 2.0])
    add = helper.make_node("Add", ["x", "c"], ["a"], name="add")
    mul = helper.make_node("Mul", ["a", "w"], ["y"], name="mul")
    # An old-style model that also lists its initializer as a graph input.
    model = make_model(
        [const, add, mul], [value("x", [2]), value("w", [2])], [value("y", [2])], {"w": np.float32([3, 4])}
    )
    graph = import_onnx(model)
    assert graph.input_names == ["x"]
    assert graph.op_types() == ["Add", "Mul"]
    np.testing.assert_array_equal(graph.constant("c"), np.float32([1, 2]))
    assert graph.shape("a") == (2,), "intermediate shapes come from ONNX shape inference"


def test_opset_parameters_are_normalized_to_attributes() -> None:
    def build(opset: int) -> Graph:
        if opset < 13:
            squeeze = helper.make_node("Squeeze", ["x"], ["s"], name="sq", axes=[1])
        else:
            squeeze = helper.make_node("Squeeze", ["x", "axes"], ["s"], name="sq")
        if opset < 18:
            mean = helper.make_node("ReduceMean", ["s"], ["m"], name="mean", axes=[-1], keepdims=0)
        else:
            mean = helper.make_node("ReduceMean", ["s", "axes_last"], ["m"], name="mean", keepdims=0)
        nodes = [
            squeeze,
            mean,
            helper.make_node("Slice", ["s", "starts", "ends", "", "steps"], ["sl"], name="slice"),
            helper.make_node("Cast", ["sl"], ["y"], name="cast", to=onnx.TensorProto.INT64),
            helper.make_node("Softmax", ["m"], ["p"], name="softmax", axis=1),
        ]
        inits = {
            "axes": np.array([1], I64),
            "axes_last": np.array([-1], I64),
            "starts": np.array([0, 1], I64),
            "ends": np.array([2, 9], I64),
            "steps": np.array([1, 2], I64),
        }
        model = make_model(
            nodes, [value("x", [2, 1, 4, 6])], [value("y", None, I64), value("p", None)], inits, opset=opset
        )
        assert_matches_ort(model, {"x": randn(2, 1, 4, 6)})
        return import_onnx(model)

    for opset in (11, 13, 18, 21):
        nodes = {n.name: n for n in build(opset).nodes}
        assert nodes["sq"].attrs["axes"] == [1] and nodes["sq"].inputs == ["x"]
        assert nodes["mean"].attrs["axes"] == [-1] and len(nodes["mean"].inputs) == 1
        assert nodes["slice"].attrs == {"starts": [0, 1], "ends": [2, 9], "axes": [0, 1], "steps": [1, 2]}
        assert nodes["cast"].attrs["to"] == "int64"
        assert nodes["softmax"].attrs["axis"] in (1, -1)


def test_old_softmax_over_several_axes_keeps_its_opset_semantics() -> None:
    """Before opset 13 Softmax normalized over every axis from ``axis`` on (the input coerced
    to 2-D): the importer keeps that meaning instead of refusing the model."""
    node = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)
    model = make_model([node], [value("x", [2, 3, 4])], [value("y", [2, 3, 4])], opset=11)
    graph = optimize(import_onnx(model))
    check_supported(graph)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    y = reference.run(graph, {"x": x})["y"]
    np.testing.assert_allclose(y.reshape(2, -1).sum(axis=1), 1.0, rtol=1e-5)
    assert_matches_ort(model, {"x": x}, graph)


def test_check_supported_names_what_the_passes_could_not_rewrite() -> None:
    nodes = [
        helper.make_node("Div", ["x", "z"], ["d"], name="div_by_tensor"),
        helper.make_node("Erf", ["d"], ["e"], name="lonely_erf"),
        helper.make_node("Shape", ["e"], ["s"], name="shape"),
        helper.make_node("Reshape", ["e", "s"], ["r"], name="foldable_reshape"),  # target [0, 3]
        helper.make_node("Range", ["start", "n", "step"], ["positions"], name="range"),
        helper.make_node("Reshape", ["r", "target"], ["y"], name="dynamic_reshape"),
    ]
    inputs = [value("x", [None, 3]), value("z", [None, 3]), value("target", [2], I64), value("n", [], I64)]
    model = make_model(
        nodes,
        inputs,
        [value("y", None), value("positions", None, I64)],
        {"start": np.array(0, I64), "step": np.array(1, I64)},
    )
    graph = optimize(import_onnx(model))
    with pytest.raises(UnsupportedOperatorError) as info:
        check_supported(graph)
    message = str(info.value)
    for name in ("div_by_tensor", "lonely_erf", "dynamic_reshape", "range"):
        assert f"'{name}'" in message
    assert "foldable_reshape" not in message and "'shape'" not in message
    assert "does not fold" in message


def test_graph_edits_keep_the_graph_valid() -> None:
    graph = Graph(
        nodes=[Node("Relu", "b", ["t"], ["y"]), Node("Neg", "a", ["x"], ["t"])],
        inputs=[ValueInfo("x")],
        outputs=[ValueInfo("y")],
    )
    with pytest.raises(GraphError, match="before anything defines it"):
        graph.validate()
    graph.toposort()
    assert [n.name for n in graph.nodes] == ["a", "b"]
    graph.validate()
    assert graph.consumers("t")[0].name == "b" and graph.producer("t").name == "a"
    assert graph.unique_name("t") != "t"
    cycle = Graph(
        nodes=[Node("Relu", "a", ["u"], ["v"]), Node("Relu", "b", ["v"], ["u"])], outputs=[ValueInfo("v")]
    )
    with pytest.raises(GraphError, match="no node, input or constant"):
        cycle.toposort()


def test_unsupported_variants_of_supported_operators_are_listed_together() -> None:
    nodes = [
        helper.make_node(
            "Resize",
            ["x", "roi", "scales"],
            ["r"],
            name="crop_resize",
            coordinate_transformation_mode="tf_crop_and_resize",
        ),
        helper.make_node("Softmax", ["r"], ["s"], name="old_softmax", axis=1),
        helper.make_node("MaxPool", ["s"], ["y", "idx"], name="pool_with_indices", kernel_shape=[2, 2]),
    ]
    model = make_model(
        nodes,
        [value("x", [1, 2, 4, 4])],
        [value("y", None), value("idx", None, I64)],
        {"roi": np.zeros(0, np.float32), "scales": np.float32([1, 1, 2, 2])},
        opset=11,
    )
    with pytest.raises(UnsupportedOperatorError) as info:
        import_onnx(model)
    message = str(info.value)
    assert "'crop_resize' coordinate_transformation_mode 'tf_crop_and_resize'" in message
    assert "'pool_with_indices' with an Indices output" in message
