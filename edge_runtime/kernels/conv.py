"""INT8 convolution on NHWC tensors: weights packed once, then
``y = requant(bias + conv(x - x_zero_point, W))``.

Weights are int8 in ONNX OIHW layout ``(out_c, in_c / groups, kernel_h, kernel_w)``,
symmetric per output channel in [-127, 127]; ``x`` is u8 or s8 with a zero point
(padding contributes the zero point, i.e. a real 0). :func:`conv2d` handles any
groups, stride, padding and dilation (im2col + the dense GEMM), and with weights
from :func:`pack_conv2d24` (2:4 sparse along the im2col order ``kernel_h x
kernel_w x in_c / groups``) on the 2:4-sparse GEMM with the same im2col;
:func:`dwconv2d` is the direct depthwise kernel (3x3 or 5x5, stride 1 or 2,
dilation 1, one output channel per input channel). The packed forms do not
depend on the batch: one packed conv runs any batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edge_runtime import errors
from edge_runtime.kernels._ffi import DTYPES, aligned_empty, check, ffi, lib, ptr
from edge_runtime.kernels.core import Requant, ThreadPool, pool_handle

__all__ = [
    "Conv2dParams",
    "PackedConv2d",
    "conv2d",
    "conv2d_workspace_size",
    "dwconv2d",
    "pack_conv2d",
    "pack_conv2d24",
    "pack_dwconv2d",
]

_OUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int32))
IntPair = int | tuple[int, int]
Padding = int | tuple[int, int] | tuple[int, int, int, int]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise errors.KernelArgumentError(f"{name} must be an int or (h, w), got {value}")
    return value  # type: ignore[return-value]


def _padding(value: Padding) -> tuple[int, int, int, int]:
    """int, (h, w) or (top, left, bottom, right)."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * 4  # type: ignore[return-value]
    value = tuple(int(v) for v in value)
    if len(value) == 2:
        return value[0], value[1], value[0], value[1]
    if len(value) != 4:
        raise errors.KernelArgumentError(
            f"padding must be an int, (h, w) or (top, left, bottom, right), got {value}"
        )
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Conv2dParams:
    """Shape of a convolution. ``batch`` is the largest batch planned for (any
    smaller or larger batch runs the same packed weights)."""

    batch: int
    in_h: int
    in_w: int
    in_c: int
    out_c: int
    kernel_h: int
    kernel_w: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def c_struct(self, batch: int | None = None):
        """The C ``edge_conv2d_params`` (for ``batch`` when given)."""
        s = ffi.new("edge_conv2d_params *")
        s.batch = self.batch if batch is None else int(batch)
        s.in_h, s.in_w, s.in_c, s.out_c = self.in_h, self.in_w, self.in_c, self.out_c
        s.kernel_h, s.kernel_w = self.kernel_h, self.kernel_w
        s.stride_h, s.stride_w = self.stride
        s.dilation_h, s.dilation_w = self.dilation
        s.pad_top, s.pad_left, s.pad_bottom, s.pad_right = self.padding
        s.groups = self.groups
        return s

    def output_size(self) -> tuple[int, int]:
        """(out_h, out_w); raises ShapeError / KernelArgumentError for invalid parameters."""
        out_h = ffi.new("int32_t *")
        out_w = ffi.new("int32_t *")
        check(lib.edge_conv2d_output_size(self.c_struct(), out_h, out_w), "conv2d parameters")
        return int(out_h[0]), int(out_w[0])


@dataclass
class PackedConv2d:
    """Weights packed for one convolution (``depthwise``: for :func:`dwconv2d`;
    ``sparse``: 2:4 weights from :func:`pack_conv2d24`, run by :func:`conv2d`)."""

    params: Conv2dParams
    buffer: np.ndarray  # uint8, 64-byte aligned
    depthwise: bool = False
    sparse: bool = False


