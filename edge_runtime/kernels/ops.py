"""The INT8 and float ops between GEMMs: add / mul with rescale, pooling,
lookup-table activations, (de)quantization, softmax, layer norm and attention.

Quantized tensors are ``uint8`` or ``int8`` numpy arrays with a real value of
``scale * (q - zero_point)``; pooling works on NHWC. The exact integer rules
(and the scale ratios each op accepts) are documented in
``native/include/edge/ops.h``; every ISA gives the same bits. The quantized ops take an
optional ``pool`` (a :class:`ThreadPool`) and split large tensors over its threads.
"""

from __future__ import annotations

import numpy as np

from edge_runtime import errors
from edge_runtime.kernels._ffi import DTYPES, aligned_empty, check, ffi, lib, ptr
from edge_runtime.kernels.core import ThreadPool, dtype_range, pool_handle

__all__ = [
    "LUT_KINDS",
    "add",
    "attention",
    "attention_workspace_size",
    "avgpool2d",
    "dequantize",
    "global_avgpool",
    "layernorm",
    "lut",
    "lut_channels",
    "lut_table",
    "maxpool2d",
    "mul",
    "quantize",
    "softmax",
]

LUT_KINDS = {
    "sigmoid": lib.EDGE_LUT_SIGMOID,
    "hardsigmoid": lib.EDGE_LUT_HARDSIGMOID,
    "hardswish": lib.EDGE_LUT_HARDSWISH,
    "gelu": lib.EDGE_LUT_GELU,
    "tanh": lib.EDGE_LUT_TANH,
}
_Q8 = (np.dtype(np.uint8), np.dtype(np.int8))


def _q8(array: np.ndarray, what: str) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.dtype not in _Q8:
        raise errors.KernelArgumentError(f"{what} must be uint8 or int8, got {array.dtype}")
    return array


def _clamp(dtype: np.dtype, y_min: int | None, y_max: int | None) -> tuple[int, int]:
    lo, hi = dtype_range(dtype)
    return (lo if y_min is None else int(y_min)), (hi if y_max is None else int(y_max))


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if len(value) != 2:
        raise errors.KernelArgumentError(f"{what} must be an int or a pair (h, w), got {value!r}")
    return int(value[0]), int(value[1])


# ---- add / mul ----------------------------------------------------------------


def _broadcast_layout(a: np.ndarray, b: np.ndarray, op: str):
    """(out shape, rows, cols, a strides, b strides) in elements, for the three
    broadcasts the kernel runs: equal shapes, a trailing-row operand, a scalar."""

    def role(x: np.ndarray, other: np.ndarray) -> str | None:
        if x.shape == other.shape:
            return "full"
        if x.size == 1 and x.ndim <= other.ndim:
            return "scalar"
        # Leading ones dropped, the trailing dimensions of the other: a row repeated (an SE
        # block's [1, 1, 1, C] gate over [1, H, W, C] NHWC storage, a [1, S, D] bias).
        trailing = x.shape[next((i for i, d in enumerate(x.shape) if d != 1), x.ndim) :]
        if (
            0 < len(trailing) < other.ndim
            and x.ndim <= other.ndim
            and trailing == other.shape[-len(trailing) :]
        ):
            return "row"
        return None

    if a.shape == b.shape:
        cols = a.shape[-1] if a.ndim else 1
        rows = a.size // cols if cols else 0
        return a.shape, rows, cols, (cols, 1), (cols, 1)
    for big, small, swap in ((a, b, False), (b, a, True)):
        kind = role(small, big)
        if kind is None:
            continue
        cols = small.size if kind == "row" else (big.shape[-1] if big.ndim else 1)
        rows = big.size // cols if cols else 0
        big_strides, small_strides = (cols, 1), ((0, 1) if kind == "row" else (0, 0))
        if swap:
            return big.shape, rows, cols, small_strides, big_strides
        return big.shape, rows, cols, big_strides, small_strides
    raise errors.ShapeError(
        f"{op}: shapes {a.shape} and {b.shape} do not broadcast the ways the kernel runs: "
        "expected equal shapes, one operand equal to the trailing dimensions of the other, or a scalar"
    )


