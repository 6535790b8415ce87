"""2:4 structured sparsity: magnitude masks along the reduction dimension, and a Lightning callback.

The native 2:4 kernels (DESIGN section 4) keep at most 2 non-zeros in every group of 4
consecutive weights of an output channel *in the order the kernel walks K*:

* ``nn.Linear`` ``[N, K]``: K as stored;
* ``nn.Conv2d`` ``[M, C, kh, kw]``: the im2col order of one group, ``kh x kw x C`` (the
  weights seen as ``[M, kh, kw, C]``), as :func:`edge_runtime.quantize.pipeline.prune_model_2_4`.

:func:`mask_2_4` is :func:`edge_runtime.kernels.sparse.prune_2_4` in torch (keep the 2
largest ``|w|`` of each group, ties to the lower index). Layers carry 2:4 when their
reduction is at least ``MIN_SPARSE_K`` long (the threshold of the runtime's pipeline) and
the conv is not grouped; the classifier head (the last ``nn.Linear``) stays dense by default.

The recipe is one-shot-then-retrain (Mishra et al. 2021): train dense, compute the masks
once at ``start_epoch``, then keep training with the masks re-applied after every
optimizer step. Masks are the callback's state, so they are in checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import nn

from cloud_trainer.errors import SparsityError

__all__ = ["MIN_SPARSE_K", "TwoFourSparsity", "eligible_layers", "is_2_4", "mask_2_4", "reduction_rows"]

# The runtime's threshold (edge_runtime.quantize.pipeline.MIN_SPARSE_K), kept here as a
# literal so that this module does not import onnx; a test checks that they agree.
MIN_SPARSE_K = 16


def reduction_rows(weight: torch.Tensor) -> torch.Tensor:
    """The weights as ``[out, K]`` rows in the kernels' K order (a view or copy; see the module docstring)."""
    if weight.ndim == 4:
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    if weight.ndim == 2:
        return weight
    raise SparsityError(f"2:4 needs a 2-D or 4-D weight, got shape {tuple(weight.shape)}")


def _from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 4:
        m, c, kh, kw = shape
        return rows.reshape(m, kh, kw, c).permute(0, 3, 1, 2).contiguous()
    return rows.reshape(shape)


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask of ``weight``'s shape keeping the 2 largest ``|w|`` of every group of 4 along K."""
    rows = reduction_rows(weight.detach()).to(torch.float64)
    k = rows.shape[1]
    pad = (-k) % 4
    if pad:
        rows = torch.cat([rows, torch.zeros(rows.shape[0], pad, dtype=rows.dtype)], dim=1)
    groups = rows.abs().reshape(rows.shape[0], -1, 4)
    order = torch.argsort(-groups, dim=-1, stable=True)  # the lower index first on ties
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :2], True)
    keep = keep.reshape(rows.shape[0], -1)[:, :k]
    return _from_rows(keep, weight.shape)


def is_2_4(weight: torch.Tensor) -> bool:
    """True when every group of 4 along K has at most 2 non-zeros."""
    rows = reduction_rows(weight.detach())
    pad = (-rows.shape[1]) % 4
    if pad:
        rows = torch.cat([rows, torch.zeros(rows.shape[0], pad, dtype=rows.dtype)], dim=1)
    return bool(((rows.reshape(rows.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def eligible_layers(
    model: nn.Module, *, skip_last_linear: bool = True, exclude: tuple[str, ...] = ()
) -> dict[str, nn.Module]:
    """The conv and linear layers of ``model`` that can carry 2:4, by qualified name."""
    layers: dict[str, nn.Module] = {}
    last_linear = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last_linear = name
            if m.in_features >= MIN_SPARSE_K:
                layers[name] = m
        elif (
            isinstance(m, nn.Conv2d)
            and m.groups == 1
            and m.in_channels * m.kernel_size[0] * m.kernel_size[1] >= MIN_SPARSE_K
        ):
            layers[name] = m
    if skip_last_linear and last_linear is not None:
        layers.pop(last_linear, None)
    for name in exclude:
        layers.pop(name, None)
    return layers


class TwoFourSparsity(Callback):
    """One-shot 2:4 magnitude pruning at ``start_epoch``, then fine-tuning with the masks held.

    ``attribute`` names the submodule of the LightningModule to prune (the whole module
    when None or missing). Masks are computed on every rank from the same (DDP-synchronized)
    weights, so they agree without communication. After each optimizer step the masked
    weights are zeroed again, so optimizer momentum cannot revive them.
    """

    def __init__(
        self,
        start_epoch: int = 1,
        skip_last_linear: bool = True,
        exclude: tuple[str, ...] = (),
        attribute: str | None = "model",
    ) -> None:
        self.start_epoch = start_epoch
        self.skip_last_linear = skip_last_linear
        self.exclude = tuple(exclude)
        self.attribute = attribute
        self.masks: dict[str, torch.Tensor] = {}

    def target(self, pl_module: LightningModule) -> nn.Module:
        if self.attribute and isinstance(getattr(pl_module, self.attribute, None), nn.Module):
            return getattr(pl_module, self.attribute)
        return pl_module

    def _layers(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        return eligible_layers(
            self.target(pl_module), skip_last_linear=self.skip_last_linear, exclude=self.exclude
        )

    @torch.no_grad()
    def apply_masks(self, pl_module: LightningModule) -> None:
        """Zero the pruned weights (after a step, after loading a checkpoint)."""
        layers = self._layers(pl_module)
        for name, mask in self.masks.items():
            layer = layers.get(name)
            if layer is None or layer.weight.shape != mask.shape:
                raise SparsityError(
                    f"2:4 mask for {name!r} does not fit the model (layer missing or reshaped)"
                )
            layer.weight.mul_(mask.to(layer.weight.dtype))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch >= self.start_epoch and not self.masks:
            self.masks = {name: mask_2_4(layer.weight) for name, layer in self._layers(pl_module).items()}
            if not self.masks:
                raise SparsityError("no layer of the model can carry 2:4 sparsity")
        if self.masks:
            self.apply_masks(pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.masks:
            self.apply_masks(pl_module)

    def sparse_layer_names(self) -> list[str]:
        return sorted(self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {
            "start_epoch": self.start_epoch,
            "skip_last_linear": self.skip_last_linear,
            "exclude": list(self.exclude),
            "masks": {name: mask.clone() for name, mask in self.masks.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start_epoch = state_dict["start_epoch"]
        self.skip_last_linear = state_dict["skip_last_linear"]
        self.exclude = tuple(state_dict["exclude"])
        self.masks = {name: mask.to(torch.bool) for name, mask in state_dict["masks"].items()}
