"""Partitioned plans: native segments on the C kernels, the rest in float.

A graph the native lowering cannot take whole is not refused: :func:`edge_runtime.plan.lower`
lowers every node it can and gathers the nodes it cannot (an operator without a native
kernel, a form of one that the kernels do not run) into ``subgraph`` steps. Such a step
dequantizes its inputs (a float graph input is read as fed), runs its nodes in float32 on
onnxruntime when it is installed, else on the numpy reference executor, and quantizes
its outputs with their calibrated parameters for the native steps after it (an output
that only leaves the graph stays float). Foreign nodes are merged into one step as long
as no native node in between needs their results, so the native segments are maximal.
The whole graph is refused (UnsupportedOperatorError) only when no node runs natively.

This module holds what that needs besides the lowering driver:

- :func:`float_onnx`: the float ONNX model of an (optimized) IR graph, optionally with
  intermediate tensors as extra outputs (calibration on onnxruntime uses it too);
- :func:`segment_step` / :class:`SegmentRunner`: a ``subgraph`` step's serialized form
  (the nodes as JSON, their constants as arrays, the float ONNX bytes when ``onnx`` is
  importable) and its execution;
- :func:`node_macs`: multiply-accumulates per node (an estimate where shapes are symbolic:
  batch 1 and :data:`MAC_DIM` for other unknown dimensions, unless shapes are given);
- :func:`partition_report`: which nodes run where and the share of MACs on native kernels
  (``Model.info()["session"]["partition"]``, ``edge inspect``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.errors import UnsupportedOperatorError
from edge_runtime.graph.ir import Graph, Node, ValueInfo

__all__ = [
    "MAC_DIM",
    "SegmentRunner",
    "float_onnx",
    "node_macs",
    "partition_report",
    "segment_step",
]

# A symbolic non-batch dimension counts as this many when MACs are estimated without shapes.
MAC_DIM = 224
# The opset from which a reduction takes its axes as an input instead of an attribute.
_REDUCE_AXES_INPUT = {"ReduceSum": 13, **{op: 18 for op in (
    "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
    "ReduceLogSumExp")}}  # fmt: skip
# Steps that run no kernel of their own (entry/exit conversions, layout moves).
_BOOKKEEPING = frozenset({"quantize", "dequantize", "transpose", "move", "subgraph"})
_FLOAT_STEPS = frozenset({"float", "matmul", "softmax", "layernorm"})


# ---------------------------------------------------------------------------
# float ONNX export of IR graphs


def float_onnx(
    graph: Graph,
    outputs: Sequence[str] | None = None,
    input_shapes: Mapping[str, Sequence[int | str | None]] | None = None,
):
    """The float32 ONNX model of ``graph`` (an IR graph, optimized or not).

    ``outputs`` replaces the graph's outputs (e.g. every tensor to calibrate);
    ``input_shapes`` overrides the declared input shapes. The IR's fused forms become
    plain ONNX (a Conv/Gemm ``activation`` a Relu or Clip, a batched Gemm a MatMul and
    an Add), as in the QDQ export, without any quantization.
    """
    from onnx import helper

    from edge_runtime.quantize.qdq import MIN_EXPORT_OPSET, _attributes, _Writer

    class _FloatWriter(_Writer):
        def _layer(self, node: Node, inputs: list[str], outs: list[str]) -> None:
            attrs = {k: v for k, v in node.attrs.items() if k != "activation"}
            activation = node.attrs.get("activation")
            out = outs[0]
            pre = self.fresh(f"{out}_preact") if activation else out
            if node.op_type == "Gemm" and not self._plain_gemm(node):
                self._gemm_as_matmul(node, inputs, attrs, pre)
            else:
                self.emit(node.op_type, inputs, [pre], node.name, **_attributes(attrs))
            self._activation(node, activation, pre, out)

        def _onnx_form(self, node: Node, inputs: list[str]) -> tuple[list[str], dict[str, Any]]:
            # The IR's parameters-as-attributes (edge_runtime.graph.passes.inputs_to_attributes)
            # that later opsets take as inputs, beyond those the QDQ writer converts.
            op, attrs, inputs = node.op_type, dict(node.attrs), list(inputs)
            int64 = lambda key, hint: self.const(np.asarray(attrs.pop(key), np.int64), f"{node.name}/{hint}")
            if op == "Pad" and "pads" in attrs:
                value = attrs.pop("value", None)
                inputs = [inputs[0], int64("pads", "pads")]
                if value not in (None, 0, 0.0):
                    inputs.append(
                        self.const(np.array(value, self._dtype(node.inputs[0])), f"{node.name}/value")
                    )
            elif op == "Split" and "split" in attrs and self.opset >= 13:
                inputs = [inputs[0], int64("split", "split")]
            elif op in _REDUCE_AXES_INPUT and "axes" in attrs and self.opset >= _REDUCE_AXES_INPUT[op]:
                inputs = [inputs[0], int64("axes", "axes")]
            plain = Node(op, node.name, node.inputs, node.outputs, attrs, node.domain)
            return super()._onnx_form(plain, inputs)

    shapes = dict(input_shapes or {})
    view = Graph(
        graph.nodes,
        [
            ValueInfo(v.name, v.dtype, tuple(shapes[v.name]) if v.name in shapes else v.shape)
            for v in graph.inputs
        ],
        graph.outputs if outputs is None else [_output_info(graph, name) for name in outputs],
        graph.initializers,
        graph.value_info,
        name=graph.name,
        opset=graph.opset,
    )
    model = _FloatWriter(view, {}, max(MIN_EXPORT_OPSET, graph.opset)).build()
    if outputs is not None:
        # Intermediate outputs: their types and shapes are left to onnxruntime (an untyped
        # output is valid there), so that a dtype the IR does not know cannot mismatch.
        names = [out.name for out in model.graph.output]
        del model.graph.output[:]
        model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    return model


def _output_info(graph: Graph, name: str) -> ValueInfo:
    info = graph.info(name)
    dtype = info.dtype if info is not None and info.dtype is not None else np.dtype(np.float32)
    return ValueInfo(name, dtype, None)


# ---------------------------------------------------------------------------
# MACs


def node_macs(graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, int]:
    """Multiply-accumulates per sample of each Conv, ConvTranspose, Gemm and MatMul node.

    Shapes come from the graph; where a dimension is symbolic they come from ONNX shape
    inference on the float model with the inputs fixed to ``input_shapes`` (default: batch
    1 and :data:`MAC_DIM` for every other symbolic dimension). Nodes whose shapes stay
    unknown count 0."""
    shapes: dict[str, tuple] = {}

    def known(shape) -> bool:
        return shape is not None and all(isinstance(d, int) for d in shape[1:])

    heavy = [n for n in graph.nodes if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    names = (
        {n.inputs[0] for n in heavy}
        | {n.outputs[0] for n in heavy}
        | {n.inputs[1] for n in heavy if len(n.inputs) > 1}
    )
    for name in names:
        shape = graph.shape(name)
        if known(shape):
            shapes[name] = tuple(1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(shape))
    if any(name not in shapes for name in names):
        shapes.update({k: v for k, v in _inferred_shapes(graph, input_shapes).items() if k not in shapes})
    macs: dict[str, int] = {}
    for node in heavy:
        x, y = shapes.get(node.inputs[0]), shapes.get(node.outputs[0])
        w = graph.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        wshape = (
            tuple(w.shape) if w is not None else shapes.get(node.inputs[1]) if len(node.inputs) > 1 else None
        )
        try:
            macs[node.name] = _macs(node, x, wshape, y)
        except (TypeError, ValueError, IndexError):
            macs[node.name] = 0
    return macs


def _macs(node: Node, x, w, y) -> int:
    """Per sample (the batch dimension divided out)."""
    op = node.op_type
    if op == "Conv" and y is not None and w is not None:
        return int(math.prod(y[1:]) * math.prod(w[1:]))
    if op == "ConvTranspose" and x is not None and w is not None:
        return int(math.prod(x[1:]) * math.prod(w[1:]))
    if op in ("Gemm", "MatMul") and x is not None and y is not None:
        k = x[0] if node.attrs.get("transA", 0) else x[-1]
        rows = math.prod(y[1:]) if len(y) > 2 else y[-1]  # per sample: the leading dim is the batch
        return int(rows * k)
    return 0


def _inferred_shapes(graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple]:
    try:
        from onnx import shape_inference
    except ImportError:
        return {}
    fixed: dict[str, list[int]] = {}
    for info in graph.inputs:
        if input_shapes and info.name in input_shapes:
            fixed[info.name] = [int(d) for d in input_shapes[info.name]]
        elif info.shape is not None:
            fixed[info.name] = [
                d if isinstance(d, int) else (1 if i == 0 else MAC_DIM) for i, d in enumerate(info.shape)
            ]
    try:
        model = float_onnx(graph, input_shapes=fixed)
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - an estimate: what cannot be inferred counts 0
        return {}
    out: dict[str, tuple] = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[v.name] = tuple(int(d.dim_value) for d in dims)
    for init in inferred.graph.initializer:
        out.setdefault(init.name, tuple(init.dims))
    return out


# ---------------------------------------------------------------------------
# subgraph steps


def _encode_attr(value: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """A node attribute as JSON (arrays stored as plan arrays, dtypes by name)."""
    if isinstance(value, np.ndarray):
        key = f"{prefix}{len(arrays)}"
        arrays[key] = value if value.dtype.name != "float64" else value.astype(np.float32)
        return {"__array__": key}
    if isinstance(value, np.dtype):
        return {"__dtype__": value.name}
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_encode_attr(v, arrays, prefix) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _decode_attr(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return np.asarray(arrays[value["__array__"]])
        if "__dtype__" in value:
            return np.dtype(value["__dtype__"])
        return {k: _decode_attr(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_attr(v, arrays) for v in value]
    return value


def _dtype_name(info: ValueInfo | None, default: str = "float32") -> str:
    if info is None or info.dtype is None:
        return default
    return np.dtype(info.dtype).name


def segment_step(
    graph: Graph,
    nodes: Sequence[Node],
    inputs: Sequence[str],
    outputs: Sequence[str],
    input_float: Sequence[bool],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(attrs, arrays) of a ``subgraph`` step running ``nodes`` in float.

    ``inputs`` are the tensors the nodes read from outside (graph inputs or other steps'
    results), ``outputs`` those read after them; ``input_float`` says which inputs are
    float (the executor dequantizes those that arrive quantized)."""
    arrays: dict[str, np.ndarray] = {}
    constants: dict[str, str] = {}
    for node in nodes:
        for name in node.inputs:
            value = graph.constant(name) if name else None
            if value is not None and name not in constants:
                key = f"const{len(constants)}"
                arrays[key] = value if value.dtype.name != "float64" else value.astype(np.float32)
                constants[name] = key
    encoded = [
        {
            "op": node.op_type, "name": node.name, "domain": node.domain, "inputs": list(node.inputs),
            "outputs": list(node.outputs),
            "attrs": {k: _encode_attr(v, arrays, "attr") for k, v in node.attrs.items()},
        }
        for node in nodes
    ]  # fmt: skip
    in_infos = []
    for name, is_float in zip(inputs, input_float):
        info = graph.info(name)
        shape = None if info is None or info.shape is None else [
            d if isinstance(d, (int, str)) else None for d in info.shape
        ]  # fmt: skip
        in_infos.append({"name": name, "dtype": "float32" if is_float else _dtype_name(info, "int64"),
                         "shape": shape})  # fmt: skip
    out_infos = [{"name": name, "dtype": _dtype_name(graph.info(name))} for name in outputs]
    attrs: dict[str, Any] = {
        "nodes": encoded,
        "graph_inputs": in_infos,
        "graph_outputs": out_infos,
        "constants": constants,
        "opset": int(graph.opset),
        "name": f"{graph.name}/{nodes[0].name}",
    }
    sub = _segment_graph(attrs, arrays)
    try:
        model = float_onnx(sub, outputs=list(outputs))  # untyped outputs: onnxruntime infers them
        arrays["onnx"] = np.frombuffer(model.SerializeToString(), np.uint8).copy()
    except ImportError:
        pass  # no onnx here: the runtime runs the segment on the reference executor
    except Exception as exc:  # noqa: BLE001 - a segment ONNX cannot express runs on the reference
        attrs["onnx_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return attrs, arrays


def _segment_graph(attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Graph:
    nodes = [
        Node(n["op"], n["name"], list(n["inputs"]), list(n["outputs"]),
             {k: _decode_attr(v, arrays) for k, v in n["attrs"].items()}, n.get("domain", ""))
        for n in attrs["nodes"]
    ]  # fmt: skip
    inputs = [
        ValueInfo(i["name"], np.dtype(i["dtype"]), None if i["shape"] is None else tuple(i["shape"]))
        for i in attrs["graph_inputs"]
    ]
    outputs = [ValueInfo(o["name"], np.dtype(o["dtype"]), None) for o in attrs["graph_outputs"]]
    constants = {name: np.asarray(arrays[key]) for name, key in attrs["constants"].items()}
    return Graph(nodes, inputs, outputs, constants, name=str(attrs.get("name", "segment")),
                 opset=int(attrs.get("opset", 17)))  # fmt: skip


class SegmentRunner:
    """Runs a ``subgraph`` step's nodes in float: onnxruntime when it is installed and the
    plan carries the segment's ONNX model, else the reference executor."""

    def __init__(self, attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray], threads: int = 1) -> None:
        self.graph = _segment_graph(attrs, arrays)
        self.inputs = [i["name"] for i in attrs["graph_inputs"]]
        self.outputs = [o["name"] for o in attrs["graph_outputs"]]
        self.engine = "reference"
        self.reason = ""
        self._session = None
        data = arrays.get("onnx")
        if data is None:
            self.reason = attrs.get("onnx_error", "the plan carries no ONNX model of this segment")
        else:
            try:
                import onnxruntime as ort
            except ImportError:
                self.reason = "onnxruntime is not installed"
            else:
                try:
                    options = ort.SessionOptions()
                    options.intra_op_num_threads = max(1, int(threads))
                    options.inter_op_num_threads = 1
                    options.log_severity_level = 3
                    self._session = ort.InferenceSession(
                        np.asarray(data, np.uint8).tobytes(), options, providers=["CPUExecutionProvider"]
                    )
                    self.engine = "onnxruntime"
                except Exception as exc:  # noqa: BLE001 - fall back to the reference executor
                    self.reason = f"onnxruntime refused the segment: {exc}"[:300]
        if self._session is None:
            from edge_runtime.graph.reference import OPS

            missing = sorted({n.op_type for n in self.graph.nodes if n.op_type not in OPS})
            if missing:
                raise UnsupportedOperatorError(
                    f"nodes {[n.name for n in self.graph.nodes]} need onnxruntime ({self.reason}) or a "
                    f"reference implementation of {', '.join(missing)}"
                )

    def __call__(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self.inputs, values))
        if self._session is not None:
            return list(self._session.run(self.outputs, feeds))
        from edge_runtime.graph import reference

        result = reference.run(self.graph, feeds)
        return [result[name] for name in self.outputs]


