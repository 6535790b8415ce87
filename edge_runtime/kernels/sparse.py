"""2:4-sparse INT8 GEMM: pruning, packing and the native kernel.

In every group of 4 consecutive weights along K (the last axis) of an output
channel at most 2 are non-zero (DESIGN section 4). The packed form keeps the
2 values and their 2-bit positions; the kernel gathers the activations at
those positions, so it does half the multiply-adds of the dense GEMM.

    w = prune_2_4(w)                   # magnitude pruning, numpy
    packed = pack_gemm24(w, bias)      # once
    y = gemm24(a, packed, a_zero_point=zp, requant=rq)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime import errors
from edge_runtime.kernels._ffi import DTYPES, aligned_empty, check, ffi, lib, ptr
from edge_runtime.kernels.core import Requant, ThreadPool, pool_handle
from edge_runtime.kernels.gemm import _output_args

__all__ = ["PackedGemm24", "gemm24", "is_2_4", "pack_gemm24", "prune_2_4"]

_MAX_K = 65536


@dataclass
class PackedGemm24:
    """Packed 2:4-sparse weights of an (n, k) layer, ready for :func:`gemm24` on any ISA."""

    n: int
    k: int
    buffer: np.ndarray  # uint8, 64-byte aligned


def _data(array: np.ndarray):
    """A cffi pointer to an array's data: from_buffer (several times faster
    than .ctypes, which matters at M = 1) when the array is contiguous."""
    if array.flags.c_contiguous and array.size:
        return ffi.from_buffer(array, require_writable=False)
    return ptr(array)


def _groups(weights: np.ndarray) -> np.ndarray:
    """The last axis zero-padded to a multiple of 4 and split into groups: (..., k/4, 4)."""
    k = weights.shape[-1]
    pad = (-k) % 4
    if pad:
        weights = np.concatenate([weights, np.zeros(weights.shape[:-1] + (pad,), weights.dtype)], axis=-1)
    return weights.reshape(weights.shape[:-1] + (-1, 4))


def prune_2_4(weights: np.ndarray) -> np.ndarray:
    """Keep the 2 largest-magnitude weights of every group of 4 along the last axis.

    Ties go to the lower index. A last axis not divisible by 4 ends with a
    shorter group (it keeps at most 2 too). Returns a new array of the same
    shape and dtype.
    """
    weights = np.asarray(weights)
    if weights.ndim == 0:
        raise errors.ShapeError("prune_2_4: expected an array with at least one axis, got a scalar")
    k = weights.shape[-1]
    groups = _groups(weights)
    # A stable sort of -|w| puts the 2 largest first, the lower index first on ties.
    magnitude = np.abs(groups.astype(np.float64))
    order = np.argsort(-magnitude, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :2], True, axis=-1)
    pruned = np.where(keep, groups, np.zeros((), groups.dtype))
    return pruned.reshape(weights.shape[:-1] + (-1,))[..., :k].copy()


def is_2_4(weights: np.ndarray) -> bool:
    """True when every group of 4 along the last axis has at most 2 non-zeros."""
    weights = np.asarray(weights)
    if weights.ndim == 0 or weights.shape[-1] == 0:
        return True
    return bool(((_groups(weights) != 0).sum(axis=-1) <= 2).all())


def pack_gemm24(weights: np.ndarray, bias: np.ndarray | None = None) -> PackedGemm24:
    """Pack int8 (n, k) 2:4-sparse weights (values in [-127, 127]) and an optional int32 bias.

    Raises NotSparseError naming the first output channel and group with more
    than 2 non-zeros (see :func:`prune_2_4`).
    """
    weights = np.asarray(weights)
    if weights.dtype != np.int8 or weights.ndim != 2:
        raise errors.KernelArgumentError(
            f"pack_gemm24: weights must be an int8 (n, k) array, got {weights.dtype} with shape {weights.shape}"
        )
    n, k = weights.shape
    if n < 1 or not 1 <= k <= _MAX_K:
        raise errors.ShapeError(
            f"pack_gemm24: weights of shape {weights.shape}: need n >= 1 and 1 <= k <= {_MAX_K}"
        )
    weights = np.ascontiguousarray(weights)
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.int32 or bias.shape != (n,):
            raise errors.KernelArgumentError(
                f"pack_gemm24: bias must be int32 of shape ({n},), got {bias.dtype} with shape {bias.shape}"
            )
        bias = np.ascontiguousarray(bias)
    size = int(lib.edge_q8_gemm24_packed_size(n, k))
    buffer = aligned_empty(size)
    check(
        lib.edge_q8_gemm24_pack(
            n, k, ptr(weights, "const int8_t *"), ptr(bias, "const int32_t *"), ptr(buffer), size
        ),
        "pack_gemm24",
    )
    return PackedGemm24(n=n, k=k, buffer=buffer)


def gemm24(
    a: np.ndarray,
    packed: PackedGemm24,
    a_zero_point: int = 0,
    requant: Requant | None = None,
    out_dtype: np.dtype | type = np.uint8,
    out: np.ndarray | None = None,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """``requant(bias + (a - a_zero_point) @ W.T)`` for u8/s8 ``a`` of shape (m, k).

    ``out_dtype`` is uint8 or int8 (``requant`` required) or int32 (the raw
    accumulators, wrapping mod 2^32). ``a`` may have a row stride (a slice of
    a wider array); so may ``out`` (m, n), which is written in place.
    """
    if not isinstance(packed, PackedGemm24):
        raise errors.KernelArgumentError(
            f"gemm24: packed must be a PackedGemm24 (from pack_gemm24), got {type(packed)}"
        )
    a = np.asarray(a)
    if a.dtype not in (np.uint8, np.int8) or a.ndim != 2:
        raise errors.KernelArgumentError(
            f"gemm24: a must be a uint8 or int8 (m, k) array, got {a.dtype} {a.shape}"
        )
    m, k = a.shape
    if k != packed.k:
        raise errors.ShapeError(f"gemm24: a has k = {k} columns but the packed weights have k = {packed.k}")
    if a.strides[1] != 1 or a.strides[0] < k:
        a = np.ascontiguousarray(a)
    out_dtype, rq = _output_args(out_dtype, requant, packed.n, "gemm24")
    if out is None:
        out = np.empty((m, packed.n), dtype=out_dtype)
    elif (
        out.dtype != out_dtype
        or out.shape != (m, packed.n)
        or out.strides[1] != out_dtype.itemsize
        or out.strides[0] % out_dtype.itemsize
        or (m > 1 and out.strides[0] < out.shape[1] * out_dtype.itemsize)
        or not out.flags.writeable
    ):
        raise errors.KernelArgumentError(
            f"gemm24: out must be a writable {out_dtype} ({m}, {packed.n}) array with unit column stride"
        )
    a_stride = a.strides[0] if m > 1 else k
    c_stride = out.strides[0] // out_dtype.itemsize if m > 1 else packed.n
    check(
        lib.edge_q8_gemm24(
            m,
            packed.n,
            k,
            DTYPES[a.dtype],
            _data(a),
            a_stride,
            int(a_zero_point),
            _data(packed.buffer),
            DTYPES[out_dtype],
            _data(out),
            c_stride,
            rq,
            pool_handle(pool),
        ),
        "gemm24",
    )
    return out
