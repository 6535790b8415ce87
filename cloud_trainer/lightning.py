"""The LightningModule base, the built-in tasks' data, and crash-recovery helpers.

* :class:`EdgeModule` -- a LightningModule around one ``nn.Module`` (``self.model``) with
  its input/output specs: what export needs. Subclass it for a new task.
* :class:`ImageClassifier` -- the built-in classification task (digits CNN, MobileNetV2).
* :class:`DigitsDataModule` / :class:`SyntheticImagesDataModule` -- scikit-learn's digits
  (seeded split of :mod:`cloud_trainer.data`) and seeded synthetic images.
* :class:`ResumableBatches` -- a deterministic, rank-sharded batch iterator that resumes in
  the middle of an epoch: the batches of epoch ``e`` are a pure function of ``(seed, e)``,
  and after a restart it skips the ones the restored ``global_step`` says were done. With
  fixed seeds and deterministic kernels a run killed and resumed from a checkpoint ends
  with the same weights as one never interrupted.
* :class:`SaveOnException` and :func:`resume_checkpoint` -- the recovery side.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from cloud_trainer.data import Split, load_digits_splits, make_synthetic_images
from cloud_trainer.errors import CheckpointError, TrainConfigError
from cloud_trainer.models import TensorSpec, build_model

__all__ = [
    "DigitsDataModule",
    "EdgeModule",
    "ImageClassifier",
    "ResumableBatches",
    "SaveOnException",
    "SyntheticImagesDataModule",
    "resume_checkpoint",
]

log = logging.getLogger(__name__)


class EdgeModule(pl.LightningModule):
    """A LightningModule that owns the network to deploy as ``self.model``.

    The QAT, sparsity and export tools act on ``self.model``; ``input_specs`` and
    ``output_specs`` (from the model when it has them) name the package's tensors.
    Subclasses implement ``training_step``/``validation_step`` as usual.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.model(*inputs)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(getattr(self.model, "input_specs", ()))

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(getattr(self.model, "output_specs", ()))

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        return self.model.example_inputs(batch)  # type: ignore[operator]


class ImageClassifier(EdgeModule):
    """Cross-entropy classification of one of the reference models (``cloud_trainer.models``).

    ``model_name`` is a zoo name (``digits_cnn``, ``mobilenet_v2``); ``model_args`` go to its
    constructor (``num_classes``, ``width_mult``, ``image_size``...). Adam with a cosine
    decay over ``max_epochs``; logs ``train_loss``, ``val_loss`` and ``val_acc``.
    """

    def __init__(
        self,
        model_name: str = "digits_cnn",
        model_args: dict[str, Any] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        max_epochs: int = 20,
        seed: int = 0,
    ) -> None:
        super().__init__(build_model(model_name, seed=seed, **(model_args or {})))
        self.save_hyperparameters()
        self.loss = nn.CrossEntropyLoss()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self.model(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        # An explicit batch size weights the epoch mean by samples (the last batch may be short).
        n = int(y.shape[0])
        self.log("val_loss", self.loss(logits, y), prog_bar=False, sync_dist=True, batch_size=n)
        self.log(
            "val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, sync_dist=True, batch_size=n
        )

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, self.hparams.max_epochs)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


# --------------------------------------------------------------------------- data


