"""Tiny ONNX models built in code for the native backend tests, and how to run them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from graph_testing import make_model, rng, value  # tests/graph, put on sys.path by tests/conftest.py
from onnx import helper

from edge_runtime.graph import Graph, import_onnx, optimize
from edge_runtime.plan import NativeSession, calibrate, lower

__all__ = [
    "calibrated",
    "cosine",
    "make_model",
    "native_session",
    "prepare",
    "rng",
    "small_cnn",
    "small_transformer",
    "value",
]


def small_cnn(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """conv3x3+BN+relu6 -> depthwise 3x3 s2 + relu -> pointwise 1x1 -> residual add ->
    maxpool -> global average pool -> flatten -> gemm."""
    r = rng(seed)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (r.standard_normal(shape) * scale).astype(np.float32)

    init = {
        "w1": w(8, 3, 3, 3), "b1": w(8, scale=0.1),
        "bn_s": (1 + 0.1 * r.standard_normal(8)).astype(np.float32), "bn_b": w(8, scale=0.1),
        "bn_m": w(8, scale=0.1), "bn_v": (0.5 + r.random(8)).astype(np.float32),
        "wd": w(8, 1, 3, 3), "bd": w(8, scale=0.1),
        "wp": w(8, 8, 1, 1), "bp": w(8, scale=0.1),
        "wc": w(8, 8, 3, 3, scale=0.15),
        "fc_w": w(classes, 8), "fc_b": w(classes, scale=0.1),
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], group=8, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["d1"], ["r2"]),
        helper.make_node("Conv", ["r2", "wp", "bp"], ["p1"]),
        helper.make_node("Add", ["p1", "r2"], ["res"]),
        helper.make_node("Conv", ["res", "wc"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("MaxPool", ["r3"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    return make_model(nodes, [value("x", ["batch", 3, 16, 16])], [value("logits", None)], init, name="cnn")


def small_transformer(
    seed: int = 0, d: int = 16, heads: int = 2, seq: int = 6, ff: int = 32
) -> onnx.ModelProto:
    """One encoder layer: LayerNorm -> QKV MatMuls -> per-head attention (MatMul, Softmax,
    MatMul) -> output projection + residual -> LayerNorm -> MLP with Gelu + residual."""
    r = rng(seed)
    dh = d // heads

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        s = scale if scale is not None else 1.0 / np.sqrt(shape[0])
        return (r.standard_normal(shape) * s).astype(np.float32)

    init = {
        "ln1_g": (1 + 0.1 * r.standard_normal(d)).astype(np.float32), "ln1_b": w(d, scale=0.1),
        "wq": w(d, d), "wk": w(d, d), "wv": w(d, d), "bq": w(d, scale=0.1), "wo": w(d, d), "bo": w(d, scale=0.1),
        "ln2_g": (1 + 0.1 * r.standard_normal(d)).astype(np.float32), "ln2_b": w(d, scale=0.1),
        "w1": w(d, ff), "b1": w(ff, scale=0.1), "w2": w(ff, d), "b2": w(d, scale=0.1),
        "heads_shape": np.array([0, 0, heads, dh], np.int64), "merge_shape": np.array([0, 0, d], np.int64),
        "scale": np.array(1.0 / np.sqrt(dh), np.float32),
    }  # fmt: skip
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["h"], axis=-1, epsilon=1e-5),
        n("MatMul", ["h", "wq"], ["q0"]),
        n("Add", ["q0", "bq"], ["q1"]),
        n("MatMul", ["h", "wk"], ["k1"]),
        n("MatMul", ["h", "wv"], ["v1"]),
        n("Reshape", ["q1", "heads_shape"], ["q2"]),
        n("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
        n("Reshape", ["k1", "heads_shape"], ["k2"]),
        n("Transpose", ["k2"], ["kt"], perm=[0, 2, 3, 1]),
        n("Reshape", ["v1", "heads_shape"], ["v2"]),
        n("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "kt"], ["s0"]),
        n("Mul", ["s0", "scale"], ["s1"]),
        n("Softmax", ["s1"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["c0"]),
        n("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["c1", "merge_shape"], ["c2"]),
        n("MatMul", ["c2", "wo"], ["o0"]),
        n("Add", ["o0", "bo"], ["o1"]),
        n("Add", ["x", "o1"], ["x1"]),
        n("LayerNormalization", ["x1", "ln2_g", "ln2_b"], ["h2"], axis=-1, epsilon=1e-5),
        n("MatMul", ["h2", "w1"], ["f0"]),
        n("Add", ["f0", "b1"], ["f1"]),
        n("Gelu", ["f1"], ["f2"], domain="com.microsoft") if False else n("Erf", ["f1"], ["_unused"]),
    ]
    # Gelu in its exported erf form: x * 0.5 * (1 + erf(x / sqrt(2))).
    nodes = nodes[:-1] + [
        n("Div", ["f1", "sqrt2"], ["g0"]),
        n("Erf", ["g0"], ["g1"]),
        n("Add", ["g1", "one"], ["g2"]),
        n("Mul", ["f1", "g2"], ["g3"]),
        n("Mul", ["g3", "half"], ["f2"]),
        n("MatMul", ["f2", "w2"], ["f3"]),
        n("Add", ["f3", "b2"], ["f4"]),
        n("Add", ["x1", "f4"], ["y"]),
    ]
    init.update(sqrt2=np.array(np.sqrt(2.0), np.float32), one=np.array(1.0, np.float32),
                half=np.array(0.5, np.float32))  # fmt: skip
    return make_model(
        nodes, [value("x", ["batch", seq, d])], [value("y", ["batch", seq, d])], init, name="encoder"
    )


def prepare(model: onnx.ModelProto) -> Graph:
    return optimize(import_onnx(model))


def calibrated(graph: Graph, batches: Sequence[Mapping[str, np.ndarray]], **kwargs: Any):
    return calibrate(graph, batches, progress=False, **kwargs)


def native_session(graph: Graph, batches, *, threads: int = 1, cache_dir: Any = False, **lower_kwargs: Any):
    params = calibrated(graph, batches)
    plan = lower(graph, params, **lower_kwargs)
    return NativeSession(plan, threads=threads, cache_dir=cache_dir)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
