"""Fake quantization in torch: :mod:`edge_runtime.numerics` (the spec), one torch call per numpy call.

Nothing here re-derives a formula. Constants (``weight_qmax(bits)``, ``MIN_WEIGHT_SCALE``,
``ACTIVATION_DTYPES``) and activation parameters (:func:`edge_runtime.numerics.activation_params`,
which turns an observed range into a :class:`~edge_runtime.numerics.QuantParams`) are imported;
the per-element arithmetic is the spec's numpy mirrored as its docstring says:
``np.rint`` -> ``torch.round`` (both half to even), ``np.clip`` -> ``torch.clamp``,
``np.max(np.abs(w))`` -> ``torch.amax(w.abs())``, float32 throughout. The tests compare
every function here with its numpy original on the same tensors, bit for bit.

Gradients use the clipped straight-through estimator: the rounding is taken as the
identity, and values outside the representable range get no gradient (they were
clamped). Weights are never clamped by their own scale, so their gradient is the identity.
"""

from __future__ import annotations

import torch

from edge_runtime.numerics import (
    ACTIVATION_DTYPES,
    MIN_WEIGHT_SCALE,
    QuantParams,
    activation_params,
    weight_qmax,
)

__all__ = [
    "EMAObserver",
    "fake_quantize_activation",
    "fake_quantize_weight",
    "quantize_activation",
    "quantize_weight",
    "weight_scales",
]


def weight_scales(weight: torch.Tensor, axis: int = 0, bits: int = 8) -> torch.Tensor:
    """Per-output-channel scales, float32 [channels]: ``edge_runtime.numerics.weight_scales``
    (``bits`` 8: ``max|w| / 127``; 7: ``max|w| / 63``)."""
    w = weight.detach().to(torch.float32)
    axis = axis % w.ndim
    reduce_dims = tuple(i for i in range(w.ndim) if i != axis)
    absmax = torch.amax(w.abs(), dim=reduce_dims) if reduce_dims else w.abs()
    scales = absmax / torch.tensor(weight_qmax(bits), dtype=torch.float32)
    return torch.clamp(scales, min=MIN_WEIGHT_SCALE)  # 2^-23 is exact in float32


def _channel_view(scales: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis % ndim] = scales.shape[0]
    return scales.reshape(shape)


def quantize_weight(weight: torch.Tensor, axis: int = 0, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scales): ``edge_runtime.numerics.quantize_weights``."""
    w = weight.detach().to(torch.float32)
    qmax = weight_qmax(bits)
    scales = weight_scales(w, axis, bits)
    q = torch.clamp(torch.round(w / _channel_view(scales, w.ndim, axis)), -qmax, qmax)
    return q.to(torch.int8), scales


class _WeightFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, axis: int, bits: int) -> torch.Tensor:
        q, scales = quantize_weight(weight, axis, bits)
        return q.to(torch.float32) * _channel_view(scales, weight.ndim, axis)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def fake_quantize_weight(weight: torch.Tensor, axis: int = 0, bits: int = 8) -> torch.Tensor:
    """``WeightQuant.dequantize(quantize_weights(w, bits=bits))`` in torch, with a straight-through gradient."""
    return _WeightFakeQuant.apply(weight, axis, bits)


def quantize_activation(x: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """``edge_runtime.numerics.quantize`` (ONNX QuantizeLinear) as float32 codes."""
    scale = torch.tensor(params.scale, dtype=torch.float32)
    q = torch.round(x.to(torch.float32) / scale) + torch.tensor(float(params.zero_point), dtype=torch.float32)
    return torch.clamp(q, params.qmin, params.qmax)


class _ActivationFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, params: QuantParams) -> torch.Tensor:
        q = quantize_activation(x, params)
        lo, hi = params.real_range
        ctx.save_for_backward((x >= lo) & (x <= hi))
        # dequantize: (q - zero_point) * scale, the codes are exact integers in float32.
        zero = torch.tensor(float(params.zero_point), dtype=torch.float32)
        return (q - zero) * torch.tensor(params.scale, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None


def fake_quantize_activation(x: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """``edge_runtime.numerics.fake_quantize`` with the clipped straight-through gradient."""
    return _ActivationFakeQuant.apply(x, params)


class EMAObserver(torch.nn.Module):
    """Running (min, max) of one activation tensor, an exponential moving average over batches.

    The first batch sets the range; later batches move it by ``momentum``. When
    ``frozen`` the range stops moving. :meth:`quant_params` turns the range into
    :class:`~edge_runtime.numerics.QuantParams` through the spec's ``activation_params``.
    The range lives in buffers, so it is in the model's ``state_dict`` (checkpoints)
    and DDP broadcasts rank 0's values with the other buffers.
    """

    def __init__(self, momentum: float = 0.01, dtype: str = "uint8") -> None:
        super().__init__()
        if dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"activation dtype {dtype!r}: expected one of {sorted(ACTIVATION_DTYPES)}")
        self.momentum = momentum
        self.dtype = dtype
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("frozen", torch.tensor(False))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        if bool(self.frozen):
            return
        x = x.detach().to(torch.float32)
        lo, hi = torch.aminmax(x)
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def quant_params(self) -> QuantParams:
        """The quantization of the observed range (the spec widens it to include 0)."""
        if not bool(self.initialized):
            raise RuntimeError("observer has seen no data yet")
        return activation_params(float(self.min_val), float(self.max_val), self.dtype)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        state = "frozen" if bool(self.frozen) else f"momentum={self.momentum}"
        return f"range=({float(self.min_val):.4g}, {float(self.max_val):.4g}), {state}"