class ResumableBatches:
    """Batches of in-memory tensors in a seeded order, sharded across DDP ranks, resumable mid-epoch.

    Epoch ``e`` uses the permutation ``default_rng((seed, e))`` of the samples (or the samples
    in order when ``shuffle`` is False), cut into ``steps`` global batches of
    ``batch_size * world`` samples (the last partial one dropped in training); rank ``r`` gets
    the ``r``-th slice of each. ``position`` returns the number of optimizer steps already
    done (the trainer's ``global_step``): iteration starts at the step it points to inside
    the epoch, so a restart from a mid-epoch checkpoint replays exactly the missing batches.
    Implements ``state_dict``/``load_state_dict`` so that Lightning treats it as resumable.
    """

    def __init__(
        self,
        data: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = True,
        position: Callable[[], int] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise TrainConfigError(f"batch_size must be positive, got {batch_size}")
        self.x = torch.from_numpy(np.ascontiguousarray(data.x))
        self.y = torch.from_numpy(np.ascontiguousarray(data.y))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.position = position
        self.epoch = 0

    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._world()
        global_batch = self.batch_size * world
        n = len(self.y)
        return n // global_batch if self.drop_last else math.ceil(n / global_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, world = self._world()
        steps = len(self)
        done = self.position() if self.position is not None else self.epoch * steps
        epoch, start = (done // steps, done % steps) if steps else (0, 0)
        self.epoch = epoch
        n = len(self.y)
        order = np.random.default_rng((self.seed, epoch)).permutation(n) if self.shuffle else np.arange(n)
        global_batch = self.batch_size * world
        for step in range(start, steps):
            chunk = order[step * global_batch : (step + 1) * global_batch]
            mine = torch.from_numpy(np.array_split(chunk, world)[rank])
            yield self.x[mine], self.y[mine]
        if self.position is None:
            self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict.get("seed", self.seed)


class _ArrayDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int, seed: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self.train: Split | None = None
        self.val: Split | None = None
        self.test: Split | None = None

    def _position(self) -> int:
        return int(self.trainer.global_step) if self.trainer is not None else 0

    def train_dataloader(self) -> ResumableBatches:
        assert self.train is not None
        return ResumableBatches(
            self.train, self.batch_size, shuffle=True, seed=self.seed, position=self._position
        )

    def val_dataloader(self) -> ResumableBatches:
        assert self.val is not None
        return ResumableBatches(self.val, 256, shuffle=False, drop_last=False)

    def test_dataloader(self) -> ResumableBatches:
        assert self.test is not None
        return ResumableBatches(self.test, 256, shuffle=False, drop_last=False)


class DigitsDataModule(_ArrayDataModule):
    """scikit-learn's digits, split 70/10/20 by :func:`cloud_trainer.data.load_digits_splits`."""

    def __init__(self, batch_size: int = 32, seed: int = 0, split_seed: int = 0) -> None:
        super().__init__(batch_size, seed)
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.train is None:
            splits = load_digits_splits(self.split_seed)
            self.train, self.val, self.test = splits.train, splits.val, splits.test


class SyntheticImagesDataModule(_ArrayDataModule):
    """Seeded synthetic images (:func:`cloud_trainer.data.make_synthetic_images`) for the MobileNetV2-shaped task."""

    def __init__(
        self,
        train_size: int = 256,
        val_size: int = 64,
        test_size: int = 64,
        image_size: int = 64,
        num_classes: int = 10,
        noise: float = 0.5,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, seed)
        self.sizes = (train_size, val_size, test_size)
        self.image_size = image_size
        self.num_classes = num_classes
        self.noise = noise

    def setup(self, stage: str | None = None) -> None:
        if self.train is None:
            total = sum(self.sizes)
            data = make_synthetic_images(
                total,
                num_classes=self.num_classes,
                image_size=self.image_size,
                noise=self.noise,
                seed=self.seed,
            )
            a, b = self.sizes[0], self.sizes[0] + self.sizes[1]
            self.train = Split(data.x[:a], data.y[:a])
            self.val = Split(data.x[a:b], data.y[a:b])
            self.test = Split(data.x[b:], data.y[b:])


# --------------------------------------------------------------------------- recovery


class SaveOnException(pl.Callback):
    """Write ``<dirpath>/on_exception.ckpt`` when training raises, in a single-process run.

    Under DDP an exception usually means a peer died in the middle of a collective: the
    barrier that saving needs would fail too, so the periodic checkpoints are the recovery
    points there and this callback only logs.
    """

    def __init__(self, dirpath: str | Path = "checkpoints") -> None:
        self.dirpath = Path(dirpath)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.world_size > 1:
            log.error(
                "training failed on rank %d (%s); resume from the last periodic checkpoint",
                trainer.global_rank,
                exception,
            )
            return
        path = self.dirpath / "on_exception.ckpt"
        self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path)
        log.error("training failed (%s); state saved to %s", exception, path)

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": str(self.dirpath)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dirpath = Path(state_dict.get("dirpath", self.dirpath))


def resume_checkpoint(dirpath: str | Path) -> Path | None:
    """The checkpoint to resume from in ``dirpath``: the newer (by global step) of
    ``last.ckpt`` and ``on_exception.ckpt``, or None when there is neither."""
    best: tuple[int, Path] | None = None
    for name in ("last.ckpt", "on_exception.ckpt"):
        path = Path(dirpath) / name
        if not path.exists():
            continue
        try:
            step = int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", 0))
        except Exception as exc:  # noqa: BLE001 - a torn file: say which, try the other
            log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
            continue
        if best is None or step > best[0]:
            best = (step, path)
    if best is None and any(Path(dirpath).glob("*.ckpt")):
        raise CheckpointError(
            f"{dirpath} holds checkpoints but none named last.ckpt or on_exception.ckpt is readable"
        )
    return None if best is None else best[1]