# ---------------------------------------------------------------------------
# the report


def partition_report(plan, engines: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Which graph nodes run where, and the share of MACs on native kernels.

    ``engines`` maps the index of a ``subgraph`` step to the engine that runs it
    (``onnxruntime`` or ``reference``; default ``float``). Placements: ``native`` (the
    int8 kernels, and the layout moves between them), ``native-float`` (the native
    backend's own float32 steps: softmax, layer norm, a matmul of two activations, float
    fallbacks of rarer forms) and the engine of each foreign segment. MACs are per sample
    (see :func:`node_macs`); ``native_mac_share`` is the share on the int8 kernels."""
    kinds: dict[str, set[str]] = {}
    where: dict[str, str] = {}
    segments = []
    for index, step in enumerate(plan.steps):
        if step.op == "subgraph":
            engine = (engines or {}).get(index, "float")
            names = [n["name"] for n in step.attrs.get("nodes", [])]
            for name in names:
                where[name] = engine
            segments.append({"step": index, "engine": engine, "nodes": names})
        elif not step.node.startswith("<"):
            names = list(step.attrs.get("nodes", [])) if step.op == "attention" else [step.node]
            kind = "move" if step.op in _BOOKKEEPING else "float" if step.op in _FLOAT_STEPS else "int8"
            for name in names:
                kinds.setdefault(name, set()).add(kind)
    for name, found in kinds.items():
        if name not in where:
            where[name] = "native" if "int8" in found or found == {"move"} else "native-float"
    macs = dict(plan.macs or {})
    by_place: dict[str, int] = {}
    for name, value in macs.items():
        place = where.get(name, "native")
        by_place[place] = by_place.get(place, 0) + int(value)
    total = sum(by_place.values())
    counts: dict[str, int] = {}
    for place in where.values():
        counts[place] = counts.get(place, 0) + 1
    return {
        "nodes": where,
        "counts": dict(sorted(counts.items())),
        "segments": segments,
        "macs_per_sample": {"total": total, **dict(sorted(by_place.items()))},
        "native_mac_share": None if not total else round(by_place.get("native", 0) / total, 4),
    }


def foreign_nodes(plan) -> list[str]:
    """Names of the nodes that run outside the native kernels (in ``subgraph`` steps)."""
    return [n["name"] for s in plan.steps if s.op == "subgraph" for n in s.attrs.get("nodes", [])]
