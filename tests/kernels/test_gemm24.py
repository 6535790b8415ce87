"""2:4-sparse INT8 GEMM (edge_runtime.kernels.sparse) against a numpy oracle on every ISA."""

from __future__ import annotations

import kernel_spec
import numpy as np
import pytest

from edge_runtime import errors
from edge_runtime.kernels import (
    Requant,
    ThreadPool,
    gemm24,
    is_2_4,
    pack_gemm24,
    prune_2_4,
    supported_isas,
    use_isa,
)

ISAS = supported_isas()
# The edge-case shapes of every micro-kernel tile (native/kernels.json), on every ISA.
SHAPES = kernel_spec.cases("q8-gemm24")


def random_sparse(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return prune_2_4(rng.integers(-127, 128, size=(n, k), dtype=np.int8))


def oracle_acc(a: np.ndarray, zp: int, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """bias + (a - zp) @ w.T in int64, wrapped to int32 like the kernels."""
    acc = bias.astype(np.int64) + (a.astype(np.int64) - zp) @ w.astype(np.int64).T
    return acc.astype(np.uint32).astype(np.int32) if acc.size else acc.astype(np.int32)


def make_requant(rng: np.random.Generator, n: int, dtype: type) -> Requant:
    lo, hi = (0, 255) if dtype is np.uint8 else (-128, 127)
    scales = rng.uniform(1e-5, 1e-3, size=n)
    return Requant.from_scales(
        scales, n, int(rng.integers(lo, hi + 1)), dtype, out_min=lo + int(rng.integers(0, 20)), out_max=hi
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=kernel_spec.case_id)
@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("out_dtype", [np.uint8, np.int8, np.int32])
def test_matches_oracle(isa: str, shape: tuple[int, int, int, str], a_dtype: type, out_dtype: type) -> None:
    m, n, k, _tile = shape
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max + 1, size=(m, k), dtype=a_dtype)
    zp = int(rng.integers(info.min, info.max + 1))
    w = random_sparse(rng, n, k)
    bias = rng.integers(-50000, 50000, size=n, dtype=np.int32)
    packed = pack_gemm24(w, bias)
    acc = oracle_acc(a, zp, w, bias)
    if out_dtype is np.int32:
        requant, expected = None, acc
    else:
        requant = make_requant(rng, n, out_dtype)
        expected = requant.apply(acc).astype(out_dtype)
    with use_isa(isa):
        got = gemm24(a, packed, a_zero_point=zp, requant=requant, out_dtype=out_dtype)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,n", [(1, 33), (17, 16)])
def test_large_k(isa: str, m: int, n: int) -> None:
    rng = np.random.default_rng(m + n)
    k = 4096
    a = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
    w = random_sparse(rng, n, k)
    bias = rng.integers(-50000, 50000, size=n, dtype=np.int32)
    with use_isa(isa):
        got = gemm24(a, pack_gemm24(w, bias), a_zero_point=9, out_dtype=np.int32)
    np.testing.assert_array_equal(got, oracle_acc(a, 9, w, bias))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_strided_and_threaded(isa: str, threads: int) -> None:
    rng = np.random.default_rng(threads)
    m, n, k = 13, 37, 45
    wide = rng.integers(0, 256, size=(m, k + 7), dtype=np.uint8)
    a = wide[:, 3 : 3 + k]  # a row stride wider than k
    w = random_sparse(rng, n, k)
    packed = pack_gemm24(w)
    requant = make_requant(rng, n, np.uint8)
    expected = requant.apply(oracle_acc(a, 7, w, np.zeros(n, np.int32))).astype(np.uint8)
    out_wide = np.full((m, n + 5), 0xA5, dtype=np.uint8)
    with use_isa(isa), ThreadPool(threads) as pool:
        got = gemm24(a, packed, a_zero_point=7, requant=requant, out=out_wide[:, :n], pool=pool)
    np.testing.assert_array_equal(got, expected)
    assert (out_wide[:, n:] == 0xA5).all()


@pytest.mark.parametrize("isa", ISAS)
def test_groups_with_0_1_2_nonzeros(isa: str) -> None:
    rng = np.random.default_rng(5)
    n, k = 17, 67
    w = random_sparse(rng, n, k)
    w[:, 0:4] = 0  # 0 non-zeros
    w[:, 5:8] = 0  # 1 non-zero (position 4)
    w[:, 4] = 127
    w[:, -3:] = [0, -127, 127]  # 2 non-zeros in the short last group
    a = rng.integers(0, 256, size=(4, k), dtype=np.uint8)
    expected = oracle_acc(a, 128, w, np.zeros(n, np.int32))
    with use_isa(isa):
        got = gemm24(a, pack_gemm24(w), a_zero_point=128, out_dtype=np.int32)
    np.testing.assert_array_equal(got, expected)


def test_not_sparse_names_channel_and_group() -> None:
    w = np.zeros((6, 12), dtype=np.int8)
    w[4, 8:11] = [1, 2, 3]
    assert not is_2_4(w)
    with pytest.raises(errors.NotSparseError, match=r"channel 4, group 2 \(k 8\.\.11\) has 3 non-zeros"):
        pack_gemm24(w)


def test_typed_errors() -> None:
    w = np.zeros((8, 12), dtype=np.int8)
    packed = pack_gemm24(w)
    a = np.zeros((2, 12), dtype=np.uint8)
    w_min = np.zeros((2, 4), dtype=np.int8)
    w_min[1, 2] = -128
    with pytest.raises(errors.KernelArgumentError, match=r"\[1\]\[2\] is -128"):
        pack_gemm24(w_min)
    with pytest.raises(errors.KernelArgumentError, match="int8"):
        pack_gemm24(w.astype(np.int16))
    with pytest.raises(errors.KernelArgumentError, match="bias"):
        pack_gemm24(w, np.zeros(8, dtype=np.int64))
    with pytest.raises(errors.ShapeError, match="k = 13"):
        gemm24(np.zeros((2, 13), dtype=np.uint8), packed, out_dtype=np.int32)
    with pytest.raises(errors.KernelArgumentError, match="requant"):
        gemm24(a, packed)
    with pytest.raises(errors.KernelArgumentError, match="zero point"):
        gemm24(a, packed, a_zero_point=300, out_dtype=np.int32)
    with pytest.raises(errors.KernelArgumentError, match="out_dtype"):
        gemm24(a, packed, out_dtype=np.float32)
    with pytest.raises(errors.KernelArgumentError, match="uint8 or int8"):
        gemm24(a.astype(np.float32), packed, out_dtype=np.int32)
    bad = Requant(np.full(8, 5, np.int32), np.full(8, 40, np.int32), 0, 0, 255)
    with pytest.raises(errors.KernelArgumentError, match="channel 0"):
        gemm24(a, packed, requant=bad)
    corrupt = pack_gemm24(w)
    corrupt.buffer[0] ^= 0xFF
    with pytest.raises(errors.PackedFormatError):
        gemm24(a, corrupt, out_dtype=np.int32)


def test_prune_2_4_properties() -> None:
    rng = np.random.default_rng(0)
    for shape in [(5, 16), (3, 7), (2, 3, 9), (1,), (4, 2)]:
        w = rng.integers(-127, 128, size=shape, dtype=np.int8)
        p = prune_2_4(w)
        assert p.shape == w.shape and p.dtype == w.dtype
        assert is_2_4(p)
        kept = p != 0
        assert (p[kept] == w[kept]).all(), "kept weights are unchanged"
        # Each group keeps its 2 largest magnitudes: any dropped |w| <= the smallest kept |w|.
        groups = np.abs(np.concatenate([w, np.zeros(w.shape[:-1] + ((-w.shape[-1]) % 4,), w.dtype)], -1))
        groups = groups.astype(np.int32).reshape(-1, 4)
        pruned = np.abs(
            np.concatenate([p, np.zeros(p.shape[:-1] + ((-p.shape[-1]) % 4,), p.dtype)], -1).astype(np.int32)
        ).reshape(-1, 4)
        for g, q in zip(groups, pruned):
            dropped = g[q == 0]
            assert np.sort(g)[-2:].sum() == np.sort(q)[-2:].sum()
            assert dropped.size == 0 or dropped.max() <= max(np.sort(g)[-2], 0)
    # Ties go to the lower index; already-sparse weights are unchanged.
    np.testing.assert_array_equal(prune_2_4(np.array([3, -3, 3, 3, 0, 0, 0, 1])), [3, -3, 0, 0, 0, 0, 0, 1])
    sparse = prune_2_4(rng.standard_normal((4, 10)).astype(np.float32))
    np.testing.assert_array_equal(prune_2_4(sparse), sparse)
    assert is_2_4(np.zeros((3, 0)))
