"""Tiny models built in code for the runtime tests: ONNX, QDQ ONNX, TFLite and packages holding them.

A plain module rather than conftest.py, like pkg_helpers.py. Every model is
a few kilobytes and builds in milliseconds (the QDQ one in well under a second).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.backends.tflite_writer import Dense, write_mlp_tflite
from edge_runtime.package import PackageInfo, make_selftest, write_package

OPSET = 17
IN_FEATURES, HIDDEN, CLASSES = 8, 16, 4


def _has_tflite_interpreter() -> bool:
    from edge_runtime.backends import get_backend

    return get_backend("tflite").available()[0]


# The dev extra installs ai-edge-litert; without an interpreter the TFLite tests say why they skip.
requires_tflite = pytest.mark.skipif(
    not _has_tflite_interpreter(), reason="no TFLite interpreter installed: pip install ai-edge-litert"
)


def mlp_layers(seed: int = 0) -> list[Dense]:
    """8 -> 16 (ReLU) -> 4: the weights shared by the ONNX and TFLite twins."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((HIDDEN, IN_FEATURES)).astype(np.float32) * 0.5
    w2 = rng.standard_normal((CLASSES, HIDDEN)).astype(np.float32) * 0.5
    return [
        Dense(w1, rng.standard_normal(HIDDEN).astype(np.float32) * 0.1, "relu"),
        Dense(w2, rng.standard_normal(CLASSES).astype(np.float32) * 0.1),
    ]


def _save(model: onnx.ModelProto) -> bytes:
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp_onnx(layers: Sequence[Dense], *, softmax: bool = False, input_name: str = "input",
             output_name: str = "output") -> bytes:  # fmt: skip
    """The ONNX twin of ``write_mlp_tflite(layers, softmax=...)``: Gemm(transB=1) (+ Relu) per layer."""
    nodes, inits = [], []
    current = input_name
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1 and not softmax
        out = output_name if last and layer.activation == "none" else f"dense_{i}"
        inits += [
            numpy_helper.from_array(layer.weights, f"w{i}"),
            numpy_helper.from_array(layer.bias, f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out], transB=1, name=f"gemm_{i}"))
        if layer.activation == "relu":
            act_out = output_name if last else f"relu_{i}"
            nodes.append(helper.make_node("Relu", [out], [act_out], name=f"relu_{i}"))
            out = act_out
        current = out
    if softmax:
        nodes.append(helper.make_node("Softmax", [current], [output_name], axis=-1, name="softmax"))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", IN_FEATURES])],
        [
            helper.make_tensor_value_info(
                output_name, TensorProto.FLOAT, ["batch", layers[-1].weights.shape[0]]
            )
        ],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


def mlp_reference(layers: Sequence[Dense], x: np.ndarray, softmax: bool = False) -> np.ndarray:
    """numpy float64 reference of the MLP."""
    h = x.astype(np.float64)
    for layer in layers:
        h = h @ layer.weights.T.astype(np.float64) + layer.bias
        if layer.activation == "relu":
            h = np.maximum(h, 0)
    if softmax:
        h = np.exp(h - h.max(axis=-1, keepdims=True))
        h /= h.sum(axis=-1, keepdims=True)
    return h


def cnn_onnx(seed: int = 1) -> bytes:
    """x float32 [batch, 1, 8, 8] -> Conv 3x3 (4 ch) -> Relu -> Flatten -> Gemm -> logits [batch, 10]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.3, "conv_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "conv_b"),
        numpy_helper.from_array(rng.standard_normal((10, 4 * 6 * 6)).astype(np.float32) * 0.1, "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], kernel_shape=[3, 3], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


def two_input_onnx() -> bytes:
    """a float32 [batch, 4] + b float32 [batch, 4] -> sum; and ids int64 [batch] -> ids_out (Identity)."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
        helper.make_node("Identity", ["ids"], ["ids_out"], name="ident"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch"]),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


def spec(name: str, shape: Sequence[int | str], dtype: str = "float32") -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def write_model_package(
    out: Path,
    artifacts: Mapping[str, tuple[str, bytes]],
    inputs: Sequence[dict[str, Any]],
    outputs: Sequence[dict[str, Any]],
    *,
    selftest: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], float] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    name: str = "tiny-mlp",
    **manifest: Any,
) -> PackageInfo:
    """A package of ``{path: (kind, bytes)}``; ``selftest`` is (inputs, expected, atol)."""
    contents: dict[str, bytes | Path] = {path: data for path, (_, data) in artifacts.items()}
    entries = [{"path": path, "kind": kind} for path, (kind, _) in artifacts.items()]
    fields: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "created": "2024-05-01T12:00:00Z",
        "inputs": list(inputs),
        "outputs": list(outputs),
        **manifest,
    }
    if selftest is not None:
        vec_in, vec_out, atol = selftest
        contents["selftest.npz"] = make_selftest(vec_in, vec_out)
        entries.append({"path": "selftest.npz", "kind": "selftest"})
        fields["selftest"] = {"artifact": "selftest.npz", "atol": atol, "rtol": 0.0}
    fields["artifacts"] = entries
    return write_package(out, fields, contents, signing_key)


def mlp_package(out: Path, *, kinds: Sequence[str] = ("onnx", "tflite"), softmax: bool = False,
                selftest_atol: float | None = 1e-4, **kwargs: Any) -> PackageInfo:  # fmt: skip
    """The MLP as a package carrying the artifacts of ``kinds`` ("onnx", "tflite", "native-plan")."""
    layers = mlp_layers()
    files = {
        "onnx": ("model.onnx", mlp_onnx(layers, softmax=softmax)),
        "tflite": ("model.tflite", write_mlp_tflite(layers, softmax=softmax)),
        "native-plan": ("model.plan", b"\x00" * 64),
    }
    artifacts = {files[k][0]: (k, files[k][1]) for k in kinds}
    selftest = None
    if selftest_atol is not None:
        x = np.random.default_rng(7).standard_normal((2, IN_FEATURES)).astype(np.float32)
        expected = mlp_reference(layers, x, softmax).astype(np.float32)
        selftest = ({"input": x}, {"output": expected}, selftest_atol)
    return write_model_package(
        out,
        artifacts,
        [spec("input", ["batch", IN_FEATURES])],
        [spec("output", ["batch", CLASSES])],
        selftest=selftest,
        **kwargs,
    )
