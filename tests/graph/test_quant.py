"""The quantization spec (edge_runtime.numerics): formulas, serialization, observers, requantization."""

from __future__ import annotations

import json

import numpy as np
import pytest
from graph_testing import make_model, run_ort, value
from onnx import TensorProto, helper

from edge_runtime import numerics
from edge_runtime.errors import QuantizationError
from edge_runtime.numerics import QuantParams, WeightQuant

REQUANT_REL_TOL = 2.0**-30


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    params = QuantParams(scale=0.5, zero_point=10, dtype="uint8")
    x = np.float32([0.25, 0.75, 1.25, -0.25, -0.75, 1000.0, -1000.0])
    # x / scale = 0.5, 1.5, 2.5, -0.5, -1.5 -> 0, 2, 2, -0, -2 (ties to even), then saturation
    assert numerics.quantize(x, params).tolist() == [10, 12, 12, 10, 8, 255, 0]
    assert numerics.round_half_even(np.array([0.5, 1.5, 2.5, -2.5])).tolist() == [0, 2, 2, -2]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantize_matches_onnx_quantize_linear(dtype: str) -> None:
    params = numerics.activation_params(-1.3, 2.9, dtype)
    rng = np.random.default_rng(0)
    ties = (np.arange(-300, 300) + 0.5).astype(np.float32) * np.float32(params.scale)
    x = np.concatenate([rng.uniform(-3, 4, 2000).astype(np.float32), ties])
    onnx_type = TensorProto.UINT8 if dtype == "uint8" else TensorProto.INT8
    model = make_model(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["y"])],
        [value("x", [x.size])],
        [helper.make_tensor_value_info("y", onnx_type, [x.size])],
        {"scale": np.float32(params.scale), "zp": np.array(params.zero_point, dtype=dtype)},
    )
    expected = run_ort(model, {"x": x})["y"]
    np.testing.assert_array_equal(numerics.quantize(x, params), expected)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_activation_range_includes_zero_and_zero_is_exact(dtype: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        lo, hi = sorted(rng.normal(0, 5, 2))
        params = numerics.activation_params(lo, hi, dtype)
        zero = numerics.dequantize(numerics.quantize(np.float32(0.0), params), params)
        assert zero == 0.0
        real_lo, real_hi = params.real_range
        assert real_lo <= min(lo, 0) + params.scale and real_hi >= max(hi, 0) - params.scale
    positive = numerics.activation_params(2.0, 10.0)  # widened to [0, 10]
    assert positive.zero_point == 0 and positive.scale == pytest.approx(10 / 255)
    shift = 0 if dtype == "uint8" else -128
    # scale 1: -min / scale = 1.5 and 2.5 both nudge to the even zero point 2
    assert numerics.activation_params(-1.5, 253.5, dtype).zero_point == 2 + shift
    assert numerics.activation_params(-2.5, 252.5, dtype).zero_point == 2 + shift
    assert numerics.activation_params(0.0, 0.0).scale == 1.0


def test_int8_is_uint8_shifted() -> None:
    u = numerics.activation_params(-0.7, 3.1, "uint8")
    s = numerics.activation_params(-0.7, 3.1, "int8")
    assert s.scale == u.scale and s.zero_point == u.zero_point - 128
    x = np.linspace(-1, 4, 101, dtype=np.float32)
    np.testing.assert_array_equal(
        numerics.dequantize(numerics.quantize(x, u), u), numerics.dequantize(numerics.quantize(x, s), s)
    )


def test_quant_params_validate_and_round_trip_json() -> None:
    params = numerics.activation_params(-0.31, 7.7, "int8")
    assert QuantParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(QuantizationError, match="zero point"):
        QuantParams(0.1, 300, "uint8")
    with pytest.raises(QuantizationError, match="scale"):
        QuantParams(0.0, 0)
    with pytest.raises(QuantizationError):
        QuantParams.from_dict({"scale": 0.1})


def test_weights_are_symmetric_per_output_channel() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32) * np.float32(
        [[[[1]]], [[[10]]], [[[0.01]]], [[[0]]]]
    )
    wq = numerics.quantize_weights(w)
    assert wq.values.dtype == np.int8 and wq.values.shape == w.shape
    assert wq.values.min() >= -127 and wq.values.max() <= 127
    expected = np.abs(w[:3]).reshape(3, -1).max(axis=1) / 127
    np.testing.assert_allclose(wq.scales[:3], expected, rtol=1e-6)
    assert wq.scales[3] == np.float32(numerics.MIN_WEIGHT_SCALE) and not wq.values[3].any()
    for n in range(3):  # the largest magnitude maps to +-127
        assert np.abs(wq.values[n]).max() == 127
    error = np.abs(wq.dequantize() - w)
    assert np.all(error <= wq.scales.reshape(4, 1, 1, 1) / 2 + 1e-7)


def test_weight_axis_one_for_transposed_layouts() -> None:
    w = np.float32([[1.0, -20.0], [0.5, 10.0]])  # [K, N]: output channels along axis 1
    wq = numerics.quantize_weights(w, axis=1)
    np.testing.assert_allclose(wq.scales, [1 / 127, 20 / 127], rtol=1e-6)
    assert wq.values[:, 0].tolist() == [127, 64] and wq.values[:, 1].tolist() == [-127, 64]


