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

__all__ = ["infer_shapes"]

Shape = tuple[Dim, ...]

_SAME_SHAPE = {
    "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Gelu", "HardSigmoid", "HardSwish", "Clip", "Identity",
    "Dropout", "Softmax", "LayerNormalization", "BatchNormalization", "Cast",
}  # fmt: skip
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Where"}


def _known(dim: Dim) -> bool:
    """A dim that says something: a size or a real symbol (not ONNX's anonymous unk__N)."""
    return isinstance(dim, int) or (isinstance(dim, str) and not dim.startswith("unk__"))


def infer_shapes(graph: Graph) -> bool:
    """Recompute intermediate shapes in node order; returns True when a shape became more precise."""
    changed = False
    for node in graph.nodes:
        shapes = [graph.shape(name) if name else None for name in node.inputs]
        try:
            out = _infer(graph, node, shapes)
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError):
            out = None
        if out is None or not node.outputs or not node.outputs[0]:
            continue
        name = node.outputs[0]
        if name in graph.output_names:
            continue  # declared by the model
        old = graph.value_info.get(name)
        merged = _merge(old.shape if old else None, out)
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


def _infer(graph: Graph, node: Node, shapes: list[Shape | None]) -> Shape | None:
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
    if op == "ReduceMean" and "axes" in attrs:
        axes = {a % len(x) for a in attrs["axes"]}
        if attrs.get("keepdims", 1):
            return tuple(1 if i in axes else d for i, d in enumerate(x))
        return tuple(d for i, d in enumerate(x) if i not in axes)
    if op == "GlobalAveragePool":
        return x[:2] + (1,) * (len(x) - 2)
    if op == "Gather":
        axis = int(attrs.get("axis", 0)) % len(x)
        return x[:axis] + shapes[1] + x[axis + 1 :]
    if op in ("Conv", "MaxPool", "AveragePool", "ConvTranspose", "Slice", "Resize"):
        return _batch_preserving(graph, node, x)
    return None


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
