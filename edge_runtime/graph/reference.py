"""A numpy float executor: the living definition of what every supported op computes.

Slow and simple on purpose. It runs imported graphs (ONNX semantics, opset
differences normalized by the importer) and optimized ones (the IR's fused ops:
``Gelu``, ``LayerNormalization``, an ``activation`` attribute on Conv/Gemm, and a
Gemm whose A may carry leading batch dimensions). The constant folder evaluates
nodes with it, and calibration observes every tensor through ``run(observe=...)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError, GraphError, ModelInputError, UnsupportedOperatorError
from edge_runtime.graph.ir import Graph, Node

__all__ = ["OPS", "apply_activation", "evaluate_node", "run"]

Array = np.ndarray
OpFn = Callable[[Node, list[Array | None]], Sequence[Array]]
OPS: dict[str, OpFn] = {}


def _op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def run(
    graph: Graph,
    feeds: Mapping[str, np.ndarray],
    observe: Callable[[str, np.ndarray], None] | None = None,
    outputs: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``feeds`` (arrays by input name) and return the outputs by name.

    ``observe(name, value)`` is called for every graph input and every tensor a
    node produces, in execution order (calibration hooks in here). Tensors are
    freed after their last reader so that memory stays at the working set.
    """
    env: dict[str, np.ndarray] = dict(graph.initializers)
    for name, value in _check_feeds(graph, feeds).items():
        env[name] = value
        if observe is not None:
            observe(name, value)
    wanted = list(outputs) if outputs is not None else graph.output_names
    last_use = {name: i for i, node in enumerate(graph.nodes) for name in node.inputs}
    for i, node in enumerate(graph.nodes):
        results = evaluate_node(node, [env[name] if name else None for name in node.inputs])
        for name, value in zip(node.outputs, results):
            if name:
                env[name] = value
                if observe is not None:
                    observe(name, value)
        for name in node.inputs:
            if last_use.get(name) == i and name not in wanted and name not in graph.initializers:
                env.pop(name, None)
    missing = [name for name in wanted if name not in env]
    if missing:
        raise GraphError(f"tensors {missing} are not produced by graph {graph.name!r}")
    return {name: env[name] for name in wanted}