def _params(
    weights: np.ndarray,
    input_shape: tuple[int, int, int, int],
    stride: IntPair,
    padding: Padding,
    dilation: IntPair,
    groups: int,
    what: str,
) -> Conv2dParams:
    if weights.dtype != np.int8 or weights.ndim != 4:
        raise errors.KernelArgumentError(
            f"{what}: weights must be a 4-D int8 array (out_c, in_c / groups, kernel_h, kernel_w), "
            f"got {weights.dtype} of shape {weights.shape}"
        )
    if len(input_shape) != 4:
        raise errors.ShapeError(
            f"{what}: input_shape must be NHWC (batch, height, width, channels), got {input_shape}"
        )
    batch, in_h, in_w, in_c = (int(v) for v in input_shape)
    out_c, cin_g, kernel_h, kernel_w = weights.shape
    groups = int(groups)
    if groups < 1 or cin_g * groups != in_c:
        raise errors.ShapeError(
            f"{what}: weights have {cin_g} input channels per group, {groups} groups, but the input has {in_c} channels"
        )
    params = Conv2dParams(
        batch=batch,
        in_h=in_h,
        in_w=in_w,
        in_c=in_c,
        out_c=out_c,
        kernel_h=kernel_h,
        kernel_w=kernel_w,
        stride=_pair(stride, "stride"),
        padding=_padding(padding),
        dilation=_pair(dilation, "dilation"),
        groups=groups,
    )
    params.output_size()  # validates, with the C side's detail
    return params


def _bias(bias: np.ndarray | None, out_c: int, what: str) -> np.ndarray | None:
    if bias is None:
        return None
    bias = np.asarray(bias)
    if bias.dtype != np.int32 or bias.shape != (out_c,):
        raise errors.ShapeError(
            f"{what}: bias must be int32 of shape ({out_c},), got {bias.dtype} {bias.shape}"
        )
    return np.ascontiguousarray(bias)


def _pack_im2col(
    weights: np.ndarray,
    bias: np.ndarray | None,
    input_shape: tuple[int, int, int, int],
    stride: IntPair,
    padding: Padding,
    dilation: IntPair,
    groups: int,
    sparse: bool,
) -> PackedConv2d:
    what = "pack_conv2d24" if sparse else "pack_conv2d"
    packed_size = lib.edge_q8_conv2d24_packed_size if sparse else lib.edge_q8_conv2d_packed_size
    pack = lib.edge_q8_conv2d24_pack if sparse else lib.edge_q8_conv2d_pack
    weights = np.asarray(weights)
    params = _params(weights, input_shape, stride, padding, dilation, groups, what)
    bias = _bias(bias, params.out_c, what)
    weights = np.ascontiguousarray(weights)
    c_params = params.c_struct()
    size = packed_size(c_params)
    if size == 0:
        check(pack(c_params, ffi.NULL, ffi.NULL, ffi.NULL, 0), what)
    buffer = aligned_empty(size)
    check(
        pack(c_params, ptr(weights, "const int8_t *"), ptr(bias, "const int32_t *"), ptr(buffer), size), what
    )
    return PackedConv2d(params=params, buffer=buffer, sparse=sparse)


