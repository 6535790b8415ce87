"""QDQ export: valid ONNX, runs on onnxruntime, carries OUR parameters, matches the native plan."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from quantize_models import digits, digits_cnn_bytes, tiny_mlp_seq

from edge_runtime.graph import import_onnx, optimize, reference
from edge_runtime.numerics import quantize_bias, quantize_weights
from edge_runtime.plan import NativeSession, calibrate, lower
from edge_runtime.quantize import export_qdq

ort = pytest.importorskip("onnxruntime")

# onnxruntime runs the QDQ model on its integer kernels; it may differ from the native
# plan by requantization rounding. Measured: 0 steps on these models; allowed: 1 step.
NATIVE_VS_QDQ_STEPS = 1.0


def _session(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def cnn():
    x, _ = digits()
    graph = optimize(import_onnx(digits_cnn_bytes()))
    params = calibrate(graph, [{"x": x[i : i + 64]} for i in range(0, 256, 64)], progress=False)
    plan = lower(graph, params)
    activations = {k: plan.params.get(k) or v for k, v in params.items()}
    return graph, activations, plan


def test_cnn_qdq_is_valid_runs_and_is_close_to_float(cnn) -> None:
    graph, activations, _ = cnn
    model = export_qdq(graph, activations)
    onnx.checker.check_model(model, full_check=True)
    x, y = digits()
    held_out = x[1200:1500]
    q = _session(model).run(None, {"x": held_out})[0]
    f = reference.run(graph, {"x": held_out})["logits"]
    assert np.mean(q.argmax(1) == f.argmax(1)) >= 0.97
    cosine = np.sum(q * f) / np.sqrt(np.sum(q * q) * np.sum(f * f))
    assert cosine > 0.995
    # the QDQ model keeps the float model's accuracy on held-out digits
    assert np.mean(q.argmax(1) == y[1200:1500]) >= np.mean(f.argmax(1) == y[1200:1500]) - 0.02


def test_qdq_carries_our_parameters(cnn) -> None:
    graph, activations, _ = cnn
    model = export_qdq(graph, activations)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quantize_nodes = {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for tensor, qp in activations.items():
        source = tensor if tensor in quantize_nodes else f"{tensor}_float"  # graph outputs are renamed
        node = quantize_nodes[source]
        assert float(inits[node.input[1]]) == np.float32(qp.scale)
        assert int(inits[node.input[2]]) == qp.zero_point and inits[node.input[2]].dtype == np.uint8

    conv = next(n for n in graph.nodes if n.op_type == "Conv")
    expected = quantize_weights(graph.initializers[conv.inputs[1]], axis=0)
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    onnx_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight_dq, bias_dq = dq[onnx_conv.input[1]], dq[onnx_conv.input[2]]
    # our int8 weights as uint8 codes w + 128 with zero point 128: onnxruntime's exact u8u8 kernels
    codes, zero_points = inits[weight_dq.input[0]], inits[weight_dq.input[2]]
    assert codes.dtype == np.uint8 and zero_points.dtype == np.uint8
    np.testing.assert_array_equal(codes.astype(np.int16) - 128, expected.values)
    np.testing.assert_array_equal(zero_points, np.full(len(expected.scales), 128, np.uint8))
    np.testing.assert_array_equal(inits[weight_dq.input[1]], expected.scales)
    assert {a.name: a.i for a in weight_dq.attribute} == {"axis": 0}
    bias = inits[bias_dq.input[0]]
    in_scale = activations[conv.inputs[0]].scale
    assert bias.dtype == np.int32
    np.testing.assert_array_equal(
        bias, quantize_bias(graph.initializers[conv.inputs[2]], in_scale, expected.scales)
    )
    # the fused ReLU is a Relu again, between the Conv and its output's Q/DQ pair
    assert onnx_conv.output[0] in {n.input[0] for n in model.graph.node if n.op_type == "Relu"}


def test_qdq_matches_the_native_plan(cnn) -> None:
    graph, activations, plan = cnn
    x, _ = digits()
    feeds = {"x": x[1500:1600]}
    native = NativeSession(plan, cache_dir=False).run(feeds)["logits"]
    qdq = _session(export_qdq(graph, activations)).run(None, feeds)[0]
    step = activations["logits"].scale
    assert np.max(np.abs(native - qdq)) <= NATIVE_VS_QDQ_STEPS * step + 1e-6


def test_dynamic_dims_batched_gemm_gelu_layer_norm() -> None:
    model = tiny_mlp_seq()
    graph = optimize(import_onnx(model))
    assert graph.op_types() == ["Gemm", "Gelu", "Gemm", "LayerNormalization"]
    rng = np.random.default_rng(0)
    params = calibrate(
        graph, [{"x": rng.normal(size=(4, 6, 16)).astype(np.float32)} for _ in range(4)], progress=False
    )
    qdq = export_qdq(graph, params)
    assert [d.dim_param for d in qdq.graph.input[0].type.tensor_type.shape.dim[:2]] == ["batch", "seq"]
    ops = [n.op_type for n in qdq.graph.node]
    assert "MatMul" in ops and "Erf" in ops and "Gemm" not in ops  # batched Gemm -> MatMul + Add
    session = _session(qdq)
    plan_session = NativeSession(lower(graph, params), cache_dir=False)
    for shape in [(1, 3, 16), (5, 9, 16)]:  # other batch and sequence lengths than calibrated
        x = rng.normal(size=shape).astype(np.float32)
        q = session.run(None, {"x": x})[0]
        f = reference.run(graph, {"x": x})["y"]
        assert q.shape == shape
        assert np.mean(np.abs(q - f)) < 0.05 and np.max(np.abs(q - f)) < 0.5
        native = plan_session.run({"x": x})["y"]
        assert np.max(np.abs(native - q)) <= NATIVE_VS_QDQ_STEPS * params["y"].scale + 1e-6


def test_export_from_the_original_onnx_equals_export_from_the_graph(cnn) -> None:
    graph, activations, _ = cnn
    from_graph = export_qdq(graph, activations)
    from_onnx = export_qdq(onnx.load_from_string(digits_cnn_bytes()), activations)
    assert from_graph.SerializeToString() == from_onnx.SerializeToString()


def test_tensors_without_parameters_stay_float(cnn) -> None:
    graph, activations, _ = cnn
    partial = {k: v for k, v in activations.items() if k == "x"}
    model = export_qdq(graph, partial)
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 1
    x, _ = digits()
    out = _session(model).run(None, {"x": x[:8]})[0]
    assert out.shape == (8, 10)