def evaluate_node(node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Compute the outputs of one node from its input values (None for omitted inputs)."""
    fn = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if fn is None:
        raise UnsupportedOperatorError(f"{node}: the reference executor has no {node.op_type!r} operator")
    try:
        return list(fn(node, inputs))
    except EdgeRuntimeError:
        raise
    except (ValueError, IndexError, TypeError, ZeroDivisionError) as exc:
        raise GraphError(f"{node} failed on inputs of shapes {_shapes(inputs)}: {exc}") from exc


def _shapes(inputs: list[np.ndarray | None]) -> list[Any]:
    return [None if x is None else tuple(x.shape) for x in inputs]


def _check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    expected = graph.input_names
    missing = [name for name in expected if name not in feeds]
    unknown = [name for name in feeds if name not in expected]
    if missing or unknown:
        raise ModelInputError(f"inputs {expected} expected; missing {missing}, unknown {unknown}")
    checked = {}
    for info in graph.inputs:
        value = np.asarray(feeds[info.name])
        if info.dtype is not None and value.dtype != info.dtype:
            raise ModelInputError(f"input {info.name!r} has dtype {value.dtype}, expected {info.dtype}")
        if info.shape is not None:
            ok = value.ndim == len(info.shape) and all(
                not isinstance(d, int) or d == s for d, s in zip(info.shape, value.shape)
            )
            if not ok:
                raise ModelInputError(f"input {info.name!r} has shape {value.shape}, expected {info.shape}")
        checked[info.name] = value
    return checked


# ---------------------------------------------------------------------------
# helpers


def _attr_or_input(node: Node, inputs: list[Array | None], attr: str, index: int) -> list[int] | None:
    """A list-valued parameter that opsets moved from attributes to inputs (axes, ...)."""
    if attr in node.attrs:
        value = node.attrs[attr]
        return None if value is None else [int(v) for v in np.asarray(value).ravel()]
    if index < len(inputs) and inputs[index] is not None:
        return [int(v) for v in np.asarray(inputs[index]).ravel()]
    return None


def apply_activation(y: Array, activation: str | None) -> Array:
    """The IR's fused activations: ``relu`` and ``relu6`` (a Conv/Gemm attribute)."""
    if activation in (None, ""):
        return y
    if activation == "relu":
        return np.maximum(y, 0).astype(y.dtype)
    if activation == "relu6":
        return np.clip(y, 0, 6).astype(y.dtype)
    raise UnsupportedOperatorError(f"fused activation {activation!r}: expected 'relu' or 'relu6'")


def _spatial_pads(
    node: Node,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    """Explicit [begin..., end...] pads, resolving auto_pad SAME_UPPER / SAME_LOWER / VALID."""
    rank = len(spatial)
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return list(node.attrs.get("pads", [0] * (2 * rank)))
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def _window(offset: Sequence[int], dilations: Sequence[int], strides: Sequence[int], out: Sequence[int]):
    """Slices picking, for one kernel tap, the input element of every output position."""
    return tuple(
        slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(offset, dilations, strides, out)
    )


def _erf(x: Array) -> Array:
    try:
        from scipy.special import erf  # optional: exact and fast
    except ImportError:
        erf = np.frompyfunc(math.erf, 1, 1)
    return np.asarray(erf(x.astype(np.float64)), dtype=np.float64).astype(x.dtype)


# ---------------------------------------------------------------------------
# convolution and GEMM


@_op("Conv")
def _conv(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    rank = x.ndim - 2
    kernel = list(node.attrs.get("kernel_shape", w.shape[2:]))
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    group = int(node.attrs.get("group", 1))
    pads = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + rank]) for i in range(rank)])
    out = [(x.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(rank)]
    n, c = x.shape[:2]
    m = w.shape[0]
    xg = x.reshape(n, group, c // group, *x.shape[2:])
    wg = w.reshape(group, m // group, c // group, *kernel)
    y = np.zeros((n, group, m // group, *out), dtype=np.float64)
    for offset in itertools.product(*(range(k) for k in kernel)):
        patch = xg[(slice(None),) * 3 + _window(offset, dilations, strides, out)]
        y += np.einsum("ngc...,gmc->ngm...", patch, wg[(Ellipsis, *offset)], optimize=True)
    y = y.reshape(n, m, *out)
    if b is not None:
        y += b.reshape(1, m, *[1] * rank)
    return [apply_activation(y.astype(inputs[0].dtype), node.attrs.get("activation"))]


@_op("ConvTranspose")
def _conv_transpose(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    rank = x.ndim - 2
    n, c = x.shape[:2]
    group = int(node.attrs.get("group", 1))
    m = w.shape[1] * group
    kernel = list(node.attrs.get("kernel_shape", w.shape[2:]))
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    out_pad = list(node.attrs.get("output_padding", [0] * rank))
    full = [(x.shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(rank)]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    output_shape = node.attrs.get("output_shape")
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [x.shape[2 + i] * strides[i] for i in range(rank)]
    if output_shape is not None:
        output_shape = list(output_shape)[-rank:]
        total = [full[i] + out_pad[i] - output_shape[i] for i in range(rank)]
        upper = auto_pad == "SAME_UPPER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
        end = [t - t // 2 if upper else t // 2 for t in total]
    elif auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    else:
        pads = list(node.attrs.get("pads", [0] * (2 * rank)))
        begin, end = pads[:rank], pads[rank:]
    out = [full[i] + out_pad[i] - begin[i] - end[i] for i in range(rank)]
    size = [max(full[i] + out_pad[i], begin[i] + out[i]) for i in range(rank)]
    xg = x.reshape(n, group, c // group, *x.shape[2:])
    wg = w.reshape(group, c // group, m // group, *kernel)
    y = np.zeros((n, group, m // group, *size), dtype=np.float64)
    for offset in itertools.product(*(range(k) for k in kernel)):
        target = _window(offset, dilations, strides, x.shape[2:])
        y[(slice(None),) * 3 + target] += np.einsum(
            "ngc...,gcm->ngm...", xg, wg[(Ellipsis, *offset)], optimize=True
        )
    y = y.reshape(n, m, *size)[(slice(None),) * 2 + tuple(slice(b0, b0 + o) for b0, o in zip(begin, out))]
    if b is not None:
        y = y + b.reshape(1, m, *[1] * rank)
    return [apply_activation(y.astype(x.dtype), node.attrs.get("activation"))]


@_op("Gemm")
def _gemm(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    """ONNX Gemm, extended: with transA=0, A may have leading batch dims (rows of a matrix)."""
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    y = np.matmul(a.astype(np.float64), b.astype(np.float64)) * float(node.attrs.get("alpha", 1.0))
    if c is not None:
        y = y + float(node.attrs.get("beta", 1.0)) * c
    return [apply_activation(y.astype(inputs[0].dtype), node.attrs.get("activation"))]


@_op("MatMul")
def _matmul(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    a, b = inputs
    return [np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)]


# ---------------------------------------------------------------------------
# elementwise


def _binary(fn: Callable[[Array, Array], Array]) -> OpFn:
    def op(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
        a, b = inputs
        return [np.asarray(fn(a, b)).astype(np.result_type(a, b), copy=False)]

    return op


def _int_div(a: Array, b: Array) -> Array:
    if np.issubdtype(np.result_type(a, b), np.integer):
        return np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))  # C++ truncation, as onnxruntime
    return np.true_divide(a, b)


_op("Add")(_binary(np.add))
_op("Sub")(_binary(np.subtract))
_op("Mul")(_binary(np.multiply))
_op("Div")(_binary(_int_div))


@_op("Pow")
def _pow(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, e = inputs
    return [np.power(x, e).astype(x.dtype)]


@_op("Equal")
def _equal(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    return [np.equal(inputs[0], inputs[1])]


@_op("Where")
def _where(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    cond, a, b = inputs
    return [np.where(cond, a, b).astype(np.result_type(a, b))]


def _unary(fn: Callable[[Array, Node], Array]) -> OpFn:
    def op(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
        x = inputs[0]
        return [np.asarray(fn(x, node)).astype(x.dtype, copy=False)]

    return op


def _gelu(x: Array, node: Node) -> Array:
    x64 = x.astype(np.float64)
    if node.attrs.get("approximate", "none") == "tanh":
        return 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)))
    return 0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)))


def _hard_sigmoid(x: Array, node: Node) -> Array:
    alpha = float(node.attrs.get("alpha", 0.2))
    beta = float(node.attrs.get("beta", 0.5))
    return np.clip(alpha * x.astype(np.float64) + beta, 0.0, 1.0)


def _clip(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    lo = node.attrs.get("min", inputs[1] if len(inputs) > 1 else None)
    hi = node.attrs.get("max", inputs[2] if len(inputs) > 2 else None)
    y = x
    if lo is not None:
        y = np.maximum(y, np.asarray(lo, dtype=x.dtype))
    if hi is not None:
        y = np.minimum(y, np.asarray(hi, dtype=x.dtype))
    return [y]


_op("Relu")(_unary(lambda x, n: np.maximum(x, 0)))
_op("Sigmoid")(_unary(lambda x, n: 1.0 / (1.0 + np.exp(-x.astype(np.float64)))))
_op("Tanh")(_unary(lambda x, n: np.tanh(x)))
_op("Sqrt")(_unary(lambda x, n: np.sqrt(x)))
_op("Erf")(_unary(lambda x, n: _erf(x)))
_op("Gelu")(_unary(_gelu))
_op("HardSigmoid")(_unary(_hard_sigmoid))
_op("HardSwish")(_unary(lambda x, n: x * np.clip(x.astype(np.float64) / 6.0 + 0.5, 0.0, 1.0)))
_op("Identity")(lambda node, inputs: [inputs[0]])
_op("Clip")(_clip)


@_op("Dropout")
def _dropout(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    return [x, np.ones(x.shape, dtype=bool)]  # inference: identity, mask all kept


# ---------------------------------------------------------------------------
# normalization


@_op("LayerNormalization")
def _layer_norm(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = int(node.attrs.get("axis", -1)) % x.ndim
    eps = float(node.attrs.get("epsilon", 1e-5))
    axes = tuple(range(axis, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps) * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype)]


@_op("BatchNormalization")
def _batch_norm(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, scale, bias, mean, var = inputs[:5]
    if node.attrs.get("training_mode", 0):
        raise UnsupportedOperatorError(f"{node}: training_mode=1 (export the model in eval mode)")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = float(node.attrs.get("epsilon", 1e-5))
    k = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    y = (x - mean.reshape(shape)) * k.reshape(shape) + bias.reshape(shape)
    return [y.astype(x.dtype)]


# ---------------------------------------------------------------------------
# pooling and resize


def _pool(node: Node, x: Array, kind: str) -> Array:
    rank = x.ndim - 2
    spatial = x.shape[2:]
    kernel = list(node.attrs["kernel_shape"])
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    pads = _spatial_pads(node, spatial, kernel, strides, dilations)
    ceil_mode = bool(node.attrs.get("ceil_mode", 0))
    out = []
    for i in range(rank):
        span = spatial[i] + pads[i] + pads[i + rank] - ((kernel[i] - 1) * dilations[i] + 1)
        size = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (size - 1) * strides[i] >= spatial[i] + pads[i]:
            size -= 1  # a last window that would start in the end padding is dropped
        out.append(size)
    # Windows of a ceil_mode pool may reach past the end padding: pad those cells too.
    extra = [
        max(
            0,
            (out[i] - 1) * strides[i]
            + (kernel[i] - 1) * dilations[i]
            + 1
            - (spatial[i] + pads[i] + pads[i + rank]),
        )
        for i in range(rank)
    ]
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + rank] + extra[i]) for i in range(rank)]
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x.astype(np.float64), widths, constant_values=fill)
    acc = None
    count = None
    if kind == "avg":
        # Cells a window counts: the input only, or the input and the explicit pads.
        if node.attrs.get("count_include_pad", 0):
            inside = np.pad(
                np.ones([s + pads[i] + pads[i + rank] for i, s in enumerate(spatial)]),
                [(0, e) for e in extra],
            )
        else:
            inside = np.pad(np.ones(spatial), [(pads[i], pads[i + rank] + extra[i]) for i in range(rank)])
        count = np.zeros(out)
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = _window(offset, dilations, strides, out)
        patch = xp[(slice(None),) * 2 + window]
        if kind == "max":
            acc = patch if acc is None else np.maximum(acc, patch)
        else:
            acc = patch if acc is None else acc + patch
            count += inside[window]
    if kind == "avg":
        acc = acc / count
    return acc.astype(x.dtype)


@_op("MaxPool")
def _max_pool(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedOperatorError(f"{node}: the Indices output of MaxPool is not supported")
    if node.attrs.get("storage_order", 0):
        raise UnsupportedOperatorError(f"{node}: MaxPool storage_order=1 is not supported")
    return [_pool(node, inputs[0], "max")]


@_op("AveragePool")
def _average_pool(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    return [_pool(node, inputs[0], "avg")]


@_op("GlobalAveragePool")
def _global_average_pool(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    return [x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)]


RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
RESIZE_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@_op("Resize")
def _resize(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    mode = node.attrs.get("mode", "nearest")
    transform = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = node.attrs.get("nearest_mode", "round_prefer_floor")
    if mode not in ("nearest", "linear", "cubic"):
        raise UnsupportedOperatorError(
            f"{node}: Resize mode {mode!r} (nearest, linear and cubic are supported)"
        )
    if transform not in RESIZE_COORDINATE_MODES:
        raise UnsupportedOperatorError(f"{node}: coordinate_transformation_mode {transform!r}")
    if mode == "nearest" and nearest_mode not in RESIZE_NEAREST_MODES:
        raise UnsupportedOperatorError(f"{node}: nearest_mode {nearest_mode!r}")
    if node.attrs.get("antialias", 0):
        raise UnsupportedOperatorError(f"{node}: Resize antialias=1")
    axes = [a % x.ndim for a in node.attrs.get("axes", range(x.ndim))]
    scales = node.attrs.get("scales")
    sizes = node.attrs.get("sizes")
    if scales is None and sizes is None:
        scales = inputs[2] if len(inputs) > 2 and inputs[2] is not None and inputs[2].size else None
        sizes = inputs[3] if len(inputs) > 3 and inputs[3] is not None and inputs[3].size else None
    if sizes is not None:
        if node.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise UnsupportedOperatorError(f"{node}: keep_aspect_ratio_policy other than 'stretch'")
        out_sizes = [int(s) for s in np.asarray(sizes).ravel()]
        factors = [np.float32(o) / np.float32(x.shape[a]) for o, a in zip(out_sizes, axes)]
    elif scales is not None:
        factors = [np.float32(s) for s in np.asarray(scales).ravel()]
        out_sizes = [int(np.float32(x.shape[a]) * f) for a, f in zip(axes, factors)]
    else:
        raise GraphError(f"{node}: Resize needs scales or sizes")
    y = x
    for axis, size, factor in zip(axes, out_sizes, factors):
        length = x.shape[axis]
        if size == length and factor == 1:
            continue
        i = np.arange(size, dtype=np.float32)
        if transform == "asymmetric":
            coord = i / factor
        elif transform == "align_corners":
            coord = i * np.float32((length - 1) / (size - 1)) if size > 1 else np.zeros_like(i)
        elif transform == "pytorch_half_pixel" and size == 1:
            coord = np.zeros_like(i)
        else:
            coord = (i + np.float32(0.5)) / factor - np.float32(0.5)
        shape = [1] * y.ndim
        shape[axis] = size
        if mode == "nearest":
            index = _nearest(coord, nearest_mode)
            y = np.take(y, np.clip(index, 0, length - 1), axis=axis)
        elif mode == "cubic":
            y = _cubic_along(y, coord, axis, length, node).astype(x.dtype)
        else:
            coord = np.clip(coord, 0, length - 1)
            low = np.floor(coord).astype(np.int64)
            high = np.minimum(low + 1, length - 1)
            w = (coord - low).astype(np.float64).reshape(shape)
            y = (np.take(y, low, axis=axis) * (1 - w) + np.take(y, high, axis=axis) * w).astype(x.dtype)
    return [y]


def _cubic_along(y: Array, coord: Array, axis: int, length: int, node: Node) -> Array:
    """Cubic convolution (Keys, ``cubic_coeff_a``) along one axis: taps floor(x)-1 .. floor(x)+2,
    indices past the ends take the edge value, or with ``exclude_outside`` get weight 0 and the
    rest is renormalized (ONNX Resize, as onnxruntime computes it)."""
    a = float(node.attrs.get("cubic_coeff_a", -0.75))
    coord = coord.astype(np.float64)
    base = np.floor(coord)
    t = coord - base

    def kernel(d: Array) -> Array:
        d = np.abs(d)
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return np.where(d <= 1, near, np.where(d < 2, far, 0.0))

    taps = base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :]  # [size, 4]
    weights = kernel(t[:, None] - np.arange(-1, 3)[None, :])
    if node.attrs.get("exclude_outside", 0):
        weights = np.where((taps >= 0) & (taps < length), weights, 0.0)
        weights = weights / weights.sum(axis=1, keepdims=True)
    taps = np.clip(taps, 0, length - 1)
    moved = np.moveaxis(y.astype(np.float64), axis, -1)
    out = np.einsum("...sk,sk->...s", moved[..., taps], weights)
    return np.moveaxis(out, -1, axis)


def _nearest(coord: Array, mode: str) -> Array:
    floor = np.floor(coord)
    if mode == "floor":
        return floor.astype(np.int64)
    if mode == "ceil":
        return np.ceil(coord).astype(np.int64)
    half = coord - floor == 0.5
    rounded = np.floor(coord + 0.5)
    if mode == "round_prefer_floor":
        rounded = np.where(half, floor, rounded)
    return rounded.astype(np.int64)


# ---------------------------------------------------------------------------
# shapes and data movement


@_op("Concat")
def _concat(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    parts = [x for x in inputs if x is not None]
    return [np.concatenate(parts, axis=int(node.attrs["axis"]))]


@_op("Reshape")
def _reshape(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, shape = inputs[0], [int(s) for s in inputs[1]]
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@_op("Flatten")
def _flatten(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    axis = int(node.attrs.get("axis", 1)) % (x.ndim + 1) if x.ndim else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@_op("Transpose")
def _transpose(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    perm = node.attrs.get("perm")
    return [np.transpose(inputs[0], None if perm is None else list(perm))]


@_op("Squeeze")
def _squeeze(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    axes = _attr_or_input(node, inputs, "axes", 1)
    x = inputs[0]
    return [np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


@_op("Unsqueeze")
def _unsqueeze(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    axes = _attr_or_input(node, inputs, "axes", 1)
    x = inputs[0]
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(sorted(a % rank for a in axes)))]


@_op("Slice")
def _slice(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    starts = _attr_or_input(node, inputs, "starts", 1)
    ends = _attr_or_input(node, inputs, "ends", 2)
    axes = _attr_or_input(node, inputs, "axes", 3) or list(range(len(starts)))
    steps = _attr_or_input(node, inputs, "steps", 4) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.ndim
        index = np.arange(*_slice_bounds(start, end, step, x.shape[axis]), step)
        x = np.take(x, index, axis=axis)
    return [x]


def _slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """ONNX Slice clamping (which differs from Python's for negative steps)."""
    if step == 0:
        raise GraphError("Slice step 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


@_op("Gather")
def _gather(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    data, indices = inputs
    axis = int(node.attrs.get("axis", 0)) % data.ndim
    indices = np.asarray(indices, dtype=np.int64)
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    if indices.size and (indices.min() < 0 or indices.max() >= data.shape[axis]):
        raise ModelInputError(f"{node}: indices out of range for axis {axis} of size {data.shape[axis]}")
    return [np.take(data, indices, axis=axis)]


@_op("Shape")
def _shape(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    shape = np.array(inputs[0].shape, dtype=np.int64)
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end")
    return [shape[start:end]]


@_op("Cast")
def _cast(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    return [inputs[0].astype(np.dtype(node.attrs["to"]))]


@_op("Range")
def _range(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    start, limit, delta = inputs
    return [np.arange(start, limit, delta).astype(np.asarray(start).dtype)]


@_op("ConstantOfShape")
def _constant_of_shape(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    value = np.asarray(node.attrs.get("value", np.zeros(1, dtype=np.float32)))
    return [np.full([int(d) for d in inputs[0]], value.ravel()[0], dtype=value.dtype)]


@_op("Constant")
def _constant(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    return [np.asarray(node.attrs["value"])]


# ---------------------------------------------------------------------------
# operators of real models (vision, OCR, audio, text) beyond the core set


def _softmax_axes(node: Node, x: Array) -> tuple[int, ...]:
    """The axes a Softmax/LogSoftmax/Hardmax normalizes over: one axis, or, for an opset < 13
    node the importer marked ``coerce_2d``, every axis from ``axis`` on (the input coerced
    to 2-D at ``axis``)."""
    axis = int(node.attrs.get("axis", -1)) % max(x.ndim, 1)
    if node.attrs.get("coerce_2d", 0):
        return tuple(range(axis, x.ndim))
    return (axis,)


def _softmax_any(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    axes = _softmax_axes(node, x)
    x64 = x.astype(np.float64)
    shifted = x64 - np.max(x64, axis=axes, keepdims=True)
    if node.op_type == "LogSoftmax":
        y = shifted - np.log(np.sum(np.exp(shifted), axis=axes, keepdims=True))
    elif node.op_type == "Hardmax":
        # 1 at the first maximum of each row (the rows of the 2-D coercion), else 0.
        moved = np.moveaxis(x, axes, range(x.ndim - len(axes), x.ndim))
        lead = moved.shape[: x.ndim - len(axes)]
        flat = moved.reshape(*lead, -1)
        hot = np.zeros_like(flat)
        np.put_along_axis(hot, np.argmax(flat, axis=-1)[..., None], 1, axis=-1)
        y = np.moveaxis(hot.reshape(moved.shape), range(x.ndim - len(axes), x.ndim), axes)
    else:
        e = np.exp(shifted)
        y = e / np.sum(e, axis=axes, keepdims=True)
    return [np.asarray(y).astype(x.dtype)]


_op("Softmax", "LogSoftmax", "Hardmax")(_softmax_any)


def _alpha(node: Node, default: float) -> float:
    return float(node.attrs.get("alpha", default))


def _selu(x: Array, node: Node) -> Array:
    alpha = _alpha(node, 1.6732632423543772)
    gamma = float(node.attrs.get("gamma", 1.0507009873554805))
    x64 = x.astype(np.float64)
    return gamma * np.where(x64 > 0, x64, alpha * (np.exp(x64) - 1.0))


def _softplus(x64: Array) -> Array:
    return np.logaddexp(0.0, x64)


_op("LeakyRelu")(_unary(lambda x, n: np.where(x >= 0, x, x * np.float64(_alpha(n, 0.01)))))
_op("Elu")(_unary(lambda x, n: np.where(x > 0, x, _alpha(n, 1.0) * np.expm1(x.astype(np.float64)))))
_op("Celu")(
    _unary(lambda x, n: np.maximum(x, 0) + np.minimum(0, _alpha(n, 1.0) * np.expm1(x / _alpha(n, 1.0))))
)
_op("Selu")(_unary(_selu))
_op("ThresholdedRelu")(_unary(lambda x, n: np.where(x > _alpha(n, 1.0), x, 0)))
_op("Softplus")(_unary(lambda x, n: _softplus(x.astype(np.float64))))
_op("Softsign")(_unary(lambda x, n: x / (1.0 + np.abs(x.astype(np.float64)))))
_op("Mish")(_unary(lambda x, n: x * np.tanh(_softplus(x.astype(np.float64)))))
# Swish (opset 24; also what the SiLU pattern x * sigmoid(x) becomes): x * sigmoid(alpha * x).
_op("Swish")(_unary(lambda x, n: x / (1.0 + np.exp(-_alpha(n, 1.0) * x.astype(np.float64)))))
_op("Exp")(_unary(lambda x, n: np.exp(x.astype(np.float64))))
_op("Log")(_unary(lambda x, n: np.log(x.astype(np.float64))))
_op("Abs")(_unary(lambda x, n: np.abs(x)))
_op("Neg")(_unary(lambda x, n: np.negative(x)))
_op("Reciprocal")(_unary(lambda x, n: 1.0 / x.astype(np.float64)))
_op("Floor")(_unary(lambda x, n: np.floor(x)))
_op("Ceil")(_unary(lambda x, n: np.ceil(x)))
_op("Round")(_unary(lambda x, n: np.round(x)))  # half to even, as ONNX
_op("Sign")(_unary(lambda x, n: np.sign(x)))
_op("Sin")(_unary(lambda x, n: np.sin(x.astype(np.float64))))
_op("Cos")(_unary(lambda x, n: np.cos(x.astype(np.float64))))
_op("Not")(lambda node, inputs: [np.logical_not(inputs[0])])


@_op("PRelu")
def _prelu(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, slope = inputs
    return [np.where(x >= 0, x, x * slope).astype(x.dtype)]


_op("Less")(lambda node, inputs: [np.less(inputs[0], inputs[1])])
_op("LessOrEqual")(lambda node, inputs: [np.less_equal(inputs[0], inputs[1])])
_op("Greater")(lambda node, inputs: [np.greater(inputs[0], inputs[1])])
_op("GreaterOrEqual")(lambda node, inputs: [np.greater_equal(inputs[0], inputs[1])])
_op("And")(lambda node, inputs: [np.logical_and(inputs[0], inputs[1])])
_op("Or")(lambda node, inputs: [np.logical_or(inputs[0], inputs[1])])
_op("Xor")(lambda node, inputs: [np.logical_xor(inputs[0], inputs[1])])


@_op("Mod")
def _mod(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    a, b = inputs
    if node.attrs.get("fmod", 0):
        return [np.fmod(a, b)]
    return [np.mod(a, b)]


def _variadic(fn: Callable[[Array, Array], Array], mean: bool = False) -> OpFn:
    def op(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
        parts = [v for v in inputs if v is not None]
        y = parts[0]
        for v in parts[1:]:
            y = fn(y, v)
        if mean:
            y = y / len(parts)
        return [np.asarray(y).astype(np.result_type(*parts), copy=False)]

    return op


_op("Max")(_variadic(np.maximum))
_op("Min")(_variadic(np.minimum))
_op("Sum")(_variadic(np.add))
_op("Mean")(_variadic(np.add, mean=True))


def _reduce(fn: Callable[..., Array], pre: Callable[[Array], Array] | None = None,
            post: Callable[[Array], Array] | None = None) -> OpFn:  # fmt: skip
    """ReduceX: ``axes`` an attribute (before opset 18; ReduceSum before 13) or input 1."""

    def op(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
        x = inputs[0]
        axes = _attr_or_input(node, inputs, "axes", 1)
        keepdims = bool(node.attrs.get("keepdims", 1))
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.ndim))
        axes_t = tuple(a % x.ndim for a in axes)
        value = x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x
        if pre is not None:
            value = pre(value)
        y = fn(value, axis=axes_t, keepdims=keepdims)
        if post is not None:
            y = post(y)
        return [np.asarray(y).astype(x.dtype)]

    return op


_op("ReduceMean")(_reduce(np.mean))
_op("ReduceMax")(_reduce(np.max))
_op("ReduceMin")(_reduce(np.min))
_op("ReduceSum")(_reduce(np.sum))
_op("ReduceProd")(_reduce(np.prod))
_op("ReduceL1")(_reduce(np.sum, pre=np.abs))
_op("ReduceL2")(_reduce(np.sum, pre=np.square, post=np.sqrt))
_op("ReduceSumSquare")(_reduce(np.sum, pre=np.square))
_op("ReduceLogSum")(_reduce(np.sum, post=np.log))
_op("ReduceLogSumExp")(_reduce(np.sum, pre=np.exp, post=np.log))


@_op("ArgMax", "ArgMin")
def _arg_reduce(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    axis = int(node.attrs.get("axis", 0)) % x.ndim
    fn = np.argmax if node.op_type == "ArgMax" else np.argmin
    if node.attrs.get("select_last_index", 0):
        flipped = np.flip(x, axis=axis)
        y = x.shape[axis] - 1 - fn(flipped, axis=axis)
    else:
        y = fn(x, axis=axis)
    if node.attrs.get("keepdims", 1):
        y = np.expand_dims(y, axis)
    return [np.asarray(y, dtype=np.int64)]


@_op("GlobalMaxPool")
def _global_max_pool(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


@_op("InstanceNormalization")
def _instance_norm(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, scale, bias = inputs
    axes = tuple(range(2, x.ndim))
    eps = float(node.attrs.get("epsilon", 1e-5))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x64 - mean) / np.sqrt(var + eps) * scale.reshape(shape) + bias.reshape(shape)
    return [y.astype(x.dtype)]


@_op("Pad")
def _pad(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    """Pad of every opset: ``pads``/``value`` attributes (opset < 11, and the IR's canonical
    form) or inputs (pads, constant_value, axes); modes constant, reflect, edge, wrap.
    Negative pads crop."""
    x = inputs[0]
    pads = _attr_or_input(node, inputs, "pads", 1)
    if "value" in node.attrs:
        value = node.attrs["value"]
    else:
        value = inputs[2] if len(inputs) > 2 and inputs[2] is not None and inputs[2].size else 0
    value = np.asarray(value).ravel()[0] if np.size(value) else 0
    axes = _attr_or_input(node, inputs, "axes", 3)
    rank = x.ndim
    full = [0] * (2 * rank)
    if axes is None:
        full = list(pads)
    else:
        for i, a in enumerate(axes):
            full[a % rank] = pads[i]
            full[a % rank + rank] = pads[i + len(axes)]
    crop = tuple(slice(max(0, -full[i]), x.shape[i] - max(0, -full[i + rank])) for i in range(rank))
    x = x[crop]
    widths = [(max(0, full[i]), max(0, full[i + rank])) for i in range(rank)]
    mode = node.attrs.get("mode", "constant")
    if mode == "constant":
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(value, x.dtype))]
    if mode not in ("reflect", "edge", "wrap"):
        raise UnsupportedOperatorError(f"{node}: Pad mode {mode!r}")
    return [np.pad(x, widths, mode=mode)]


@_op("Split")
def _split(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    axis = int(node.attrs.get("axis", 0)) % x.ndim
    sizes = _attr_or_input(node, inputs, "split", 1)
    count = len(node.outputs)
    if sizes is None:
        n = int(node.attrs.get("num_outputs", count))
        chunk = -(-x.shape[axis] // n)  # opset 18: the last chunk may be smaller
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
    bounds = np.cumsum([0, *sizes])
    return [np.take(x, np.arange(bounds[i], bounds[i + 1]), axis=axis) for i in range(len(sizes))]


@_op("Expand")
def _expand(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, shape = inputs
    target = np.broadcast_shapes(x.shape, tuple(int(s) for s in shape))
    return [np.ascontiguousarray(np.broadcast_to(x, target))]


@_op("Tile")
def _tile(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x, repeats = inputs
    return [np.tile(x, [int(r) for r in repeats])]


@_op("DepthToSpace")
def _depth_to_space(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    b = int(node.attrs["blocksize"])
    n, c, h, w = x.shape
    if node.attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@_op("SpaceToDepth")
def _space_to_depth(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    x = inputs[0]
    b = int(node.attrs["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


@_op("Einsum")
def _einsum(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    parts = [v for v in inputs if v is not None]
    y = np.einsum(str(node.attrs["equation"]), *[p.astype(np.float64) for p in parts])
    return [np.asarray(y).astype(parts[0].dtype)]


@_op("Size")
def _size(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    return [np.asarray(inputs[0].size, dtype=np.int64)]


# -- recurrent layers -----------------------------------------------------------

_RNN_ACTIVATIONS: dict[str, Callable[[Array, float, float], Array]] = {
    "sigmoid": lambda x, a, b: 1.0 / (1.0 + np.exp(-x)),
    "tanh": lambda x, a, b: np.tanh(x),
    "relu": lambda x, a, b: np.maximum(x, 0.0),
    "hardsigmoid": lambda x, a, b: np.clip(a * x + b, 0.0, 1.0),
    "leakyrelu": lambda x, a, b: np.where(x >= 0, x, a * x),
    "affine": lambda x, a, b: a * x + b,
    "softsign": lambda x, a, b: x / (1.0 + np.abs(x)),
    "softplus": lambda x, a, b: np.logaddexp(0.0, x),
    "elu": lambda x, a, b: np.where(x > 0, x, a * np.expm1(x)),
    "thresholdedrelu": lambda x, a, b: np.where(x > a, x, 0.0),
    "scaledtanh": lambda x, a, b: a * np.tanh(b * x),
}
_RNN_DEFAULT_ALPHA = {"hardsigmoid": 0.2, "leakyrelu": 0.01, "elu": 1.0, "thresholdedrelu": 1.0}
_RNN_DEFAULT_BETA = {"hardsigmoid": 0.5}


def _rnn_activations(node: Node, defaults: Sequence[str], directions: int) -> list[Callable[[Array], Array]]:
    names = [str(a).lower() for a in node.attrs.get("activations", list(defaults) * directions)]
    alphas = list(node.attrs.get("activation_alpha", []))
    betas = list(node.attrs.get("activation_beta", []))
    fns = []
    for i, name in enumerate(names):
        if name not in _RNN_ACTIVATIONS:
            raise UnsupportedOperatorError(f"{node}: activation {name!r}")
        a = float(alphas[i]) if i < len(alphas) else _RNN_DEFAULT_ALPHA.get(name, 1.0)
        b = float(betas[i]) if i < len(betas) else _RNN_DEFAULT_BETA.get(name, 0.0)
        fns.append(lambda x, f=_RNN_ACTIVATIONS[name], a=a, b=b: f(x, a, b))
    return fns


def _rnn_common(node: Node, inputs: list[Array | None], gates: int):
    """(X [seq, batch, in] float64, W, R, B, sequence_lens, initial state inputs, directions,
    hidden size) with ``layout`` 1 (batch first) turned into layout 0."""
    x, w, r = inputs[0], inputs[1], inputs[2]
    layout = int(node.attrs.get("layout", 0))
    x = x.astype(np.float64)
    if layout:
        x = x.transpose(1, 0, 2)
    directions, hidden = w.shape[0], r.shape[-1]
    b = inputs[3] if len(inputs) > 3 and inputs[3] is not None else np.zeros((directions, 2 * gates * hidden))
    lens = inputs[4] if len(inputs) > 4 and inputs[4] is not None else None
    return (
        x,
        w.astype(np.float64),
        r.astype(np.float64),
        b.astype(np.float64),
        lens,
        directions,
        hidden,
        layout,
    )


def _rnn_state(value: Array | None, d: int, batch: int, hidden: int, layout: int) -> Array:
    if value is None:
        return np.zeros((batch, hidden))
    value = value.astype(np.float64)
    return value[:, d] if layout else value[d]


def _rnn_outputs(node: Node, ys: list[Array], finals: list[list[Array]], layout: int, dtype) -> list[Array]:
    """Y [seq, dirs, batch, hidden] (layout 0) or [batch, seq, dirs, hidden], and the final states."""
    y = np.stack(ys, axis=1)  # [seq, dirs, batch, hidden]
    states = [np.stack(f, axis=0) for f in finals]  # [dirs, batch, hidden]
    if layout:
        y = y.transpose(2, 0, 1, 3)
        states = [s.transpose(1, 0, 2) for s in states]
    outs = [a.astype(dtype) for a in (y, *states)]
    # The lowering runs each output of a recurrent layer as its own single-output float step:
    # it names the one it wants in the IR attribute "_output".
    if "_output" in node.attrs:
        return [outs[int(node.attrs["_output"])]]
    return outs


def _rnn_directions(node: Node, directions: int) -> list[bool]:
    """Per direction, whether it runs backwards."""
    direction = node.attrs.get("direction", "forward")
    if direction == "bidirectional":
        return [False, True]
    return [direction == "reverse"] * directions


def _time_steps(seq: int, lens: Array | None, batch: int, reverse: bool):
    """(t, mask [batch, 1] of the rows still within their sequence length) in walking order."""
    order = range(seq - 1, -1, -1) if reverse else range(seq)
    for t in order:
        mask = np.ones((batch, 1), bool) if lens is None else (t < np.asarray(lens)).reshape(batch, 1)
        yield t, mask


@_op("LSTM")
def _lstm(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    """ONNX LSTM (gates i, o, f, c; peepholes; clip; input_forget; layout; sequence_lens)."""
    x, w, r, b, lens, directions, hidden, layout = _rnn_common(node, inputs, 4)
    seq, batch = x.shape[:2]
    h0 = inputs[5] if len(inputs) > 5 else None
    c0 = inputs[6] if len(inputs) > 6 else None
    p = inputs[7] if len(inputs) > 7 and inputs[7] is not None else np.zeros((directions, 3 * hidden))
    clip = node.attrs.get("clip")
    acts = _rnn_activations(node, ("Sigmoid", "Tanh", "Tanh"), directions)
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(_rnn_directions(node, directions)):
        f, g, hfn = acts[3 * d : 3 * d + 3]
        h = _rnn_state(h0, d, batch, hidden, layout)
        c = _rnn_state(c0, d, batch, hidden, layout)
        wb, rb = b[d, : 4 * hidden], b[d, 4 * hidden :]
        pi, po, pf = (p[d].astype(np.float64)[k * hidden : (k + 1) * hidden] for k in range(3))
        y = np.zeros((seq, batch, hidden))
        xw = x @ w[d].T + (wb + rb)  # the input projections of every step at once
        for t, mask in _time_steps(seq, lens, batch, reverse):
            gates = xw[t] + h @ r[d].T
            if clip is not None:
                gates = np.clip(gates, -float(clip), float(clip))
            gi, go, gf, gc = (gates[:, k * hidden : (k + 1) * hidden] for k in range(4))
            i = f(gi + pi * c)
            forget = 1.0 - i if node.attrs.get("input_forget", 0) else f(gf + pf * c)
            c_new = forget * c + i * g(gc)
            o = f(go + po * c_new)
            h_new = o * hfn(c_new)
            if lens is None:  # every row runs the whole sequence
                c, h = c_new, h_new
                y[t] = h_new
                continue
            c = np.where(mask, c_new, c)
            h = np.where(mask, h_new, h)
            y[t] = np.where(mask, h_new, 0.0)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return _rnn_outputs(node, ys, [hs, cs], layout, inputs[0].dtype)


@_op("GRU")
def _gru(node: Node, inputs: list[Array | None]) -> Sequence[Array]:
    """ONNX GRU (gates z, r, h; linear_before_reset; clip; layout; sequence_lens)."""
    x, w, r, b, lens, directions, hidden, layout = _rnn_common(node, inputs, 3)
    seq, batch = x.shape[:2]
    h0 = inputs[5] if len(inputs) > 5 else None
    clip = node.attrs.get("clip")
    before_reset = bool(node.attrs.get("linear_before_reset", 0))
    acts = _rnn_activations(node, ("Sigmoid", "Tanh"), directions)
    ys, hs = [], []
    for d, reverse in enumerate(_rnn_directions(node, directions)):
        f, g = acts[2 * d : 2 * d + 2]
        h = _rnn_state(h0, d, batch, hidden, layout)
        wz, wr, wh = (w[d][k * hidden : (k + 1) * hidden] for k in range(3))
        rz, rr, rh = (r[d][k * hidden : (k + 1) * hidden] for k in range(3))
        wbz, wbr, wbh, rbz, rbr, rbh = (b[d][k * hidden : (k + 1) * hidden] for k in range(6))

        def clipped(v: Array) -> Array:
            return v if clip is None else np.clip(v, -float(clip), float(clip))

        y = np.zeros((seq, batch, hidden))
        xz, xr, xh = x @ wz.T + wbz, x @ wr.T + wbr, x @ wh.T + wbh  # every step's input projections
        for t, mask in _time_steps(seq, lens, batch, reverse):
            z = f(clipped(xz[t] + h @ rz.T + rbz))
            rt = f(clipped(xr[t] + h @ rr.T + rbr))
            if before_reset:
                cand = g(clipped(xh[t] + rt * (h @ rh.T + rbh)))
            else:
                cand = g(clipped(xh[t] + (rt * h) @ rh.T + rbh))
            h_new = (1.0 - z) * cand + z * h
            h = np.where(mask, h_new, h)
            y[t] = np.where(mask, h_new, 0.0)
        ys.append(y)
        hs.append(h)
    return _rnn_outputs(node, ys, [hs], layout, inputs[0].dtype)
