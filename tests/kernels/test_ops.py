"""The ops between GEMMs against numpy oracles, on every ISA this machine runs.

Integer ops are compared bit-exactly with int64 numpy versions of the rules in
``native/include/edge/ops.h``; float ops within named tolerances of float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime import errors
from edge_runtime.kernels import ThreadPool, ops, requant_from_scale, supported_isas, use_isa
from edge_runtime.kernels._ffi import ffi, lib

ISAS = supported_isas()
DTYPES = [np.uint8, np.int8]
SIZES = [0, 1, 15, 16, 17, 63, 64, 65, 1000]

SOFTMAX_ABS_TOL = 1e-6
LAYERNORM_REL_TOL = 1e-5  # |y - y64| <= tol * max(1, |y64|)
LUT_TIE_WINDOW = 1e-9  # a table entry may differ by 1 only this close to a rounding tie


@pytest.fixture(params=ISAS)
def isa(request):
    with use_isa(request.param):
        yield request.param


def _range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _rand_q8(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    lo, hi = _range(dtype)
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


def _round_shift(v: np.ndarray, shift: int) -> np.ndarray:
    return (v + (np.int64(1) << (shift - 1))) >> shift


def _binary_oracle(op: str, a, b, a_scale, za, b_scale, zb, y_scale, zy, lo, hi) -> np.ndarray:
    """The documented formula in int64, with the parameters the C init derives."""
    params = ffi.new(f"edge_q8_{op}_params *")
    init = lib.edge_q8_add_params_init if op == "add" else lib.edge_q8_mul_params_init
    assert init(a_scale, za, b_scale, zb, y_scale, zy, lo, hi, params) == 0
    da = a.astype(np.int64) - za
    db = b.astype(np.int64) - zb
    if op == "add":
        acc = da * params.a_multiplier + db * params.b_multiplier
        ratio = max(a_scale, b_scale) / y_scale
        mult = max(params.a_multiplier, params.b_multiplier)
    else:
        acc = da * db * params.multiplier
        ratio = a_scale * b_scale / y_scale
        mult = params.multiplier
    if mult:  # the integer parameters represent the real ratio
        assert math.isclose(mult / 2.0**params.shift, ratio, rel_tol=2.0**-14)
    return np.clip(_round_shift(acc, params.shift), lo - zy, hi - zy) + zy


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["equal", "row", "scalar", "a_scalar", "a_row"])
def test_binary_bit_exact(isa, op, dtype, layout):
    rng = np.random.default_rng(hash((op, layout)) % 2**32)
    lo, hi = _range(dtype)
    fn = ops.add if op == "add" else ops.mul
    for cols in SIZES:
        full = _rand_q8(rng, (3, cols), dtype)
        other = {
            "equal": _rand_q8(rng, (3, cols), dtype),
            "row": _rand_q8(rng, (cols,), dtype),
            "scalar": _rand_q8(rng, (), dtype),
            "a_scalar": _rand_q8(rng, (1,), dtype),
            "a_row": _rand_q8(rng, (1, cols), dtype),
        }[layout]
        a, b = (other, full) if layout.startswith("a_") else (full, other)
        za, zb, zy = (int(v) for v in rng.integers(lo, hi + 1, size=3))
        a_scale, b_scale = 10 ** rng.uniform(-3, -1, size=2)
        y_scale = a_scale * b_scale * 10 ** rng.uniform(-2, 3) if op == "mul" else 10 ** rng.uniform(-3, 1)
        y = fn(a, b, a_scale, za, b_scale, zb, y_scale, zy, y_min=zy)
        a_full, b_full = np.broadcast_arrays(a, b)
        expected = _binary_oracle(op, a_full, b_full, a_scale, za, b_scale, zb, y_scale, zy, zy, hi)
        assert y.dtype == dtype and y.shape == np.broadcast_shapes(a.shape, b.shape)
        np.testing.assert_array_equal(y, expected.astype(dtype), err_msg=f"{op} cols={cols} {layout}")
        # And within one step of the real-valued result.
        a64, b64 = a_full.astype(np.float64), b_full.astype(np.float64)
        real = (
            (a_scale * (a64 - za) + b_scale * (b64 - zb))
            if op == "add"
            else (a_scale * (a64 - za) * b_scale * (b64 - zb))
        )
        approx = np.clip(np.round(real / y_scale) + zy, zy, hi)
        assert np.all(np.abs(approx - y.astype(np.int64)) <= 1)


def test_binary_errors():
    a = np.zeros((2, 3), np.uint8)
    with pytest.raises(errors.ShapeError, match="broadcast"):
        ops.add(a, np.zeros((2,), np.uint8), 0.1, 0, 0.1, 0, 0.1, 0)
    with pytest.raises(errors.KernelArgumentError, match="same dtype"):
        ops.add(a, a.astype(np.int8), 0.1, 0, 0.1, 0, 0.1, 0)
    with pytest.raises(errors.KernelArgumentError, match="uint8 or int8"):
        ops.mul(a.astype(np.float32), a, 0.1, 0, 0.1, 0, 0.1, 0)
    with pytest.raises(errors.KernelArgumentError, match="2\\^21"):
        ops.add(a, a, 1.0, 0, 1.0, 0, 2.0**-22, 0)
    with pytest.raises(errors.KernelArgumentError, match="2\\^14"):
        ops.mul(a, a, 1.0, 0, 1.0, 0, 2.0**-15, 0)
    with pytest.raises(errors.KernelArgumentError, match="zero point"):
        ops.add(a.astype(np.int8), a.astype(np.int8), 0.1, 200, 0.1, 0, 0.1, 0)


# ---- pooling ----------------------------------------------------------------------


def _windows(x, kernel, stride, padding, dilation):
    """(out_h, out_w, list of (oy, ox, taps)) with taps = [(iy, ix)] inside the input."""
    _, h, w, _ = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    pt, pl, pb, pr = padding
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = []
    for oy in range(oh):
        for ox in range(ow):
            taps = [
                (oy * sh - pt + ky * dh, ox * sw - pl + kx * dw)
                for ky in range(kh)
                for kx in range(kw)
                if 0 <= oy * sh - pt + ky * dh < h and 0 <= ox * sw - pl + kx * dw < w
            ]
            out.append((oy, ox, taps))
    return oh, ow, out


def _avg_params(x_scale: float, y_scale: float, divisor: int) -> tuple[int, int, int]:
    """(pre_shift, multiplier, shift) as edge/ops.h documents them."""
    scale = x_scale / (y_scale * divisor)
    pre = 0
    if scale >= 1.0:
        pre = math.frexp(scale)[1]
        scale = math.ldexp(scale, -pre)
    return (pre, *requant_from_scale(scale))


POOL_CASES = [
    # kernel, stride, padding (t, l, b, r), dilation, in (h, w), channels
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (6, 6), 16),
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (5, 7), 17),
    ((3, 2), (2, 1), (2, 0, 1, 1), (2, 1), (7, 5), 3),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (2, 3), 300),
    ((3, 3), (2, 2), (1, 0, 0, 1), (1, 2), (6, 8), 65),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_pools_bit_exact(isa, dtype, case):
    kernel, stride, padding, dilation, (h, w), c = POOL_CASES[case]
    rng = np.random.default_rng(case)
    lo, hi = _range(dtype)
    x = _rand_q8(rng, (2, h, w, c), dtype)
    oh, ow, windows = _windows(x, kernel, stride, padding, dilation)
    y = ops.maxpool2d(x, kernel, stride, padding, dilation)
    expected = np.empty((2, oh, ow, c), dtype)
    for oy, ox, taps in windows:
        expected[:, oy, ox] = np.max([x[:, iy, ix] for iy, ix in taps], axis=0)
    np.testing.assert_array_equal(y, expected)

    zx, zy = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    for include_pad in (False, True):
        for x_scale, y_scale in ((0.05, 0.07), (0.05, 0.004)):  # ratios below and above 1
            y = ops.avgpool2d(x, kernel, x_scale, zx, y_scale, zy, stride, padding, dilation, include_pad)
            for oy, ox, taps in windows:
                acc = np.sum([x[:, iy, ix].astype(np.int64) - zx for iy, ix in taps], axis=0)
                divisor = kernel[0] * kernel[1] if include_pad else len(taps)
                pre, mult, shift = _avg_params(x_scale, y_scale, divisor)
                v = np.clip(_round_shift((acc << pre) * mult, shift), lo - zy, hi - zy) + zy
                np.testing.assert_array_equal(y[:, oy, ox], v.astype(dtype), err_msg=f"({oy}, {ox})")

    y = ops.global_avgpool(x, 0.05, zx, 0.03, zy)
    acc = (x.astype(np.int64) - zx).sum(axis=(1, 2))
    pre, mult, shift = _avg_params(0.05, 0.03, h * w)
    v = np.clip(_round_shift((acc << pre) * mult, shift), lo - zy, hi - zy) + zy
    np.testing.assert_array_equal(y[:, 0, 0], v.astype(dtype))


@pytest.fixture(scope="module")
def pool():
    with ThreadPool(3) as p:
        yield p


def test_ops_split_over_a_pool_give_the_same_bits(isa, pool):
    """Above 16384 elements the quantized ops split their work over the pool (rows, column
    blocks, chunks, output rows, channel blocks): every split gives the calling thread's bits,
    which the tests above check against the oracles."""
    rng = np.random.default_rng(14)
    for dtype in DTYPES:
        a = _rand_q8(rng, (3, 20011), dtype)  # column blocks of one row
        tall = _rand_q8(rng, (5003, 24), dtype)  # blocks of whole rows
        for fn, x, y in (
            (ops.add, a, _rand_q8(rng, a.shape, dtype)),
            (ops.add, tall, _rand_q8(rng, (24,), dtype)),
            (ops.mul, a, _rand_q8(rng, (), dtype)),
            (ops.mul, _rand_q8(rng, (1, 24), dtype), tall),
        ):
            args = (x, y, 0.02, 3, 0.03, -5 if dtype == np.int8 else 7, 0.04, 1)
            np.testing.assert_array_equal(fn(*args, pool=pool), fn(*args))
        image = _rand_q8(rng, (2, 41, 39, 33), dtype)
        for pool_args in (((3, 3), (2, 1), (1, 1, 1, 1)), ((2, 2), (2, 2), (0, 0, 1, 1))):
            np.testing.assert_array_equal(
                ops.maxpool2d(image, *pool_args, pool=pool), ops.maxpool2d(image, *pool_args)
            )
            avg = (image, pool_args[0], 0.05, 3, 0.04, 2, pool_args[1], pool_args[2])
            np.testing.assert_array_equal(ops.avgpool2d(*avg, pool=pool), ops.avgpool2d(*avg))
        features = _rand_q8(rng, (3, 7, 7, 1280), dtype)
        np.testing.assert_array_equal(
            ops.global_avgpool(features, 0.05, 3, 0.02, 1, pool=pool),
            ops.global_avgpool(features, 0.05, 3, 0.02, 1),
        )
        table = rng.integers(0, 256, size=256).astype(np.uint8)
        big = _rand_q8(rng, (70001,), dtype)
        np.testing.assert_array_equal(ops.lut(big, table, pool=pool), ops.lut(big, table))
        np.testing.assert_array_equal(ops.dequantize(big, 0.1, 3, pool=pool), ops.dequantize(big, 0.1, 3))
    floats = rng.normal(size=70001).astype(np.float32) * 10
    for dtype in DTYPES:
        np.testing.assert_array_equal(
            ops.quantize(floats, 0.1, 3, dtype, pool=pool), ops.quantize(floats, 0.1, 3, dtype)
        )


def test_pool_errors():
    x = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(errors.KernelArgumentError, match="pads"):
        ops.maxpool2d(x, 2, padding=2)
    with pytest.raises(errors.ShapeError, match="NHWC"):
        ops.maxpool2d(x[0], 2)
    with pytest.raises(errors.ShapeError, match="smaller than"):
        ops.maxpool2d(x, 5)
    with pytest.raises(errors.KernelArgumentError, match="too large"):
        ops.avgpool2d(x, 2, 1.0, 0, 1e-9, 0)
    with pytest.raises(errors.KernelArgumentError, match="kernel"):
        ops.avgpool2d(x, 0, 1.0, 0, 1.0, 0)


# ---- lookup tables --------------------------------------------------------------


def _lut_oracle(kind, dtype, xs, zx, ys, zy, alpha, beta):
    """Table in float64 with the formulas of edge/ops.h, and the distance of
    each f(x) / y_scale to the nearest rounding tie."""
    q = np.arange(256, dtype=np.uint8).view(dtype).astype(np.int64)
    x = xs * (q - zx).astype(np.float64)
    f = {
        "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
        "hardsigmoid": lambda v: np.maximum(0.0, np.minimum(1.0, alpha * v + beta)),
        "hardswish": lambda v: v * np.maximum(0.0, np.minimum(1.0, v / 6.0 + 0.5)),
        "gelu": lambda v: np.array([0.5 * t * (1.0 + math.erf(t / math.sqrt(2.0))) for t in v]),
        "tanh": np.tanh,
    }[kind](x)
    scaled = f / ys
    lo, hi = _range(dtype)
    table = np.clip(np.round(scaled) + zy, lo, hi).astype(np.int64).astype(dtype).view(np.uint8)
    tie_distance = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5)
    return table, tie_distance


@pytest.mark.parametrize("kind", list(ops.LUT_KINDS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_lut_tables_match_numpy(kind, dtype):
    rng = np.random.default_rng(len(kind))
    lo, hi = _range(dtype)
    for _ in range(8):
        xs, ys = 10 ** rng.uniform(-2.5, -0.5), 10 ** rng.uniform(-3, -1)
        zx, zy = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        table = ops.lut_table(kind, dtype, xs, zx, ys, zy, alpha=0.2, beta=0.5)
        expected, tie = _lut_oracle(kind, dtype, xs, zx, ys, zy, 0.2, 0.5)
        diff = np.abs(table.view(dtype).astype(np.int64) - expected.view(dtype).astype(np.int64))
        # libm and numpy may differ in the last ulp: a step of 1 is allowed only at a tie.
        assert np.all((diff == 0) | ((diff == 1) & (tie < LUT_TIE_WINDOW))), (kind, xs, ys, zx, zy)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lut_apply(isa, dtype):
    rng = np.random.default_rng(7)
    table = rng.integers(0, 256, size=256).astype(np.uint8)
    for n in SIZES:
        x = _rand_q8(rng, (n,), dtype)
        np.testing.assert_array_equal(ops.lut(x, table), table[x.view(np.uint8)].view(dtype))
    with pytest.raises(errors.KernelArgumentError, match="256"):
        ops.lut(x, table[:255])
    with pytest.raises(errors.KernelArgumentError, match="unknown kind"):
        ops.lut_table("relu", dtype, 0.1, 0, 0.1, 0)


# ---- quantize / dequantize ----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_matches_numpy(isa, dtype):
    rng = np.random.default_rng(3)
    lo, hi = _range(dtype)
    for n in SIZES:
        scale = np.float32(0.25 if n % 2 else 10 ** rng.uniform(-3, 0))
        zp = int(rng.integers(lo, hi + 1))
        x = (rng.uniform(-150, 150, size=n) * scale).astype(np.float32)
        if n:
            ties = rng.random(n) < 0.3
            x[ties] = ((rng.integers(-200, 200, size=ties.sum()) + 0.5) * scale).astype(np.float32)
            specials = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, -0.0, 3.4e38], np.float32)
            x[: min(n, 7)] = specials[: min(n, 7)]
        y = ops.quantize(x, float(scale), zp, dtype)
        with np.errstate(invalid="ignore", over="ignore"):
            r = np.round(x / scale)
        r = np.where(np.isnan(r), 0, r)
        expected = np.clip(np.clip(r, -1e6, 1e6).astype(np.int64) + zp, lo, hi).astype(dtype)
        np.testing.assert_array_equal(y, expected, err_msg=f"n={n}")
        back = ops.dequantize(y, float(scale), zp)
        np.testing.assert_array_equal(back, (y.astype(np.int32) - zp).astype(np.float32) * scale)


def test_quantize_errors():
    with pytest.raises(errors.KernelArgumentError, match="float32"):
        ops.quantize(np.zeros(3), 0.1, 0)
    with pytest.raises(errors.KernelArgumentError, match="scale"):
        ops.quantize(np.zeros(3, np.float32), 0.0, 0)
    with pytest.raises(errors.KernelArgumentError, match="zero point"):
        ops.dequantize(np.zeros(3, np.int8), 0.1, 200)


# ---- float ops --------------------------------------------------------------------


@pytest.mark.parametrize("cols", [1, 15, 16, 17, 63, 64, 65, 1000])
def test_softmax_tolerance(isa, cols):
    rng = np.random.default_rng(cols)
    x = rng.uniform(-20, 20, size=(4, cols)).astype(np.float32)
    x[0, 0] = -1e30
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)
    assert np.max(np.abs(ops.softmax(x) - expected)) <= SOFTMAX_ABS_TOL
    in_place = x.copy()
    assert ops.softmax(in_place, out=in_place) is in_place  # the attention step relies on this
    np.testing.assert_array_equal(in_place, ops.softmax(x))


@pytest.mark.parametrize("cols", [1, 15, 16, 17, 63, 64, 65, 1000])
@pytest.mark.parametrize("affine", [False, True])
def test_layernorm_tolerance(isa, cols, affine):
    rng = np.random.default_rng(cols)
    x = rng.uniform(-3, 5, size=(4, cols)).astype(np.float32)
    gamma = rng.uniform(0.5, 2, size=cols).astype(np.float32) if affine else None
    beta = rng.uniform(-1, 1, size=cols).astype(np.float32) if affine else None
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=1, keepdims=True)
    expected = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(axis=1, keepdims=True) + np.float32(1e-5))
    if affine:
        expected = expected * gamma + beta
    y = ops.layernorm(x, gamma, beta, 1e-5)
    assert np.max(np.abs(y - expected) / np.maximum(1.0, np.abs(expected))) <= LAYERNORM_REL_TOL
    with pytest.raises(errors.ShapeError, match="gamma"):
        ops.layernorm(x, np.ones(cols + 1, np.float32))


# ---- attention ------------------------------------------------------------------


def _attention_oracle(q, kt, v, params, scale, mask):
    (sq, zq), (sk, zk), (sv, zv), (sy, zy) = params
    qf, kf, vf = ((x.astype(np.float64) - z) * s for x, s, z in ((q, sq, zq), (kt, sk, zk), (v, sv, zv)))
    scores = qf @ kf * scale + (0 if mask is None else mask)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    lo, hi = (0, 255) if q.dtype == np.uint8 else (-128, 127)
    return p @ vf, np.clip(np.round(p @ vf / sy) + zy, lo, hi)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("narrow", [True, False], ids=["k_v_exact", "k_v_requantized"])
def test_attention_against_float64(isa, dtype, narrow):
    """int8 products, float softmax, probabilities in 8 bits: within the bound those 8 bits
    (and, for K and V wider than 127 codes around their zero points, their 7-bit weights) allow."""
    rng = np.random.default_rng(7)
    b, h, s_q, s_k, d = 2, 3, 5, 9, 8
    lo, hi = (0, 256) if dtype == np.uint8 else (-128, 128)
    zero = 128 if dtype == np.uint8 else 0
    span = 60 if narrow else 128  # codes around the zero point

    def codes(*shape):
        return rng.integers(max(lo, zero - span), min(hi, zero + span), size=shape).astype(dtype)

    q, kt, v = codes(b, h, s_q, d), codes(b, h, d, s_k), codes(b, h, s_k, d)
    params = ((0.02, zero), (0.03, zero + 3), (0.05, zero - 2), (1.0, zero))
    mask = np.zeros((b, 1, 1, s_k), np.float32)
    mask[1, ..., -3:] = -1e4  # padding of the second sample
    real, _ = _attention_oracle(q, kt, v, params, 0.35, mask)
    y_scale = float(np.abs(real).max()) / 120  # the output's range, as calibration would set it
    params = (*params[:3], (y_scale, zero))
    y = ops.attention(q, kt, v, params, 0.35, mask)
    _, want = _attention_oracle(q, kt, v, params, 0.35, mask)
    assert y.shape == want.shape and y.dtype == dtype
    error = np.abs(y.astype(np.float64) - want)
    # Each probability is off by at most half of 1/255, times |v| summed over the keys: a
    # worst case of several output steps that independent roundings keep far from.
    v_max = float(np.abs((v.astype(np.float64) - (zero - 2)) * 0.05).max())
    assert error.max() <= 1 + s_k * 0.5 / 255 * v_max / y_scale
    assert error.mean() <= 0.5  # measured 0.22-0.24 on every ISA
    # Heads and batches are independent: one head alone gives the same codes.
    alone = ops.attention(q[1:, 2:], kt[1:, 2:], v[1:, 2:], params, 0.35, mask[1:])
    np.testing.assert_array_equal(alone, y[1:, 2:])


def test_attention_checks_shapes_and_workspace():
    q = np.zeros((1, 2, 3, 4), np.uint8)
    with pytest.raises(errors.ShapeError, match="do not fit"):
        ops.attention(q, np.zeros((1, 2, 5, 3), np.uint8), np.zeros((1, 2, 3, 4), np.uint8), ((1, 0),) * 4)
    with pytest.raises(errors.ShapeError, match="mask"):
        ops.attention(q, np.zeros((1, 2, 4, 3), np.uint8), np.zeros((1, 2, 3, 4), np.uint8), ((1, 0),) * 4,
                      mask=np.zeros((1, 1, 1, 7), np.float32))  # fmt: skip
    with pytest.raises(errors.KernelArgumentError, match="workspace"):
        ops.attention(q, np.zeros((1, 2, 4, 3), np.uint8), np.zeros((1, 2, 3, 4), np.uint8), ((1, 0),) * 4,
                      workspace=np.zeros(64, np.uint8))  # fmt: skip
