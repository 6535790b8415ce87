"""2:4-sparse conv2d (pack_conv2d24 + conv2d) against the numpy oracle and the dense conv, on every ISA."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime import errors
from edge_runtime.kernels import (
    ThreadPool,
    conv2d,
    conv2d_workspace_size,
    pack_conv2d,
    prune_2_4,
    supported_isas,
    use_isa,
)
from edge_runtime.kernels.conv import pack_conv2d24
from tests.kernels.test_conv import conv_oracle, make_requant

ISAS = supported_isas()


def prune_conv_2_4(w: np.ndarray) -> np.ndarray:
    """2:4 along each output channel's im2col order (kernel_h, kernel_w, in_c / groups)."""
    rows = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return prune_2_4(rows).reshape(w.shape[0], *w.shape[2:], w.shape[1]).transpose(0, 3, 1, 2).copy()


# (input NHWC, out_c, kernel, stride, padding (t, l, b, r), dilation, groups)
SPECS = [
    ((1, 5, 7, 19), 23, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1: no im2col, K % 4 = 3
    ((2, 4, 3, 16), 12, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),  # 1x1 grouped, batch 2
    ((1, 7, 6, 13), 21, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # groups of 4 across taps
    ((2, 9, 8, 16), 18, (3, 3), (2, 2), (0, 0, 1, 1), (1, 1), 1),  # asymmetric padding
    ((1, 16, 15, 3), 16, (7, 7), (2, 2), (3, 3, 3, 2), (1, 1), 1),  # stem, K = 147
    ((1, 9, 9, 8), 9, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),  # dilation 2
    ((1, 4, 4, 300), 20, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # large K = 2700
    ((1, 3, 3, 4), 5, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # a single output pixel
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s[0]}-o{s[1]}-k{s[2]}-s{s[3]}-g{s[6]}")
@pytest.mark.parametrize("x_dtype,out_dtype", [(np.uint8, np.uint8), (np.int8, np.int8), (np.int8, np.int32)])
def test_conv2d24_matches_oracle_and_dense(isa, spec, x_dtype, out_dtype):
    shape, out_c, kernel, stride, padding, dilation, groups = spec
    rng = np.random.default_rng(abs(hash((spec, x_dtype, out_dtype))) % 2**32)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, size=shape).astype(x_dtype)
    x_zp = int(rng.integers(info.min, info.max + 1))
    w = prune_conv_2_4(rng.integers(-127, 128, size=(out_c, shape[3] // groups, *kernel)).astype(np.int8))
    bias = rng.integers(-50000, 50000, size=out_c).astype(np.int32)
    geometry = {
        "input_shape": shape,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
    }
    sparse, dense = pack_conv2d24(w, bias, **geometry), pack_conv2d(w, bias, **geometry)
    assert sparse.sparse and not dense.sparse
    acc = conv_oracle(x, x_zp, w, bias, stride, padding, dilation, groups)
    if out_dtype == np.int32:
        requant, expected = None, acc.astype(np.int32)
    else:
        requant = make_requant(rng, out_c, out_dtype)
        expected = requant.apply(acc).astype(out_dtype)
    with use_isa(isa):
        for threads in (1, 3):
            with ThreadPool(threads) as pool:
                y = conv2d(x, sparse, x_zp, requant, out_dtype=out_dtype, pool=pool)
                np.testing.assert_array_equal(y, expected)
                np.testing.assert_array_equal(
                    y, conv2d(x, dense, x_zp, requant, out_dtype=out_dtype, pool=pool)
                )
        if shape[0] > 1:  # the packed form serves a smaller batch
            np.testing.assert_array_equal(
                conv2d(x[:1], sparse, x_zp, requant, out_dtype=out_dtype), expected[:1]
            )


def test_workspace_is_the_dense_one():
    w = prune_conv_2_4(np.ones((8, 16, 3, 3), np.int8))
    geometry = {"input_shape": (2, 10, 10, 16), "padding": 1}
    with ThreadPool(2) as pool:
        assert (
            conv2d_workspace_size(pack_conv2d24(w, **geometry), 2, pool)
            == conv2d_workspace_size(pack_conv2d(w, **geometry), 2, pool)
            > 0
        )


def test_refuses_weights_not_2_4_in_the_im2col_order():
    # 2:4 along OIHW's last axis (kw) but 3 non-zeros among 4 consecutive input channels.
    w = np.zeros((6, 8, 3, 3), np.int8)
    w[4, 0:3, 1, 2] = (3, -5, 7)
    with pytest.raises(
        errors.NotSparseError, match=r"output channel 4 \(group 0\).*ky 1, kx 2, input channel 0"
    ):
        pack_conv2d24(w, input_shape=(1, 5, 5, 8), padding=1)
    grouped = np.zeros((6, 4, 1, 1), np.int8)
    grouped[5, :3, 0, 0] = 1
    with pytest.raises(errors.NotSparseError, match=r"output channel 5 \(group 1\)"):
        pack_conv2d24(grouped, input_shape=(1, 5, 5, 8), groups=2)
    with pytest.raises(errors.KernelArgumentError, match="-128"):
        pack_conv2d24(np.full((2, 1, 1, 1), -128, np.int8), input_shape=(1, 3, 3, 1))


def test_checks_arguments():
    w = prune_conv_2_4(np.ones((4, 8, 3, 3), np.int8))
    with pytest.raises(errors.KernelArgumentError, match="int8"):
        pack_conv2d24(w.astype(np.int16), input_shape=(1, 5, 5, 8))
    with pytest.raises(errors.ShapeError, match="input channels"):
        pack_conv2d24(w, input_shape=(1, 5, 5, 6))
    packed = pack_conv2d24(w, input_shape=(1, 5, 5, 8), padding=1)
    with pytest.raises(errors.ShapeError, match="expected NHWC"):
        conv2d(np.zeros((1, 5, 5, 4), np.uint8), packed, out_dtype=np.int32)
