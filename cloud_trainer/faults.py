"""Fault injection and recovery timing, for recovery drills (the tests and ``bench/train.py``).

* :class:`KillRankAtStep` sends SIGKILL to one rank's own process when training reaches a
  global step, once: it records the kill in ``marker`` first, and a restarted attempt that
  finds the marker runs through. (Keyed on the marker rather than on the first attempt, a
  drill still happens when an earlier attempt failed for another reason.)
* :class:`RecoveryTimer` writes, in a restarted attempt, the seconds from that kill to the
  first training step after the restart (process start, imports, rendezvous, checkpoint
  load included) to ``<marker>.recovery``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

__all__ = ["KillRankAtStep", "RecoveryTimer"]


def _attempt() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


class KillRankAtStep(pl.Callback):
    """SIGKILL rank ``rank`` when ``global_step`` reaches ``step``, unless ``marker`` says it already did."""

    def __init__(self, step: int, rank: int = 1, marker: str = "kill.json") -> None:
        self.step = step
        self.rank = rank
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(json.dumps({"step": self.step, "rank": self.rank, "time": time.time()}))
            os.kill(os.getpid(), signal.SIGKILL)


class RecoveryTimer(pl.Callback):
    """In a restarted attempt, write the seconds from the recorded kill to the first step."""

    def __init__(self, marker: str = "kill.json") -> None:
        self.marker = Path(marker)
        self._done = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._done or _attempt() == 0 or not trainer.is_global_zero or not self.marker.exists():
            return
        self._done = True
        killed = json.loads(self.marker.read_text())
        record = {
            "recovery_s": time.time() - killed["time"],
            "killed_at_step": killed["step"],
            "resumed_at_step": trainer.global_step,
        }
        self.marker.with_suffix(".recovery.json").write_text(json.dumps(record))
