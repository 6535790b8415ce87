"""Dense INT8 GEMM against a numpy oracle on every ISA this machine runs."""

from __future__ import annotations

import sys
import threading
import time

import kernel_spec
import numpy as np
import pytest

from edge_runtime import errors
from edge_runtime.kernels import Requant, ThreadPool, supported_isas, use_isa
from edge_runtime.kernels.gemm import PackedGemm, gemm, pack_gemm

ISAS = supported_isas()
# The edge-case shapes of every micro-kernel tile (native/kernels.json), on every ISA.
SHAPES = kernel_spec.cases("q8-gemm")


def oracle(a, w, bias, a_zp, requant, out_dtype):
    acc = (a.astype(np.int64) - a_zp) @ w.astype(np.int64).T
    if bias is not None:
        acc += bias
    acc = ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)  # int32 wrap-around
    if np.dtype(out_dtype) == np.int32:
        return acc
    return requant.apply(acc).astype(out_dtype)


def make_requant(rng, n, k, out_dtype, relu6=False):
    info = np.iinfo(out_dtype)
    zp = int(rng.integers(info.min, info.max + 1))
    scales = rng.uniform(0.5, 1.0, n) / (64 * np.sqrt(k) * 127)
    hi = min(info.max, zp + 60) if relu6 else None
    return Requant.from_scales(scales, n, zp, out_dtype, out_min=zp if relu6 else None, out_max=hi)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,n,k,tile", SHAPES, ids=[kernel_spec.case_id(s) for s in SHAPES])
@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("out_dtype", [np.uint8, np.int8, np.int32])
def test_matches_oracle(isa, m, n, k, tile, a_dtype, out_dtype):
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max + 1, (m, k), dtype=a_dtype)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    bias = rng.integers(-(2**20), 2**20, n, dtype=np.int32)
    a_zp = int(rng.integers(info.min, info.max + 1))
    requant = None if out_dtype == np.int32 else make_requant(rng, n, k, out_dtype, relu6=bool(m % 2))
    packed = pack_gemm(w, bias)
    with use_isa(isa):
        got = gemm(a, packed, a_zp, requant, out_dtype)
    np.testing.assert_array_equal(got, oracle(a, w, bias, a_zp, requant, out_dtype))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,n,k,tile", SHAPES, ids=[kernel_spec.case_id(s) for s in SHAPES])
@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
def test_7bit_weights_match_oracle(isa, m, n, k, tile, a_dtype):
    """7-bit weights (AVX2: the vpmaddubsw kernel) give the oracle's results exactly,
    at the ends of the ranges too (255 * 63 pairs: the largest int16 pair sums)."""
    rng = np.random.default_rng(m * 10007 + n * 101 + k + 7)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max + 1, (m, k), dtype=a_dtype)
    a.flat[0] = info.max
    w = rng.integers(-63, 64, (n, k), dtype=np.int8)
    w.flat[0], w.flat[-1] = 63, -63
    bias = rng.integers(-(2**20), 2**20, n, dtype=np.int32)
    a_zp = int(rng.integers(info.min, info.max + 1))
    packed = pack_gemm(w, bias, weight_bits=7)
    assert packed.weight_bits == 7
    out_dtype = (np.uint8, np.int8, np.int32)[(m + n + k) % 3]
    requant = None if out_dtype == np.int32 else make_requant(rng, n, k, out_dtype, relu6=bool(m % 2))
    with use_isa(isa):
        got = gemm(a, packed, a_zp, requant, out_dtype)
    np.testing.assert_array_equal(got, oracle(a, w, bias, a_zp, requant, out_dtype))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
def test_7bit_extremes_wrap_at_max_k(isa, a_dtype):
    k = 65536
    info = np.iinfo(a_dtype)
    a = np.full((3, k), info.max, dtype=a_dtype)
    a[1] = info.min
    w = np.full((17, k), 63, dtype=np.int8)
    w[1::2] = -63
    bias = np.full(17, 2**31 - 1, dtype=np.int32)
    packed = pack_gemm(w, bias, weight_bits=7)
    with use_isa(isa):
        got = gemm(a, packed, 0, None, np.int32)
    np.testing.assert_array_equal(got, oracle(a, w, bias, 0, None, np.int32))


