"""Quantization-aware training: modules, model preparation and a Lightning callback.

What the device computes for a ``conv -> batch norm -> activation`` block (DESIGN section 4):
batch norm folded into the conv (:func:`edge_runtime.graph.passes.fold_batch_norm`, in
float64), the folded weights quantized int8 per output channel, the output quantized per
tensor after the fused ReLU/ReLU6. :class:`QuantConvBnAct` computes exactly that in torch
(:mod:`cloud_trainer.fake_quant`), so training sees the device's rounding:

* **QAT off** (before the callback's ``start_epoch``): the float block, unchanged.
* **QAT on, batch norm live**: the folded weights (with the *running* statistics) are fake
  quantized, the conv output is divided back by the folding factor and batch norm runs on
  batch statistics (the "approximate" recipe of Krishnamoorthi 2018 / ``torch.ao``).
* **Batch norm frozen** (or eval): conv with the fake-quantized folded weights and the folded
  bias, exactly the deployed arithmetic.

Activation ranges come from :class:`~cloud_trainer.fake_quant.EMAObserver` modules that
freeze on a schedule; the frozen ranges become the native plan's activation parameters at
export (:func:`activation_params_by_module`). A conv block keeps its ``conv``/``bn``/``act``
children (a linear layer moves under ``.linear``), and :func:`to_float` gives back the
original modules, so the exported ONNX has the original model's node names.

Convention (the one ``torch.ao`` fusion uses by name): a conv block is a module whose
children include ``conv`` (``nn.Conv2d``) and ``bn`` (``nn.BatchNorm2d``), optionally
``act`` (``nn.ReLU`` or ``nn.ReLU6``), run in that order; every other ``nn.Linear`` and
``nn.Conv2d`` is quantized alone. :func:`prepare_qat` refuses a model it cannot map.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import nn

from cloud_trainer.errors import QATError
from cloud_trainer.fake_quant import EMAObserver, fake_quantize_activation, fake_quantize_weight
from edge_runtime.numerics import WEIGHT_BITS, QuantParams

__all__ = [
    "INPUT_KEY",
    "QuantConvBnAct",
    "QuantLinear",
    "QuantizationAwareTraining",
    "activation_params_by_module",
    "is_prepared",
    "prepare_qat",
    "set_qat_state",
    "to_float",
]

#: Key of the model input in :func:`activation_params_by_module`.
INPUT_KEY = "<input>"
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Identity)


def _check_weight_bits(bits: int) -> None:
    if bits not in WEIGHT_BITS:
        raise QATError(f"weight_bits={bits!r}: expected 8 or 7")


class _Quantized(nn.Module):
    """Flags shared by the QAT modules, kept in buffers so that they survive checkpoints."""

    def __init__(self, momentum: float, weight_bits: int = 8) -> None:
        super().__init__()
        _check_weight_bits(weight_bits)
        self.observer = EMAObserver(momentum)
        self.register_buffer("qat_enabled", torch.tensor(False))
        # In a buffer, so that the export of a checkpoint knows the width trained for.
        self.register_buffer("weight_bits", torch.tensor(weight_bits))

    def _fake_quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(w, bits=int(self.weight_bits))

    def _quantize_output(self, y: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observer.observe(y)
        return fake_quantize_activation(y, self.observer.quant_params())


class QuantConvBnAct(_Quantized):
    """``act(bn(conv(x)))`` with the device's quantization (see the module docstring).

    ``bn`` may be None (a conv alone); ``act`` None, ``nn.ReLU`` or ``nn.ReLU6``.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None,
        act: nn.Module | None,
        momentum: float = 0.01,
        weight_bits: int = 8,
    ):
        super().__init__(momentum, weight_bits)
        if act is not None and not isinstance(act, _ACTIVATIONS):
            raise QATError(f"activation {type(act).__name__} cannot be fused: expected ReLU or ReLU6")
        self.conv = conv
        self.bn = bn
        self.act = act
        self.register_buffer("bn_frozen", torch.tensor(False))

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch norm folded into (weight, bias) with the running statistics, as the runtime folds it:
        ``k = gamma / sqrt(var + eps)`` in float64, ``w * k`` and ``b * k + beta - mean * k`` cast to float32."""
        w = self.conv.weight
        b = self.conv.bias if self.conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        if self.bn is None:
            return w, b
        bn = self.bn
        k = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * k
        w_fold = (w.double() * k.reshape(-1, 1, 1, 1)).to(w.dtype)
        b_fold = (b.double() * k + shift).to(w.dtype)
        return w_fold, b_fold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act if self.act is not None else (lambda t: t)
        if not bool(self.qat_enabled):
            y = self.conv(x)
            return act(self.bn(y) if self.bn is not None else y)
        if self.bn is None or bool(self.bn_frozen) or not self.training:
            w_fold, b_fold = self.folded()
            y = self._conv(x, self._fake_quantize_weight(w_fold), b_fold)
        else:
            bn = self.bn
            factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w_scaled = self.conv.weight * factor.reshape(-1, 1, 1, 1)
            y = self._conv(x, self._fake_quantize_weight(w_scaled), None) / factor.reshape(1, -1, 1, 1)
            if self.conv.bias is not None:
                y = y + self.conv.bias.reshape(1, -1, 1, 1)
            y = bn(y)  # batch statistics; updates the running ones
        return self._quantize_output(act(y))


class QuantLinear(_Quantized):
    """``nn.Linear`` with per-output-channel int8 weights and a per-tensor quantized output."""

    def __init__(self, linear: nn.Linear, momentum: float = 0.01, weight_bits: int = 8) -> None:
        super().__init__(momentum, weight_bits)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.qat_enabled):
            return self.linear(x)
        weight = self._fake_quantize_weight(self.linear.weight)
        return self._quantize_output(F.linear(x, weight, self.linear.bias))


class _InputQuant(_Quantized):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quantize_output(x) if bool(self.qat_enabled) else x


def _quantize_input_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    quant = getattr(module, "qat_input", None)
    if quant is None or not args or not torch.is_floating_point(args[0]):
        return None
    return (quant(args[0]), *args[1:])


def _is_conv_block(module: nn.Module) -> bool:
    children = dict(module.named_children())
    return isinstance(children.get("conv"), nn.Conv2d) and isinstance(children.get("bn"), nn.BatchNorm2d)


def is_prepared(model: nn.Module) -> bool:
    """True when :func:`prepare_qat` already ran on ``model``."""
    return isinstance(getattr(model, "qat_input", None), _InputQuant)


def prepare_qat(model: nn.Module, momentum: float = 0.01, weight_bits: int = 8) -> nn.Module:
    """Swap ``model``'s conv blocks, convolutions and linears for QAT modules, in place; returns ``model``.

    The QAT modules start disabled (the model computes what it computed before) until
    :func:`set_qat_state` turns them on. Parameters are shared, not copied, so an optimizer
    built before keeps working. Raises :class:`QATError` for a conv block whose children
    are not ``conv``, ``bn`` and an optional ReLU/ReLU6 ``act``. ``weight_bits`` 7 trains for
    packages with 7-bit weights ([-63, 63]; faster on x86 without VNNI, docs/numerics.md).
    """
    if is_prepared(model):
        return model

    def convert(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, (_Quantized,)):
                continue
            if _is_conv_block(child):
                extra = set(dict(child.named_children())) - {"conv", "bn", "act"}
                if extra:
                    raise QATError(
                        f"conv block {type(child).__name__} has children {sorted(extra)} besides conv/bn/act"
                    )
                act = getattr(child, "act", None)
                setattr(parent, name, QuantConvBnAct(child.conv, child.bn, act, momentum, weight_bits))
            elif isinstance(child, nn.Conv2d):
                setattr(parent, name, QuantConvBnAct(child, None, None, momentum, weight_bits))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, QuantLinear(child, momentum, weight_bits))
            else:
                convert(child)

    convert(model)
    model.qat_input = _InputQuant(momentum, weight_bits)
    model.register_forward_pre_hook(_quantize_input_hook)
    return model


def _qat_modules(model: nn.Module) -> list[_Quantized]:
    return [m for m in model.modules() if isinstance(m, _Quantized)]


def set_qat_state(
    model: nn.Module,
    *,
    enabled: bool | None = None,
    observers_frozen: bool | None = None,
    bn_frozen: bool | None = None,
) -> None:
    """Turn fake quantization on or off, freeze or thaw observers and batch norm (None leaves a flag as it is)."""
    modules = _qat_modules(model)
    if not modules:
        raise QATError("the model has no QAT modules: call prepare_qat(model) first")
    for m in modules:
        if enabled is not None:
            m.qat_enabled.fill_(enabled)
        if observers_frozen is not None:
            m.observer.frozen.fill_(observers_frozen)
        if bn_frozen is not None and isinstance(m, QuantConvBnAct):
            m.bn_frozen.fill_(bn_frozen)


def qat_weight_bits(model: nn.Module) -> int:
    """The weight width ``model`` was prepared for (8 or 7)."""
    widths = {int(m.weight_bits) for m in _qat_modules(model)}
    if len(widths) != 1:
        raise QATError(f"the model's QAT modules have weight widths {sorted(widths)}: expected one")
    return widths.pop()


def activation_params_by_module(model: nn.Module) -> dict[str, QuantParams]:
    """The QAT-learned activation quantization, by the qualified name of the module whose output it is.

    The model input is under :data:`INPUT_KEY`. Raises :class:`QATError` when QAT never ran
    (an observer saw no data).
    """
    result: dict[str, QuantParams] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _Quantized):
            continue
        if not bool(module.observer.initialized):
            raise QATError(f"QAT observer of {name or 'the model'} saw no data: train with QAT enabled first")
        key = INPUT_KEY if isinstance(module, _InputQuant) else name
        result[key] = module.observer.quant_params()
    return result


def to_float(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the original float modules back (for ONNX export).

    Conv blocks become ``nn.Sequential(conv, bn[, act])`` with the same child names, so the
    exported graph's node names are those of the original model.
    """
    model = copy.deepcopy(model)

    def convert(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantConvBnAct):
                if child.bn is None:
                    setattr(parent, name, child.conv)
                    continue
                layers: OrderedDict[str, nn.Module] = OrderedDict(conv=child.conv, bn=child.bn)
                if child.act is not None:
                    layers["act"] = child.act
                setattr(parent, name, nn.Sequential(layers))
            elif isinstance(child, QuantLinear):
                setattr(parent, name, child.linear)
            elif isinstance(child, _InputQuant):
                delattr(parent, name)
            else:
                convert(child)

    convert(model)
    return model


