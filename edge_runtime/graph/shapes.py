"""Symbolic shape propagation over the IR.

ONNX shape inference runs once at import, before the exporters' shape chains are
folded; it names what it cannot follow ``unk__N`` (through a Reshape whose target
is computed, everything downstream loses the batch symbol). Once the passes have
made those targets constant, :func:`infer_shapes` propagates shapes again, keeping
symbolic dims such as "batch", so that the next Reshape in the chain can fold too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edge_runtime.graph.ir import Dim, Graph, Node, ValueInfo

__all__ = ["infer_shapes", "pad_parameters", "reduce_axes", "split_sizes"]

Shape = tuple[Dim, ...]

_SAME_SHAPE = {
    "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Gelu", "HardSigmoid", "HardSwish", "Clip", "Identity",
    "Dropout", "Softmax", "LayerNormalization", "BatchNormalization", "Cast",
    "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Swish", "ThresholdedRelu",
    "Exp", "Log", "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not",
    "LogSoftmax", "Hardmax", "InstanceNormalization", "PRelu",
}  # fmt: skip
_BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Equal", "Where", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "And", "Or", "Xor", "Mod", "Max", "Min", "Sum", "Mean",
}  # fmt: skip
_REDUCE = {
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp",
}  # fmt: skip


def pad_parameters(graph: Graph, node: Node) -> tuple[list[int], float] | None:
    """(pads for every axis, [begin..., end...], constant value) of a Pad whose parameters are
    constant, in either form (attributes before opset 11, inputs after; ``axes`` from 18);
    None when they are computed at run time or the rank is unknown."""

    def const(index: int) -> np.ndarray | None:
        name = node.input(index)
        return None if not name else graph.constant(name)

    if "pads" in node.attrs:
        pads, value, axes = list(node.attrs["pads"]), node.attrs.get("value", 0.0), None
    else:
        pads_c = const(1)
        if pads_c is None or any(node.input(i) and const(i) is None for i in (2, 3)):
            return None
        pads = [int(v) for v in pads_c.ravel()]
        value_c, axes_c = const(2), const(3)
        value = 0.0 if value_c is None or not value_c.size else value_c.ravel()[0].item()
        axes = None if axes_c is None else [int(a) for a in axes_c.ravel()]
    if axes is not None:
        rank = graph.rank(node.inputs[0])
        if rank is None:
            return None
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a % rank], full[a % rank + rank] = pads[i], pads[i + len(axes)]
        pads = full
    return [int(v) for v in pads], float(value)


def reduce_axes(graph: Graph, node: Node) -> list[int] | None:
    """The axes of a ReduceX (attribute or constant input 1; [] for all), None when computed."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if not node.input(1):
        return []
    value = graph.constant(node.input(1))
    return None if value is None else [int(a) for a in value.ravel()]


def split_sizes(graph: Graph, node: Node, dim: Dim) -> list[int] | None:
    """The output sizes of a Split along a dim of size ``dim`` (attribute ``split``, constant
    input 1, or an equal split: ``num_outputs`` from opset 18, the last part possibly smaller)."""
    if "split" in node.attrs:
        return [int(v) for v in node.attrs["split"]]
    if node.input(1):
        value = graph.constant(node.input(1))
        return None if value is None else [int(v) for v in value.ravel()]
    if not isinstance(dim, int):
        return None
    n = int(node.attrs.get("num_outputs", len(node.outputs)))
    chunk = -(-dim // n)
    return [min(chunk, dim - i * chunk) for i in range(n)]


def _known(dim: Dim) -> bool:
    """A dim that says something: a size or a real symbol (not ONNX's anonymous unk__N)."""
    return isinstance(dim, int) or (isinstance(dim, str) and not dim.startswith("unk__"))


def infer_shapes(graph: Graph) -> bool:
    """Recompute intermediate shapes in node order; returns True when a shape became more precise."""
    changed = False
    read = {name for node in graph.nodes for name in node.inputs}
    for node in graph.nodes:
        shapes = [graph.shape(name) if name else None for name in node.inputs]
        try:
            out = _infer(graph, node, shapes)
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError):
            out = None
        if out is None or not node.outputs:
            continue
        # One shape for the first output, or a list of shapes, one per output.
        for name, shape in zip(node.outputs, out if isinstance(out, list) else [out]):
            if not name or shape is None or name in graph.output_names or name not in read:
                continue  # omitted, unknown, declared by the model, or read by nobody
            old = graph.value_info.get(name)
            merged = _merge(old.shape if old else None, shape)
            if old is None or merged != old.shape:
                dtype = old.dtype if old else None
                graph.value_info[name] = ValueInfo(name, dtype, merged)
                changed = changed or old is None or _more_precise(merged, old.shape)
    return changed


