"""A Lightning callback that prints one line per epoch (rank 0), for ``edge demo``'s training step.

Imported only inside the trainer's processes (it needs pytorch_lightning), via the
demo's generated LightningCLI config::

    - class_path: cloud_trainer.progress.EpochProgress
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl

__all__ = ["EpochProgress"]


class EpochProgress(pl.Callback):
    """``[train] epoch 3/8  train_loss 0.21  val_acc 0.981  QAT on, 2:4 on  (2.1s)`` on stdout, flushed."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = [f"[train] epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key in ("train_loss", "val_acc"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.3f}")
        parts.append(self._phase(trainer))
        parts.append(f"ranks {trainer.world_size}")
        parts.append(f"({time.monotonic() - self._start:.1f}s)")
        print("  ".join(parts), file=sys.stdout, flush=True)

    @staticmethod
    def _phase(trainer: pl.Trainer) -> str:
        epoch = trainer.current_epoch
        states = []
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            kind: Any = type(cb).__name__
            start = getattr(cb, "start_epoch", None)
            if kind == "QuantizationAwareTraining" and start is not None:
                states.append(f"QAT {'on' if epoch >= start else 'off'}")
            elif kind == "TwoFourSparsity" and start is not None:
                states.append(f"2:4 {'on' if epoch >= start else 'off'}")
        return ", ".join(states) or "float"