class QuantizationAwareTraining(Callback):
    """Quantization-aware training as a drop-in Lightning callback.

    At ``setup`` it prepares ``pl_module.<attribute>`` (the whole LightningModule when
    ``attribute`` is None or missing) with :func:`prepare_qat`, before DDP wraps the model
    and before a checkpoint is restored (so the observers' buffers are there to restore).
    At the start of each training epoch it applies the schedule:

    * ``start_epoch``: fake quantization and observers on;
    * ``freeze_bn_epoch``: batch norm uses its running statistics from then on (folded);
    * ``freeze_observers_epoch``: activation ranges stop moving.

    The flags live in the model's buffers; the schedule is in this callback's state.
    """

    def __init__(
        self,
        start_epoch: int = 0,
        freeze_bn_epoch: int | None = None,
        freeze_observers_epoch: int | None = None,
        momentum: float = 0.01,
        attribute: str | None = "model",
        weight_bits: int = 8,
    ) -> None:
        for label, value in (
            ("freeze_bn_epoch", freeze_bn_epoch),
            ("freeze_observers_epoch", freeze_observers_epoch),
        ):
            if value is not None and value < start_epoch:
                raise QATError(f"{label}={value} is before start_epoch={start_epoch}")
        self.start_epoch = start_epoch
        self.freeze_bn_epoch = freeze_bn_epoch
        self.freeze_observers_epoch = freeze_observers_epoch
        self.momentum = momentum
        self.attribute = attribute
        _check_weight_bits(weight_bits)
        self.weight_bits = weight_bits

    def target(self, pl_module: LightningModule) -> nn.Module:
        """The module this callback quantizes."""
        if self.attribute and isinstance(getattr(pl_module, self.attribute, None), nn.Module):
            return getattr(pl_module, self.attribute)
        return pl_module

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        prepare_qat(self.target(pl_module), self.momentum, self.weight_bits)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        set_qat_state(
            self.target(pl_module),
            enabled=epoch >= self.start_epoch,
            bn_frozen=self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch,
            observers_frozen=self.freeze_observers_epoch is not None and epoch >= self.freeze_observers_epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "start_epoch": self.start_epoch,
            "freeze_bn_epoch": self.freeze_bn_epoch,
            "freeze_observers_epoch": self.freeze_observers_epoch,
            "momentum": self.momentum,
            "weight_bits": self.weight_bits,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start_epoch = state_dict["start_epoch"]
        self.freeze_bn_epoch = state_dict["freeze_bn_epoch"]
        self.freeze_observers_epoch = state_dict["freeze_observers_epoch"]
        self.momentum = state_dict["momentum"]
        self.weight_bits = state_dict.get("weight_bits", 8)  # checkpoints before 7-bit weights