def test_weight_bits_flag():
    rng = np.random.default_rng(3)
    w7 = rng.integers(-63, 64, (20, 30), dtype=np.int8)
    assert pack_gemm(w7, weight_bits=7).weight_bits == 7
    assert pack_gemm(w7).weight_bits == 7, "8-bit packing flags weights that fit 7 bits"
    w8 = w7.copy()
    w8[4, 9] = 64
    assert pack_gemm(w8).weight_bits == 8
    with pytest.raises(errors.KernelArgumentError, match="channel 4"):
        pack_gemm(w8, weight_bits=7)
    w8[4, 9] = -64
    with pytest.raises(errors.KernelArgumentError, match="channel 4"):
        pack_gemm(w8, weight_bits=7)
    with pytest.raises(errors.KernelArgumentError, match="8 or 7"):
        pack_gemm(w7, weight_bits=6)


@pytest.mark.parametrize("isa", ISAS)
def test_strided_a_and_out_with_threads(isa):
    rng = np.random.default_rng(1)
    m, n, k = 37, 50, 70
    big_a = rng.integers(0, 256, (m, k + 9), dtype=np.uint8)
    a = big_a[:, 3 : 3 + k]  # row stride k + 9, unit inner stride
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    requant = make_requant(rng, n, k, np.uint8)
    big_out = np.full((m, n + 5), 7, dtype=np.uint8)
    packed = pack_gemm(w)
    with use_isa(isa), ThreadPool(3) as pool:
        gemm(a, packed, 5, requant, np.uint8, out=big_out[:, :n], pool=pool)
    np.testing.assert_array_equal(big_out[:, :n], oracle(a, w, None, 5, requant, np.uint8))
    assert (big_out[:, n:] == 7).all(), "columns past N untouched"


@pytest.mark.parametrize("isa", ISAS)
def test_int32_wraps_at_max_k(isa):
    k = 65536
    a = np.full((2, k), 255, dtype=np.uint8)
    w = np.full((16, k), 127, dtype=np.int8)
    bias = np.full(16, 2**31 - 1, dtype=np.int32)
    packed = pack_gemm(w, bias)
    with use_isa(isa):
        got = gemm(a, packed, 0, None, np.int32)
    np.testing.assert_array_equal(got, oracle(a, w, bias, 0, None, np.int32))


def test_empty_batch():
    packed = pack_gemm(np.ones((4, 8), dtype=np.int8))
    out = gemm(np.zeros((0, 8), dtype=np.uint8), packed, out_dtype=np.int32)
    assert out.shape == (0, 4)


def test_packed_is_aligned_and_isa_independent():
    w = np.random.default_rng(2).integers(-127, 128, (33, 17), dtype=np.int8)
    packed = pack_gemm(w)
    assert isinstance(packed, PackedGemm) and (packed.n, packed.k) == (33, 17)
    assert packed.buffer.ctypes.data % 64 == 0
    assert np.array_equal(packed.buffer, pack_gemm(w).buffer)