def _binary(
    op: str, a, b, a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, y_min, y_max, pool
) -> np.ndarray:
    a = _q8(np.asarray(a), f"{op}: a")
    b = _q8(np.asarray(b), f"{op}: b")
    if a.dtype != b.dtype:
        raise errors.KernelArgumentError(
            f"{op}: a and b must have the same dtype, got {a.dtype} and {b.dtype}"
        )
    shape, rows, cols, (a_row, a_col), (b_row, b_col) = _broadcast_layout(a, b, op)
    lo, hi = _clamp(a.dtype, y_min, y_max)
    params = ffi.new(f"edge_q8_{op}_params *")
    init = lib.edge_q8_add_params_init if op == "add" else lib.edge_q8_mul_params_init
    check(
        init(
            float(a_scale),
            int(a_zero_point),
            float(b_scale),
            int(b_zero_point),
            float(y_scale),
            int(y_zero_point),
            lo,
            hi,
            params,
        ),
        f"{op} parameters",
    )
    y = np.empty(shape, dtype=a.dtype)
    run = lib.edge_q8_add if op == "add" else lib.edge_q8_mul
    check(
        run(
            rows,
            cols,
            DTYPES[a.dtype],
            ptr(a),
            a_row,
            a_col,
            ptr(b),
            b_row,
            b_col,
            ptr(y),
            params,
            pool_handle(pool),
        ),
        op,
    )
    return y