def pack_conv2d(
    weights: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    input_shape: tuple[int, int, int, int],
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> PackedConv2d:
    """Pack OIHW int8 ``weights`` and an optional int32 ``bias`` for :func:`conv2d`
    on NHWC inputs of ``input_shape`` (the batch there may be the planned maximum)."""
    return _pack_im2col(weights, bias, input_shape, stride, padding, dilation, groups, sparse=False)


def pack_conv2d24(
    weights: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    input_shape: tuple[int, int, int, int],
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> PackedConv2d:
    """:func:`pack_conv2d` for 2:4-sparse weights, run by :func:`conv2d` on the 2:4 GEMM.

    Each output channel's weights, read in the im2col order ``(kernel_h, kernel_w,
    in_c / groups)`` (``weights.transpose(0, 2, 3, 1)``), must have at most 2
    non-zeros in every 4 consecutive values: ``prune_2_4`` of those rows makes them
    so. Raises NotSparseError naming the output channel and group otherwise.
    """
    return _pack_im2col(weights, bias, input_shape, stride, padding, dilation, groups, sparse=True)


def pack_dwconv2d(
    weights: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    input_shape: tuple[int, int, int, int],
    stride: IntPair = 1,
    padding: Padding = 0,
) -> PackedConv2d:
    """Pack depthwise OIHW int8 ``weights`` of shape (C, 1, k, k), k = 3 or 5, for
    :func:`dwconv2d`. Raises KernelArgumentError for what the direct kernel does
    not support (use :func:`pack_conv2d` with ``groups=C`` then)."""
    weights = np.asarray(weights)
    channels = int(input_shape[3]) if len(input_shape) == 4 else 0
    params = _params(weights, input_shape, stride, padding, 1, channels, "pack_dwconv2d")
    bias = _bias(bias, params.out_c, "pack_dwconv2d")
    weights = np.ascontiguousarray(weights)
    c_params = params.c_struct()
    size = lib.edge_q8_dwconv2d_packed_size(c_params)
    if size == 0:
        check(lib.edge_q8_dwconv2d_pack(c_params, ffi.NULL, ffi.NULL, ffi.NULL, 0), "pack_dwconv2d")
    buffer = aligned_empty(size)
    check(
        lib.edge_q8_dwconv2d_pack(
            c_params, ptr(weights, "const int8_t *"), ptr(bias, "const int32_t *"), ptr(buffer), size
        ),
        "pack_dwconv2d",
    )
    return PackedConv2d(params=params, buffer=buffer, depthwise=True)


def conv2d_workspace_size(
    packed: PackedConv2d, batch: int | None = None, pool: ThreadPool | None = None
) -> int:
    """Bytes of workspace :func:`conv2d` needs for ``batch`` (default: the packed
    one) on ``pool``'s threads; 0 for 1x1 stride-1 unpadded convolutions."""
    threads = 1 if pool is None else pool.num_threads
    return int(lib.edge_q8_conv2d_workspace_size(packed.params.c_struct(batch), threads))


def _check_io(
    x: np.ndarray,
    packed: PackedConv2d,
    x_zero_point: int,
    requant: Requant | None,
    out_dtype: np.dtype,
    out: np.ndarray | None,
    what: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Checks x/out against the packed shape; returns (x, out, batch)."""
    p = packed.params
    x = np.asarray(x)
    if x.dtype not in (np.uint8, np.int8):
        raise errors.KernelArgumentError(f"{what}: x must be uint8 or int8, got {x.dtype}")
    if x.ndim != 4 or x.shape[1:] != (p.in_h, p.in_w, p.in_c) or x.shape[0] < 1:
        raise errors.ShapeError(
            f"{what}: x has shape {x.shape}, expected NHWC (batch, {p.in_h}, {p.in_w}, {p.in_c}) as packed"
        )
    x = np.ascontiguousarray(x)
    lo, hi = (0, 255) if x.dtype == np.uint8 else (-128, 127)
    if not lo <= int(x_zero_point) <= hi:
        raise errors.KernelArgumentError(
            f"{what}: x_zero_point {x_zero_point} outside [{lo}, {hi}] for {x.dtype} x"
        )
    if out_dtype not in _OUT_DTYPES:
        raise errors.KernelArgumentError(f"{what}: out_dtype must be uint8, int8 or int32, got {out_dtype}")
    if out_dtype != np.int32:
        if requant is None:
            raise errors.KernelArgumentError(
                f"{what}: a {out_dtype} output needs requant (int32 output does not)"
            )
        if requant.multiplier.shape != (p.out_c,) or requant.shift.shape != (p.out_c,):
            raise errors.ShapeError(
                f"{what}: requant has {requant.multiplier.shape} multipliers and {requant.shift.shape} shifts, "
                f"expected ({p.out_c},)"
            )
    batch = x.shape[0]
    out_h, out_w = p.output_size()
    shape = (batch, out_h, out_w, p.out_c)
    if out is None:
        out = np.empty(shape, dtype=out_dtype)
    else:
        if out.dtype != out_dtype:
            raise errors.KernelArgumentError(f"{what}: out is {out.dtype}, expected {out_dtype}")
        if out.shape != shape:
            raise errors.ShapeError(f"{what}: out has shape {out.shape}, expected {shape}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise errors.KernelArgumentError(f"{what}: out must be C-contiguous and writeable")
    return x, out, batch


def conv2d(
    x: np.ndarray,
    packed: PackedConv2d,
    x_zero_point: int = 0,
    requant: Requant | None = None,
    out_dtype: np.dtype | type = np.uint8,
    out: np.ndarray | None = None,
    workspace: np.ndarray | None = None,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """``y[n, oy, ox, o] = requant(bias[o] + sum (x - x_zero_point) * W[o])`` over
    the receptive field, NHWC, with weights from :func:`pack_conv2d` or :func:`pack_conv2d24`. ``x``: u8 or s8 of shape (batch, in_h, in_w, in_c)
    for any batch. ``out_dtype`` uint8 / int8 (``requant`` required) or int32
    (raw accumulators). ``workspace`` (uint8, 64-byte aligned, at least
    :func:`conv2d_workspace_size` bytes) is allocated when not given."""
    if not isinstance(packed, PackedConv2d) or packed.depthwise:
        raise errors.KernelArgumentError("conv2d: packed must come from pack_conv2d or pack_conv2d24")
    out_dtype = np.dtype(out_dtype)
    x, out, batch = _check_io(x, packed, x_zero_point, requant, out_dtype, out, "conv2d")
    needed = conv2d_workspace_size(packed, batch, pool)
    if workspace is None:
        workspace = aligned_empty(needed) if needed else None
    elif workspace.dtype != np.uint8 or workspace.ndim != 1 or not workspace.flags.c_contiguous:
        raise errors.KernelArgumentError("conv2d: workspace must be a contiguous 1-D uint8 array")
    c_params = replace(packed.params, batch=batch).c_struct()
    rq = requant.struct() if out_dtype != np.int32 else ffi.NULL
    run = lib.edge_q8_conv2d24 if packed.sparse else lib.edge_q8_conv2d
    check(
        run(
            c_params,
            DTYPES[x.dtype],
            ptr(x),
            int(x_zero_point),
            ptr(packed.buffer),
            DTYPES[out_dtype],
            ptr(out),
            rq,
            ptr(workspace),
            0 if workspace is None else workspace.nbytes,
            pool_handle(pool),
        ),
        "conv2d24" if packed.sparse else "conv2d",
    )
    return out


def dwconv2d(
    x: np.ndarray,
    packed: PackedConv2d,
    x_zero_point: int = 0,
    requant: Requant | None = None,
    out_dtype: np.dtype | type = np.uint8,
    out: np.ndarray | None = None,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """The direct depthwise convolution of weights from :func:`pack_dwconv2d`;
    same contract as :func:`conv2d` except that the output is uint8 or int8 only."""
    if not isinstance(packed, PackedConv2d) or not packed.depthwise:
        raise errors.KernelArgumentError("dwconv2d: packed must come from pack_dwconv2d")
    out_dtype = np.dtype(out_dtype)
    if out_dtype == np.int32:
        raise errors.KernelArgumentError("dwconv2d: out_dtype must be uint8 or int8 (use conv2d for int32)")
    x, out, batch = _check_io(x, packed, x_zero_point, requant, out_dtype, out, "dwconv2d")
    c_params = replace(packed.params, batch=batch).c_struct()
    check(
        lib.edge_q8_dwconv2d(
            c_params,
            DTYPES[x.dtype],
            ptr(x),
            int(x_zero_point),
            ptr(packed.buffer),
            DTYPES[out_dtype],
            ptr(out),
            requant.struct(),  # type: ignore[union-attr]
            pool_handle(pool),
        ),
        "dwconv2d",
    )
    return out
