"""Dense INT8 GEMM: weights packed once, then ``C = requant(A @ W.T + bias)``.

``A`` is u8 or s8 with a zero point, ``W`` is int8 in [-127, 127], symmetric per
output channel, and the int32 accumulators are requantized per channel to u8
or s8 (or returned as int32). The packed form is the same on every ISA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime import errors
from edge_runtime._native import DTYPES, aligned_empty, check, ffi, lib, ptr
from edge_runtime.kernels.core import Requant, ThreadPool, pool_handle

__all__ = ["PackedGemm", "gemm", "pack_gemm"]

_OUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int32))


@dataclass
class PackedGemm:
    """Weights of an ``n x k`` dense GEMM in the kernels' packed layout."""

    n: int
    k: int
    buffer: np.ndarray  # uint8, 64-byte aligned


def pack_gemm(weights: np.ndarray, bias: np.ndarray | None = None) -> PackedGemm:
    """Pack int8 ``weights`` of shape (N, K) and an optional int32 ``bias`` of shape (N,)."""
    weights = np.asarray(weights)
    if weights.dtype != np.int8 or weights.ndim != 2:
        raise errors.KernelArgumentError(
            f"pack_gemm: weights must be a 2-D int8 array (N, K), got {weights.dtype} of shape {weights.shape}"
        )
    n, k = weights.shape
    weights = np.ascontiguousarray(weights)
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.int32 or bias.shape != (n,):
            raise errors.ShapeError(
                f"pack_gemm: bias must be int32 of shape ({n},), got {bias.dtype} {bias.shape}"
            )
        bias = np.ascontiguousarray(bias)
    size = lib.edge_q8_gemm_packed_size(n, k)
    if size == 0:
        raise errors.ShapeError(f"pack_gemm: weights of shape ({n}, {k}) need N >= 1 and 1 <= K <= 65536")
    buffer = aligned_empty(size)
    check(
        lib.edge_q8_gemm_pack(
            n, k, ptr(weights, "const int8_t *"), ptr(bias, "const int32_t *"), ptr(buffer), size
        ),
        "pack_gemm",
    )
    return PackedGemm(n=n, k=k, buffer=buffer)


def _check_rows(array: np.ndarray, name: str) -> None:
    """A 2-D array whose rows are contiguous (any row stride)."""
    if array.ndim != 2:
        raise errors.ShapeError(f"gemm: {name} must be 2-D, got shape {array.shape}")
    if array.size == 0:
        return
    if array.shape[1] > 1 and array.strides[1] != array.itemsize:
        raise errors.KernelArgumentError(f"gemm: {name} must have contiguous rows (unit inner stride)")
    if array.shape[0] > 1 and (array.strides[0] < 0 or array.strides[0] % array.itemsize):
        raise errors.KernelArgumentError(f"gemm: {name} row stride {array.strides[0]} is not supported")


def _address(array: np.ndarray):
    """A cffi pointer to the data; from_buffer is ~10x faster than .ctypes but
    needs a contiguous array (the result must stay alive during the call)."""
    if array.flags.c_contiguous:
        return ffi.from_buffer(array, require_writable=False)
    return ffi.cast("void *", array.ctypes.data)


def _row_stride(array: np.ndarray) -> int:
    return array.strides[0] // array.itemsize if array.shape[0] > 1 and array.size else array.shape[1]


def gemm(
    a: np.ndarray,
    packed: PackedGemm,
    a_zero_point: int = 0,
    requant: Requant | None = None,
    out_dtype: np.dtype | type = np.uint8,
    out: np.ndarray | None = None,
    pool: ThreadPool | None = None,
) -> np.ndarray:
    """``out[m, n] = requant(bias[n] + sum_k (a[m, k] - a_zero_point) * W[n, k])``.

    ``a``: (M, K) u8 or s8 with unit inner stride (any row stride). ``out_dtype``
    is uint8 or int8 (``requant`` required) or int32 (raw accumulators, wrapping
    mod 2^32). ``out``, when given, must be (M, N) of ``out_dtype`` with
    contiguous rows. Releases the GIL while the kernel runs.
    """
    if not isinstance(packed, PackedGemm):
        raise errors.KernelArgumentError(
            f"gemm: packed must be a PackedGemm (from pack_gemm), got {type(packed)}"
        )
    a = np.asarray(a)
    if a.dtype not in (np.uint8, np.int8):
        raise errors.KernelArgumentError(f"gemm: a must be uint8 or int8, got {a.dtype}")
    _check_rows(a, "a")
    m, k = a.shape
    if k != packed.k:
        raise errors.ShapeError(f"gemm: a has K = {k} but the weights were packed with K = {packed.k}")
    lo, hi = (0, 255) if a.dtype == np.uint8 else (-128, 127)
    if not lo <= int(a_zero_point) <= hi:
        raise errors.KernelArgumentError(
            f"gemm: a_zero_point {a_zero_point} outside [{lo}, {hi}] for {a.dtype} a"
        )
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in _OUT_DTYPES:
        raise errors.KernelArgumentError(f"gemm: out_dtype must be uint8, int8 or int32, got {out_dtype}")
    if out_dtype != np.int32 and requant is None:
        raise errors.KernelArgumentError(f"gemm: a {out_dtype} output needs requant (int32 output does not)")
    if out_dtype != np.int32 and (
        requant.multiplier.shape != (packed.n,) or requant.shift.shape != (packed.n,)
    ):
        raise errors.ShapeError(
            f"gemm: requant has {requant.multiplier.shape} multipliers and {requant.shift.shape} shifts, "
            f"expected ({packed.n},)"
        )
    if out is None:
        out = np.empty((m, packed.n), dtype=out_dtype)
    else:
        if out.dtype != out_dtype:
            raise errors.KernelArgumentError(f"gemm: out is {out.dtype}, expected {out_dtype}")
        if out.shape != (m, packed.n):
            raise errors.ShapeError(f"gemm: out has shape {out.shape}, expected {(m, packed.n)}")
        _check_rows(out, "out")
        if not out.flags.writeable:
            raise errors.KernelArgumentError("gemm: out is read-only")
    rq = requant.struct() if requant is not None and out_dtype != np.int32 else ffi.NULL
    check(
        lib.edge_q8_gemm(
            m,
            packed.n,
            k,
            DTYPES[a.dtype],
            _address(a),
            _row_stride(a),
            int(a_zero_point),
            _address(packed.buffer),
            DTYPES[out_dtype],
            _address(out),
            _row_stride(out),
            rq,
            pool_handle(pool),
        ),
        "gemm",
    )
    return out
