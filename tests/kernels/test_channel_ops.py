"""Per-channel int8 ops that corpus models run between convolutions: the per-channel lookup
tables of a PRelu (edge_q8_lut_channels) and the squeeze-and-excite gate, a [N, H, W, C] x
[N, 1, 1, C] multiply (edge_q8_mul's row broadcast), bit-exact against numpy on every ISA this
machine runs, on the calling thread and split over a pool."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime import errors
from edge_runtime.kernels import ThreadPool, ops, supported_isas, use_isa
from edge_runtime.kernels._ffi import ffi, lib

DTYPES = [np.uint8, np.int8]


@pytest.fixture(params=supported_isas())
def isa(request):
    with use_isa(request.param):
        yield request.param


@pytest.fixture(scope="module")
def pool():
    with ThreadPool(3) as p:
        yield p


def _rand_q8(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 7, 9, 3), (1, 46, 46, 32), (5, 256), (1, 3, 3, 131)])
@pytest.mark.parametrize("threads", [False, True])
def test_lut_channels_matches_numpy(isa, pool, dtype, shape, threads):
    rng = np.random.default_rng(sum(shape))
    channels = shape[-1]
    x = _rand_q8(rng, shape, dtype)
    tables = rng.integers(0, 256, size=(channels, 256)).astype(np.uint8)
    want = tables[np.arange(channels), x.view(np.uint8)].view(dtype)  # index by the byte
    got = ops.lut_channels(x, tables, pool=pool if threads else None)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_array_equal(got, want)
    # the same tables along axis 1 of the channels-first layout (an NCHW map: runs of H * W)
    xt = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    got = ops.lut_channels(xt, tables, axis=1, pool=pool if threads else None)
    np.testing.assert_array_equal(got, np.ascontiguousarray(np.moveaxis(want, -1, 1)))


def test_lut_channels_refuses_bad_tables_and_dtypes():
    x = np.zeros((2, 4), np.uint8)
    with pytest.raises(errors.KernelArgumentError, match=r"\(4, 256\)"):
        ops.lut_channels(x, np.zeros((3, 256), np.uint8))
    with pytest.raises(errors.KernelArgumentError, match="uint8"):
        ops.lut_channels(x, np.zeros((4, 256), np.int8))
    with pytest.raises(errors.KernelArgumentError):
        ops.lut_channels(x.astype(np.float32), np.zeros((4, 256), np.uint8))
    table = ffi.new("uint8_t[256]")
    with pytest.raises(errors.KernelArgumentError, match="axis 2"):
        ops.lut_channels(x, np.zeros((4, 256), np.uint8), axis=2)
    null = ffi.NULL
    assert lib.edge_q8_lut_channels(2, 1, 3, null, table, table, null) == lib.EDGE_ERR_INVALID_ARGUMENT
    assert lib.edge_q8_lut_channels(0, 1, 1, null, null, null, null) == lib.EDGE_OK


def _mul_oracle(a, b, a_scale, za, b_scale, zb, y_scale, zy) -> np.ndarray:
    """edge/ops.h's mul formula in int64 (numpy broadcasting), with the C init's parameters."""
    info = np.iinfo(a.dtype)
    params = ffi.new("edge_q8_mul_params *")
    assert lib.edge_q8_mul_params_init(a_scale, za, b_scale, zb, y_scale, zy, info.min, info.max, params) == 0
    acc = (a.astype(np.int64) - za) * (b.astype(np.int64) - zb) * params.multiplier
    shift = params.shift
    y = (acc + (np.int64(1) << (shift - 1))) >> shift
    return (np.clip(y, info.min - zy, info.max - zy) + zy).astype(a.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hwc", [(8, 12, 96), (3, 96, 88), (2, 96, 200), (1, 1, 5), (130, 130, 3)])
@pytest.mark.parametrize("gate_first", [False, True])
def test_squeeze_excite_gate_multiply_matches_numpy(isa, pool, dtype, hwc, gate_first):
    """x [1, H, W, C] times a gate [1, 1, 1, C] (either operand order), as the plan runs an SE
    block's Mul in NHWC storage: the kernel's row broadcast, the same bits as numpy's."""
    rng = np.random.default_rng(hwc[2])
    x = _rand_q8(rng, (1, *hwc), dtype)
    gate = _rand_q8(rng, (1, 1, 1, hwc[2]), dtype)
    zx, zg, zy = (0, 0, 0) if dtype == np.uint8 else (-3, -128, 5)
    scales = (0.05, zx, 1 / 255, zg, 0.04, zy)
    a, b = (gate, x) if gate_first else (x, gate)
    sa, sb = (scales[2:4], scales[0:2]) if gate_first else (scales[0:2], scales[2:4])
    want = _mul_oracle(a, b, *sa, *sb, *scales[4:])
    for p in (None, pool):
        got = ops.mul(a, b, *sa, *sb, *scales[4:], pool=p)
        assert got.shape == x.shape
        np.testing.assert_array_equal(got, want)


def test_a_gate_of_another_batch_size_is_refused_by_the_kernel():
    """[2, H, W, C] x [2, 1, 1, C] is no row broadcast (each sample has its own gate): a typed
    error from the kernel wrapper (the plan runs such a batch in float, see the executor)."""
    x = np.zeros((2, 3, 3, 4), np.uint8)
    with pytest.raises(errors.ShapeError, match="do not broadcast"):
        ops.mul(x, np.zeros((2, 1, 1, 4), np.uint8), 0.1, 0, 0.1, 0, 0.1, 0)
