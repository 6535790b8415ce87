"""The quantization spec (DESIGN section 4): the one definition of every formula.

The quantizer, the native backend and the trainer's fake quantization all import
this module; none re-derives a formula. It needs numpy only (no torch, no native
extension) so that it loads anywhere.

Numerics, in the order a quantized layer meets them:

- **Weights** -- int8, symmetric, per output channel, values in [-127, 127]::

      scale[n] = max(max|w[n]| / 127, MIN_WEIGHT_SCALE)
      q = clip(round_half_even(w / scale[n]), -127, 127)

  or, for a package that declares 7-bit weights (``weight_bits=7``), the same with
  63 in place of 127: values in [-63, 63], still stored as int8. x86 without VNNI
  multiplies those with ``vpmaddubsw`` without saturation; every ISA computes the
  same int32 accumulators from them.

- **Activations** -- per tensor, asymmetric uint8 (default) or int8. The range
  (min, max) is first widened to include 0 so that 0 is exact (zero padding,
  ReLU)::

      scale = (max - min) / 255
      zero_point = clip(round_half_even(-min / scale), 0, 255)   (int8: minus 128)
      quantize(x) = saturate(round_half_even(x / scale) + zero_point)   (ONNX QuantizeLinear)
      dequantize(q) = (q - zero_point) * scale

- **Bias** -- int32, zero point 0, ``scale[n] = input_scale * weight_scale[n]``.
- **Requantization** of the int32 accumulators of a GEMM or convolution: the real
  multiplier ``input_scale * weight_scale[n] / output_scale`` becomes an integer
  (multiplier, shift) pair (``edge_runtime.kernels.requant_from_scale``, the rule of
  ``native/include/edge/common.h``); a fused ReLU or ReLU6 is a clamp of the output.

Scales are stored as float32 values (the C kernels take ``float`` scales) and
divisions happen in float32, as in onnxruntime's QuantizeLinear. The trainer
mirrors the numpy calls one to one: ``np.rint`` -> ``torch.round`` (both round
half to even), ``np.clip`` -> ``torch.clamp``, ``np.max(np.abs(w))`` ->
``torch.amax(w.abs())``, float32 arithmetic throughout.

Calibration observers (:class:`MinMaxObserver`, :class:`PercentileObserver`,
:class:`EntropyObserver`) turn streamed activations into :class:`QuantParams` with
bounded memory.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edge_runtime.errors import QuantizationError

if TYPE_CHECKING:
    from edge_runtime.kernels import Requant

__all__ = [
    "ACTIVATION_DTYPES",
    "MIN_ACTIVATION_SCALE",
    "MIN_WEIGHT_SCALE",
    "REQUANT_SCALE_RANGE",
    "WEIGHT_BITS",
    "WEIGHT_QMAX",
    "EntropyObserver",
    "MinMaxObserver",
    "Observer",
    "PercentileObserver",
    "QuantParams",
    "WeightQuant",
    "activation_clamp",
    "activation_params",
    "bias_scales",
    "dequantize",
    "fake_quantize",
    "quantize",
    "quantize_bias",
    "quantize_weights",
    "requant",
    "requant_multipliers",
    "round_half_even",
    "weight_qmax",
    "weight_scales",
]

ActivationDType = Literal["uint8", "int8"]
Activation = Literal["relu", "relu6"] | None

ACTIVATION_DTYPES: dict[str, tuple[int, int]] = {"uint8": (0, 255), "int8": (-128, 127)}
WEIGHT_QMAX = 127
# Weight widths a package may declare: 8 ([-127, 127]) or 7 ([-63, 63]).
WEIGHT_BITS = (8, 7)
# Floor of a weight scale. A channel of zeros gets exactly this scale: its values
# quantize to 0 whatever the scale, and a floor (rather than 0 or a denormal) keeps
# the bias of that channel inside int32 and its requantization multiplier above
# 2^-32 for any realistic input and output scales.
MIN_WEIGHT_SCALE = 2.0**-23
# Floor of an activation scale for a tensor with a tiny but non-zero range.
MIN_ACTIVATION_SCALE = 2.0**-24
# Real requantization multipliers the integer rule represents (edge/common.h).
REQUANT_SCALE_RANGE = (2.0**-32, 1.0)


def round_half_even(x: Any) -> Any:
    """Round to the nearest integer, ties to even (``np.rint``; torch: ``torch.round``)."""
    return np.rint(x)


# ---------------------------------------------------------------------------
# Activations


@dataclass(frozen=True)
class QuantParams:
    """Per-tensor affine quantization: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: ActivationDType = "uint8"

    def __post_init__(self) -> None:
        if self.dtype not in ACTIVATION_DTYPES:
            raise QuantizationError(f"activation dtype {self.dtype!r}: expected 'uint8' or 'int8'")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise QuantizationError(f"activation scale {self.scale!r} must be finite and positive")
        lo, hi = ACTIVATION_DTYPES[self.dtype]
        if not lo <= self.zero_point <= hi:
            raise QuantizationError(f"zero point {self.zero_point} outside [{lo}, {hi}] of {self.dtype}")

    @property
    def qmin(self) -> int:
        return ACTIVATION_DTYPES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return ACTIVATION_DTYPES[self.dtype][1]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def real_range(self) -> tuple[float, float]:
        """The smallest and largest real values this quantization represents."""
        return (self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantParams:
        try:
            return cls(float(data["scale"]), int(data["zero_point"]), data.get("dtype", "uint8"))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, QuantizationError):
                raise
            raise QuantizationError(f"bad quantization parameters {data!r}: {exc}") from exc


