"""Exporter-style models: optimize() produces the expected fused graph, and that graph,
run by the reference executor, matches onnxruntime on the original model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from exporter_models import encoder_layer, mobilenet_block, residual_block
from graph_testing import assert_matches_ort, randn

from edge_runtime.graph import check_supported, import_onnx, optimize

BATCHES = [1, 3]


@pytest.mark.parametrize("batch", BATCHES)
def test_mobilenet_block(batch: int) -> None:
    model = mobilenet_block()
    graph = optimize(import_onnx(model))
    check_supported(graph)
    ops = Counter(graph.op_types())
    assert ops == Counter(
        {"Conv": 4, "Add": 1, "HardSwish": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    )
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    assert [n.attrs.get("activation") for n in convs] == ["relu6", "relu6", None, None]
    assert all(len(n.inputs) == 3 for n in convs[:3]), "the batch norms became conv biases"
    assert_matches_ort(model, {"input": randn(batch, 8, 12, 12, seed=batch)}, graph)


@pytest.mark.parametrize("batch", BATCHES)
def test_residual_block(batch: int) -> None:
    model = residual_block()
    graph = optimize(import_onnx(model))
    check_supported(graph)
    assert graph.op_types() == ["Conv", "Conv", "Add", "Relu", "MaxPool", "Resize"]
    assert graph.nodes[0].attrs["activation"] == "relu"
    assert "activation" not in graph.nodes[1].attrs  # its output meets the skip connection first
    assert graph.nodes[2].inputs[1] == "x", "the Identity on the skip path is gone"
    assert graph.nodes[-1].attrs["scales"] == [1.0, 1.0, 2.0, 2.0]
    assert_matches_ort(model, {"x": randn(batch, 6, 9, 9, seed=batch)}, graph)


@pytest.mark.parametrize("batch", BATCHES)
def test_encoder_layer(batch: int) -> None:
    model = encoder_layer()
    graph = optimize(import_onnx(model))
    check_supported(graph)
    ops = Counter(graph.op_types())
    assert ops == Counter({
        "LayerNormalization": 2, "Gemm": 6, "Reshape": 4, "Transpose": 4, "MatMul": 2, "Mul": 1,
        "Softmax": 1, "Add": 2, "Gelu": 1,
    })  # fmt: skip
    targets = [graph.constant(n.inputs[1]).tolist() for n in graph.nodes if n.op_type == "Reshape"]
    assert targets == [[0, -1, 2, 8]] * 3 + [[0, -1, 16]], "shape chains folded around the symbolic batch"
    norms = [n for n in graph.nodes if n.op_type == "LayerNormalization"]
    assert all(n.attrs["axis"] == -1 and n.attrs["epsilon"] == pytest.approx(1e-5) for n in norms)
    assert_matches_ort(model, {"x": randn(batch, 5, 16, seed=batch)}, graph)


def test_optimized_models_are_fixed_points() -> None:
    for model in (mobilenet_block(), residual_block(), encoder_layer()):
        once = optimize(import_onnx(model))
        twice = optimize(once)
        assert twice.op_types() == once.op_types()
        assert sorted(twice.initializers) == sorted(once.initializers)


def test_calibration_observes_every_tensor() -> None:
    from edge_runtime.graph import reference

    graph = optimize(import_onnx(encoder_layer()))
    seen: dict[str, tuple[int, ...]] = {}
    reference.run(graph, {"x": randn(2, 5, 16)}, observe=lambda name, v: seen.setdefault(name, v.shape))
    produced = {o for n in graph.nodes for o in n.outputs}
    assert set(seen) == produced | {"x"}
    assert all(isinstance(shape, tuple) for shape in seen.values())
    assert np.prod(seen["y"]) == 2 * 5 * 16