def test_typed_errors():
    w = np.ones((4, 8), dtype=np.int8)
    packed = pack_gemm(w)
    a = np.zeros((2, 8), dtype=np.uint8)
    rq = Requant.from_scales(0.01, 4, 0)
    with pytest.raises(errors.KernelArgumentError, match="int8"):
        pack_gemm(w.astype(np.int16))
    with pytest.raises(errors.KernelArgumentError, match="channel 2"):
        bad = w.copy()
        bad[2, 5] = -128
        pack_gemm(bad)
    with pytest.raises(errors.ShapeError, match="65536"):
        pack_gemm(np.zeros((1, 65537), dtype=np.int8))
    with pytest.raises(errors.ShapeError):
        pack_gemm(w, np.zeros(5, dtype=np.int32))
    with pytest.raises(errors.ShapeError, match="K = 7"):
        gemm(np.zeros((2, 7), dtype=np.uint8), packed, requant=rq)
    with pytest.raises(errors.KernelArgumentError, match="uint8 or int8"):
        gemm(a.astype(np.float32), packed, requant=rq)
    with pytest.raises(errors.KernelArgumentError, match="needs requant"):
        gemm(a, packed)
    with pytest.raises(errors.KernelArgumentError, match="out_dtype"):
        gemm(a, packed, requant=rq, out_dtype=np.float32)
    with pytest.raises(errors.KernelArgumentError, match="zero point 256"):
        gemm(a, packed, 256, rq)
    with pytest.raises(errors.KernelArgumentError, match="contiguous rows"):
        gemm(np.zeros((8, 2), dtype=np.uint8).T, packed, requant=rq)
    with pytest.raises(errors.ShapeError, match="out has shape"):
        gemm(a, packed, requant=rq, out=np.empty((2, 5), dtype=np.uint8))
    with pytest.raises(errors.ShapeError, match="requant"):
        gemm(a, packed, requant=Requant.from_scales(0.01, 3, 0))
    with pytest.raises(errors.KernelArgumentError, match="multiplier"):
        gemm(a, packed, requant=Requant(np.full(4, 5, np.int32), np.full(4, 40, np.int32), 0, 0, 255))
    with pytest.raises(errors.PackedFormatError):
        gemm(a, PackedGemm(4, 8, _zeroed_like(packed.buffer)), requant=rq)


def test_misaligned_packed_buffer():
    packed = pack_gemm(np.ones((4, 8), dtype=np.int8))
    raw = np.zeros(packed.buffer.size + 65, dtype=np.uint8)
    offset = (-raw.ctypes.data) % 64 + 1  # one byte past an aligned address
    moved = raw[offset : offset + packed.buffer.size]
    moved[:] = packed.buffer
    with pytest.raises(errors.AlignmentError, match="aligned"):
        gemm(np.zeros((1, 8), dtype=np.uint8), PackedGemm(4, 8, moved), out_dtype=np.int32)


def _zeroed_like(buffer: np.ndarray) -> np.ndarray:
    """An aligned buffer of the same size holding zeros (no packed header)."""
    from edge_runtime.kernels._ffi import aligned_empty

    zeroed = aligned_empty(buffer.size)
    zeroed[:] = 0
    return zeroed


def test_gil_released_during_gemm():
    """While one Python thread is inside a long gemm call, another runs Python.

    The worker times a call of ~30 ms or more; the main thread records
    timestamps meanwhile. With the GIL held during the kernel, no timestamp
    could fall well inside the call (the main thread gets at most one switch
    interval before the call starts). This holds even on one busy core, since
    the OS still time-slices the two threads."""
    rng = np.random.default_rng(3)
    n, k = 1024, 4096
    packed = pack_gemm(rng.integers(-127, 128, (n, k), dtype=np.int8))
    a = rng.integers(0, 256, (256, k), dtype=np.uint8)
    start = time.perf_counter()
    gemm(a, packed, out_dtype=np.int32)
    rows = int(256 * max(1.0, 0.03 / (time.perf_counter() - start)))  # a call of >= ~30 ms
    a = rng.integers(0, 256, (rows, k), dtype=np.uint8)
    margin = 2 * sys.getswitchinterval()
    for _ in range(3):
        call: list[float] = []
        done = threading.Event()

        def worker(call=call, done=done) -> None:
            t0 = time.perf_counter()
            gemm(a, packed, out_dtype=np.int32)
            call.extend([t0, time.perf_counter()])
            done.set()

        thread = threading.Thread(target=worker)
        stamps = []
        thread.start()
        while not done.is_set():
            stamps.append(time.perf_counter())
        thread.join()
        t0, t1 = call
        if any(t0 + margin < s < t1 - margin for s in stamps):
            return
    raise AssertionError("no Python ran in another thread during gemm: is the GIL held by the kernel call?")
