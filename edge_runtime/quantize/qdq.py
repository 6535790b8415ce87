"""Export our INT8 quantization as a QDQ ONNX model, for onnxruntime users.

The QDQ model computes what the native plan computes, in ONNX's vocabulary:

- every calibrated activation ``t`` is followed by ``QuantizeLinear`` and
  ``DequantizeLinear`` with OUR parameters (uint8 or int8, one scale and zero
  point per tensor); consumers read the dequantized tensor;
- Conv, ConvTranspose, Gemm and MatMul weights are our int8 weights, symmetric
  per output channel (:func:`edge_runtime.numerics.quantize_weights`), stored as
  uint8 codes ``w + 128`` with zero point 128 (:func:`qdq_weight_codes`: the same
  real values, ``(w + 128 - 128) * scale``), fed through a ``DequantizeLinear``
  with ``axis``. onnxruntime then multiplies uint8 activations by uint8 weights
  (its u8u8 kernels, exact on every x86) instead of uint8 by int8, which on x86
  without VNNI uses ``vpmaddubsw`` and saturates (docs/numerics.md, "The QDQ
  model's weights");
- biases are int32 with scale ``input_scale * weight_scale[n]``
  (:func:`edge_runtime.numerics.quantize_bias`) and zero point 0;
- the IR's fused forms become plain ONNX again: a Conv/Gemm ``activation``
  becomes a Relu or Clip(0, 6) between the layer and its output's Q/DQ pair (the
  pattern onnxruntime fuses back), a Gemm whose A has leading batch dims becomes
  MatMul + Add, and Gelu is decomposed below opset 20.

onnxruntime fuses the DQ -> op -> Q patterns into its integer kernels, so its
outputs differ from the native plan's only by requantization rounding (a few
output quantization steps, measured by the tests).

The model is written at opset ``max(17, graph opset)``: 17 has every operator
the IR uses (LayerNormalization) and per-axis (de)quantization.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_runtime._version import __version__
from edge_runtime.errors import GraphError, QuantizationError
from edge_runtime.graph import Graph, Node, ValueInfo, import_onnx, optimize
from edge_runtime.numerics import QuantParams, WeightQuant, bias_scales, quantize_bias, quantize_weights

__all__ = ["MIN_EXPORT_OPSET", "QDQ_WEIGHT_ZERO_POINT", "export_qdq", "qdq_weight_codes", "quantized_weights"]

MIN_EXPORT_OPSET = 17
_GELU_OPSET = 20
# The zero point of the QDQ model's uint8 weight codes: our int8 weight w is stored as w + 128.
QDQ_WEIGHT_ZERO_POINT = 128
_REDUCE_AXES_INPUT_OPSET = 18


def export_qdq(
    source: Graph | onnx.ModelProto | str | os.PathLike[str],
    activations: Mapping[str, QuantParams],
    *,
    opset: int | None = None,
    weight_bits: int = 8,
) -> onnx.ModelProto:
    """The QDQ ONNX model of ``source`` quantized with these activation parameters.

    ``source`` is the optimized graph the parameters were calibrated on
    (:func:`edge_runtime.graph.optimize`), or the original ONNX model (a
    ModelProto or a path), which is imported and optimized here the same way.
    ``activations`` maps tensor names of that graph to their parameters (from
    :func:`edge_runtime.plan.calibrate`); tensors without parameters stay float.
    ``weight_bits`` 7 carries the 7-bit weights ([-63, 63]) of a package that declares
    them, the native plan's own. The result passes ``onnx.checker``. Raises QuantizationError naming the node
    whose bias does not fit int32, GraphError for a graph it cannot write.
    """
    graph = source if isinstance(source, Graph) else optimize(import_onnx(source))
    target = max(MIN_EXPORT_OPSET, graph.opset) if opset is None else opset
    if target < MIN_EXPORT_OPSET:
        raise GraphError(f"QDQ export needs opset >= {MIN_EXPORT_OPSET}, asked for {opset}")
    writer = _Writer(graph, activations, target)
    writer.weight_bits = weight_bits
    model = writer.build()
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise GraphError(
            f"the exported QDQ model of graph {graph.name!r} fails the ONNX checker: {exc}"
        ) from exc
    return model


def quantized_weights(graph: Graph, weight_bits: int = 8) -> dict[str, WeightQuant]:
    """The per-channel int8 weights of every Conv, ConvTranspose, Gemm and MatMul with constant
    weights, by node name: what the QDQ model and the native plan both carry."""
    out: dict[str, WeightQuant] = {}
    for node in graph.nodes:
        layout = _weight_layout(graph, node)
        if layout is not None:
            weights, axis = layout
            out[node.name] = quantize_weights(weights, axis, bits=weight_bits)
    return out


def qdq_weight_codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(uint8 codes, zero point) of int8 weights ``values`` in the QDQ model: ``values + 128`` and 128.

    The same real weights (``(code - 128) * scale == w * scale``, exactly), in the
    encoding onnxruntime runs on its u8u8 kernels: its u8s8 kernels on x86 without
    VNNI (AVX2, AVX-512 without VNNI) sum pairs of u8 x s8 products into a
    saturating int16 (``vpmaddubsw``), and 255 x 127 x 2 does not fit. With VNNI
    both give the same exact int32 sums, hence the same outputs.
    """
    values = np.asarray(values)
    if values.dtype != np.int8:
        raise QuantizationError(f"QDQ weights must be int8 codes, got {values.dtype}")
    codes = (values.astype(np.int16) + QDQ_WEIGHT_ZERO_POINT).astype(np.uint8)
    return codes, QDQ_WEIGHT_ZERO_POINT


