"""Exporter-style ONNX models built in code: the node patterns torch.onnx.export produces."""

from __future__ import annotations

import math

import numpy as np
import onnx
from graph_testing import make_model, randn, value
from onnx import helper

I64 = np.int64


class _Builder:
    """Accumulates nodes and initializers with torch-exporter-like names."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.seed = seed
        self.count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits[name] = np.asarray(array)
        return name

    def weight(self, name: str, *shape: int, scale: float = 0.3) -> str:
        self.seed += 1
        return self.const(name, randn(*shape, seed=self.seed, scale=scale))

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str:
        outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def constant_node(self, name: str, array: np.ndarray) -> str:
        tensor = onnx.numpy_helper.from_array(np.asarray(array), name + "_value")
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node("Constant", [], [out], name=name, value=tensor))
        return out

    def batch_norm(self, x: str, name: str, channels: int) -> str:
        self.seed += 1
        r = np.random.default_rng(self.seed)
        params = [
            self.const(f"{name}.weight", r.uniform(0.5, 1.5, channels).astype(np.float32)),
            self.const(f"{name}.bias", r.normal(0, 0.2, channels).astype(np.float32)),
            self.const(f"{name}.running_mean", r.normal(0, 0.2, channels).astype(np.float32)),
            self.const(f"{name}.running_var", r.uniform(0.5, 2.0, channels).astype(np.float32)),
        ]
        return self.node("BatchNormalization", [x, *params], f"/{name}/BatchNormalization", epsilon=1e-5)

    def relu6(self, x: str, name: str) -> str:
        lo = self.constant_node(f"/{name}/Constant", np.float32(0.0))
        hi = self.constant_node(f"/{name}/Constant_1", np.float32(6.0))
        return self.node("Clip", [x, lo, hi], f"/{name}/Clip")


def mobilenet_block(channels: int = 8, expand: int = 4, size: int = 12) -> onnx.ModelProto:
    """An inverted residual (expand 1x1, depthwise 3x3 stride 1, project 1x1, residual),
    each conv + BN (+ ReLU6), then mean pooling and a classifier, with a symbolic batch."""
    b = _Builder()
    hidden = channels * expand
    h = b.node(
        "Conv",
        ["input", b.weight("features.0.conv.0.weight", hidden, channels, 1, 1)],
        "/features.0/conv.0/Conv",
        kernel_shape=[1, 1],
    )
    h = b.relu6(b.batch_norm(h, "features.0.conv.1", hidden), "features.0/conv.2")
    h = b.node(
        "Conv",
        [h, b.weight("features.0.conv.3.weight", hidden, 1, 3, 3)],
        "/features.0/conv.3/Conv",
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        group=hidden,
    )
    h = b.relu6(b.batch_norm(h, "features.0.conv.4", hidden), "features.0/conv.5")
    h = b.node(
        "Conv",
        [h, b.weight("features.0.conv.6.weight", channels, hidden, 1, 1)],
        "/features.0/conv.6/Conv",
        kernel_shape=[1, 1],
    )
    h = b.batch_norm(h, "features.0.conv.7", channels)
    h = b.node("Add", ["input", h], "/features.0/Add")
    h = b.node(
        "Conv",
        [h, b.weight("features.1.weight", 16, channels, 3, 3), b.weight("features.1.bias", 16)],
        "/features.1/Conv",
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
    )
    h = b.node("HardSwish", [h], "/features.2/HardSwish")
    h = b.node("ReduceMean", [h], "/pool/ReduceMean", axes=[2, 3], keepdims=0)
    h = b.node("Dropout", [h], "/classifier/Dropout")
    b.nodes.append(
        helper.make_node(
            "Gemm",
            [h, b.weight("classifier.weight", 10, 16), b.weight("classifier.bias", 10)],
            ["logits"],
            name="/classifier/Gemm",
            transB=1,
        )
    )
    return make_model(
        b.nodes,
        [value("input", ["batch", channels, size, size])],
        [value("logits", ["batch", 10])],
        b.inits,
        opset=14,
        name="mobilenet_block",
    )


def residual_block(channels: int = 6, size: int = 9) -> onnx.ModelProto:
    """A ResNet basic block with BN and ReLU, an Identity, then pooling (ceil mode) and
    a nearest 2x upsample, opset 17."""
    b = _Builder(seed=10)
    h = b.node(
        "Conv",
        ["x", b.weight("conv1.weight", channels, channels, 3, 3)],
        "/conv1/Conv",
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
    )
    h = b.node("Relu", [b.batch_norm(h, "bn1", channels)], "/relu/Relu")
    h = b.node(
        "Conv",
        [h, b.weight("conv2.weight", channels, channels, 3, 3)],
        "/conv2/Conv",
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
    )
    h = b.batch_norm(h, "bn2", channels)
    skip = b.node("Identity", ["x"], "/Identity")
    h = b.node("Relu", [b.node("Add", [h, skip], "/Add")], "/relu_1/Relu")
    h = b.node("MaxPool", [h], "/maxpool/MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    scales = b.const("scales", np.array([1, 1, 2, 2], dtype=np.float32))
    b.nodes.append(
        helper.make_node(
            "Resize",
            [h, "", scales],
            ["y"],
            name="/up/Resize",
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
    )
    return make_model(
        b.nodes,
        [value("x", ["N", channels, size, size])],
        [value("y", None)],
        b.inits,
        opset=17,
        name="residual_block",
    )


def _layer_norm(b: _Builder, x: str, name: str, dim: int, use_pow: bool = True) -> str:
    mean = b.node("ReduceMean", [x], f"/{name}/ReduceMean", axes=[-1])
    d = b.node("Sub", [x, mean], f"/{name}/Sub")
    if use_pow:
        sq = b.node("Pow", [d, b.const(f"{name}.two", np.float32(2.0))], f"/{name}/Pow")
    else:
        sq = b.node("Mul", [d, d], f"/{name}/Mul_sq")
    var = b.node("ReduceMean", [sq], f"/{name}/ReduceMean_1", axes=[-1])
    eps = b.node("Add", [var, b.const(f"{name}.eps", np.float32(1e-5))], f"/{name}/Add")
    norm = b.node("Div", [d, b.node("Sqrt", [eps], f"/{name}/Sqrt")], f"/{name}/Div")
    scaled = b.node("Mul", [norm, b.weight(f"{name}.weight", dim, scale=0.2)], f"/{name}/Mul")
    return b.node("Add", [scaled, b.weight(f"{name}.bias", dim, scale=0.2)], f"/{name}/Add_1")


def _linear(b: _Builder, x: str, name: str, n_in: int, n_out: int) -> str:
    h = b.node(
        "MatMul", [x, b.weight(f"{name}.weight_t", n_in, n_out, scale=1 / math.sqrt(n_in))], f"/{name}/MatMul"
    )
    return b.node("Add", [b.weight(f"{name}.bias", n_out, scale=0.1), h], f"/{name}/Add")


def _batch_dim(b: _Builder, x: str, name: str) -> str:
    """``x.shape[0]`` as a 1-element tensor: Shape -> Gather -> Unsqueeze."""
    shape = b.node("Shape", [x], f"/{name}/Shape")
    index = b.constant_node(f"/{name}/Constant", np.array(0, dtype=I64))
    batch = b.node("Gather", [shape, index], f"/{name}/Gather", axis=0)
    axes = b.constant_node(f"/{name}/Constant_1", np.array([0], dtype=I64))
    return b.node("Unsqueeze", [batch, axes], f"/{name}/Unsqueeze")


def encoder_layer(seq: int = 5, dim: int = 16, heads: int = 2, ffn: int = 32) -> onnx.ModelProto:
    """A pre-norm transformer encoder layer as torch exports it (opset 17): decomposed layer
    norms, MatMul + Add projections, head split by Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape with a symbolic batch, scores divided by sqrt(d), softmax, erf GELU, residuals."""
    b = _Builder(seed=20)
    head_dim = dim // heads
    h = _layer_norm(b, "x", "ln1", dim)
    batch = _batch_dim(b, "x", "attn")

    def split_heads(t: str, name: str, perm: list[int]) -> str:
        target = b.node(
            "Concat",
            [batch, b.const(f"{name}.rest", np.array([-1, heads, head_dim], I64))],
            f"/attn/{name}/Concat",
            axis=0,
        )
        t = b.node("Reshape", [t, target], f"/attn/{name}/Reshape")
        return b.node("Transpose", [t], f"/attn/{name}/Transpose", perm=perm)

    q = split_heads(_linear(b, h, "attn.q", dim, dim), "q", [0, 2, 1, 3])
    k = split_heads(_linear(b, h, "attn.k", dim, dim), "k", [0, 2, 3, 1])
    v = split_heads(_linear(b, h, "attn.v", dim, dim), "v", [0, 2, 1, 3])
    scores = b.node("MatMul", [q, k], "/attn/MatMul")
    scores = b.node("Div", [scores, b.const("attn.scale", np.float32(math.sqrt(head_dim)))], "/attn/Div")
    probs = b.node("Softmax", [scores], "/attn/Softmax", axis=-1)
    ctx = b.node(
        "Transpose", [b.node("MatMul", [probs, v], "/attn/MatMul_1")], "/attn/Transpose_3", perm=[0, 2, 1, 3]
    )
    merged = b.node(
        "Concat", [batch, b.const("attn.merged", np.array([-1, dim], I64))], "/attn/Concat_3", axis=0
    )
    ctx = b.node("Reshape", [ctx, merged], "/attn/Reshape_3")
    h = b.node("Add", ["x", _linear(b, ctx, "attn.out", dim, dim)], "/Add")
    residual = h
    h = _layer_norm(b, h, "ln2", dim, use_pow=False)
    h = _linear(b, h, "ffn.fc1", dim, ffn)
    erf = b.node(
        "Erf",
        [b.node("Div", [h, b.const("gelu.sqrt2", np.float32(1.4142135))], "/ffn/act/Div")],
        "/ffn/act/Erf",
    )
    gelu = b.node(
        "Mul",
        [
            b.node(
                "Mul",
                [h, b.node("Add", [erf, b.const("gelu.one", np.float32(1.0))], "/ffn/act/Add")],
                "/ffn/act/Mul",
            ),
            b.const("gelu.half", np.float32(0.5)),
        ],
        "/ffn/act/Mul_1",
    )
    h = _linear(b, gelu, "ffn.fc2", ffn, dim)
    b.nodes.append(helper.make_node("Add", [residual, h], ["y"], name="/Add_1"))
    return make_model(
        b.nodes,
        [value("x", ["batch", seq, dim])],
        [value("y", ["batch", seq, dim])],
        b.inits,
        opset=17,
        name="encoder_layer",
    )
