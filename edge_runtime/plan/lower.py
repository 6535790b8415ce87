"""Lowering: an optimized float graph + activation parameters -> a :class:`QuantizedPlan`.

What each operator becomes (the executor's step names in brackets):

- Conv [conv]: per-channel int8 weights, int32 bias, integer requantization with the
  fused ReLU/ReLU6 clamp; depthwise 3x3/5x5 stride 1/2 on the direct depthwise kernel,
  any other conv on im2col + GEMM. Gemm, and MatMul by a constant [gemm]: the same.
  Both run on the 2:4-sparse kernels (conv2d24, gemm24) when the weights are 2:4 along
  the reduction order the kernel walks (a conv: kernel_h x kernel_w x in_c of a group;
  a GEMM after a Flatten of a 4-D map: h x w x c, see below), or when the layer is
  listed in ``sparsity`` (which prunes weights that are 2:4 in no order the plan can use).
- Add / Mul [add, mul] with rescale, also of a map and a row repeated over it (an SE
  block's [N, C, H, W] x [N, C, 1, 1] gate is [N, H, W, C] x [N, 1, 1, C] in NHWC storage);
  Sigmoid, HardSigmoid, HardSwish, Gelu, Tanh [lut]: 256-entry tables; PRelu with one
  slope per channel, and Add/Sub/Mul/Div of a per-channel constant the add/mul kernels do
  not take (a map kept NCHW, a Sub or Div) [lut_channels]: a 256-entry table per channel
  along the stored channel axis, the float op's bits; Relu / Clip [clamp];
  MaxPool, AveragePool, GlobalAveragePool [maxpool, avgpool, global_avgpool].
- Concat [concat]: inputs whose parameters differ from the output's are first
  requantized [lut: the table of ``quantize(dequantize(q))``].
- Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, Gather, Identity and
  nearest Resize [move] work on the int8 bytes directly and keep their input's
  parameters.
- Attention, MatMul(q, k^T) [-> Mul/Div by a scalar] [-> Add mask] -> Softmax ->
  MatMul(., v) [attention]: one step on the int8 attention kernel (int8 products, float
  scores and softmax, 8-bit probabilities; docs/numerics.md), quantized once at the
  end (see _attention_chains).
- Softmax, LayerNormalization [softmax, layernorm], other MatMuls between two
  activations [matmul] and a few rarer cases (linear Resize, Sub/Div of two
  activations, broadcasts the int8 add/mul kernels do not run) [float] dequantize,
  compute in float32, and requantize.
- Gather from a constant float table (embeddings) [embed] gathers rows of the table
  quantized ahead of time with the output's parameters (quantization is element-wise,
  so gathering quantized rows gives the bits of quantizing gathered rows, at a quarter
  of the float table's size).

Layouts: 4-D graph inputs are converted to NHWC once at the entry; convolutions
and pools read and write NHWC; element-wise ops, Concat, Slice, Transpose and
Resize work on NHWC by remapping axes; anything that needs the logical (NCHW)
order gets one transpose step [transpose], shared by all such readers. A
Flatten/Reshape of an NHWC map whose only readers are constant-weight GEMMs is
a free reshape of the NHWC bytes: the GEMM's weight columns are permuted instead.
Outputs go back to NCHW and float32 at the exit [dequantize].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime import numerics
from edge_runtime.errors import EdgeRuntimeError, KernelError, QuantizationError, UnsupportedOperatorError
from edge_runtime.graph import Graph, Node
from edge_runtime.graph.reference import OPS as REFERENCE_OPS
from edge_runtime.graph.reference import _spatial_pads  # the one definition of auto_pad
from edge_runtime.numerics import QuantParams
from edge_runtime.plan.quantized_plan import PlanIO, QuantizedPlan, Step

__all__ = ["lower"]

# Storage order of a 4-D map kept NHWC: stored = logical.transpose(TO_NHWC).
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
# Where logical axis a of an NCHW tensor sits in its NHWC storage.
NHWC_AXIS = (0, 3, 1, 2)

_LUT_KINDS = {"Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish",
              "Gelu": "gelu", "Tanh": "tanh"}  # fmt: skip
_MOVE_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather"})
# Ops that may run in float on dequantized inputs when no int8 kernel fits.
_FLOAT_OK = frozenset({
    "Sub", "Div", "BatchNormalization", "Resize", "Add", "Mul", "AveragePool", "Gemm",
    "ConvTranspose", "PRelu", "Softmax", "LogSoftmax", "Hardmax", "InstanceNormalization", "ReduceMean",
    "ReduceSum", "ReduceL2", "Einsum", "Max", "Min", "MatMul", "LSTM", "GRU", "Pow",
})  # fmt: skip
# Element-wise functions of one tensor: a 256-entry table built from the reference op
# (y = quantize(f(dequantize(x))), the spec's rule for non-linear int8 ops).
_TABLE_OPS = frozenset({
    "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Swish", "ThresholdedRelu",
    "Exp", "Log", "Abs", "Neg", "Reciprocal", "Sqrt", "Erf", "Floor", "Ceil", "Round", "Sin", "Cos",
})  # fmt: skip
# Data movement and order statistics that commute with a monotonic quantization: run on the
# int8 bytes, the output keeps the input's parameters.
_BYTE_OPS = frozenset({"Expand", "Tile", "DepthToSpace", "SpaceToDepth", "ReduceMax", "ReduceMin",
                       "GlobalMaxPool"})  # fmt: skip
# A layer is auto-detected as 2:4 only when it is big enough for that not to be an accident.
_MIN_SPARSE_K = 16
# The stand-in height and width of a symbolic input dimension (see _Lowering._conv_geometry).
_DYNAMIC_STANDIN = 32
# Operators whose handler always refuses them (so a partition need not try them).
_NEVER_NATIVE_OPS: frozenset[str] = frozenset()
# Steps that are no native computation: a plan made only of these refuses the graph instead.
_NOT_NATIVE = frozenset({"quantize", "dequantize", "transpose", "move", "subgraph", "float"})
# Operators that carry a model's multiply-accumulates.
_MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN"})


def lower(
    graph: Graph,
    activations: Mapping[str, QuantParams],
    *,
    sparsity: set[str] | None = None,
    sparse_kernels: bool = True,
    partition: bool = True,
    input_shapes: Mapping[str, Any] | None = None,
    weight_bits: int = 8,
) -> QuantizedPlan:
    """Lower an optimized graph (:func:`edge_runtime.graph.optimize`) to an INT8 plan.

    ``activations`` holds the parameters of every float tensor (from
    :func:`edge_runtime.plan.calibrate`, QAT or the package's manifest).
    ``sparsity`` names layers (node names or weight tensor names) to run on the
    2:4-sparse kernel; their int8 weights are pruned to 2:4 when they are not.
    ``sparse_kernels=False`` runs every layer dense (to compare with the sparse plan).

    Nodes the native kernels cannot run are gathered into [subgraph] steps that run
    them in float (``partition``, see :mod:`edge_runtime.plan.partition`); with
    ``partition=False``, or when no node runs natively, the first such node is refused
    with UnsupportedOperatorError naming the operator and node. Input height and width
    may be symbolic: convolutions and pools then work out their padding per input shape.
    ``input_shapes`` (input name -> a representative shape) only sizes the per-node MAC
    estimate of symbolic dimensions (``plan.macs``). ``weight_bits`` 7 quantizes every
    weight to [-63, 63] (:func:`edge_runtime.numerics.quantize_weights`), the package's
    declared ``weight_bits``. Raises QuantizationError naming a tensor without parameters.
    """
    numerics.weight_qmax(weight_bits)  # 8 or 7, else QuantizationError
    lowering = _Lowering(graph, activations, sparsity or set(), sparse_kernels)
    lowering.partition = partition
    lowering.weight_bits = weight_bits
    plan = lowering.run()
    # Once the foreign nodes are known, lower again with them set aside from the start, so
    # that they merge into as few [subgraph] steps as their dependencies allow (the first
    # pass has to emit a segment before trying any node that reads from it).
    known: set[str] = set()
    for _ in range(4):
        if lowering.failed <= known:
            break
        known |= lowering.failed
        lowering = _Lowering(graph, activations, sparsity or set(), sparse_kernels)
        lowering.partition, lowering.foreign = True, set(known)
        lowering.weight_bits = weight_bits
        plan = lowering.run()
    from edge_runtime.plan.partition import node_macs

    plan.macs = {k: v for k, v in node_macs(graph, input_shapes).items() if v}
    return plan


class _Lowering:
    def __init__(
        self, graph: Graph, activations: Mapping[str, QuantParams], sparsity: set[str], sparse_kernels: bool
    ) -> None:
        self.graph = graph
        self.activations = dict(activations)
        self.sparsity = sparsity
        self.sparse_kernels = sparse_kernels
        self.steps: list[Step] = []
        self.params: dict[str, QuantParams | None] = {}
        self.layout: dict[str, str] = {}  # "plain", "nhwc" or "flat_hwc"
        self.flat_chw: dict[str, tuple[int, int, int]] = {}  # logical (C, H, W) of a flat_hwc tensor
        self.alias: dict[str, str] = {}  # Identity outputs -> their input
        self.converted: dict[tuple[str, str], str] = {}
        self.node: Node | None = None
        self.partition = True
        self.weight_bits = 8  # the width every weight is quantized to: 8 or 7
        self.foreign: set[str] = set()  # nodes known not to lower: straight into [subgraph] steps
        self.failed: set[str] = set()  # nodes that refused to lower in this pass

    # -- driver ------------------------------------------------------------

    def run(self) -> QuantizedPlan:
        inputs = [self._entry(info.name) for info in self.graph.inputs]
        attention = {id(chain.nodes[-1]): chain for chain in _attention_chains(self.graph)}
        fused = {id(node) for chain in attention.values() for node in chain.nodes}
        # Nodes the kernels cannot run, not emitted yet: one [subgraph] step, emitted when
        # a native node needs one of their results (or at the end), so that foreign nodes
        # merge across the native nodes between them (see edge_runtime.plan.partition).
        pending: list[Node] = []
        pending_out: set[str] = set()
        first_error: UnsupportedOperatorError | None = None
        for node in self.graph.nodes:
            self.node = node
            chain = attention.get(id(node))
            if chain is None and id(node) in fused:
                continue  # a node of an attention chain, emitted at the chain's last node
            group = chain.nodes if chain is not None else [node]
            if self.partition and any(g.name in self.foreign for g in group):
                pending.extend(group)
                pending_out.update(n for g in group for n in g.outputs if n)
                continue
            if pending and any(n in pending_out for g in group for n in g.inputs):
                if self.partition and chain is None and self._never_native(node):
                    pending.append(node)  # joins the segment it reads from
                    pending_out.update(n for n in node.outputs if n)
                    continue
                self._segment(pending, pending_out)
            error = self._lower_node(node, chain)
            if error is None:
                continue
            if not self.partition:
                raise error
            first_error = first_error or error
            self.failed.update(g.name for g in group)
            pending.extend(group)
            pending_out.update(n for g in group for n in g.outputs if n)
        self.node = None
        if pending:
            self._segment(pending, pending_out)
        if self.graph.nodes and not any(s.op not in _NOT_NATIVE for s in self.steps):
            # Nothing would run on the int8 kernels: the last resort is refusing the graph.
            if first_error is not None:
                raise first_error
            floats = {s.node: s.attrs.get("node_op", s.op) for s in self.steps if s.op == "float"}
            if any(op in _MAC_OPS for op in floats.values()):  # all its MACs in float: onnxruntime's job
                raise UnsupportedOperatorError(
                    f"graph {self.graph.name!r}: no node runs on the native int8 kernels, only float "
                    "fallbacks (" + ", ".join(f"{op} node {name!r}" for name, op in floats.items())
                    + "); run this model on onnxruntime (backend='onnxruntime' or 'auto')"
                )
        outputs = [self._exit(info.name) for info in self.graph.outputs]
        return QuantizedPlan(self.graph.name, inputs, outputs, self.steps, self.params)

    def _never_native(self, node: Node) -> bool:
        """Whether ``node`` has no native form whatever its inputs (no handler, another domain)."""
        if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_NATIVE_OPS:
            return True
        return getattr(self, f"_op_{node.op_type}", None) is None

    def _lower_node(self, node: Node, chain: _AttentionChain | None) -> UnsupportedOperatorError | None:
        """Emit the steps of ``node`` (or of an attention chain ending at it); on
        UnsupportedOperatorError, undo what it emitted and return the error."""
        mark = (len(self.steps), set(self.converted), set(self.params), set(self.alias))
        try:
            if chain is not None:
                self._attention(chain)
                return None
            handler = getattr(self, f"_op_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx") or handler is None:
                raise UnsupportedOperatorError(
                    f"{node}: the native backend has no {node.op_type!r} operator"
                    + (f" (domain {node.domain!r})" if node.domain else "")
                    + "; run this model on onnxruntime (backend='onnxruntime' or 'auto')"
                )
            try:
                handler(node)
            except EdgeRuntimeError as exc:
                if str(node.name) in str(exc):
                    raise
                raise type(exc)(f"{node}: {exc}") from exc
        except UnsupportedOperatorError as exc:
            del self.steps[mark[0] :]
            for key in set(self.converted) - mark[1]:
                del self.converted[key]
            for name in set(self.params) - mark[2]:
                self.params.pop(name, None)
                self.layout.pop(name, None)
            for name in set(self.alias) - mark[3]:
                del self.alias[name]
            return exc
        return None

    def _segment(self, nodes: list[Node], produced: set[str]) -> None:
        """One [subgraph] step running ``nodes`` in float; clears ``nodes`` and ``produced``."""
        from edge_runtime.plan.partition import segment_step

        current, self.node = self.node, nodes[0]

        inside = {id(n) for n in nodes}
        graph_inputs = set(self.graph.input_names)
        reads: list[str] = []
        for node in nodes:
            for name in node.inputs:
                if name and name not in produced and name not in reads and not self.graph.is_constant(name):
                    reads.append(name)
        buffers, is_float, in_params = [], [], []
        for name in reads:
            src = self._src(name)
            if name in graph_inputs and self.params.get(name) is not None:
                buffers.append(f"in:{name}")  # the float input as fed: no quantization on the way
                is_float.append(True)
                in_params.append(None)
                continue
            qp = self.params.get(src)
            if qp is not None:
                src = self._as(name, "plain")
            buffers.append(src)
            is_float.append(qp is not None or _is_float(self.graph, name))
            in_params.append(None if qp is None else qp.to_dict())
        outputs = self.graph.output_names
        written: list[str] = []
        out_params: list[dict[str, Any] | None] = []
        for node in nodes:
            for name in node.outputs:
                if not name:
                    continue
                readers = [r for r in self.graph.consumers(name) if id(r) not in inside]
                if not readers and name not in outputs:
                    continue
                written.append(name)
                qp = None
                if _is_float(self.graph, name) and readers:
                    qp = self._act(name)  # native steps read it quantized (a graph output too)
                out_params.append(None if qp is None else qp.to_dict())
        attrs, arrays = segment_step(self.graph, nodes, reads, written, is_float)
        attrs["in_params"] = in_params
        attrs["out_params"] = out_params
        self._emit("subgraph", buffers, written, attrs, arrays, node=nodes[0].name)
        for name, p in zip(written, out_params):
            self._set(name, None if p is None else QuantParams.from_dict(p), "plain")
        self.node = current
        nodes.clear()
        produced.clear()

    def _entry(self, name: str) -> PlanIO:
        info = self.graph.info(name)
        dtype = np.dtype(info.dtype) if info is not None and info.dtype is not None else np.dtype(np.float32)
        shape = list(info.shape) if info is not None and info.shape is not None else None
        if not np.issubdtype(dtype, np.floating):
            self.params[name] = None
            self.layout[name] = "plain"
            return PlanIO(name, name, dtype.name, shape)
        qp = self._act(name)
        nhwc = shape is not None and len(shape) == 4
        attrs: dict[str, Any] = {**qp.to_dict()}
        if nhwc:
            attrs["perm"] = list(TO_NHWC)
        feed = f"in:{name}"
        self._emit("quantize", [feed], [name], attrs, node="<input>")
        self.params[feed] = None
        self._set(name, qp, "nhwc" if nhwc else "plain")
        return PlanIO(name, feed, "float32", shape)

    def _exit(self, name: str) -> PlanIO:
        info = self.graph.info(name)
        shape = list(info.shape) if info is not None and info.shape is not None else None
        src = self._src(name)
        qp = self.params[src]
        if qp is None:
            dtype = info.dtype if info is not None and info.dtype is not None else np.int64
            return PlanIO(name, src, np.dtype(dtype).name, shape)
        if self.layout[src] == "flat_hwc":  # never: flat_hwc is only made for GEMM readers
            raise AssertionError(f"output {name!r} left in flat_hwc layout")
        attrs: dict[str, Any] = {**qp.to_dict()}
        if self.layout[src] == "nhwc":
            attrs["perm"] = list(TO_NCHW)
        out = f"out:{name}"
        self._emit("dequantize", [src], [out], attrs, node="<output>")
        self.params[out] = None
        return PlanIO(name, out, "float32", shape)

    # -- helpers -----------------------------------------------------------

    def _emit(
        self,
        op: str,
        inputs: list[str],
        outputs: list[str],
        attrs: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        node: str | None = None,
    ) -> None:
        name = node if node is not None else (self.node.name if self.node is not None else "")
        self.steps.append(Step(op, name, list(inputs), list(outputs), attrs or {}, arrays or {}))

    def _src(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def _set(self, name: str, qp: QuantParams | None, layout: str) -> None:
        self.params[name] = qp
        self.layout[name] = layout

    def _act(self, name: str) -> QuantParams:
        qp = self.activations.get(name)
        if qp is None:
            where = f"{self.node}: " if self.node is not None else ""
            raise QuantizationError(
                f"{where}no activation quantization parameters for tensor {name!r}: "
                "calibrate the model (edge quantize) or pass parameters for every tensor "
                "listed by edge_runtime.plan.tensors_to_calibrate()"
            )
        return qp

    def _rank(self, name: str) -> int | None:
        return self.graph.rank(name)

    def _static(self, name: str) -> tuple[int, ...] | None:
        """The logical shape with every dim but the first known, else None (dim 0 is the batch)."""
        shape = self.graph.shape(name)
        if shape is None or not all(isinstance(d, int) for d in shape[1:]):
            return None
        return tuple(d if isinstance(d, int) else -1 for d in shape)

    def _spatial(self, name: str) -> tuple[int | None, int | None, int | None] | None:
        """(C, H, W) of a 4-D NCHW tensor, each None when symbolic; None when not 4-D."""
        shape = self.graph.shape(name)
        if shape is None or len(shape) != 4:
            return None
        return tuple(d if isinstance(d, int) and d > 0 else None for d in shape[1:])  # type: ignore[return-value]

    @staticmethod
    def _conv_geometry(spatial, cin: int | None, kernel, strides, dilations) -> tuple[int, int, int, bool]:
        """(C, H, W, dynamic) for a convolution or pool. A symbolic H or W becomes a
        stand-in size at which the weights are packed and the kernel choice is checked
        (the packed weights do not depend on it); the executor works out the padding and
        output size of each real input shape (``dynamic_hw``)."""
        c = spatial[0] if spatial[0] is not None else cin
        if c is None:
            raise UnsupportedOperatorError("the number of input channels is unknown")
        dynamic = spatial[1] is None or spatial[2] is None
        sizes = []
        for i, d in enumerate(spatial[1:]):
            extent = (int(kernel[i]) - 1) * int(dilations[i]) + 1
            sizes.append(d if d is not None else max(_DYNAMIC_STANDIN, extent, int(strides[i])))
        return int(c), sizes[0], sizes[1], dynamic

    @staticmethod
    def _dynamic_attrs(node: Node, dynamic: bool) -> dict[str, Any]:
        """What the executor needs to pad an input of any height and width like ONNX does."""
        if not dynamic:
            return {}
        return {
            "dynamic_hw": True,
            "auto_pad": str(node.attrs.get("auto_pad", "NOTSET")),
            "pads": [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])],
            "ceil_mode": int(node.attrs.get("ceil_mode", 0)),
        }

    def _as(self, name: str, layout: str) -> str:
        """The buffer holding tensor ``name`` in ``layout`` ("plain" or "nhwc"), converting once."""
        src = self._src(name)
        have = self.layout[src]
        if have == layout:
            return src
        key = (src, layout)
        if key not in self.converted:
            if have == "flat_hwc" or (layout == "nhwc" and self._rank(name) != 4):
                raise AssertionError(f"cannot convert {src!r} from {have} to {layout}")
            out = f"{src}@{layout}"
            perm = TO_NCHW if layout == "plain" else TO_NHWC
            self._emit("transpose", [src], [out], {"perm": list(perm)})
            self._set(out, self.params[src], layout)
            self.converted[key] = out
        return self.converted[key]

    def _bias_fitted(
        self, wq: numerics.WeightQuant, w: np.ndarray, bias: np.ndarray | None, input_scale: float
    ) -> numerics.WeightQuant:
        """``wq``, with the scale of every channel whose int32 bias would overflow at
        ``input_scale * weight_scale`` raised until the bias fits (within 2^30). Such a channel's
        weights are tiny next to its bias (a channel scaled down by a folded affine block or
        barely trained); they keep as many codes as the larger scale leaves them."""
        if bias is None:
            return wq
        channels = wq.scales.shape[0]
        b = np.abs(np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (channels,)))
        need = b / (np.float64(np.float32(input_scale)) * float(2**30))
        bad = need > wq.scales.astype(np.float64)
        if not bad.any():
            return wq
        qmax = 63 if getattr(self, "weight_bits", 8) == 7 else 127
        scales = np.where(bad, need, wq.scales).astype(np.float32)
        rows = np.asarray(w, np.float32).reshape(channels, -1)
        values = wq.values.reshape(channels, -1).copy()
        values[bad] = np.clip(np.rint(rows[bad] / scales[bad, None]), -qmax, qmax).astype(np.int8)
        return numerics.WeightQuant(scales=scales, values=values.reshape(wq.values.shape), axis=wq.axis)

    def _widened(self, name: str, qp: QuantParams, accumulator_scales: np.ndarray) -> QuantParams:
        """``qp``, or the same zero point with a larger scale when an output channel's
        accumulator step (input scale x weight scale) is coarser than the calibrated output
        step (the requantization multiplier must stay below 1): a channel the calibration
        data barely excited (silero's encoder has such channels) widens the range instead of
        failing the model."""
        needed = float(np.max(accumulator_scales)) * (1.0 + 2.0**-20)
        if qp.scale >= needed:
            return qp
        widened = QuantParams(needed, qp.zero_point, qp.dtype)
        self.activations[name] = widened
        return widened

    def _requantized(self, name: str, target: QuantParams) -> str:
        """``name`` requantized to ``target`` by a 256-entry table (a no-op when equal)."""
        src = self._src(name)
        qp = self.params[src]
        if qp == target:
            return src
        codes = np.arange(qp.qmin, qp.qmax + 1).astype(qp.numpy_dtype)
        table = numerics.quantize(numerics.dequantize(codes, qp), target)
        table = _lut_order(table, qp.dtype)
        out = self.graph.unique_name(f"{src}@requant")
        self.alias.pop(out, None)
        self._emit("lut", [src], [out], {}, {"table": table})
        self._set(out, target, self.layout[src])
        return out

    def _quantized_constant(self, value: np.ndarray) -> tuple[np.ndarray, QuantParams]:
        value = np.asarray(value, dtype=np.float32)
        qp = numerics.activation_params(float(value.min()), float(value.max()))
        return numerics.quantize(value, qp), qp

    # -- GEMM and convolution ---------------------------------------------------

    def _sparse_order(
        self, node: Node, weight_name: str, orders: list[np.ndarray]
    ) -> tuple[bool, int, np.ndarray]:
        """(sparse, index of the order used, int8 [N, K] rows) for a layer whose weights the
        kernel may read in any of ``orders`` (the same rows, columns permuted; the first is
        the reduction order that 2:4 is defined in, see ``prune_model_2_4``).

        Weights that are 2:4 in one of the orders (auto-detected when K >= 16) run sparse in
        it; a layer listed in ``sparsity`` but 2:4 in none is pruned in the first. Weights
        that are already 2:4 are never pruned again: that would make the plan differ from
        the float model it was validated against."""
        from edge_runtime.kernels import is_2_4, prune_2_4

        if not self.sparse_kernels:
            return False, 0, orders[0]
        listed = node.name in self.sparsity or weight_name in self.sparsity
        if listed or (orders[0].shape[1] >= _MIN_SPARSE_K and orders[0].any()):
            for i, rows in enumerate(orders):
                if is_2_4(rows):
                    return True, i, rows
        if listed:
            return True, 0, prune_2_4(orders[0])
        return False, 0, orders[0]

    def _flattened_map(self, a: str) -> tuple[str, tuple[int, int, int]] | None:
        """(x, (C, H, W)) when ``a`` is a Flatten/Reshape of a 4-D map x [N, C, H, W] into
        [N, C*H*W] (through Identity nodes), else None."""
        producer = self.graph.producer(a)
        while producer is not None and producer.op_type == "Identity":
            producer = self.graph.producer(producer.inputs[0])
        if producer is None or producer.op_type not in ("Flatten", "Reshape"):
            return None
        x = producer.inputs[0]
        shape, out_shape = self._static(x), self.graph.shape(a)
        if shape is None or len(shape) != 4 or out_shape is None or len(out_shape) != 2:
            return None
        if out_shape[1] != shape[1] * shape[2] * shape[3] or self.params.get(self._src(x)) is None:
            return None
        return x, (shape[1], shape[2], shape[3])

    def _flattened(self, x: str, layout: str, chw: tuple[int, int, int]) -> str:
        """The 4-D map ``x`` flattened from its ``layout`` storage: columns (h, w, c) from
        "nhwc" (layout flat_hwc), (c, h, w) from "plain"; emitted once."""
        src = self._as(x, layout)
        key = (src, "flat")
        if key not in self.converted:
            out = f"{src}@flat"
            self._emit("move", [src], [out], {"node_op": "Flatten", "node_attrs": {"axis": 1}})
            self._set(out, self.params[src], "flat_hwc" if layout == "nhwc" else "plain")
            if layout == "nhwc":
                self.flat_chw[out] = chw
            self.converted[key] = out
        return self.converted[key]

    def _weight_gemm(
        self, node: Node, a: str, w: np.ndarray, bias: np.ndarray | None, weight_name: str
    ) -> None:
        """``out = act(a @ w.T + bias)`` with float ``w`` of shape (N, K) on the int8 GEMM.

        A GEMM reading a Flatten of a 4-D map reads the NHWC bytes when it can (columns
        (h, w, c): the reduction order that 2:4 is defined in for it), else the logical
        (c, h, w) order; it switches to the other order (one flatten, or a transpose and
        a flatten) only when its weights are 2:4 in that order and not in the current one."""
        out = node.outputs[0]
        src = self._src(a)
        if self.layout[src] == "nhwc":
            src = self._as(a, "plain")
        in_qp = self.params[src]
        if in_qp is None:
            raise UnsupportedOperatorError(f"{node}: input {a!r} is not a float tensor")
        out_qp = self._act(out)
        # per output row: permuting columns commutes with it
        wq = numerics.quantize_weights(w, axis=0, bits=self.weight_bits)
        wq = self._bias_fitted(wq, w, bias, in_qp.scale)
        out_qp = self._widened(out, out_qp, in_qp.scale * wq.scales)
        orders, layouts = [wq.values], [self.layout[src]]
        flat = self._flattened_map(a)
        if flat is not None:
            x, (c, h, wd) = flat
            n = w.shape[0]
            hwc = wq.values.reshape(n, c, h, wd).transpose(0, 2, 3, 1).reshape(n, -1)
            orders, layouts = [hwc, wq.values], ["flat_hwc", "plain"]
        sparse, chosen, values = self._sparse_order(node, weight_name, orders)
        if flat is not None and not sparse:
            chosen = layouts.index(self.layout[src])  # dense: whatever order the input has
            values = orders[chosen]
        if flat is not None and layouts[chosen] != self.layout[src]:
            src = self._flattened(x, "nhwc" if layouts[chosen] == "flat_hwc" else "plain", (c, h, wd))
        bias_q = numerics.quantize_bias(
            np.zeros(w.shape[0], np.float32) if bias is None else bias, in_qp.scale, wq.scales
        )
        rq = numerics.requant(in_qp.scale, wq.scales, out_qp, node.attrs.get("activation") or None)
        self._emit(
            "gemm",
            [src],
            [out],
            {"a_zero_point": in_qp.zero_point, "sparse": sparse, **_requant_attrs(rq, out_qp)},
            {"weights": np.ascontiguousarray(values), "bias": bias_q, **_requant_arrays(rq)},
        )
        self._set(out, out_qp, "plain")

    def _op_Gemm(self, node: Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        c = node.input(2)
        w = self.graph.constant(b)
        bias = self.graph.constant(c) if c else None
        if w is None or (c and bias is None) or node.attrs.get("transA", 0) or w.ndim != 2:
            return self._float(node)  # activation x activation, or a transposed A
        w = w.astype(np.float32)
        w = w if node.attrs.get("transB", 0) else w.T
        w = w * np.float32(node.attrs.get("alpha", 1.0))
        if bias is not None:
            bias = np.broadcast_to(
                bias.astype(np.float32) * np.float32(node.attrs.get("beta", 1.0)), (w.shape[0],)
            )
        self._weight_gemm(node, a, np.ascontiguousarray(w), bias, b)

    def _op_MatMul(self, node: Node) -> None:
        a, b = node.inputs
        w = self.graph.constant(b)
        if w is not None and w.ndim > 2 and all(d == 1 for d in w.shape[:-2]):
            w = w.reshape(w.shape[-2:])  # [1, ..., K, N] weights broadcast like [K, N]
        if w is not None and w.ndim == 2 and self.graph.constant(a) is None:
            return self._weight_gemm(node, a, np.ascontiguousarray(w.astype(np.float32).T), None, b)
        # Two activations (attention scores and context): float matmul, see the module docstring.
        self._float(node, op="matmul")

    def _op_Conv(self, node: Node) -> None:
        from edge_runtime.kernels import pack_dwconv2d

        x, wname = node.inputs[0], node.inputs[1]
        w = self.graph.constant(wname)
        bname = node.input(2)
        bias = self.graph.constant(bname) if bname else None
        spatial = self._spatial(x)
        if w is None or (bname and bias is None) or spatial is None or w.ndim != 4:
            raise UnsupportedOperatorError(
                f"{node}: the native backend runs 2-D convolutions with constant weights on a 4-D input "
                f"with known channels (got input shape {self.graph.shape(x)})"
            )
        m = w.shape[0]
        kernel = list(node.attrs.get("kernel_shape", w.shape[2:]))
        strides = list(node.attrs.get("strides", [1, 1]))
        dilations = list(node.attrs.get("dilations", [1, 1]))
        group = int(node.attrs.get("group", 1))
        cin, h, wd, dynamic = self._conv_geometry(spatial, w.shape[1] * group, kernel, strides, dilations)
        pads = [int(p) for p in _spatial_pads(node, (h, wd), kernel, strides, dilations)]  # t, l, b, r
        src = self._as(x, "nhwc")
        in_qp = self.params[src]
        out = node.outputs[0]
        out_qp = self._act(out)
        wq = numerics.quantize_weights(w.astype(np.float32), axis=0, bits=self.weight_bits)
        wq = self._bias_fitted(wq, w, bias, in_qp.scale)
        out_qp = self._widened(out, out_qp, in_qp.scale * wq.scales)
        bias_q = numerics.quantize_bias(
            np.zeros(m, np.float32) if bias is None else bias.astype(np.float32), in_qp.scale, wq.scales
        )
        rq = numerics.requant(in_qp.scale, wq.scales, out_qp, node.attrs.get("activation") or None)
        depthwise, sparse, values = False, False, wq.values
        subsample = None  # (stride_h, stride_w) taken after a stride-1 depthwise conv
        if group == cin == m and kernel[0] == kernel[1] in (3, 5) and strides[0] == strides[1] in (1, 2) \
                and dilations == [1, 1]:  # fmt: skip
            try:  # the kernel has the last word on what it supports (e.g. large pads)
                pack_dwconv2d(wq.values, bias_q, input_shape=(1, h, wd, cin), stride=strides[0], padding=pads)
                depthwise = True
            except KernelError:
                depthwise = False
        elif group == cin == m and kernel[0] == kernel[1] in (3, 5) and strides in ([2, 1], [1, 2]) \
                and dilations == [1, 1] and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", ""):  # fmt: skip
            # PaddleOCR's (2, 1) depthwise convs: the stride-1 depthwise kernel, then every other
            # row (or column) of its output: twice the taps of a strided kernel, a fraction of
            # the grouped im2col path's time; the rows kept are exactly the strided conv's.
            try:
                pack_dwconv2d(wq.values, bias_q, input_shape=(1, h, wd, cin), stride=1, padding=pads)
                depthwise, subsample = True, strides
            except KernelError:
                depthwise = False
        if not depthwise:  # 2:4 along the im2col order of one group, (kernel_h, kernel_w, in_c / group)
            ohwi = wq.values.transpose(0, 2, 3, 1)
            sparse, _, rows = self._sparse_order(node, wname, [ohwi.reshape(m, -1)])
            values = np.ascontiguousarray(rows.reshape(ohwi.shape).transpose(0, 3, 1, 2))
        attrs = {
            "input_hwc": [h, wd, cin], "stride": strides, "padding": pads, "dilation": dilations,
            "groups": group, "depthwise": depthwise, "sparse": sparse, "x_zero_point": in_qp.zero_point,
            **_requant_attrs(rq, out_qp), **self._dynamic_attrs(node, dynamic),
        }  # fmt: skip
        if subsample is not None:
            full = self.graph.unique_name(out + "@stride1")
            attrs["stride"] = [1, 1]
            self._emit("conv", [src], [full], attrs, {"weights": values, "bias": bias_q, **_requant_arrays(rq)})
            self._set(full, out_qp, "nhwc")
            rows = Node(
                "Slice", node.name, [full], [out],
                {"starts": [0, 0], "ends": [2**62, 2**62], "axes": [1, 2], "steps": list(subsample)},
            )  # fmt: skip
            self._move(rows, layout="nhwc")
            return
        self._emit("conv", [src], [out], attrs, {"weights": values, "bias": bias_q, **_requant_arrays(rq)})
        self._set(out, out_qp, "nhwc")

    def _op_ConvTranspose(self, node: Node) -> None:
        if self.graph.constant(node.inputs[1]) is None:
            raise UnsupportedOperatorError(f"{node}: ConvTranspose with weights computed at run time")
        if self._upsampling_gemm(node):
            return
        # Other forms: the reference's float transposed convolution on the dequantized input.
        self._float(node)

    def _upsampling_gemm(self, node: Node) -> bool:
        """A ConvTranspose whose stride equals its square kernel, unpadded and ungrouped (the
        upsamplers of decoders: DBNet's 2x2 stride 2) writes each input pixel's k x k output
        block independently: an int8 GEMM over the NHWC pixels into k*k*M channels ordered
        (row, column, channel), then DepthToSpace (DCR) on the bytes."""
        attrs = node.attrs
        w = self.graph.constant(node.inputs[1])
        bias = self.graph.constant(node.input(2)) if node.input(2) else None
        x, out = node.inputs[0], node.outputs[0]
        if w is None or w.ndim != 4 or (node.input(2) and bias is None) or self._rank(x) != 4:
            return False
        k = list(attrs.get("kernel_shape", w.shape[2:]))
        if (
            int(attrs.get("group", 1)) != 1 or k[0] != k[1] or list(w.shape[2:]) != k
            or list(attrs.get("strides", [1, 1])) != k or any(attrs.get("pads", [0, 0, 0, 0]))
            or any(attrs.get("output_padding", [0, 0])) or list(attrs.get("dilations", [1, 1])) != [1, 1]
            or "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "")
            or self.params.get(self._src(x)) is None
        ):  # fmt: skip
            return False
        c, m = w.shape[0], w.shape[1]
        rows = np.ascontiguousarray(w.astype(np.float32).transpose(2, 3, 1, 0).reshape(k[0] * k[1] * m, c))
        src = self._as(x, "nhwc")
        in_qp = self.params[src]
        out_qp = self._act(out)
        bits = {"bits": self.weight_bits} if hasattr(self, "weight_bits") else {}
        wq = numerics.quantize_weights(rows, axis=0, **bits)
        full_bias = None if bias is None else np.tile(bias.astype(np.float32), k[0] * k[1])
        wq = self._bias_fitted(wq, rows, full_bias, in_qp.scale)
        out_qp = self._widened(out, out_qp, in_qp.scale * wq.scales)
        bias_q = numerics.quantize_bias(
            np.zeros(rows.shape[0], np.float32) if full_bias is None else full_bias, in_qp.scale, wq.scales
        )
        rq = numerics.requant(in_qp.scale, wq.scales, out_qp, None)
        blocks = self.graph.unique_name(out + "@blocks")
        self._emit(
            "gemm", [src], [blocks],
            {"a_zero_point": in_qp.zero_point, "sparse": False, **_requant_attrs(rq, out_qp)},
            {"weights": np.ascontiguousarray(wq.values), "bias": bias_q, **_requant_arrays(rq)},
        )  # fmt: skip
        self._set(blocks, out_qp, "nhwc")
        self._move(Node("DepthToSpace", node.name, [blocks], [out], {"blocksize": k[0], "mode": "DCR"}))
        return True

    # -- element-wise --------------------------------------------------------

    def _binary(self, node: Node) -> None:
        op = node.op_type.lower()
        a_name, b_name = node.inputs
        out = node.outputs[0]
        ca, cb = self.graph.constant(a_name), self.graph.constant(b_name)
        if ca is not None and cb is not None:
            return self._float(node)
        out_qp = self._act(out)
        if ca is not None or cb is not None:  # one constant operand
            var, const, const_first = (b_name, ca, True) if ca is not None else (a_name, cb, False)
            if self._compose_affine(node, var, np.asarray(const), out_qp):
                return
            src = self._src(var)
            if self.params[src] is None:
                return self._float(node)
            layout = self.layout[src]
            if layout == "flat_hwc":
                src, layout = self._as(var, "plain"), "plain"
            rank = self._rank(var)
            const = np.asarray(const, dtype=np.float32)
            if layout == "nhwc":
                const = np.broadcast_to(const, np.broadcast_shapes(const.shape, (1, 1, 1, 1)))
                const = const.reshape((1,) * (4 - const.ndim) + const.shape).transpose(TO_NHWC)
            stored = self._stored_shape(var, layout)
            const = _trim_leading_ones(const)
            if not _kernel_broadcasts(const.shape, stored, rank):
                # A per-channel constant of a map kept NCHW (a detector head's bias and batch norm
                # after its transposed convolution): one table per channel.
                return self._channel_constant(node, var, src) or self._float(node)
            qconst, cqp = self._quantized_constant(const)
            in_qp = self.params[src]
            first, second = (cqp, in_qp) if const_first else (in_qp, cqp)
            if not _binary_ok(op, first, second, out_qp):
                return self._float(node)
            self._emit(
                op,
                [src],
                [out],
                {"constant_first": const_first, **_binary_attrs(first, second, out_qp)},
                {"constant": qconst},
            )
            self._set(out, out_qp, layout)
            return
        if op == "mul" and self._compose_gate(node, a_name, b_name, out_qp):
            return
        sa, sb = self._src(a_name), self._src(b_name)
        if self.params[sa] is None or self.params[sb] is None:
            return self._float(node)
        layout = "nhwc" if "nhwc" in (self.layout[sa], self.layout[sb]) and self._rank(a_name) == 4 \
            and self._rank(b_name) == 4 else "plain"  # fmt: skip
        sa, sb = self._as(a_name, layout), self._as(b_name, layout)
        same = _same_shape(self.graph.shape(a_name), self.graph.shape(b_name))
        qa, qb = self.params[sa], self.params[sb]
        broadcast = not same and _row_broadcast(
            self._stored_shape(a_name, layout), self._stored_shape(b_name, layout)
        )
        if (not same and not broadcast) or qa.dtype != qb.dtype or not _binary_ok(op, qa, qb, out_qp):
            # Another broadcast in float, in the layout both inputs already share.
            return self._float(node, layout=layout)
        # An SE block's [N, C, H, W] x [N, C, 1, 1] is [N, H, W, C] x [N, 1, 1, C] in NHWC storage:
        # the kernel's row broadcast (at batch > 1 once per sample, see the executor's _binary).
        self._emit(op, [sa, sb], [out], _binary_attrs(qa, qb, out_qp))
        self._set(out, out_qp, layout)

    def _stored_shape(self, name: str, layout: str) -> tuple[int, ...] | None:
        shape = self.graph.shape(name)  # symbolic dims as -1: a constant never matches them
        if shape is None:
            return None
        shape = tuple(d if isinstance(d, int) else -1 for d in shape)
        return tuple(shape[i] for i in TO_NHWC) if layout == "nhwc" else shape

    _op_Add = _binary
    _op_Mul = _binary

    # No int8 kernel: dequantize the inputs, run the node's reference in float32, quantize.
    def _op_Sub(self, node: Node) -> None:
        consts = [self.graph.constant(n) for n in node.inputs]
        if (consts[0] is None) != (consts[1] is None):
            var = node.inputs[0] if consts[0] is None else node.inputs[1]
            src = self._src(var)
            if self.params[src] is not None and self._channel_constant(node, var, src):
                return
        self._float(node)

    def _channel_constant(self, node: Node, var: str, src: str) -> bool:
        """``x op c`` (Add, Sub, Mul, Div) for a constant ``c`` with one value per channel (logical
        axis 1) of a quantized map or matrix ``x``, in the layout ``x`` has: one 256-entry table
        per channel [lut_channels] built from the reference op on every input code, so the bits
        of dequantize -> op in float32 -> quantize (the float step's). Returns whether it did."""
        out = node.outputs[0]
        in_qp, out_qp = self.params[src], self._act(out)
        rank, shape = self._rank(var), self.graph.shape(var)
        layout = self.layout[src]
        if in_qp is None or out_qp.dtype != in_qp.dtype or rank is None or rank < 2 or shape is None:
            return False
        if layout not in ("plain", "nhwc") or (layout == "nhwc" and rank != 4):
            return False
        channels = shape[1]
        const_first = var != node.inputs[0]
        c = np.asarray(self.graph.constant(node.inputs[0 if const_first else 1]), np.float32)
        if not isinstance(channels, int) or channels <= 1 or c.ndim > rank or c.size != channels:
            return False
        full = c.reshape((1,) * (rank - c.ndim) + c.shape)
        if full.shape[1] != channels:
            return False
        per_channel = full.reshape(channels, 1)
        codes = np.arange(in_qp.qmin, in_qp.qmax + 1).astype(in_qp.numpy_dtype)
        real = numerics.dequantize(codes, in_qp)[None, :]
        operands = [per_channel, real] if const_first else [real, per_channel]
        with np.errstate(all="ignore"):
            values = np.asarray(REFERENCE_OPS[node.op_type](node, operands)[0], np.float32)
        values = np.nan_to_num(values, nan=0.0, posinf=3.0e38, neginf=-3.0e38)
        tables = np.stack([_lut_order(numerics.quantize(row, out_qp), in_qp.dtype) for row in values])
        axis = 1 if layout == "plain" else 3
        stored = full.transpose(TO_NHWC) if layout == "nhwc" else c
        self._emit(
            "lut_channels", [src], [out],
            {"kind": node.op_type.lower(), "axis": axis, "constant_first": const_first,
             **_unary_attrs(in_qp, out_qp)},
            {"tables": tables, "constant": np.ascontiguousarray(stored)},
        )  # fmt: skip
        self._set(out, out_qp, layout)
        return True

    _op_Div = _op_Sub

    def _op_BatchNormalization(self, node: Node) -> None:
        self._float(node)  # one that no convolution absorbed

    def _lut(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        src = self._src(x)
        in_qp, out_qp = self.params[src], self._act(out)
        if in_qp is None:
            raise UnsupportedOperatorError(f"{node}: input {x!r} is not a float tensor")
        kind = _LUT_KINDS[node.op_type]
        if node.op_type == "Gelu" and node.attrs.get("approximate", "none") != "none":
            # No C table for the tanh form: build it from the reference op itself.
            codes = np.arange(in_qp.qmin, in_qp.qmax + 1).astype(in_qp.numpy_dtype)
            real = REFERENCE_OPS["Gelu"](node, [numerics.dequantize(codes, in_qp)])[0]
            table = _lut_order(numerics.quantize(real, out_qp), in_qp.dtype)
        else:
            from edge_runtime.kernels import lut_table

            table = lut_table(
                kind, in_qp.numpy_dtype, in_qp.scale, in_qp.zero_point, out_qp.scale, out_qp.zero_point,
                alpha=float(node.attrs.get("alpha", 0.2)), beta=float(node.attrs.get("beta", 0.5)),
            )  # fmt: skip
            if out_qp.dtype != in_qp.dtype:
                raise UnsupportedOperatorError(f"{node}: {in_qp.dtype} input with {out_qp.dtype} output")
        self._emit("lut", [src], [out], {"kind": kind}, {"table": table})
        self._set(out, out_qp, self.layout[src])
        codes = np.arange(in_qp.qmin, in_qp.qmax + 1).astype(in_qp.numpy_dtype)
        self._remember_table(
            out, src, REFERENCE_OPS[node.op_type](node, [numerics.dequantize(codes, in_qp)])[0]
        )

    def _table_op(self, node: Node) -> None:
        self._table(node)

    for _name in _TABLE_OPS:
        locals()[f"_op_{_name}"] = _table_op
    del _name

    _op_Sigmoid = _lut
    _op_HardSigmoid = _lut
    _op_HardSwish = _lut
    _op_Gelu = _lut
    _op_Tanh = _lut

    def _clamp(self, node: Node, lo: float | None, hi: float | None) -> None:
        """Relu/Clip keep their input's parameters: a clamp in the integer domain."""
        x, out = node.inputs[0], node.outputs[0]
        src = self._src(x)
        qp = self.params[src]
        if qp is None:
            return self._float(node)
        qlo = qp.qmin if lo is None else int(numerics.quantize(np.float32(lo), qp))
        qhi = qp.qmax if hi is None else int(numerics.quantize(np.float32(hi), qp))
        self._emit("clamp", [src], [out], {"lo": qlo, "hi": qhi})
        self._set(out, qp, self.layout[src])

    def _op_Relu(self, node: Node) -> None:
        self._clamp(node, 0.0, None)

    def _op_Clip(self, node: Node) -> None:
        if len([i for i in node.inputs[1:] if i]) > 0:  # min/max not folded to attributes
            return self._float(node)
        self._clamp(node, node.attrs.get("min"), node.attrs.get("max"))

    # -- pooling -----------------------------------------------------------

    def _pool(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        spatial = self._spatial(x)
        kernel = list(node.attrs.get("kernel_shape", []))
        if spatial is None or len(kernel) != 2 or (len(node.outputs) > 1 and node.outputs[1]):
            if node.op_type == "AveragePool":
                return self._float(node)
            raise UnsupportedOperatorError(f"{node}: only 2-D pooling of a 4-D map is supported")
        strides = list(node.attrs.get("strides", [1, 1]))
        dilations = list(node.attrs.get("dilations", [1, 1]))
        _, h, w, dynamic = self._conv_geometry(spatial, spatial[0], kernel, strides, dilations)
        pads = [int(p) for p in _spatial_pads(node, (h, w), kernel, strides, dilations)]
        include_pad = bool(node.attrs.get("count_include_pad", 0))
        if node.attrs.get("ceil_mode", 0):
            extra = _ceil_extra((h, w), kernel, strides, dilations, pads)
            if node.op_type == "AveragePool" and include_pad and (any(extra) or dynamic):
                return self._float(node)  # the kernel would count the extra cells as padding
            pads = [pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1]]
        src = self._as(x, "nhwc")
        in_qp = self.params[src]
        attrs: dict[str, Any] = {"kernel": kernel, "stride": strides, "padding": pads, "dilation": dilations,
                                 **self._dynamic_attrs(node, dynamic)}  # fmt: skip
        if node.op_type == "MaxPool":
            self._emit("maxpool", [src], [out], attrs)
            self._set(out, in_qp, "nhwc")
            return
        out_qp = self._act(out)
        if out_qp.dtype != in_qp.dtype:
            return self._float(node)
        attrs.update(count_include_pad=include_pad, **_unary_attrs(in_qp, out_qp))
        self._emit("avgpool", [src], [out], attrs)
        self._set(out, out_qp, "nhwc")

    _op_MaxPool = _pool
    _op_AveragePool = _pool

    def _op_GlobalAveragePool(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if self._rank(x) != 4:
            raise UnsupportedOperatorError(f"{node}: only 4-D (NCHW) inputs are supported")
        src = self._as(x, "nhwc")
        in_qp, out_qp = self.params[src], self._act(out)
        self._emit("global_avgpool", [src], [out], _unary_attrs(in_qp, out_qp))
        self._set(out, out_qp, "nhwc")

    # -- data movement ---------------------------------------------------------

    def _op_Identity(self, node: Node) -> None:
        self.alias[node.outputs[0]] = node.inputs[0]

    def _op_Concat(self, node: Node) -> None:
        names = [n for n in node.inputs if n]
        out = node.outputs[0]
        srcs = [self._src(n) for n in names]
        if all(self.params[s] is None for s in srcs):
            return self._move(node)
        if any(self.params[s] is None for s in srcs):
            return self._float(node)
        out_qp = self._act(out)
        if len({self.params[s] for s in srcs}) == 1:
            out_qp = self.params[srcs[0]]  # all inputs agree: no requantization at all
        nhwc = all(self.layout[s] == "nhwc" for s in srcs)
        layout = "nhwc" if nhwc else "plain"
        axis = int(node.attrs["axis"])
        rank = self._rank(names[0]) or 4
        if nhwc:
            axis = NHWC_AXIS[axis % 4]
        parts = [self._requantized(self._as(n, layout), out_qp) for n in names]
        self._emit("concat", parts, [out], {"axis": axis % rank})
        self._set(out, out_qp, layout)

    def _op_Transpose(self, node: Node) -> None:
        x = node.inputs[0]
        src = self._src(x)
        rank = self._rank(x)
        perm = node.attrs.get("perm") or list(range(rank))[::-1] if rank is not None else None
        if self.layout[src] == "nhwc" and perm is not None:
            perm = [TO_NCHW[p] for p in perm]  # read the logical order straight from NHWC storage
            self._emit("transpose", [src], [node.outputs[0]], {"perm": perm})
            self._set(node.outputs[0], self.params[src], "plain")
            return
        self._move(node)

    def _op_Slice(self, node: Node) -> None:
        src = self._src(node.inputs[0])
        if self.layout[src] == "nhwc" and len(node.inputs) == 1:
            attrs = dict(node.attrs)
            attrs["axes"] = [NHWC_AXIS[a % 4] for a in attrs.get("axes", range(len(attrs["starts"])))]
            return self._move(node, layout="nhwc", attrs=attrs)
        self._move(node)

    def _op_Resize(self, node: Node) -> None:
        x = node.inputs[0]
        src = self._src(x)
        attrs = dict(node.attrs)
        per_axis = [k for k in ("scales", "sizes") if attrs.get(k) is not None]
        layout = "plain"
        if self.layout[src] == "nhwc" and len(node.inputs) == 1 and "axes" not in attrs and per_axis:
            layout = "nhwc"  # resize along the permuted axes of the NHWC storage
            for key in per_axis:
                attrs[key] = [attrs[key][i] for i in TO_NHWC]
        if attrs.get("mode", "nearest") == "nearest":
            return self._move(node, layout=layout, attrs=attrs)
        self._float(node, layout=layout, attrs=attrs)

    def _op_Pad(self, node: Node) -> None:
        """Pad on the int8 bytes: a constant pad writes the code of its value (0 -> the zero
        point); reflect/edge/wrap copy codes. NHWC storage pads its permuted axes."""
        from edge_runtime.graph.shapes import pad_parameters

        src = self._src(node.inputs[0])
        qp = self.params[src]
        params = pad_parameters(self.graph, node)
        if params is None:
            raise UnsupportedOperatorError(f"{node}: pads computed at run time")
        # The node's inputs stay as they are (constants travel as arrays); these attributes
        # take precedence in the reference op: pads for every axis, and the value's code.
        attrs = {**node.attrs, "pads": params[0], "value": params[1], "axes": None}
        if qp is not None and attrs.get("mode", "constant") == "constant":
            attrs["value"] = int(numerics.quantize(np.float32(params[1]), qp))
        layout = "plain"
        if self.layout[src] == "nhwc" and len(attrs.get("pads", [])) == 8:
            pads = list(attrs["pads"])
            attrs["pads"] = [pads[a] for a in TO_NHWC] + [pads[4 + a] for a in TO_NHWC]
            layout = "nhwc"
        self._move(node, layout=layout, attrs=attrs)

    def _bytes(self, node: Node) -> None:
        """A data-movement or order-statistic op on the int8 bytes (see _BYTE_OPS)."""
        self._move(node)

    _op_Expand = _bytes
    _op_Tile = _bytes
    _op_DepthToSpace = _bytes
    _op_SpaceToDepth = _bytes
    _op_ReduceMax = _bytes
    _op_ReduceMin = _bytes
    _op_GlobalMaxPool = _bytes

    def _op_ArgMax(self, node: Node) -> None:
        """The index of the largest code is that of the largest value (up to the ties 8 bits make)."""
        inputs, arrays = self._node_inputs(node, "plain")
        self._emit(
            "move", inputs, [node.outputs[0]], {"node_op": node.op_type, "node_attrs": node.attrs}, arrays
        )
        self._set(node.outputs[0], None, "plain")

    _op_ArgMin = _op_ArgMax

    def _op_Flatten(self, node: Node) -> None:
        self._reshape_like(node)

    def _op_Reshape(self, node: Node) -> None:
        self._reshape_like(node)

    def _reshape_like(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        src = self._src(x)
        shape = self._static(x)
        out_shape = self.graph.shape(out)
        readers = self.graph.consumers(out)
        if (
            self.layout[src] == "nhwc"
            and shape is not None
            and out_shape is not None
            and len(out_shape) == 2
            and out_shape[1] == shape[1] * shape[2] * shape[3]
            and out not in self.graph.output_names
            and readers
            and all(self._gemm_reader(r, out) for r in readers)
        ):
            # Flatten the NHWC bytes as they are; the GEMMs permute their weight columns.
            flat = Node("Flatten", node.name, [x], [out], {"axis": 1})
            self._emit("move", [src], [out], {"node_op": "Flatten", "node_attrs": flat.attrs})
            self._set(out, self.params[src], "flat_hwc")
            self.flat_chw[out] = (shape[1], shape[2], shape[3])
            return
        self._move(node)

    def _gemm_reader(self, node: Node, name: str) -> bool:
        if node.inputs[0] != name or name in node.inputs[1:]:
            return False
        if node.op_type == "Gemm":
            w = self.graph.constant(node.inputs[1])
            return (
                w is not None
                and w.ndim == 2
                and not node.attrs.get("transA", 0)
                and (not node.input(2) or self.graph.is_constant(node.input(2)))
            )
        if node.op_type == "MatMul":
            w = self.graph.constant(node.inputs[1])
            return w is not None and w.ndim == 2
        return False

    def _op_Squeeze(self, node: Node) -> None:
        self._move(node)

    _op_Unsqueeze = _op_Squeeze

    def _op_Gather(self, node: Node) -> None:
        data, indices = node.inputs
        table = self.graph.constant(data)
        if table is not None and np.issubdtype(table.dtype, np.floating):
            # Embeddings: the table quantized once with the output's parameters (see above).
            out = node.outputs[0]
            out_qp = self._act(out)
            self._emit(
                "embed", [self._src(indices)], [out],
                {"axis": int(node.attrs.get("axis", 0)), **out_qp.to_dict()},
                {"table": numerics.quantize(table, out_qp)},
            )  # fmt: skip
            self._set(out, out_qp, "plain")
            return
        self._move(node)

    def _move(self, node: Node, layout: str = "plain", attrs: dict[str, Any] | None = None) -> None:
        """A data-movement op run by the reference executor on the int8 bytes (parameters kept)."""
        inputs, arrays = self._node_inputs(node, layout)
        first = self._src(node.inputs[0])
        qp = self.params[first]
        self._emit(
            "move",
            inputs,
            [node.outputs[0]],
            {"node_op": node.op_type, "node_attrs": attrs if attrs is not None else node.attrs},
            arrays,
        )
        self._set(node.outputs[0], qp, layout)

    def _node_inputs(self, node: Node, layout: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """Buffers for the variable inputs ("" for constants, stored as arrays ``input<i>``)."""
        inputs: list[str] = []
        arrays: dict[str, np.ndarray] = {}
        for i, name in enumerate(node.inputs):
            value = self.graph.constant(name) if name else None
            if value is not None:
                arrays[f"input{i}"] = value if value.dtype.name != "float64" else value.astype(np.float32)
                inputs.append("")
            elif not name:
                inputs.append("")
            else:
                src = self._src(name)
                if self.layout[src] == "flat_hwc" or (
                    self.layout[src] != layout and self.params[src] is not None
                ):
                    src = self._as(name, layout)
                inputs.append(src)
        return inputs, arrays

    # -- float ----------------------------------------------------------------

    def _float(
        self, node: Node, op: str = "float", layout: str = "plain", attrs: dict[str, Any] | None = None
    ) -> None:
        """Dequantize the inputs, compute in float32 (``op``: matmul, softmax, layernorm or
        the reference implementation of the node), quantize the output."""
        if op == "float" and node.op_type not in _FLOAT_OK:
            raise UnsupportedOperatorError(f"{node}: no int8 or float kernel for this form of {node.op_type}")
        inputs, arrays = self._node_inputs(node, layout)
        out = node.outputs[0]
        out_qp = self._act(out)
        self._emit(
            op, inputs, [out],
            {"node_op": node.op_type, "node_attrs": attrs if attrs is not None else node.attrs,
             "in_params": self._in_params(inputs), "out_params": out_qp.to_dict()},
            arrays,
        )  # fmt: skip
        self._set(out, out_qp, layout)

    def _in_params(self, inputs: list[str]) -> list[dict[str, Any] | None]:
        """The quantization parameters of a float step's buffers (None: a constant or an integer)."""
        return [None if not n else (self.params[n] and self.params[n].to_dict()) for n in inputs]

    def _op_Softmax(self, node: Node) -> None:
        if node.attrs.get("coerce_2d"):
            return self._float(node)  # an opset < 13 softmax over several axes: the reference's
        self._float(node, op="softmax")

    def _op_LogSoftmax(self, node: Node) -> None:
        self._float(node)

    _op_Hardmax = _op_LogSoftmax
    _op_InstanceNormalization = _op_LogSoftmax
    _op_ReduceMean = _op_LogSoftmax
    _op_ReduceSum = _op_LogSoftmax
    _op_ReduceL2 = _op_LogSoftmax
    _op_Einsum = _op_LogSoftmax
    _op_Max = _op_LogSoftmax
    _op_Min = _op_LogSoftmax

    def _op_PRelu(self, node: Node) -> None:
        slope = self.graph.constant(node.inputs[1])
        if slope is not None and slope.size and np.all(slope == slope.ravel()[0]):
            # One slope for every element: a leaky ReLU, as a table.
            alpha = float(slope.ravel()[0])
            return self._table(
                node, Node("LeakyRelu", node.name, node.inputs[:1], node.outputs, {"alpha": alpha})
            )
        if slope is not None and self._prelu_channels(node, np.asarray(slope)):
            return
        self._float(node)  # slopes that vary along another axis than the channels

    def _prelu_channels(self, node: Node, slope: np.ndarray) -> bool:
        """PRelu with one slope per channel (axis 1, stored last: an NHWC map or a [N, C]
        matrix) as one 256-entry table per channel [lut_channels], built from the reference op
        on every input code: the bits of dequantize -> PRelu in float32 -> quantize. Returns
        whether it did."""
        x, out = node.inputs[0], node.outputs[0]
        src, rank, shape = self._src(x), self._rank(x), self.graph.shape(x)
        in_qp, out_qp = self.params[src], self._act(out)
        if in_qp is None or out_qp.dtype != in_qp.dtype or rank not in (2, 4) or shape is None:
            return False
        channels = shape[1]
        if not isinstance(channels, int) or channels <= 0 or slope.ndim > rank:
            return False
        full = slope.reshape((1,) * (rank - slope.ndim) + slope.shape)
        if any(d != 1 for i, d in enumerate(full.shape) if i != 1) or full.shape[1] not in (1, channels):
            return False
        layout = "nhwc" if rank == 4 else "plain"
        if self.layout[src] not in (layout, "plain"):
            return False
        src = self._as(x, layout)
        per_channel = np.broadcast_to(full.reshape(-1), (channels,)).astype(slope.dtype)
        codes = np.arange(in_qp.qmin, in_qp.qmax + 1).astype(in_qp.numpy_dtype)
        real = numerics.dequantize(codes, in_qp)
        values = REFERENCE_OPS["PRelu"](node, [real[None, :], per_channel[:, None]])[0]
        tables = np.stack([_lut_order(numerics.quantize(row, out_qp), in_qp.dtype) for row in values])
        self._emit(
            "lut_channels", [src], [out], {"kind": "prelu", **_unary_attrs(in_qp, out_qp)},
            {"tables": tables, "slope": np.ascontiguousarray(per_channel, np.float32)},
        )  # fmt: skip
        self._set(out, out_qp, layout)
        return True

    def _op_Pow(self, node: Node) -> None:
        exponent = self.graph.constant(node.inputs[1])
        if exponent is not None and exponent.size == 1 and self.graph.constant(node.inputs[0]) is None:
            return self._table(node, node, [exponent])
        self._float(node)

    def _remember_table(self, out: str, src: str, real: np.ndarray) -> None:
        """What a table step computes in real numbers, per input code: a scalar Mul/Add that
        follows it is composed into it (one rounding instead of two, see _compose_affine)."""
        if not hasattr(self, "tables"):
            self.tables: dict[str, tuple[str, np.ndarray, Step]] = {}
        self.tables[out] = (src, np.asarray(real, np.float64).ravel(), self.steps[-1])

    def _compose_affine(self, node: Node, var: str, const: np.ndarray, out_qp: QuantParams) -> bool:
        """``table(x) * c`` or ``table(x) + c`` for a table step's output read by nothing else:
        the table is rebuilt from real values (a learnable affine block after an activation,
        PP-LCNetV3's, costs no step and no rounding). Returns whether it did."""
        entry = getattr(self, "tables", {}).get(self._src(var))
        if entry is None or const.size != 1 or var in self.graph.output_names:
            return False
        if [n for n in self.graph.consumers(var)] != [node]:
            return False
        src, real, step = entry
        in_qp = self.params[src]
        if in_qp is None or out_qp.dtype != in_qp.dtype or step not in self.steps:
            return False
        c = float(np.asarray(const, np.float64).ravel()[0])
        real = real * c if node.op_type == "Mul" else real + c
        table = _lut_order(numerics.quantize(real.astype(np.float32), out_qp), in_qp.dtype)
        self.steps.remove(step)
        out = node.outputs[0]
        self._emit(
            "lut",
            [src],
            [out],
            {"kind": f"{step.attrs.get('kind', 'table')}+{node.op_type.lower()}"},
            {"table": table},
        )
        self._set(out, out_qp, self.layout[src])
        self.tables[out] = (src, real, self.steps[-1])
        return True

    def _compose_gate(self, node: Node, a: str, b: str, out_qp: QuantParams) -> bool:
        """``x * f(x)`` where f(x) is a table step over x that nothing else reads (SiLU
        ``x * sigmoid(x)`` as torch and paddle write it, ``x * hard_sigmoid(x)``): one table from
        x's codes, no int8 product and one rounding instead of two."""
        tables = getattr(self, "tables", {})
        for x, gate in ((a, b), (b, a)):
            entry = tables.get(self._src(gate))
            if entry is None or gate in self.graph.output_names or x == gate:
                continue
            if [n.name for n in self.graph.consumers(gate)] != [node.name]:
                continue
            src, real, step = entry
            in_qp = self.params.get(src)
            if src != self._src(x) or step not in self.steps or in_qp is None or out_qp.dtype != in_qp.dtype:
                continue
            codes = np.arange(in_qp.qmin, in_qp.qmax + 1).astype(in_qp.numpy_dtype)
            composed = numerics.dequantize(codes, in_qp).astype(np.float64) * real
            table = _lut_order(numerics.quantize(composed.astype(np.float32), out_qp), in_qp.dtype)
            self.steps.remove(step)
            out = node.outputs[0]
            self._emit("lut", [src], [out], {"kind": f"x*{step.attrs.get('kind', 'table')}"}, {"table": table})
            self._set(out, out_qp, self.layout[src])
            self.tables[out] = (src, composed, self.steps[-1])
            return True
        return False

    def _table(
        self, node: Node, fn_node: Node | None = None, constants: list[np.ndarray] | None = None
    ) -> None:
        """An element-wise function of one tensor as a 256-entry table built from the reference
        op ``fn_node`` (default: the node itself) on every input code; constants are its
        other inputs (a Pow's exponent). Falls back to a float step when the output is
        quantized to another dtype than the input."""
        x, out = node.inputs[0], node.outputs[0]
        src = self._src(x)
        in_qp, out_qp = self.params[src], self._act(out)
        fn_node = fn_node or node
        if in_qp is None or out_qp.dtype != in_qp.dtype:
            if fn_node.op_type in _FLOAT_OK:
                return self._float(node)
            raise UnsupportedOperatorError(
                f"{node}: {in_qp and in_qp.dtype} input with {out_qp.dtype} output"
            )
        codes = np.arange(in_qp.qmin, in_qp.qmax + 1).astype(in_qp.numpy_dtype)
        with np.errstate(all="ignore"):
            real = REFERENCE_OPS[fn_node.op_type](
                fn_node, [numerics.dequantize(codes, in_qp), *(constants or [])]
            )[0]
        # log(0), 1/0, sqrt(-1): saturate (the float model is undefined there too).
        real = np.nan_to_num(np.asarray(real, np.float64), nan=0.0, posinf=3.0e38, neginf=-3.0e38)
        table = _lut_order(numerics.quantize(real.astype(np.float32), out_qp), in_qp.dtype)
        self._emit("lut", [src], [out], {"kind": fn_node.op_type.lower()}, {"table": table})
        self._set(out, out_qp, self.layout[src])
        self._remember_table(out, src, real)

    def _op_LSTM(self, node: Node) -> None:
        """Recurrent layers in float (dequantized input and states, float32 gates): one step
        per output that something reads, each naming its output in ``_output``."""
        def used(name: str) -> bool:
            return bool(name) and bool(self.graph.consumers(name) or name in self.graph.output_names)

        outs = list(node.outputs)
        # A forward layer over whole sequences ends in its last output step: Y_h is Y[-1], taken
        # from Y's bytes rather than by running the layer once more.
        last_of_y = (
            used(outs[0]) and node.attrs.get("direction", "forward") == "forward"
            and not node.attrs.get("layout", 0) and not node.input(4)
        )  # fmt: skip
        for index, out in enumerate(outs):
            if not used(out):
                continue
            if index == 1 and last_of_y:
                y = self._src(outs[0])
                tail = self.graph.unique_name(out + "@last_step")
                self._move(Node("Slice", node.name, [y], [tail], {"starts": [-1], "ends": [2**62], "axes": [0], "steps": [1]}))
                self._move(Node("Squeeze", node.name, [tail], [out], {"axes": [0]}))
                continue
            single = Node(node.op_type, node.name, list(node.inputs), [out], {**node.attrs, "_output": index})
            self._float(single)

    _op_GRU = _op_LSTM

    def _attention(self, chain: _AttentionChain) -> None:
        """softmax(Q.K^T * scale + mask).V as one step (see _attention_chains)."""
        last = chain.nodes[-1]
        node = Node("Attention", last.name, [chain.q, chain.kt, chain.mask or "", chain.v], last.outputs, {})
        inputs, arrays = self._node_inputs(node, "plain")
        out = last.outputs[0]
        out_qp = self._act(out)
        self._emit(
            "attention", inputs, [out],
            {"scale": chain.scale, "in_params": self._in_params(inputs), "out_params": out_qp.to_dict(),
             "nodes": [n.name for n in chain.nodes]},
            arrays,
        )  # fmt: skip
        self._set(out, out_qp, "plain")

    def _op_LayerNormalization(self, node: Node) -> None:
        self._float(node, op="layernorm")


# ---------------------------------------------------------------------------
# attention


@dataclass
class _AttentionChain:
    """MatMul(q, kt) [-> Mul/Div by a scalar] [-> Add mask] -> Softmax(last axis) -> MatMul(., v)."""

    nodes: list[Node]  # in graph order; the step is emitted at the last one
    q: str
    kt: str
    v: str
    mask: str | None
    scale: float


def _attention_chains(graph: Graph) -> list[_AttentionChain]:
    """The attention blocks of ``graph``.

    Run as one step, the scores never leave float: the chain as separate steps
    quantizes and dequantizes the (heads x seq x seq) scores three times, which cost
    the MiniLM-size encoder more than the two products themselves, and 8-bit scores
    lose everything but the padding mask.
    A chain is fused only when each intermediate tensor has one reader and is not a
    graph output (so nothing else needs it quantized)."""
    chains: list[_AttentionChain] = []
    claimed: set[int] = set()
    outputs = set(graph.output_names)

    def only_reader(name: str) -> Node | None:
        readers = graph.consumers(name)
        if name in outputs or len(readers) != 1 or graph.uses(name) != 1:
            return None
        return readers[0]

    for first in graph.nodes:
        if first.op_type != "MatMul" or any(graph.is_constant(n) for n in first.inputs):
            continue
        nodes, scale, mask = [first], 1.0, None
        node = only_reader(first.outputs[0])
        if node is not None and node.op_type in ("Mul", "Div"):
            x = nodes[-1].outputs[0]
            other = node.inputs[1] if node.inputs[0] == x else node.inputs[0]
            value = graph.constant(other)
            if value is None or value.size != 1 or (node.op_type == "Div" and node.inputs[1] != other):
                continue
            value = float(np.asarray(value, np.float64).reshape(()))
            if value == 0.0:
                continue
            scale = value if node.op_type == "Mul" else 1.0 / value
            nodes.append(node)
            node = only_reader(node.outputs[0])
        if node is not None and node.op_type == "Add":
            x = nodes[-1].outputs[0]
            mask = node.inputs[1] if node.inputs[0] == x else node.inputs[0]
            if mask == x:
                continue
            nodes.append(node)
            node = only_reader(node.outputs[0])
        rank = graph.rank(nodes[-1].outputs[0])
        if node is None or node.op_type != "Softmax" or rank is None or rank < 2:
            continue
        if int(node.attrs.get("axis", -1)) % rank != rank - 1:
            continue
        nodes.append(node)
        second = only_reader(node.outputs[0])
        if second is None or second.op_type != "MatMul" or second.inputs[0] != node.outputs[0]:
            continue
        if graph.is_constant(second.inputs[1]) or graph.rank(second.inputs[1]) != rank:
            continue
        nodes.append(second)
        if any(id(n) in claimed for n in nodes):
            continue
        claimed.update(id(n) for n in nodes)
        q, kt = first.inputs
        chains.append(_AttentionChain(nodes, q, kt, second.inputs[1], mask, scale))
    return chains


# ---------------------------------------------------------------------------
# small pure helpers


def _lut_order(table: np.ndarray, dtype: str) -> np.ndarray:
    """A table over codes qmin..qmax as the kernels index it: by the input byte."""
    table = np.asarray(table)
    if dtype == "int8":  # codes -128..127 -> bytes 128..255, 0..127
        table = np.concatenate([table[128:], table[:128]])
    return table.view(np.uint8).copy() if table.dtype == np.int8 else table.astype(np.uint8)


def _requant_attrs(rq: Any, out_qp: QuantParams) -> dict[str, Any]:
    return {
        "zero_point": rq.zero_point,
        "out_min": rq.out_min,
        "out_max": rq.out_max,
        "out_dtype": out_qp.dtype,
    }


def _requant_arrays(rq: Any) -> dict[str, np.ndarray]:
    return {"multiplier": np.asarray(rq.multiplier, np.int32), "shift": np.asarray(rq.shift, np.int32)}


def _unary_attrs(x: QuantParams, y: QuantParams) -> dict[str, Any]:
    return {
        "x_scale": x.scale,
        "x_zero_point": x.zero_point,
        "y_scale": y.scale,
        "y_zero_point": y.zero_point,
    }


def _binary_attrs(a: QuantParams, b: QuantParams, y: QuantParams) -> dict[str, Any]:
    return {
        "a_scale": a.scale, "a_zero_point": a.zero_point, "b_scale": b.scale, "b_zero_point": b.zero_point,
        "y_scale": y.scale, "y_zero_point": y.zero_point,
    }  # fmt: skip


def _binary_ok(op: str, a: QuantParams, b: QuantParams, y: QuantParams) -> bool:
    """Whether the int8 add/mul kernel accepts these scale ratios (the C side decides)."""
    from edge_runtime.kernels import add, mul

    fn = add if op == "add" else mul
    dtype = a.numpy_dtype
    if b.dtype != a.dtype or y.dtype != a.dtype:
        return False
    try:
        fn(np.zeros(1, dtype), np.zeros(1, dtype), a.scale, a.zero_point, b.scale, b.zero_point,
           y.scale, y.zero_point)  # fmt: skip
    except KernelError:
        return False
    return True


def _is_float(graph: Graph, name: str) -> bool:
    info = graph.info(name)
    return info is None or info.dtype is None or np.issubdtype(np.dtype(info.dtype), np.floating)


def _same_shape(a: tuple | None, b: tuple | None) -> bool:
    """Whether two tensors have the same shape as far as shape inference knows: equal
    dims, where a dim of unknown size (a symbol, or None after a Reshape whose output
    exporters leave unnamed) matches any other unknown one. Residual joins of
    transformers add tensors whose batch dims shape inference named differently, and
    a detector's feature-pyramid joins maps whose symbolic heights and widths it could
    not follow; the add kernel checks the real shapes on each call (and a broadcast it
    does not run falls back to float for that shape, see the executor's add/mul)."""
    if a is None or b is None or len(a) != len(b):
        return False
    return all(x == y or (not isinstance(x, int) and not isinstance(y, int))
               for x, y in zip(a, b))  # fmt: skip


def _trim_leading_ones(value: np.ndarray) -> np.ndarray:
    shape = list(value.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    return np.ascontiguousarray(value.reshape(shape))


def _kernel_broadcasts(
    const_shape: tuple[int, ...], stored: tuple[int, ...] | None, rank: int | None
) -> bool:
    """Whether a constant of ``const_shape`` broadcasts against the variable the way the
    add/mul kernels run: a scalar, or equal to the variable's trailing dimensions."""
    if int(np.prod(const_shape)) == 1:
        return True
    if stored is None or rank is None or len(const_shape) > len(stored):
        return False
    tail = stored[len(stored) - len(const_shape) :]
    return tuple(tail) == tuple(const_shape) and all(d > 0 for d in tail)


def _row_broadcast(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
    """Whether stored shapes ``a`` and ``b`` (-1: a symbolic dim) are one tensor and a row repeated
    over it: the smaller, its leading ones dropped, is the trailing dims of the other, as the
    add/mul kernels broadcast (a symbolic batch dim of both matches: the executor checks the real
    shapes on each call)."""
    if a is None or b is None or len(a) != len(b) or not a:
        return False
    for big, small in ((a, b), (b, a)):
        if small[0] not in (1, big[0]) or any(d <= 0 for d in big[1:]):
            continue
        rest = list(small[1:])
        while rest and rest[0] == 1:
            rest.pop(0)
        if rest and tuple(rest) == tuple(big[len(big) - len(rest) :]) and tuple(small[1:]) != tuple(big[1:]):
            return True
    return False


def _ceil_extra(spatial, kernel, strides, dilations, pads) -> list[int]:
    """End padding a ceil_mode pool needs (the reference executor's rule)."""
    extra = []
    for i in range(2):
        span = spatial[i] + pads[i] + pads[i + 2] - ((kernel[i] - 1) * dilations[i] + 1)
        size = -(-span // strides[i]) + 1
        if (size - 1) * strides[i] >= spatial[i] + pads[i]:
            size -= 1
        need = (size - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        extra.append(max(0, need - (spatial[i] + pads[i] + pads[i + 2])))
    return extra