def _weight_layout(graph: Graph, node: Node) -> tuple[np.ndarray, int] | None:
    """(float weights, output-channel axis) of a layer with constant weights, else None."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    weights = graph.constant(node.inputs[1])
    if weights is None or not np.issubdtype(weights.dtype, np.floating):
        return None
    if node.op_type == "Conv":
        return weights, 0
    if node.op_type == "ConvTranspose":
        # Weights are [C_in, C_out / group, kh, kw]: per output channel only without groups.
        return (weights, 1) if int(node.attrs.get("group", 1)) == 1 else None
    if weights.ndim != 2:
        return None
    if node.op_type == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        return weights * np.float32(alpha), 0 if node.attrs.get("transB", 0) else 1
    return weights, 1  # MatMul: [K, N]


class _Writer:
    """Emits the ONNX nodes and initializers of one QDQ model."""

    def __init__(self, graph: Graph, activations: Mapping[str, QuantParams], opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.taken = _all_names(graph)
        # The tensor consumers read instead of each quantized activation.
        self.read_as: dict[str, str] = {}
        self.params = {name: p for name, p in activations.items() if self._is_float_tensor(name)}
        self.weight_bits = 8  # 8 or 7: the width of every weight

    # -- names and constants ---------------------------------------------------

    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.taken:
            i += 1
            name = f"{hint}_{i}"
        self.taken.add(name)
        return name

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.inits[name] = np.asarray(value)
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.fresh(name), **attrs))

    def _is_float_tensor(self, name: str) -> bool:
        if name in self.graph.initializers:
            return False
        info = self.graph.info(name)
        defined = name in self.graph.input_names or any(name in n.outputs for n in self.graph.nodes)
        return defined and (info is None or info.dtype is None or info.dtype.kind == "f")

    # -- the model ---------------------------------------------------------------

    def build(self) -> onnx.ModelProto:
        g = self.graph
        for info in g.inputs:
            if info.name in self.params:
                self._qdq(info.name, info.name, self.fresh(f"{info.name}_dq"))
        for node in g.nodes:
            inputs = [self.read_as.get(name, name) for name in node.inputs]
            outputs = []
            for out in node.outputs:
                if out and out in self.params and out in g.output_names:
                    outputs.append(self.fresh(f"{out}_float"))  # the graph output is the DQ
                else:
                    outputs.append(out)
            self._node(node, inputs, outputs)
            for out, written in zip(node.outputs, outputs):
                if out in self.params:
                    dq = out if written != out else self.fresh(f"{out}_dq")
                    self._qdq(out, written, dq)
        initializers = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        used = {name for n in self.nodes for name in n.input}
        initializers += [
            numpy_helper.from_array(np.asarray(v), k) for k, v in g.initializers.items() if k in used
        ]
        proto = helper.make_graph(
            self.nodes,
            f"{g.name}_qdq",
            [_value_info(v) for v in g.inputs],
            [_value_info(v, g) for v in g.outputs],
            initializers,
        )
        model = helper.make_model(
            proto,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="edge quantize",
            producer_version=__version__,
        )
        model.ir_version = min(model.ir_version, onnx.IR_VERSION)
        return model

    def _qdq(self, tensor: str, source: str, dq: str) -> None:
        p = self.params[tensor]
        scale = self.const(np.array(p.scale, np.float32), f"{tensor}_scale")
        zero = self.const(np.array(p.zero_point, p.numpy_dtype), f"{tensor}_zero_point")
        q = self.fresh(f"{tensor}_q")
        self.emit("QuantizeLinear", [source, scale, zero], [q], f"{tensor}_QuantizeLinear")
        self.emit("DequantizeLinear", [q, scale, zero], [dq], f"{tensor}_DequantizeLinear")
        self.read_as[tensor] = dq

    def _weights(self, node: Node, wq: WeightQuant) -> str:
        codes, zero_point = qdq_weight_codes(wq.values)
        values = self.const(codes, f"{node.inputs[1]}_quantized")
        scales = self.const(wq.scales.astype(np.float32), f"{node.inputs[1]}_scale")
        zeros = self.const(np.full(wq.channels, zero_point, np.uint8), f"{node.inputs[1]}_zero_point")
        out = self.fresh(f"{node.inputs[1]}_dq")
        self.emit("DequantizeLinear", [values, scales, zeros], [out], f"{node.name}/weight_dq", axis=wq.axis)
        return out

    def _bias(self, node: Node, bias: np.ndarray, wq: WeightQuant) -> str | None:
        """The int32 bias through a DequantizeLinear, or None when the input is not quantized."""
        p = self.params.get(node.inputs[0])
        if p is None or bias.size not in (1, wq.channels) or bias.ndim > 1 and bias.shape[-1] != bias.size:
            return None
        bias = np.broadcast_to(bias.reshape(-1).astype(np.float32), (wq.channels,))
        try:
            q = quantize_bias(bias, p.scale, wq.scales)
        except QuantizationError as exc:
            raise QuantizationError(f"{node}: {exc}") from exc
        values = self.const(q, f"{node.name}/bias_quantized")
        scales = self.const(bias_scales(p.scale, wq.scales).astype(np.float32), f"{node.name}/bias_scale")
        zeros = self.const(np.zeros(wq.channels, np.int32), f"{node.name}/bias_zero_point")
        out = self.fresh(f"{node.name}/bias_dq")
        self.emit("DequantizeLinear", [values, scales, zeros], [out], f"{node.name}/bias_dq", axis=0)
        return out

    # -- one IR node -------------------------------------------------------------

    def _node(self, node: Node, inputs: list[str], outputs: list[str]) -> None:
        op = node.op_type
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            self._layer(node, inputs, outputs)
        elif op == "Gelu" and self.opset < _GELU_OPSET:
            self._gelu(node, inputs[0], outputs[0])
        else:
            inputs, attrs = self._onnx_form(node, inputs)
            self.emit(op, inputs, outputs, node.name, **attrs)

    def _layer(self, node: Node, inputs: list[str], outputs: list[str]) -> None:
        """Conv/ConvTranspose/Gemm/MatMul with DQ weights and int32 bias, then its fused activation."""
        g = self.graph
        attrs = {k: v for k, v in node.attrs.items() if k != "activation"}
        activation = node.attrs.get("activation")
        layout = _weight_layout(g, node)
        out = outputs[0]
        pre = self.fresh(f"{out}_preact") if activation else out
        bias = g.constant(node.input(2)) if node.input(2) else None
        plain = node.op_type != "Gemm" or self._plain_gemm(node)
        if layout is not None and not plain and attrs.get("transB", 0):
            # MatMul takes [K, N] weights: transpose the constant, not the tensor in the graph,
            # so that the DequantizeLinear feeds the MatMul directly (onnxruntime fuses that).
            layout = (layout[0].T, 1)
            attrs["transB"] = 0
        if layout is not None:
            wq = quantize_weights(*layout, bits=self.weight_bits)
            inputs = [inputs[0], self._weights(node, wq), *inputs[2:]]
            if bias is not None and op_bias_scale(node) is not None:
                bias = bias * np.float32(op_bias_scale(node))
                dq_bias = self._bias(node, bias, wq)
                if dq_bias is not None:
                    inputs[2] = dq_bias
                    attrs.pop("beta", None)
            if node.op_type == "Gemm":
                attrs.pop("alpha", None)  # folded into the quantized weights
        if not plain:
            self._gemm_as_matmul(node, inputs, attrs, pre)
        else:
            self.emit(node.op_type, inputs, [pre], node.name, **_attributes(attrs))
        self._activation(node, activation, pre, out)

    def _activation(self, node: Node, activation: str | None, pre: str, out: str) -> None:
        """The fused activation of a conv/gemm node, from ``pre`` to ``out``, as ONNX nodes."""
        if activation == "relu":
            self.emit("Relu", [pre], [out], f"{node.name}/Relu")
        elif activation == "relu6":
            lo = self.const(np.array(0.0, np.float32), f"{node.name}/clip_min")
            hi = self.const(np.array(6.0, np.float32), f"{node.name}/clip_max")
            self.emit("Clip", [pre, lo, hi], [out], f"{node.name}/Clip")
        elif activation:
            raise GraphError(f"{node}: fused activation {activation!r} cannot be exported")

    def _plain_gemm(self, node: Node) -> bool:
        """True when ONNX's Gemm can express this node (A of rank 2)."""
        return bool(node.attrs.get("transA", 0)) or self.graph.rank(node.inputs[0]) == 2

    def _gemm_as_matmul(self, node: Node, inputs: list[str], attrs: dict[str, Any], out: str) -> None:
        """The IR's batched Gemm (A of shape [..., K]) as MatMul(A, B [K, N]) + C."""
        a, b = inputs[0], inputs[1]
        if attrs.get("transB", 0):
            t = self.fresh(f"{b}_T")
            self.emit("Transpose", [b], [t], f"{node.name}/weight_T", perm=[1, 0])
            b = t
        alpha = float(attrs.get("alpha", 1.0))
        has_bias = len(inputs) > 2 and inputs[2]
        mm = self.fresh(f"{out}_matmul") if has_bias or alpha != 1.0 else out
        self.emit("MatMul", [a, b], [mm], f"{node.name}/MatMul")
        if alpha != 1.0:
            scaled = self.fresh(f"{out}_scaled") if has_bias else out
            factor = self.const(np.array(alpha, np.float32), f"{node.name}/alpha")
            self.emit("Mul", [mm, factor], [scaled], f"{node.name}/alpha_Mul")
            mm = scaled
        if has_bias:
            c = inputs[2]
            beta = float(attrs.get("beta", 1.0))
            if beta != 1.0:
                scaled_c = self.fresh(f"{c}_scaled")
                factor = self.const(np.array(beta, np.float32), f"{node.name}/beta")
                self.emit("Mul", [c, factor], [scaled_c], f"{node.name}/beta_Mul")
                c = scaled_c
            self.emit("Add", [mm, c], [out], f"{node.name}/Add")

    def _gelu(self, node: Node, x: str, out: str) -> None:
        """Gelu for opsets below 20: the erf form, or the tanh approximation."""
        name = node.name
        c = lambda v, hint: self.const(np.array(v, np.float32), f"{name}/{hint}")
        t = lambda hint: self.fresh(f"{name}/{hint}")
        if node.attrs.get("approximate", "none") == "tanh":
            cube, inner, scaled, tanh = t("cube"), t("inner"), t("scaled"), t("tanh")
            self.emit("Mul", [x, x], [sq := t("square")], f"{name}/square")
            self.emit("Mul", [sq, x], [cube], f"{name}/cube")
            self.emit("Mul", [cube, c(0.044715, "k")], [m := t("k_cube")], f"{name}/k_cube")
            self.emit("Add", [x, m], [inner], f"{name}/inner")
            self.emit("Mul", [inner, c(math.sqrt(2.0 / math.pi), "sqrt_2_pi")], [scaled], f"{name}/scaled")
            self.emit("Tanh", [scaled], [tanh], f"{name}/Tanh")
            erf_like = tanh
        else:
            self.emit("Div", [x, c(math.sqrt(2.0), "sqrt2")], [d := t("div")], f"{name}/Div")
            self.emit("Erf", [d], [erf_like := t("erf")], f"{name}/Erf")
        self.emit("Add", [erf_like, c(1.0, "one")], [p := t("one_plus")], f"{name}/Add")
        self.emit("Mul", [x, p], [h := t("x_one_plus")], f"{name}/Mul")
        self.emit("Mul", [h, c(0.5, "half")], [out], f"{name}/Mul_half")

    def _onnx_form(self, node: Node, inputs: list[str]) -> tuple[list[str], dict[str, Any]]:
        """Inputs and attributes of an ONNX node at the target opset from the IR's canonical form."""
        op = node.op_type
        attrs = dict(node.attrs)
        inputs = list(inputs)

        def int_input(key: str, hint: str) -> str:
            return self.const(np.asarray(attrs.pop(key), np.int64), f"{node.name}/{hint}")

        if (
            op in ("Squeeze", "Unsqueeze")
            and "axes" in attrs
            or op == "ReduceMean"
            and "axes" in attrs
            and self.opset >= _REDUCE_AXES_INPUT_OPSET
        ):
            inputs = [inputs[0], int_input("axes", "axes")]
        elif op == "Slice" and "starts" in attrs:
            inputs = [inputs[0]] + [
                int_input(k, k) for k in ("starts", "ends", "axes", "steps") if k in attrs
            ]
        elif op == "Clip" and ("min" in attrs or "max" in attrs):
            dtype = self._dtype(node.inputs[0])
            bounds = [
                self.const(np.array(attrs.pop(k), dtype), f"{node.name}/{k}") if k in attrs else ""
                for k in ("min", "max")
            ]
            inputs = [inputs[0], *bounds]
            while inputs[-1] == "":
                inputs.pop()
        elif op == "Resize" and ("scales" in attrs or "sizes" in attrs):
            scales = attrs.pop("scales", None)
            sizes = attrs.pop("sizes", None)
            inputs = [
                inputs[0],
                "",
                self.const(np.asarray(scales, np.float32), f"{node.name}/scales")
                if scales is not None
                else "",
            ]
            if sizes is not None:
                inputs.append(self.const(np.asarray(sizes, np.int64), f"{node.name}/sizes"))
        elif op == "Cast":
            attrs["to"] = int(helper.np_dtype_to_tensor_dtype(np.dtype(attrs["to"])))
        return inputs, _attributes(attrs)

    def _dtype(self, name: str) -> np.dtype:
        info = self.graph.info(name)
        return info.dtype if info is not None and info.dtype is not None else np.dtype(np.float32)


def op_bias_scale(node: Node) -> float | None:
    """The factor the layer applies to its bias (Gemm's beta), or None when it has no bias input."""
    if not node.input(2):
        return None
    return float(node.attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0


def _attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """IR attribute values as onnx.helper accepts them (tensors for arrays, plain scalars)."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            value = numpy_helper.from_array(value)
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, (list, tuple)):
            value = [v.item() if isinstance(v, np.generic) else v for v in value]
        out[key] = value
    return out


def _value_info(info: ValueInfo, graph: Graph | None = None) -> onnx.ValueInfoProto:
    dtype = info.dtype
    if dtype is None and graph is not None:
        inferred = graph.value_info.get(info.name)
        dtype = inferred.dtype if inferred is not None else None
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) if dtype is not None else TensorProto.FLOAT
    shape = None if info.shape is None else [d if isinstance(d, (int, str)) else None for d in info.shape]
    return helper.make_tensor_value_info(info.name, elem, shape)


def _all_names(graph: Graph) -> set[str]:
    names = set(graph.initializers) | set(graph.value_info) | set(graph.input_names) | set(graph.output_names)
    for node in graph.nodes:
        names.add(node.name)
        names.update(node.inputs)
        names.update(node.outputs)
    return names