def activation_params(min_value: float, max_value: float, dtype: ActivationDType = "uint8") -> QuantParams:
    """Quantization of a tensor observed in [min_value, max_value].

    The range is widened to include 0, and the zero point is rounded ("nudged")
    so that real 0 is exactly representable. An all-zero range gets scale 1.0:
    any scale represents 0, and 1.0 keeps requantization multipliers small.
    """
    if dtype not in ACTIVATION_DTYPES:
        raise QuantizationError(f"activation dtype {dtype!r}: expected 'uint8' or 'int8'")
    if not (math.isfinite(min_value) and math.isfinite(max_value)) or min_value > max_value:
        raise QuantizationError(f"activation range ({min_value}, {max_value}) is not a finite interval")
    lo = min(float(min_value), 0.0)
    hi = max(float(max_value), 0.0)
    if hi == lo:
        scale = 1.0
    else:
        scale = float(np.float32(max((hi - lo) / 255.0, MIN_ACTIVATION_SCALE)))
    zero_point = int(np.clip(round_half_even(np.float32(-lo) / np.float32(scale)), 0, 255))
    if dtype == "int8":
        zero_point -= 128
    return QuantParams(scale, zero_point, dtype)


def quantize(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(round_half_even(x / scale) + zero_point)`` in float32."""
    x = np.asarray(x, dtype=np.float32)
    q = round_half_even(x / np.float32(params.scale)) + np.float32(params.zero_point)
    return np.clip(q, params.qmin, params.qmax).astype(params.numpy_dtype)


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    q = np.asarray(q).astype(np.int32) - np.int32(params.zero_point)
    return q.astype(np.float32) * np.float32(params.scale)


def fake_quantize(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """``dequantize(quantize(x))``: what the device sees of a float tensor."""
    return dequantize(quantize(x, params), params)


# ---------------------------------------------------------------------------
# Weights and bias


def _per_channel_shape(ndim: int, axis: int, channels: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = channels
    return tuple(shape)


def weight_qmax(bits: int = 8) -> int:
    """The largest weight value of a ``bits``-wide weight: 127 for 8, 63 for 7."""
    if bits not in WEIGHT_BITS:
        raise QuantizationError(f"weight bits {bits!r}: expected 8 or 7")
    return (1 << (bits - 1)) - 1


def weight_scales(weights: np.ndarray, axis: int = 0, bits: int = 8) -> np.ndarray:
    """Per-output-channel symmetric scales (float32 [channels]) of float weights.

    ``axis`` is the output-channel axis: 0 for Conv ([M, C, kh, kw]) and for
    Gemm with transB=1 ([N, K]); 1 for ConvTranspose and for Gemm with transB=0.
    ``bits``: 8 (``max|w| / 127``) or 7 (``max|w| / 63``).
    """
    qmax = weight_qmax(bits)
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 0:
        w = w.reshape(1)
    axis = axis % w.ndim
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.max(np.abs(w), axis=reduce_axes) if reduce_axes else np.abs(w)
    if not np.all(np.isfinite(absmax)):
        bad = np.flatnonzero(~np.isfinite(absmax)).tolist()
        raise QuantizationError(f"weights of output channels {bad} are not finite")
    return np.maximum(absmax / np.float32(qmax), np.float32(MIN_WEIGHT_SCALE)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class WeightQuant:
    """Int8 per-channel symmetric weights: ``real = scales[n] * values[..n..]``."""

    scales: np.ndarray  # float32 [channels]
    values: np.ndarray  # int8, the weight's shape
    axis: int = 0

    @property
    def channels(self) -> int:
        return int(self.scales.shape[0])

    def dequantize(self) -> np.ndarray:
        shape = _per_channel_shape(self.values.ndim, self.axis, self.channels)
        return self.values.astype(np.float32) * self.scales.reshape(shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: scales as floats (exact for float32), values as base64 bytes."""
        return {
            "axis": self.axis,
            "shape": list(self.values.shape),
            "scales": [float(s) for s in self.scales],
            "values": base64.b64encode(np.ascontiguousarray(self.values, dtype=np.int8).tobytes()).decode(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightQuant:
        try:
            shape = tuple(int(d) for d in data["shape"])
            values = np.frombuffer(base64.b64decode(data["values"]), dtype=np.int8).reshape(shape)
            scales = np.asarray(data["scales"], dtype=np.float32)
            axis = int(data.get("axis", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise QuantizationError(f"bad weight quantization record: {exc}") from exc
        if values.ndim and scales.shape != (values.shape[axis],):
            raise QuantizationError(
                f"{scales.shape[0]} weight scales for {values.shape[axis]} channels on axis {axis}"
            )
        return cls(scales=scales, values=values.copy(), axis=axis)


def quantize_weights(weights: np.ndarray, axis: int = 0, bits: int = 8) -> WeightQuant:
    """Int8 symmetric per-channel quantization of float weights (see the module docstring).

    ``bits=7`` gives values in [-63, 63] (``scale = max|w| / 63``), the weights a
    package declares with ``weight_bits: 7``.
    """
    qmax = weight_qmax(bits)
    w = np.asarray(weights, dtype=np.float32)
    scales = weight_scales(w, axis, bits)
    axis = axis % max(w.ndim, 1)
    shape = _per_channel_shape(w.ndim, axis, scales.shape[0])
    q = np.clip(round_half_even(w / scales.reshape(shape)), -qmax, qmax)
    return WeightQuant(scales=scales, values=q.astype(np.int8), axis=axis)


def bias_scales(input_scale: float, weight_scale: np.ndarray) -> np.ndarray:
    """Per-channel bias scales ``input_scale * weight_scale[n]`` (float64: the product
    of two float32 values is exact in float64)."""
    return np.float64(np.float32(input_scale)) * np.asarray(weight_scale, dtype=np.float32).astype(np.float64)


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> np.ndarray:
    """Int32 bias with scale ``input_scale * weight_scale[n]`` and zero point 0."""
    scales = bias_scales(input_scale, weight_scale)
    q = round_half_even(np.asarray(bias, dtype=np.float64) / scales)
    info = np.iinfo(np.int32)
    over = np.flatnonzero((q < info.min) | (q > info.max))
    if over.size:
        raise QuantizationError(
            f"bias of channels {over[:8].tolist()} overflows int32 at scale input*weight "
            f"(input scale {input_scale:g}): the input or weight scale is too small for this bias"
        )
    return q.astype(np.int32)


# ---------------------------------------------------------------------------
# Requantization


def activation_clamp(output: QuantParams, activation: Activation = None) -> tuple[int, int]:
    """(out_min, out_max) in the output's integer domain for a fused activation.

    ReLU clamps at the zero point (real 0); ReLU6 also at quantize(6.0).
    """
    lo, hi = output.qmin, output.qmax
    if activation is None:
        return lo, hi
    if activation not in ("relu", "relu6"):
        raise QuantizationError(f"fused activation {activation!r}: expected None, 'relu' or 'relu6'")
    lo = max(lo, output.zero_point)
    if activation == "relu6":
        hi = min(hi, int(quantize(np.float32(6.0), output)))
    return lo, hi


def requant_multipliers(input_scale: float, weight_scale: np.ndarray, output_scale: float) -> np.ndarray:
    """Real multipliers ``input_scale * weight_scale[n] / output_scale`` (float64 [channels])."""
    return bias_scales(input_scale, weight_scale) / np.float64(np.float32(output_scale))


def requant(
    input_scale: float,
    weight_scale: np.ndarray,
    output: QuantParams,
    activation: Activation = None,
) -> Requant:
    """Integer requantization of a GEMM/conv accumulator to ``output``, with a fused clamp.

    Needs the native extension (``edge_runtime.kernels``), imported here rather
    than at module level so that this module loads without it.
    """
    from edge_runtime.kernels import Requant

    multipliers = np.atleast_1d(requant_multipliers(input_scale, weight_scale, output.scale))
    lo_ok, hi_ok = REQUANT_SCALE_RANGE
    bad = np.flatnonzero(~((multipliers >= lo_ok) & (multipliers < hi_ok)))
    if bad.size:
        n = int(bad[0])
        raise QuantizationError(
            f"requantization multiplier {multipliers[n]:.3g} of channel {n} (and {bad.size - 1} more) "
            f"is outside [2^-32, 1): input_scale * weight_scale must be smaller than the output scale; "
            f"widen the output range (recalibrate) or check the weights of this layer"
        )
    out_min, out_max = activation_clamp(output, activation)
    return Requant.from_scales(
        multipliers,
        channels=multipliers.shape[0],
        zero_point=output.zero_point,
        dtype=output.numpy_dtype,
        out_min=out_min,
        out_max=out_max,
    )


# ---------------------------------------------------------------------------
# Calibration observers


class Observer:
    """Streams activations of one tensor and proposes its quantization.

    Non-finite values are ignored. Memory is bounded whatever the number of
    updates.
    """

    def __init__(self, dtype: ActivationDType = "uint8") -> None:
        if dtype not in ACTIVATION_DTYPES:
            raise QuantizationError(f"activation dtype {dtype!r}: expected 'uint8' or 'int8'")
        self.dtype: ActivationDType = dtype
        self.min = math.inf
        self.max = -math.inf

    def update(self, array: np.ndarray) -> None:
        x = np.asarray(array, dtype=np.float32).ravel()
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self._update(x)

    def _update(self, x: np.ndarray) -> None:
        """Hook for subclasses: finite float32 values of one batch, flattened."""

    def range(self) -> tuple[float, float]:
        """The (min, max) this observer chose to quantize."""
        return self._seen()

    def _seen(self) -> tuple[float, float]:
        if self.min > self.max:
            raise QuantizationError(f"{type(self).__name__} saw no finite value: run calibration data first")
        return self.min, self.max

    def compute(self) -> QuantParams:
        lo, hi = self.range()
        return activation_params(lo, hi, self.dtype)


class MinMaxObserver(Observer):
    """The full observed range: no clipping, every calibration value exact to half a step."""


class _AbsHistogramObserver(Observer):
    """A histogram of |x| on [0, bound] with a fixed number of bins.

    When a batch exceeds the bound, the bound doubles (as many times as needed)
    and groups of neighbouring bins merge, so old counts are never re-estimated.
    """

    def __init__(self, dtype: ActivationDType = "uint8", bins: int = 2048) -> None:
        super().__init__(dtype)
        if bins < 2 or bins & (bins - 1):
            raise QuantizationError(f"histogram bins must be a power of two, not {bins}")
        self.bins = bins
        self.hist = np.zeros(bins, dtype=np.int64)
        self.bound = 0.0
        self._zeros = 0  # exact zeros seen before the first non-zero value fixed the bound

    def _update(self, x: np.ndarray) -> None:
        a = np.abs(x)
        amax = float(a.max())
        if amax == 0.0 and self.bound == 0.0:
            self._zeros += a.size
            return
        if self.bound == 0.0:
            self.bound = amax
            self.hist[0] += self._zeros
        elif amax > self.bound:
            self._grow(amax)
        idx = np.minimum((a * np.float32(self.bins / self.bound)).astype(np.int64), self.bins - 1)
        self.hist += np.bincount(idx, minlength=self.bins)

    def _grow(self, amax: float) -> None:
        factor = 1 << max(1, math.ceil(math.log2(amax / self.bound)))
        while self.bound * factor < amax:  # guard against log2 rounding down
            factor <<= 1
        if factor >= self.bins:
            merged = np.zeros(self.bins, dtype=np.int64)
            merged[0] = self.hist.sum()
        else:
            merged = np.zeros(self.bins, dtype=np.int64)
            merged[: self.bins // factor] = self.hist.reshape(-1, factor).sum(axis=1)
        self.hist = merged
        self.bound *= factor

    def _clip_range(self, threshold: float) -> tuple[float, float]:
        lo, hi = self._seen()
        return max(lo, -threshold), min(hi, threshold)


class PercentileObserver(_AbsHistogramObserver):
    """Clips the range at the given percentile of |x| (e.g. 99.99), ignoring rare outliers."""

    def __init__(self, percentile: float = 99.99, dtype: ActivationDType = "uint8", bins: int = 2048) -> None:
        super().__init__(dtype, bins)
        if not 0.0 < percentile <= 100.0:
            raise QuantizationError(f"percentile {percentile} outside (0, 100]")
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        lo, hi = self._seen()
        if self.bound == 0.0:
            return lo, hi
        cdf = np.cumsum(self.hist) / self.hist.sum()
        # The upper edge of the bin holding the percentile: never below the percentile.
        index = int(np.searchsorted(cdf, self.percentile / 100.0 - 1e-12))
        threshold = (min(index, self.bins - 1) + 1) * self.bound / self.bins
        return self._clip_range(threshold)


class EntropyObserver(_AbsHistogramObserver):
    """The |x| threshold that minimizes the KL divergence between the histogram and
    its quantized version (TensorRT's entropy calibrator).

    For every candidate threshold bin ``i`` (from ``quantized_bins`` to ``bins``),
    the reference distribution P is the histogram up to ``i`` with the clipped
    tail folded into its last bin; Q merges those ``i`` bins into
    ``quantized_bins`` levels and spreads each level evenly over its non-empty
    bins. The smallest KL(P || Q) wins (the largest ``i`` among ties). Bin 0 is
    set to bin 1 first, as TensorRT does, so that exact zeros (ReLU outputs) do
    not dominate the search.
    """

    def __init__(self, dtype: ActivationDType = "uint8", bins: int = 2048, quantized_bins: int = 128) -> None:
        super().__init__(dtype, bins)
        if not 2 <= quantized_bins <= bins:
            raise QuantizationError(f"quantized_bins {quantized_bins} outside [2, {bins}]")
        self.quantized_bins = quantized_bins

    def range(self) -> tuple[float, float]:
        lo, hi = self._seen()
        if self.bound == 0.0:
            return lo, hi
        threshold_bin = _kl_threshold_bin(self.hist, self.quantized_bins)
        return self._clip_range(threshold_bin * self.bound / self.bins)


def _kl_threshold_bin(hist: np.ndarray, quantized_bins: int) -> int:
    """The number of histogram bins to keep (see :class:`EntropyObserver`)."""
    counts = hist.astype(np.float64)
    counts[0] = counts[1]
    last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else len(counts)
    if last <= quantized_bins:
        return last  # nothing to clip: the data fits the quantized levels
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tail[i] = sum(counts[i:])
    best_bin, best_kl = last, math.inf
    for i in range(quantized_bins, last + 1):
        p = counts[:i].copy()
        p[-1] += tail[i]
        level = (np.arange(i) * quantized_bins) // i
        nonzero = counts[:i] > 0
        level_sum = np.bincount(level, weights=counts[:i], minlength=quantized_bins)
        level_nonzero = np.bincount(level, weights=nonzero, minlength=quantized_bins)
        q = np.where(nonzero, level_sum[level] / np.maximum(level_nonzero[level], 1.0), 0.0)
        p_total, q_total = p.sum(), q.sum()
        if p_total == 0 or q_total == 0:
            continue
        p /= p_total
        q /= q_total
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl <= best_kl:
            best_bin, best_kl = i, kl
    return best_bin