def test_weight_quant_round_trips_json_exactly() -> None:
    wq = numerics.quantize_weights(np.random.default_rng(3).normal(size=(5, 7)).astype(np.float32))
    back = WeightQuant.from_dict(json.loads(json.dumps(wq.to_dict())))
    np.testing.assert_array_equal(back.scales, wq.scales)
    np.testing.assert_array_equal(back.values, wq.values)
    assert back.axis == wq.axis and back.scales.dtype == np.float32
    broken = dict(wq.to_dict(), scales=[1.0])
    with pytest.raises(QuantizationError, match="1 weight scales for 5 channels"):
        WeightQuant.from_dict(broken)


def test_bias_is_int32_at_input_times_weight_scale() -> None:
    weight_scale = np.float32([0.01, 0.02])
    q = numerics.quantize_bias(np.float32([1.0, -0.5]), 0.05, weight_scale)
    assert q.dtype == np.int32 and q.tolist() == [2000, -500]
    with pytest.raises(QuantizationError, match="overflows int32"):
        numerics.quantize_bias(np.float32([1e6]), 1e-4, np.float32([1e-4]))


def test_activation_clamps_in_the_output_domain() -> None:
    out = numerics.activation_params(-2.0, 8.0)
    assert numerics.activation_clamp(out) == (0, 255)
    lo, hi = numerics.activation_clamp(out, "relu6")
    assert lo == out.zero_point
    assert numerics.dequantize(np.uint8(hi), out) == pytest.approx(6.0, abs=out.scale / 2)
    assert numerics.activation_clamp(out, "relu") == (out.zero_point, 255)


def test_requantization_reproduces_the_real_multiplier() -> None:
    kernels = pytest.importorskip("edge_runtime.kernels", reason="needs the native extension")
    rng = np.random.default_rng(4)
    input_scale = 0.023
    weight_scale = rng.uniform(1e-4, 0.05, 64).astype(np.float32)
    output = numerics.activation_params(-3.0, 5.0)
    requant = numerics.requant(input_scale, weight_scale, output, activation="relu")
    assert isinstance(requant, kernels.Requant)
    real = numerics.requant_multipliers(input_scale, weight_scale, output.scale)
    represented = requant.multiplier.astype(np.float64) * 2.0 ** -requant.shift.astype(np.float64)
    assert np.max(np.abs(represented / real - 1)) <= REQUANT_REL_TOL
    assert requant.out_min == output.zero_point
    acc = rng.integers(-(2**20), 2**20, (16, 64))
    expected = np.clip(np.rint(acc * real) + output.zero_point, output.zero_point, 255)
    assert np.max(np.abs(requant.apply(acc) - expected)) <= 1


def test_requantization_refuses_multipliers_it_cannot_represent() -> None:
    pytest.importorskip("edge_runtime.kernels", reason="needs the native extension")
    with pytest.raises(QuantizationError, match="channel 1"):
        numerics.requant(0.5, np.float32([0.01, 4.0]), QuantParams(0.1, 0))


# -- observers ----------------------------------------------------------------


def test_min_max_observer_streams_the_full_range() -> None:
    obs = numerics.MinMaxObserver()
    for chunk in (np.float32([0.5, 2.0]), np.float32([-1.0, np.nan, np.inf])):
        obs.update(chunk)
    assert obs.range() == (-1.0, 2.0)
    assert obs.compute() == numerics.activation_params(-1.0, 2.0)
    with pytest.raises(QuantizationError, match="no finite value"):
        numerics.MinMaxObserver().compute()


def _gaussian_with_outliers(seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    chunks = [rng.normal(0, 1, 20_000).astype(np.float32) for _ in range(5)]
    chunks[2][:3] = [40.0, -35.0, 50.0]
    return chunks


def test_percentile_observer_clips_outliers() -> None:
    obs = numerics.PercentileObserver(99.9)
    for chunk in _gaussian_with_outliers():
        obs.update(chunk)
    lo, hi = obs.range()
    assert 3.0 < hi < 4.5 and -4.5 < lo < -3.0  # the 99.9th percentile of |N(0, 1)| is 3.29
    assert obs.hist.shape == (2048,) and obs.hist.sum() == 100_000
    full = numerics.PercentileObserver(100.0)
    for chunk in _gaussian_with_outliers():
        full.update(chunk)
    assert full.range()[1] == pytest.approx(50.0)


def test_histogram_grows_without_losing_counts() -> None:
    obs = numerics.PercentileObserver(100.0, bins=64)
    obs.update(np.zeros(10, np.float32))  # zeros before any scale is known
    obs.update(np.float32([0.1, 0.2, 0.3]))
    obs.update(np.float32([5.0]))
    assert obs.bound >= 5.0 and obs.hist.sum() == 14
    assert obs.hist[0] >= 10


def test_entropy_observer_threshold_is_below_the_max() -> None:
    obs = numerics.EntropyObserver()
    for chunk in _gaussian_with_outliers():
        obs.update(chunk)
    lo, hi = obs.range()
    assert 2.0 < hi < 50.0 and -35.0 < lo < -2.0
    relu = numerics.EntropyObserver()
    relu.update(np.maximum(np.random.default_rng(6).uniform(-1, 1, 50_000), 0).astype(np.float32))
    lo, hi = relu.range()
    assert lo == 0.0 and 0.8 < hi <= 1.0  # a uniform distribution needs (almost) all of its range
    params = relu.compute()
    assert params.zero_point == 0