def _merge(old: Shape | None, new: Shape) -> Shape:
    if old is None or len(old) != len(new):
        return new
    return tuple(n if _known(n) or not _known(o) else o for o, n in zip(old, new))


def _more_precise(new: Shape, old: Shape | None) -> bool:
    if old is None or len(old) != len(new):
        return True
    return sum(map(_known, new)) > sum(map(_known, old))


def _broadcast(shapes: Sequence[Shape]) -> Shape:
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        sizes = [d for d in dims if d != 1]
        known = [d for d in sizes if _known(d)]
        out.append(1 if not sizes else known[0] if known else sizes[0])
    return tuple(out)


def _infer(graph: Graph, node: Node, shapes: list[Shape | None]) -> Shape | list[Shape | None] | None:
    op, attrs = node.op_type, node.attrs
    x = shapes[0] if shapes else None
    if op in _SAME_SHAPE:
        return x
    if any(s is None for s, name in zip(shapes, node.inputs) if name):
        return None
    if op in _BROADCAST:
        return _broadcast([s for s in shapes if s is not None])
    if op == "MatMul":
        a, b = shapes[0], shapes[1]
        if len(a) < 2 or len(b) < 2:
            return None
        return _broadcast([a[:-2], b[:-2]]) + (a[-2], b[-1])
    if op == "Gemm":
        a, b = shapes[0], shapes[1]
        rows = a[1] if attrs.get("transA", 0) else a[:-1]
        cols = b[0] if attrs.get("transB", 0) else b[1]
        return (rows, cols) if attrs.get("transA", 0) else (*rows, cols)
    if op == "Transpose":
        perm = attrs.get("perm") or list(range(len(x)))[::-1]
        return tuple(x[p] for p in perm)
    if op == "Reshape":
        target = graph.constant(node.inputs[1])
        return (
            None if target is None else _reshape(x, [int(t) for t in target], bool(attrs.get("allowzero", 0)))
        )
    if op == "Flatten":
        axis = int(attrs.get("axis", 1)) % (len(x) + 1)
        return (_product(x[:axis]), _product(x[axis:]))
    if op == "Unsqueeze" and "axes" in attrs:
        rank = len(x) + len(attrs["axes"])
        axes = {a % rank for a in attrs["axes"]}
        it = iter(x)
        return tuple(1 if i in axes else next(it) for i in range(rank))
    if op == "Squeeze" and "axes" in attrs:
        axes = {a % len(x) for a in attrs["axes"]}
        return tuple(d for i, d in enumerate(x) if i not in axes)
    if op == "Concat":
        axis = int(attrs["axis"]) % len(x)
        parts = [s for s in shapes if s is not None]
        total = _sum([s[axis] for s in parts])
        return tuple(total if i == axis else d for i, d in enumerate(x))
    if op in _REDUCE:
        axes_list = reduce_axes(graph, node)
        if axes_list is None:
            return None
        axes = {a % len(x) for a in axes_list}
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = set(range(len(x)))
        if attrs.get("keepdims", 1):
            return tuple(1 if i in axes else d for i, d in enumerate(x))
        return tuple(d for i, d in enumerate(x) if i not in axes)
    if op in ("ArgMax", "ArgMin"):
        axis = int(attrs.get("axis", 0)) % len(x)
        if attrs.get("keepdims", 1):
            return tuple(1 if i == axis else d for i, d in enumerate(x))
        return tuple(d for i, d in enumerate(x) if i != axis)
    if op == "GlobalMaxPool":
        return x[:2] + (1,) * (len(x) - 2)
    if op == "Pad":
        params = pad_parameters(graph, node)
        if params is None:
            return None
        pads, rank = params[0], len(x)
        return tuple(
            d + pads[i] + pads[i + rank]
            if isinstance(d, int)
            else d
            if pads[i] == pads[i + rank] == 0
            else None
            for i, d in enumerate(x)
        )
    if op == "Split":
        axis = int(attrs.get("axis", 0)) % len(x)
        sizes = split_sizes(graph, node, x[axis])
        if sizes is None:
            return None
        return [x[:axis] + (int(size),) + x[axis + 1 :] for size in sizes]
    if op in ("Expand", "Tile"):
        param = graph.constant(node.inputs[1])
        if param is None:
            return None
        values = [int(v) for v in param.ravel()]
        if op == "Tile":
            return tuple(d * r if isinstance(d, int) else d if r == 1 else None for d, r in zip(x, values))
        return _broadcast([x, tuple(values)])
    if op in ("LSTM", "GRU"):
        return _recurrent(graph, node, x)
    if op in ("DepthToSpace", "SpaceToDepth") and len(x) == 4:
        b = int(attrs["blocksize"])
        n, c, h, w = x
        if op == "DepthToSpace":
            return (n, _div(c, b * b), _mul(h, b), _mul(w, b))
        return (n, _mul(c, b * b), _div(h, b), _div(w, b))
    if op == "GlobalAveragePool":
        return x[:2] + (1,) * (len(x) - 2)
    if op == "Gather":
        axis = int(attrs.get("axis", 0)) % len(x)
        return x[:axis] + shapes[1] + x[axis + 1 :]
    if op == "Slice" and len(node.inputs) == 1 and "starts" in attrs:
        return _slice_shape(x, attrs)
    if op in ("Conv", "MaxPool", "AveragePool", "ConvTranspose", "Slice", "Resize"):
        out = _batch_preserving(graph, node, x)
        if out is None and op in ("Conv", "MaxPool", "AveragePool") and len(x) >= 3:
            out = _window_shape(graph, node, x)
        return out
    return None


