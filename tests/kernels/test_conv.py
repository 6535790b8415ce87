"""conv2d and the direct depthwise conv against a numpy oracle, on every ISA."""

from __future__ import annotations

import kernel_spec
import numpy as np
import pytest

from edge_runtime import errors
from edge_runtime.kernels import (
    Requant,
    ThreadPool,
    conv2d,
    conv2d_workspace_size,
    dwconv2d,
    pack_conv2d,
    pack_dwconv2d,
    supported_isas,
    use_isa,
)

ISAS = supported_isas()


def conv_oracle(x, x_zp, w, bias, stride, padding, dilation, groups) -> np.ndarray:
    """int64 accumulators of an NHWC x OIHW grouped convolution; padding is a real 0."""
    n, h, wd, c = x.shape
    out_c, cin_g, kh, kw = w.shape
    top, left, bottom, right = padding
    xp = np.zeros((n, h + top + bottom, wd + left + right, c), dtype=np.int64)
    xp[:, top : top + h, left : left + wd, :] = x.astype(np.int64) - x_zp
    out_h = (h + top + bottom - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    out_w = (wd + left + right - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    acc = np.zeros((n, out_h, out_w, out_c), dtype=np.int64)
    cout_g = out_c // groups
    for g in range(groups):
        wg = w[g * cout_g : (g + 1) * cout_g].astype(np.int64)  # (cout_g, cin_g, kh, kw)
        for ky in range(kh):
            for kx in range(kw):
                y0, x0 = ky * dilation[0], kx * dilation[1]
                patch = xp[
                    :,
                    y0 : y0 + stride[0] * (out_h - 1) + 1 : stride[0],
                    x0 : x0 + stride[1] * (out_w - 1) + 1 : stride[1],
                    g * cin_g : (g + 1) * cin_g,
                ]
                acc[..., g * cout_g : (g + 1) * cout_g] += patch @ wg[:, :, ky, kx].T
    if bias is not None:
        acc += bias.astype(np.int64)
    # int32 accumulation wraps mod 2^32
    return ((acc + 2**31) % 2**32 - 2**31).astype(np.int64)


def make_requant(rng, out_c, dtype) -> Requant:
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    zp = int(rng.integers(lo, hi + 1))
    return Requant(
        multiplier=rng.integers(2**30, 2**31, size=out_c, dtype=np.int64).astype(np.int32),
        shift=rng.integers(38, 44, size=out_c).astype(np.int32),
        zero_point=zp,
        out_min=int(rng.integers(lo, zp + 1)),
        out_max=int(rng.integers(zp, hi + 1)),
    )


# (input NHWC, out_c, kernel, stride, padding (t, l, b, r), dilation, groups)
CONV_SPECS = [
    ((1, 5, 7, 19), 23, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1: no im2col
    ((2, 4, 3, 8), 12, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),  # 1x1 grouped, batch 2
    ((1, 7, 6, 13), 21, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((2, 9, 8, 6), 18, (3, 3), (2, 2), (0, 0, 1, 1), (1, 1), 1),  # asymmetric padding
    ((1, 8, 8, 10), 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 2),
    ((1, 16, 15, 3), 16, (7, 7), (2, 2), (3, 3, 3, 2), (1, 1), 1),  # stem
    ((1, 9, 9, 8), 9, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),  # dilation 2
    ((1, 6, 6, 24), 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 24),  # depthwise through the GEMM
    ((1, 3, 3, 4), 5, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # a single output pixel
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("spec", CONV_SPECS, ids=lambda s: f"{s[0]}-o{s[1]}-k{s[2]}-s{s[3]}-g{s[6]}")
@pytest.mark.parametrize(
    "x_dtype,out_dtype", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int32)]
)
def test_conv2d_matches_oracle(isa, spec, x_dtype, out_dtype):
    shape, out_c, kernel, stride, padding, dilation, groups = spec
    rng = np.random.default_rng(abs(hash((spec, x_dtype, out_dtype))) % 2**32)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, size=shape).astype(x_dtype)
    x_zp = int(rng.integers(info.min, info.max + 1))
    w = rng.integers(-127, 128, size=(out_c, shape[3] // groups, *kernel)).astype(np.int8)
    bias = rng.integers(-50000, 50000, size=out_c).astype(np.int32)
    packed = pack_conv2d(
        w, bias, input_shape=shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    acc = conv_oracle(x, x_zp, w, bias, stride, padding, dilation, groups)
    if out_dtype == np.int32:
        requant, expected = None, acc.astype(np.int32)
    else:
        requant = make_requant(rng, out_c, out_dtype)
        expected = requant.apply(acc).astype(out_dtype)
    with use_isa(isa):
        for threads in (1, 3):
            with ThreadPool(threads) as pool:
                y = conv2d(x, packed, x_zp, requant, out_dtype=out_dtype, pool=pool)
                np.testing.assert_array_equal(y, expected)
        if shape[0] > 1:  # the packed form serves a smaller batch
            np.testing.assert_array_equal(
                conv2d(x[:1], packed, x_zp, requant, out_dtype=out_dtype), expected[:1]
            )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("spec", CONV_SPECS[2:5], ids=lambda s: f"{s[0]}-o{s[1]}-k{s[2]}-s{s[3]}-g{s[6]}")
@pytest.mark.parametrize("x_dtype", [np.uint8, np.int8])
def test_conv2d_7bit_weights_match_oracle(isa, spec, x_dtype):
    """Weights in [-63, 63] flag each group's GEMM buffer 7-bit (AVX2: the vpmaddubsw kernel):
    the same accumulators as the oracle on every ISA."""
    shape, out_c, kernel, stride, padding, dilation, groups = spec
    rng = np.random.default_rng(abs(hash((spec, x_dtype, 7))) % 2**32)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, size=shape).astype(x_dtype)
    x_zp = int(rng.integers(info.min, info.max + 1))
    w = rng.integers(-63, 64, size=(out_c, shape[3] // groups, *kernel)).astype(np.int8)
    w.flat[0], w.flat[-1] = 63, -63
    bias = rng.integers(-50000, 50000, size=out_c).astype(np.int32)
    packed = pack_conv2d(
        w, bias, input_shape=shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    expected = conv_oracle(x, x_zp, w, bias, stride, padding, dilation, groups).astype(np.int32)
    with use_isa(isa):
        y = conv2d(x, packed, x_zp, None, out_dtype=np.int32)
    np.testing.assert_array_equal(y, expected)


DW_SPECS = [
    ((1, 5, 5, 16), 3, 1, (1, 1, 1, 1)),
    ((2, 7, 6, 17), 3, 1, (0, 0, 0, 0)),
    ((1, 8, 9, 24), 3, 2, (1, 1, 1, 1)),
    ((1, 9, 8, 40), 3, 2, (0, 0, 1, 1)),
    ((1, 7, 7, 15), 5, 1, (2, 2, 2, 2)),
    ((2, 10, 9, 33), 5, 2, (2, 1, 2, 3)),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("spec", DW_SPECS, ids=lambda s: f"{s[0]}-k{s[1]}-s{s[2]}-p{s[3]}")
@pytest.mark.parametrize("x_dtype,out_dtype", [(np.uint8, np.uint8), (np.int8, np.int8), (np.int8, np.uint8)])
def test_dwconv2d_matches_oracle(isa, spec, x_dtype, out_dtype):
    shape, k, s, padding = spec
    c = shape[3]
    rng = np.random.default_rng(abs(hash((spec, x_dtype, out_dtype))) % 2**32)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, size=shape).astype(x_dtype)
    x_zp = int(rng.integers(info.min, info.max + 1))
    w = rng.integers(-127, 128, size=(c, 1, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, size=c).astype(np.int32)
    packed = pack_dwconv2d(w, bias, input_shape=shape, stride=s, padding=padding)
    requant = make_requant(rng, c, out_dtype)
    expected = requant.apply(conv_oracle(x, x_zp, w, bias, (s, s), padding, (1, 1), c)).astype(out_dtype)
    with use_isa(isa):
        for threads in (1, 2):
            with ThreadPool(threads) as pool:
                np.testing.assert_array_equal(
                    dwconv2d(x, packed, x_zp, requant, out_dtype, pool=pool), expected
                )
        out = np.empty_like(expected)
        assert dwconv2d(x[:1], packed, x_zp, requant, out_dtype, out=out[:1]) is not None
        np.testing.assert_array_equal(out[:1], expected[:1])


DW_TILE_EDGES = kernel_spec.cases("q8-dwconv")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", DW_TILE_EDGES, ids=kernel_spec.case_id)
@pytest.mark.parametrize("x_dtype,out_dtype", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
def test_dwconv2d_tile_edges(isa, case, x_dtype, out_dtype):
    """Channels around every micro-kernel tile (native/kernels.json), padding taps on the border."""
    k, c, _tile = case
    shape = (1, 5, 4, c)
    rng = np.random.default_rng(k * 1000 + c)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, size=shape).astype(x_dtype)
    x_zp = int(rng.integers(info.min, info.max + 1))
    w = rng.integers(-127, 128, size=(c, 1, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, size=c).astype(np.int32)
    padding = (k // 2,) * 4
    packed = pack_dwconv2d(w, bias, input_shape=shape, stride=1, padding=padding)
    requant = make_requant(rng, c, out_dtype)
    expected = requant.apply(conv_oracle(x, x_zp, w, bias, (1, 1), padding, (1, 1), c)).astype(out_dtype)
    with use_isa(isa):
        np.testing.assert_array_equal(dwconv2d(x, packed, x_zp, requant, out_dtype), expected)


def test_dwconv2d_refuses_what_it_does_not_support():
    w = np.ones((8, 1, 7, 7), dtype=np.int8)
    with pytest.raises(errors.KernelArgumentError, match="use conv2d"):
        pack_dwconv2d(w, input_shape=(1, 9, 9, 8), padding=3)
    w3 = np.ones((8, 1, 3, 3), dtype=np.int8)
    with pytest.raises(errors.KernelArgumentError, match="use conv2d"):
        pack_dwconv2d(w3, input_shape=(1, 9, 9, 8), stride=3)
    packed = pack_dwconv2d(w3, input_shape=(1, 9, 9, 8), padding=1)
    rq = Requant.from_scales(0.01, 8, 0)
    with pytest.raises(errors.KernelArgumentError, match="uint8 or int8"):
        dwconv2d(np.zeros((1, 9, 9, 8), np.uint8), packed, 0, rq, out_dtype=np.int32)
    with pytest.raises(errors.KernelArgumentError, match="pack_conv2d"):
        conv2d(np.zeros((1, 9, 9, 8), np.uint8), packed, 0, rq)


def test_conv2d_typed_errors():
    w = np.ones((6, 4, 3, 3), dtype=np.int8)
    with pytest.raises(errors.ShapeError, match="groups"):
        pack_conv2d(w, input_shape=(1, 8, 8, 6))
    with pytest.raises(errors.KernelArgumentError, match="stride_h"):
        pack_conv2d(w, input_shape=(1, 8, 8, 4), stride=(0, 1))
    with pytest.raises(errors.ShapeError, match="kernel_h"):
        pack_conv2d(w, input_shape=(1, 2, 8, 4))
    with pytest.raises(errors.KernelArgumentError, match="int8"):
        pack_conv2d(w.astype(np.int16), input_shape=(1, 8, 8, 4))
    with pytest.raises(errors.ShapeError, match="bias"):
        pack_conv2d(w, np.zeros(5, np.int32), input_shape=(1, 8, 8, 4))
    packed = pack_conv2d(w, input_shape=(2, 8, 8, 4), padding=1)
    rq = Requant.from_scales(0.01, 6, 0)
    x = np.zeros((1, 8, 8, 4), np.uint8)
    with pytest.raises(errors.ShapeError, match="NHWC"):
        conv2d(np.zeros((1, 8, 7, 4), np.uint8), packed, 0, rq)
    with pytest.raises(errors.KernelArgumentError, match="x_zero_point"):
        conv2d(x.view(np.int8), packed, 200, rq, out_dtype=np.int8)
    with pytest.raises(errors.KernelArgumentError, match="requant"):
        conv2d(x, packed, 0, None)
    with pytest.raises(errors.ShapeError, match="requant"):
        conv2d(x, packed, 0, Requant.from_scales(0.01, 5, 0))
    with pytest.raises(errors.ShapeError, match="out"):
        conv2d(x, packed, 0, rq, out=np.empty((1, 8, 8, 5), np.uint8))
    small = np.zeros(conv2d_workspace_size(packed, batch=1) - 1, np.uint8)
    with pytest.raises(errors.KernelArgumentError, match="workspace"):
        conv2d(x, packed, 0, rq, workspace=small)
    # A larger batch than planned runs too: the packed form has no batch.
    assert conv2d(np.zeros((3, 8, 8, 4), np.uint8), packed, 0, rq).shape == (3, 8, 8, 6)
    assert conv2d_workspace_size(pack_conv2d(np.ones((6, 4, 1, 1), np.int8), input_shape=(1, 8, 8, 4))) == 0
