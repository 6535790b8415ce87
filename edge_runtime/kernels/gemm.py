"""Dense INT8 GEMM: weights packed once, then ``C = requant(A @ W.T + bias)``.

``A`` is u8 or s8 with a zero point, ``W`` is int8 in [-127, 127], symmetric per
output channel, and the int32 accumulators are requantized per channel to u8
or s8 (or returned as int32). The packed form is the same on every ISA.

7-bit weights (every value in [-63, 63], ``pack_gemm(..., weight_bits=7)``, or
any weights that happen to fit) are flagged in the packed header; AVX2 then runs
them through ``vpmaddubsw`` (exact for them) instead of its widening 8-bit
kernel, with the same int32 accumulators as every other ISA (docs/numerics.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_runtime import errors
from edge_runtime.kernels._ffi import DTYPES, aligned_empty, check, ffi, lib, ptr
from edge_runtime.kernels.core import Requant, ThreadPool

__all__ = ["PackedGemm", "gemm", "pack_gemm"]

_OUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int32))
# out_dtype as passed (a numpy type or dtype) -> dtype: skips np.dtype() per call.
_OUT_LOOKUP = {**{t.type: t for t in _OUT_DTYPES}, **{t: t for t in _OUT_DTYPES}}
_A_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8))
# The packed layout (native/src/q8-gemm/q8-gemm.h): header bytes, channels per panel, k per group.
_PACK_HEADER, _PACK_NR, _PACK_KR = 64, 16, 4


@dataclass
class PackedGemm:
    """Weights of an ``n x k`` dense GEMM in the kernels' packed layout."""

    n: int
    k: int
    buffer: np.ndarray  # uint8, 64-byte aligned
    _pointer: object = field(default=None, init=False, repr=False, compare=False)

    @property
    def weight_bits(self) -> int:
        """7 when packing found every weight in [-63, 63] (the kernels may use the
        7-bit path), else 8."""
        return int(lib.edge_q8_gemm_packed_weight_bits(self.pointer()))

    def pointer(self):
        """The cffi pointer to ``buffer`` (computed once: gemm() is called per inference)."""
        if self._pointer is None:
            self._pointer = _address(self.buffer)
        return self._pointer

    def rows(self, channels: np.ndarray) -> np.ndarray:
        """The int8 weights of output ``channels`` (``[len, k]``), read back from the packed panels.

        The layout is native/src/q8-gemm's: a 64-byte header, int32 bias and column sums
        (``n_pad`` each), then one panel per ``_PACK_NR`` channels, each ``k_pad / _PACK_KR``
        groups of ``_PACK_NR x _PACK_KR`` bytes. An LLM's tied embedding reads its token rows
        here instead of keeping a second copy of the matrix.
        """
        channels = np.asarray(channels, dtype=np.intp)
        if channels.size and (channels.min() < 0 or channels.max() >= self.n):
            raise errors.ShapeError(f"PackedGemm.rows: channels must be in [0, {self.n}), got {channels}")
        _, _, n, k, n_pad, k_pad = self.buffer[:24].view(np.int32)
        if (n, k) != (self.n, self.k) or n_pad % _PACK_NR or k_pad % _PACK_KR:
            raise errors.KernelArgumentError("PackedGemm.rows: the packed header does not match the layout")
        start = _PACK_HEADER + 8 * int(n_pad)
        panels = self.buffer[start : start + int(n_pad) * int(k_pad)].view(np.int8)
        panels = panels.reshape(n_pad // _PACK_NR, k_pad // _PACK_KR, _PACK_NR, _PACK_KR)
        out = panels[channels // _PACK_NR, :, channels % _PACK_NR, :]  # [len, k_pad / KR, KR]
        return out.reshape(channels.size, int(k_pad))[:, : self.k]


def pack_gemm(weights: np.ndarray, bias: np.ndarray | None = None, weight_bits: int = 8) -> PackedGemm:
    """Pack int8 ``weights`` of shape (N, K) and an optional int32 ``bias`` of shape (N,).

    ``weight_bits`` 8: weights in [-127, 127]; 7: in [-63, 63], anything else is
    refused (:class:`~edge_runtime.errors.KernelArgumentError` naming the channel).
    """
    if weight_bits not in (7, 8):
        raise errors.KernelArgumentError(f"pack_gemm: weight_bits must be 8 or 7, got {weight_bits!r}")
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
        lib.edge_q8_gemm_pack_bits(
            n, k, ptr(weights, "const int8_t *"), ptr(bias, "const int32_t *"), weight_bits, ptr(buffer), size
        ),
        "pack_gemm",
    )
    return PackedGemm(n=n, k=k, buffer=buffer)


def _rows(array: np.ndarray, name: str) -> tuple[object, int]:
    """(cffi pointer, row stride in elements) of a 2-D array with contiguous
    rows (any row stride); the array must stay alive during the call."""
    if array.ndim != 2:
        raise errors.ShapeError(f"gemm: {name} must be 2-D, got shape {array.shape}")
    if array.flags.c_contiguous:  # the common case: from_buffer is ~4x faster than .ctypes
        return ffi.from_buffer(array, require_writable=False), array.shape[1]
    rows, cols = array.shape
    if array.size == 0:
        return ffi.NULL, cols
    if cols > 1 and array.strides[1] != array.itemsize:
        raise errors.KernelArgumentError(f"gemm: {name} must have contiguous rows (unit inner stride)")
    if rows > 1 and (array.strides[0] < 0 or array.strides[0] % array.itemsize):
        raise errors.KernelArgumentError(f"gemm: {name} row stride {array.strides[0]} is not supported")
    stride = array.strides[0] // array.itemsize if rows > 1 else cols
    return ffi.cast("void *", array.ctypes.data), stride


def _output_args(
    out_dtype: np.dtype | type, requant: Requant | None, n: int, name: str
) -> tuple[np.dtype, object]:
    """(output dtype, requant struct or NULL) of a GEMM with ``n`` output
    channels, checked the same way for the dense and the 2:4-sparse kernels."""
    dtype = _OUT_LOOKUP.get(out_dtype)
    if dtype is None:
        dtype = np.dtype(out_dtype)
        if dtype not in _OUT_DTYPES:
            raise errors.KernelArgumentError(f"{name}: out_dtype must be uint8, int8 or int32, got {dtype}")
    if dtype.itemsize == 4:
        return dtype, ffi.NULL
    if requant is None:
        raise errors.KernelArgumentError(f"{name}: a {dtype} output needs requant (int32 output does not)")
    if requant.multiplier.shape != (n,) or requant.shift.shape != (n,):
        raise errors.ShapeError(
            f"{name}: requant has {requant.multiplier.shape} multipliers and {requant.shift.shape} shifts, "
            f"expected ({n},)"
        )
    return dtype, requant.struct()


def _address(array: np.ndarray):
    """A cffi pointer to the data of a contiguous array."""
    return ffi.from_buffer(array, require_writable=False)


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

    Checks what only Python knows (array types and lengths) and leaves the
    rest (zero-point range, requant values, packed header) to the C side,
    whose failures raise the same typed errors.
    """
    if not isinstance(packed, PackedGemm):
        raise errors.KernelArgumentError(
            f"gemm: packed must be a PackedGemm (from pack_gemm), got {type(packed)}"
        )
    if type(a) is not np.ndarray:
        a = np.asarray(a)
    a_code = DTYPES[a.dtype] if a.dtype in _A_DTYPES else None
    if a_code is None:
        raise errors.KernelArgumentError(f"gemm: a must be uint8 or int8, got {a.dtype}")
    a_ptr, a_stride = _rows(a, "a")
    m, k = a.shape
    if k != packed.k:
        raise errors.ShapeError(f"gemm: a has K = {k} but the weights were packed with K = {packed.k}")
    n = packed.n
    dtype, rq = _output_args(out_dtype, requant, n, "gemm")
    if out is None:
        out = np.empty((m, n), dtype=dtype)
    else:
        if out.dtype != dtype:
            raise errors.KernelArgumentError(f"gemm: out is {out.dtype}, expected {dtype}")
        if out.shape != (m, n):
            raise errors.ShapeError(f"gemm: out has shape {out.shape}, expected {(m, n)}")
        if not out.flags.writeable:
            raise errors.KernelArgumentError("gemm: out is read-only")
    out_ptr, out_stride = _rows(out, "out")
    status = lib.edge_q8_gemm(
        m,
        n,
        k,
        a_code,
        a_ptr,
        a_stride,
        int(a_zero_point),
        packed.pointer(),
        DTYPES[dtype],
        out_ptr,
        out_stride,
        rq,
        ffi.NULL if pool is None else pool.handle,
    )
    if status:
        check(status, "gemm")
    return out