def _slice_shape(x: Shape, attrs: dict) -> Shape:
    """Slice in attribute form: static dims computed, a symbolic dim kept when sliced whole."""
    from edge_runtime.graph.reference import _slice_bounds

    dims = list(x)
    starts, ends = attrs["starts"], attrs["ends"]
    axes = attrs.get("axes") or list(range(len(starts)))
    steps = attrs.get("steps") or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= len(x)
        d = x[axis]
        if isinstance(d, int):
            lo, hi = _slice_bounds(int(start), int(end), int(step), d)
            dims[axis] = len(range(lo, hi, int(step)))
        elif not (start == 0 and step == 1 and end >= 2**31 - 1):
            dims[axis] = None
    return tuple(dims)


def _window_shape(graph: Graph, node: Node, x: Shape) -> Shape | None:
    """Conv and pool outputs when some spatial dims are symbolic: the rank and the channels are
    known, a static spatial dim is computed, a symbolic one becomes unknown."""
    from edge_runtime.graph.reference import _spatial_pads

    rank = len(x) - 2
    if node.op_type == "Conv":
        w = graph.shape(node.inputs[1])
        if w is None or not isinstance(w[0], int):
            return None
        channels: Dim = w[0]
        kernel = list(node.attrs.get("kernel_shape", w[2:]))
    else:
        channels = x[1]
        kernel = list(node.attrs["kernel_shape"])
    if not all(isinstance(k, int) for k in kernel):
        return None
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    ceil = bool(node.attrs.get("ceil_mode", 0))
    dims: list[Dim] = []
    for i, d in enumerate(x[2:]):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            dims.append(-(-d // strides[i]) if isinstance(d, int) else None)
            continue
        if not isinstance(d, int):
            dims.append(None)
            continue
        pads = (
            _spatial_pads(node, [d], [kernel[i]], [strides[i]], [dilations[i]])
            if auto_pad == "VALID"
            else None
        )
        begin, end = (
            (0, 0)
            if pads is not None
            else (
                list(node.attrs.get("pads", [0] * (2 * rank)))[i],
                list(node.attrs.get("pads", [0] * (2 * rank)))[i + rank],
            )
        )
        span = d + begin + end - ((kernel[i] - 1) * dilations[i] + 1)
        size = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (size - 1) * strides[i] >= d + begin:
            size -= 1
        dims.append(size)
    return (x[0], channels, *dims)


def _recurrent(graph: Graph, node: Node, x: Shape) -> list[Shape | None] | None:
    """Y, Y_h (and Y_c) of an LSTM/GRU from X [seq, batch, input] (layout 0) and W."""
    w = graph.shape(node.inputs[1])
    r = graph.shape(node.inputs[2])
    if w is None or r is None or len(x) != 3:
        return None
    directions, hidden = w[0], r[-1]
    if node.attrs.get("layout", 0):
        batch, seq = x[0], x[1]
        y: Shape = (batch, seq, directions, hidden)
        state: Shape = (batch, directions, hidden)
    else:
        seq, batch = x[0], x[1]
        y = (seq, directions, batch, hidden)
        state = (directions, batch, hidden)
    return [y, state, state]


def _mul(a: Dim, b: int) -> Dim:
    return a * b if isinstance(a, int) else None


def _div(a: Dim, b: int) -> Dim:
    return a // b if isinstance(a, int) else None


def _batch_preserving(graph: Graph, node: Node, x: Shape) -> Shape | None:
    """Ops whose other dims need arithmetic: evaluate them on a dummy batch of 1 when
    everything but the batch is static, and put the batch dim back."""
    from edge_runtime.graph.reference import evaluate_node  # light: used only for these ops

    if not x or not all(isinstance(d, int) for d in x[1:]):
        return None
    params = [graph.constant(name) if name else None for name in node.inputs[1:]]
    if any(p is None for p, name in zip(params, node.inputs[1:]) if name):
        return None
    if node.op_type in ("Slice", "Resize") and (
        "axes" not in node.attrs or 0 in [a % len(x) for a in node.attrs["axes"]]
    ):
        return None  # may touch the batch axis
    dummy = np.zeros((1, *x[1:]), dtype=np.float32)
    out = evaluate_node(node, [dummy, *params])[0]
    return (x[0], *out.shape[1:])


def _reshape(x: Shape, target: list[int], allowzero: bool) -> Shape | None:
    dims: list[Dim] = [x[i] if t == 0 and not allowzero else t for i, t in enumerate(target)]
    if -1 not in dims:
        return tuple(dims)
    # Solve -1 when the input's symbolic dims are all copied: the static sizes then divide.
    rest = [d for d in dims if d != -1]
    symbols_in = sorted(str(d) for d in x if not isinstance(d, int))
    symbols_out = sorted(str(d) for d in rest if not isinstance(d, int))
    if symbols_in != symbols_out:
        return tuple(None if d == -1 else d for d in dims)
    size_in = math.prod(d for d in x if isinstance(d, int))
    size_out = math.prod(d for d in rest if isinstance(d, int))
    if size_out == 0 or size_in % size_out:
        return None
    return tuple(size_in // size_out if d == -1 else d for d in dims)


def _product(dims: Sequence[Dim]) -> Dim:
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def _sum(dims: Sequence[Dim]) -> Dim:
    return sum(dims) if all(isinstance(d, int) for d in dims) else None
