"""Crash recovery under torchrun: one rank SIGKILLed mid-epoch, the job restarts and resumes.

Two gloo processes train the digits CNN with QAT and top-k gradient compression (whose
error-feedback residuals must come back from the checkpoint for the run to be exact).
Rank 1 kills itself at step 17, between the checkpoints of steps 15 and 20; torchrun
restarts both ranks, which resume from step 15. With fixed seeds and deterministic kernels
the final weights equal those of a run never interrupted. ``--max-restarts 2`` leaves room
for an attempt that fails for a reason of the shared machine (a gloo connection) before the
drill: the drill still happens once (KillRankAtStep keys on its marker file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_lightning")

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
MAX_STEPS = 30
CHECKPOINT_EVERY = 5
KILL_AT = 17

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 2
  strategy: ddp
  max_steps: {max_steps}
  deterministic: true
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
  num_sanity_val_steps: 0
  limit_val_batches: 0
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{dirpath: {ckpt}, every_n_train_steps: {every}, save_last: true, save_top_k: 0}}
    - class_path: cloud_trainer.qat.QuantizationAwareTraining
      init_args: {{start_epoch: 0, freeze_bn_epoch: 1}}
    - class_path: cloud_trainer.comm.GradientCompression
      init_args: {{method: topk, ratio: 0.05}}
{extra}
model:
  class_path: cloud_trainer.lightning.ImageClassifier
  init_args: {{model_name: digits_cnn, max_epochs: 2}}
data:
  class_path: cloud_trainer.lightning.DigitsDataModule
  init_args: {{batch_size: 32}}
"""

FAULTS = """    - class_path: cloud_trainer.faults.KillRankAtStep
      init_args: {{step: {kill}, rank: 1, marker: {marker}}}
    - class_path: cloud_trainer.faults.RecoveryTimer
      init_args: {{marker: {marker}}}"""


def _run(tmp: Path, name: str, crash: bool) -> tuple[dict, Path]:
    work = tmp / name
    work.mkdir()
    ckpt = work / "checkpoints"
    marker = work / "kill.json"
    extra = FAULTS.format(kill=KILL_AT, marker=marker) if crash else ""
    config = work / "config.yaml"
    config.write_text(CONFIG.format(max_steps=MAX_STEPS, ckpt=ckpt, every=CHECKPOINT_EVERY, extra=extra))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
    }
    cmd = [
        str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--max-restarts", "2", "--monitor-interval", "0.2",
        "-m", "cloud_trainer.cli", "train", "fit", "--config", str(config),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert not crash or marker.exists(), f"the fault was never injected:\n{proc.stderr[-6000:]}"
    state = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=False)
    return state, work


@pytest.mark.skipif(not TORCHRUN.exists(), reason="needs torchrun next to the interpreter")
def test_killed_rank_resumes_to_the_same_weights(tmp_path: Path) -> None:
    reference, _ = _run(tmp_path, "uninterrupted", crash=False)
    crashed, work = _run(tmp_path, "crashed", crash=True)

    recovery = json.loads((work / "kill.recovery.json").read_text())
    assert recovery["killed_at_step"] == KILL_AT
    assert (
        recovery["resumed_at_step"] == KILL_AT // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    )  # from the last checkpoint
    assert recovery["recovery_s"] < 60
    print(f"recovery after SIGKILL: {recovery['recovery_s']:.1f} s")

    assert crashed["global_step"] == reference["global_step"] == MAX_STEPS
    for key, want in reference["state_dict"].items():
        have = crashed["state_dict"][key]
        assert torch.equal(have, want), f"{key} differs after recovery"
    # The top-k residuals were restored too (they shaped every step after the restart).
    assert len(crashed["callbacks"]["GradientCompression"]["hook_state"]["per_rank"]) == 2
