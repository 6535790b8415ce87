"""Tiny ONNX models for the quantizer tests, built in code (no downloads)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inputs, outputs, inits: dict[str, np.ndarray], name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        outputs,
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_cnn(
    seed: int = 0, batch: int | str = "batch", fc: np.ndarray | None = None, fc_bias: np.ndarray | None = None
) -> onnx.ModelProto:
    """[batch, 1, 8, 8] -> Conv 3x3 (8) + BN + Relu -> MaxPool 2 -> Conv 3x3 (16) + Relu -> Flatten -> Gemm (10).

    Exporter-style: BatchNormalization after the first conv (folded by the passes) and a Flatten.
    """
    r = np.random.default_rng(seed)
    inits = {
        "conv1.weight": r.normal(0, 0.5, (8, 1, 3, 3)),
        "conv1.bias": r.normal(0, 0.1, 8),
        "bn.scale": r.uniform(0.8, 1.2, 8),
        "bn.bias": r.normal(0, 0.1, 8),
        "bn.mean": r.normal(0, 0.1, 8),
        "bn.var": r.uniform(0.5, 1.5, 8),
        "conv2.weight": r.normal(0, 0.2, (16, 8, 3, 3)),
        "conv2.bias": r.normal(0, 0.1, 16),
        "fc.weight": fc if fc is not None else r.normal(0, 0.1, (10, 256)),
        "fc.bias": fc_bias if fc_bias is not None else r.normal(0, 0.1, 10),
    }
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="/conv1/Conv", pads=[1, 1, 1, 1]
        ),
        helper.make_node(
            "BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="/bn/BN"
        ),
        helper.make_node("Relu", ["b1"], ["r1"], name="/relu1/Relu"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node(
            "Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="/conv2/Conv", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="/relu2/Relu"),
        helper.make_node("Flatten", ["r2"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])
    return _model(nodes, [x], [y], inits, "tiny_cnn")


def tiny_mlp_seq(seed: int = 1) -> onnx.ModelProto:
    """[batch, seq, 16] -> MatMul+Add (32) -> GELU (erf pattern) -> MatMul+Add (16) -> LayerNormalization.

    Dynamic batch and sequence length; the MatMul+Add pairs become batched Gemms.
    """
    r = np.random.default_rng(seed)
    inits = {
        "w1": r.normal(0, 0.3, (16, 32)),
        "b1": r.normal(0, 0.1, 32),
        "w2": r.normal(0, 0.3, (32, 16)),
        "b2": r.normal(0, 0.1, 16),
        "sqrt2": np.array(np.sqrt(2.0)),
        "one": np.array(1.0),
        "half": np.array(0.5),
        "ln.scale": r.uniform(0.8, 1.2, 16),
        "ln.bias": r.normal(0, 0.1, 16),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="/fc1/MatMul"),
        helper.make_node("Add", ["m1", "b1"], ["h1"], name="/fc1/Add"),
        helper.make_node("Div", ["h1", "sqrt2"], ["d"], name="/act/Div"),
        helper.make_node("Erf", ["d"], ["e"], name="/act/Erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="/act/Add"),
        helper.make_node("Mul", ["h1", "e1"], ["g0"], name="/act/Mul"),
        helper.make_node("Mul", ["g0", "half"], ["g"], name="/act/Mul_1"),
        helper.make_node("MatMul", ["g", "w2"], ["m2"], name="/fc2/MatMul"),
        helper.make_node("Add", ["m2", "b2"], ["h2"], name="/fc2/Add"),
        helper.make_node(
            "LayerNormalization", ["h2", "ln.scale", "ln.bias"], ["y"], name="/ln/LayerNormalization", axis=-1
        ),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 16])
    return _model(nodes, [x], [y], inits, "tiny_mlp_seq")


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as float32 [N, 1, 8, 8] in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return x, data.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def digits_cnn_bytes() -> bytes:
    """tiny_cnn with random conv features and a ridge-regression head fitted on digits (closed form,
    instant; over 90% accurate on held-out digits)."""
    from edge_runtime.graph import import_onnx, optimize, reference

    x, y = digits()
    base = optimize(import_onnx(tiny_cnn()))
    features = reference.run(base, {"x": x[:1200]}, outputs=["f"])["f"].astype(np.float64)
    a = np.hstack([features, np.ones((len(features), 1))])
    targets = np.eye(10)[y[:1200]] * 4.0 - 2.0  # +-2 targets: logits of a readable size
    w = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ targets)
    model = tiny_cnn(fc=w[:-1].T, fc_bias=w[-1])
    return model.SerializeToString()


def save(model: onnx.ModelProto | bytes, path: Path) -> Path:
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path