def add(
    a: np.ndarray,
    b: np.ndarray,
    a_scale: float,
    a_zero_point: int,
    b_scale: float,
    b_zero_point: int,
    y_scale: float,
    y_zero_point: int,
    y_min: int | None = None,
    y_max: int | None = None,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """Quantized ``a + b`` rescaled to ``(y_scale, y_zero_point)``, clamped to
    ``[y_min, y_max]`` (default: the dtype's range). ``b`` (or ``a``) may be a
    scalar or equal to the trailing dimensions of the other operand."""
    return _binary(
        "add", a, b, a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, y_min, y_max, pool
    )


def mul(
    a: np.ndarray,
    b: np.ndarray,
    a_scale: float,
    a_zero_point: int,
    b_scale: float,
    b_zero_point: int,
    y_scale: float,
    y_zero_point: int,
    y_min: int | None = None,
    y_max: int | None = None,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """Quantized ``a * b`` rescaled to ``(y_scale, y_zero_point)``; broadcasting as for :func:`add`."""
    return _binary(
        "mul", a, b, a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, y_min, y_max, pool
    )


# ---- pooling -------------------------------------------------------------------


def _pool_params(x: np.ndarray, kernel, stride, padding, dilation, count_include_pad: bool, op: str):
    if x.ndim != 4:
        raise errors.ShapeError(f"{op}: x must be NHWC (4-D), got shape {x.shape}")
    p = ffi.new("edge_pool2d_params *")
    p.batch, p.in_h, p.in_w, p.channels = (int(d) for d in x.shape)
    p.kernel_h, p.kernel_w = _pair(kernel, f"{op}: kernel")
    p.stride_h, p.stride_w = _pair(stride, f"{op}: stride")
    p.dilation_h, p.dilation_w = _pair(dilation, f"{op}: dilation")
    if isinstance(padding, (int, np.integer)):
        padding = (int(padding),) * 4
    if len(padding) != 4:
        raise errors.KernelArgumentError(
            f"{op}: padding must be an int or (top, left, bottom, right), got {padding!r}"
        )
    p.pad_top, p.pad_left, p.pad_bottom, p.pad_right = (int(v) for v in padding)
    p.count_include_pad = 1 if count_include_pad else 0
    out_h, out_w = ffi.new("int32_t *"), ffi.new("int32_t *")
    check(lib.edge_pool2d_output_size(p, out_h, out_w), op)
    return p, (x.shape[0], int(out_h[0]), int(out_w[0]), x.shape[3])


def maxpool2d(
    x: np.ndarray,
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int, int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """Max pool of an NHWC u8/s8 tensor; padding never wins. padding is (top, left, bottom, right)."""
    x = _q8(np.asarray(x), "maxpool2d: x")
    p, shape = _pool_params(x, kernel, stride, padding, dilation, False, "maxpool2d")
    y = np.empty(shape, dtype=x.dtype)
    check(lib.edge_q8_maxpool2d(p, DTYPES[x.dtype], ptr(x), ptr(y), pool_handle(pool)), "maxpool2d")
    return y


def avgpool2d(
    x: np.ndarray,
    kernel: int | tuple[int, int],
    x_scale: float,
    x_zero_point: int,
    y_scale: float,
    y_zero_point: int,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int, int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    count_include_pad: bool = False,
    y_min: int | None = None,
    y_max: int | None = None,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """Average pool of an NHWC u8/s8 tensor, requantized to ``(y_scale, y_zero_point)``."""
    x = _q8(np.asarray(x), "avgpool2d: x")
    p, shape = _pool_params(x, kernel, stride, padding, dilation, count_include_pad, "avgpool2d")
    lo, hi = _clamp(x.dtype, y_min, y_max)
    y = np.empty(shape, dtype=x.dtype)
    check(
        lib.edge_q8_avgpool2d(
            p,
            DTYPES[x.dtype],
            ptr(x),
            float(x_scale),
            int(x_zero_point),
            ptr(y),
            float(y_scale),
            int(y_zero_point),
            lo,
            hi,
            pool_handle(pool),
        ),
        "avgpool2d",
    )
    return y


def global_avgpool(
    x: np.ndarray,
    x_scale: float,
    x_zero_point: int,
    y_scale: float,
    y_zero_point: int,
    y_min: int | None = None,
    y_max: int | None = None,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """Mean over H and W of an NHWC u8/s8 tensor: returns shape (N, 1, 1, C)."""
    x = _q8(np.asarray(x), "global_avgpool: x")
    if x.ndim != 4:
        raise errors.ShapeError(f"global_avgpool: x must be NHWC (4-D), got shape {x.shape}")
    n, h, w, c = x.shape
    lo, hi = _clamp(x.dtype, y_min, y_max)
    y = np.empty((n, 1, 1, c), dtype=x.dtype)
    check(
        lib.edge_q8_global_avgpool(
            n,
            h * w,
            c,
            DTYPES[x.dtype],
            ptr(x),
            float(x_scale),
            int(x_zero_point),
            ptr(y),
            float(y_scale),
            int(y_zero_point),
            lo,
            hi,
            pool_handle(pool),
        ),
        "global_avgpool",
    )
    return y


# ---- lookup tables -----------------------------------------------------------


def lut_table(
    kind: str,
    dtype: np.dtype | type,
    x_scale: float,
    x_zero_point: int,
    y_scale: float,
    y_zero_point: int,
    alpha: float = 0.2,
    beta: float = 0.5,
) -> np.ndarray:
    """The 256-byte table of ``quantize(f(dequantize(x)))`` for ``kind`` in
    :data:`LUT_KINDS` (alpha and beta are hard-sigmoid's), built in double
    precision with round half to even. Indexed by the input byte."""
    if kind not in LUT_KINDS:
        raise errors.KernelArgumentError(
            f"lut_table: unknown kind {kind!r}: expected one of {', '.join(LUT_KINDS)}"
        )
    dtype = np.dtype(dtype)
    if dtype not in _Q8:
        raise errors.KernelArgumentError(f"lut_table: dtype must be uint8 or int8, got {dtype}")
    table = np.empty(256, dtype=np.uint8)
    check(
        lib.edge_q8_lut_init(
            LUT_KINDS[kind],
            float(alpha),
            float(beta),
            DTYPES[dtype],
            float(x_scale),
            int(x_zero_point),
            float(y_scale),
            int(y_zero_point),
            ptr(table, "uint8_t *"),
        ),
        f"lut_table({kind!r})",
    )
    return table


def lut(x: np.ndarray, table: np.ndarray, pool: ThreadPool | None = None) -> np.ndarray:
    """``table[x]`` for u8/s8 ``x`` (s8 indexes by its two's-complement byte); same dtype and shape as x."""
    x = _q8(np.asarray(x), "lut: x")
    table = np.ascontiguousarray(table)
    if table.dtype != np.uint8 or table.shape != (256,):
        raise errors.KernelArgumentError(
            f"lut: table must be uint8 of shape (256,), got {table.dtype} {table.shape}"
        )
    y = np.empty_like(x)
    check(lib.edge_q8_lut(x.size, ptr(table, "const uint8_t *"), ptr(x), ptr(y), pool_handle(pool)), "lut")
    return y


def lut_channels(
    x: np.ndarray, tables: np.ndarray, axis: int = -1, pool: ThreadPool | None = None
) -> np.ndarray:
    """``tables[c][x]`` for the elements of channel ``c`` along ``axis`` of u8/s8 ``x``: one
    256-entry table per channel (indexed as :func:`lut`'s); ``tables`` is uint8 of shape
    (channels, 256)."""
    x = np.ascontiguousarray(_q8(np.asarray(x), "lut_channels: x"))
    if not -x.ndim <= axis < x.ndim:
        raise errors.KernelArgumentError(f"lut_channels: axis {axis} of x of shape {x.shape}")
    axis %= x.ndim
    channels = x.shape[axis]
    tables = np.ascontiguousarray(tables)
    if tables.dtype != np.uint8 or tables.shape != (channels, 256):
        raise errors.KernelArgumentError(
            f"lut_channels: tables must be uint8 of shape ({channels}, 256) for axis {axis} of x of shape "
            f"{x.shape}, got {tables.dtype} {tables.shape}"
        )
    y = np.empty_like(x)
    outer, inner = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis + 1 :]))
    status = lib.edge_q8_lut_channels(
        outer, channels, inner, ptr(tables, "const uint8_t *"), ptr(x), ptr(y), pool_handle(pool)
    )
    check(status, "lut_channels")
    return y


# ---- quantize / dequantize -------------------------------------------------------


def quantize(
    x: np.ndarray,
    scale: float,
    zero_point: int,
    dtype: np.dtype | type = np.uint8,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """ONNX QuantizeLinear: ``clamp(round_half_even(x / scale) + zero_point)``; NaN gives the zero point."""
    x = np.ascontiguousarray(x)
    if x.dtype != np.float32:
        raise errors.KernelArgumentError(f"quantize: x must be float32, got {x.dtype}")
    dtype = np.dtype(dtype)
    if dtype not in _Q8:
        raise errors.KernelArgumentError(f"quantize: dtype must be uint8 or int8, got {dtype}")
    y = np.empty(x.shape, dtype=dtype)
    check(
        lib.edge_f32_q8_quantize(
            x.size,
            ptr(x, "const float *"),
            float(scale),
            int(zero_point),
            DTYPES[dtype],
            ptr(y),
            pool_handle(pool),
        ),
        "quantize",
    )
    return y


def dequantize(q: np.ndarray, scale: float, zero_point: int, pool: ThreadPool | None = None) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    q = _q8(np.asarray(q), "dequantize: q")
    y = np.empty(q.shape, dtype=np.float32)
    check(
        lib.edge_q8_f32_dequantize(
            q.size,
            DTYPES[q.dtype],
            ptr(q),
            float(scale),
            int(zero_point),
            ptr(y, "float *"),
            pool_handle(pool),
        ),
        "dequantize",
    )
    return y


# ---- float ops on rows ----------------------------------------------------------


def _rows(x: np.ndarray, op: str) -> tuple[np.ndarray, int, int]:
    x = np.ascontiguousarray(x)
    if x.dtype != np.float32:
        raise errors.KernelArgumentError(f"{op}: x must be float32, got {x.dtype}")
    if x.ndim == 0:
        raise errors.ShapeError(f"{op}: x must have at least one dimension")
    cols = x.shape[-1]
    return x, (x.size // cols if cols else 0), cols


def softmax(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis of a float32 array (max-subtracted).

    ``out``: a C-contiguous float32 array of x's shape to write into; it may be ``x``
    itself (in place)."""
    x, rows, cols = _rows(x, "softmax")
    if out is None:
        y = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise errors.KernelArgumentError(
            f"softmax: out must be a C-contiguous float32 array of shape {x.shape}, got {out.dtype} {out.shape}"
        )
    else:
        y = out
    check(lib.edge_f32_softmax(rows, cols, ptr(x, "const float *"), ptr(y, "float *")), "softmax")
    return y


def layernorm(
    x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None, epsilon: float = 1e-5
) -> np.ndarray:
    """Layer norm over the last axis: ``(x - mean) / sqrt(var + epsilon) * gamma + beta``."""
    x, rows, cols = _rows(x, "layernorm")
    params = []
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v is not None:
            v = np.ascontiguousarray(v, dtype=np.float32)
            if v.shape != (cols,):
                raise errors.ShapeError(f"layernorm: {name} must have shape ({cols},), got {v.shape}")
        params.append(v)
    y = np.empty_like(x)
    check(
        lib.edge_f32_layernorm(
            rows,
            cols,
            ptr(x, "const float *"),
            ptr(params[0], "const float *"),
            ptr(params[1], "const float *"),
            float(epsilon),
            ptr(y, "float *"),
        ),
        "layernorm",
    )
    return y


def attention(
    q: np.ndarray,
    kt: np.ndarray,
    v: np.ndarray,
    params: tuple[tuple[float, int], tuple[float, int], tuple[float, int], tuple[float, int]],
    scale: float = 1.0,
    mask: np.ndarray | None = None,
    pool=None,
    out: np.ndarray | None = None,
    workspace: np.ndarray | None = None,
) -> np.ndarray:
    """``softmax(Q.K^T * scale + mask) . V`` per head with int8 products (``edge_q8_attention``).

    ``q`` [B, H, Sq, D], ``kt`` [B, H, D, Sk], ``v`` [B, H, Sk, D]: codes of one dtype
    (uint8 or int8); ``params``: (scale, zero point) of q, kt, v and of the output
    [B, H, Sq, D]. ``mask``: float32, broadcastable to the scores [B, H, Sq, Sk].
    ``workspace``: a 64-byte aligned uint8 buffer of at least :func:`attention_workspace_size`
    bytes to reuse across calls (one is allocated when not given)."""
    q, kt, v = (_q8(a, f"attention: {n}") for a, n in ((q, "q"), (kt, "kt"), (v, "v")))
    if not (q.dtype == kt.dtype == v.dtype):
        raise errors.KernelArgumentError(
            f"attention: q, kt, v dtypes differ: {q.dtype}, {kt.dtype}, {v.dtype}"
        )
    if q.ndim != 4 or kt.ndim != 4 or v.ndim != 4:
        raise errors.ShapeError(f"attention: 4-D q, kt, v expected, got {q.shape}, {kt.shape}, {v.shape}")
    b, h, sq, d = q.shape
    sk = kt.shape[3]
    if kt.shape != (b, h, d, sk) or v.shape != (b, h, sk, d):
        raise errors.ShapeError(f"attention: q {q.shape}, kt {kt.shape}, v {v.shape} do not fit together")
    c = ffi.new("edge_q8_attention_params *")
    c.batch, c.heads, c.s_q, c.s_k, c.d = b, h, sq, sk, d
    c.dtype = DTYPES[q.dtype]
    (c.q_scale, c.q_zero_point), (c.kt_scale, c.kt_zero_point) = params[0], params[1]
    (c.v_scale, c.v_zero_point), (c.y_scale, c.y_zero_point) = params[2], params[3]
    c.scale = float(scale)
    if mask is not None:
        mask = np.asarray(mask, np.float32)
        try:
            view = np.broadcast_to(mask, (b, h, sq, sk))
        except ValueError:
            raise errors.ShapeError(
                f"attention: mask {mask.shape} does not broadcast to {(b, h, sq, sk)}"
            ) from None
        c.mask = ffi.cast("const float *", mask.ctypes.data)
        c.mask_strides = [stride // 4 for stride in view.strides]
    y = np.empty((b, h, sq, d), q.dtype) if out is None else out
    if y.shape != (b, h, sq, d) or y.dtype != q.dtype or not y.flags.c_contiguous:
        raise errors.KernelArgumentError(f"attention: out must be a C-contiguous {q.dtype} {(b, h, sq, d)}")
    handle = ffi.NULL if pool is None else pool.handle
    if workspace is None:
        workspace = aligned_empty(
            lib.edge_q8_attention_workspace_size(c, 1 if pool is None else pool.num_threads)
        )
    status = lib.edge_q8_attention(
        c, ptr(q), ptr(kt), ptr(v), ptr(y), ptr(workspace), workspace.nbytes, handle
    )
    check(status, "attention")
    return y


def attention_workspace_size(q_shape: tuple[int, ...], sk: int, threads: int = 1) -> int:
    """Bytes of workspace :func:`attention` needs for q of ``q_shape`` [B, H, Sq, D] and ``sk`` keys."""
    c = ffi.new("edge_q8_attention_params *")
    c.batch, c.heads, c.s_q, c.d = q_shape
    c.s_k = sk
    return int(lib.edge_q8_attention_workspace_size(c, threads))
