"""Training benchmark (issue 6): QAT and 2:4 accuracy, gradient compression, scaling, recovery.

    .venv/bin/python bench/train.py [--epochs 12] [--quick]

On the digits CNN with fixed seeds:

1. test top-1 of float training, INT8 QAT and INT8 QAT + 2:4 (single process; the INT8
   figures are the exported package run by the native backend);
2. per gradient compressor (none, fp16, PowerSGD rank 1/2/4, top-k 1%), 2 gloo processes:
   test top-1 and the bytes one rank handed to collectives per step (counted by the hooks);
3. throughput of 1 vs 2 processes (samples per second, uncompressed);
4. recovery time after SIGKILL of one rank under torchrun --max-restarts.

Writes bench/results/train.json and the "Training" section of BENCHMARKS.md. Each
distributed run is a torchrun job running this file with ``--worker``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "train.json"
TORCHRUN = Path(sys.executable).with_name("torchrun")
COMPRESSORS: list[dict[str, Any]] = [
    {"label": "none", "method": "none"},
    {"label": "fp16", "method": "fp16"},
    {"label": "PowerSGD r1", "method": "powersgd", "rank": 1},
    {"label": "PowerSGD r2", "method": "powersgd", "rank": 2},
    {"label": "PowerSGD r4", "method": "powersgd", "rank": 4},
    {"label": "top-k 1%", "method": "topk", "ratio": 0.01},
]


def _trainer(epochs: int, callbacks: list, **kwargs: Any) -> Any:
    import pytorch_lightning as pl

    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks, **kwargs,
    )  # fmt: skip


def _test_accuracy(module: Any) -> float:
    import torch

    from cloud_trainer.data import load_digits_splits

    test = load_digits_splits().test
    module.eval()
    with torch.no_grad():
        logits = module.model(torch.from_numpy(test.x))
    return float((logits.argmax(1).numpy() == test.y).mean())


def accuracy_runs(epochs: int, work: Path) -> dict[str, Any]:
    """Float, QAT and QAT + 2:4, one process each; INT8 through export + the native backend."""
    import pytorch_lightning as pl

    from cloud_trainer.export import export_package
    from cloud_trainer.lightning import DigitsDataModule, ImageClassifier
    from cloud_trainer.qat import QuantizationAwareTraining
    from cloud_trainer.sparsity import TwoFourSparsity

    q_start, bn_freeze, obs_freeze, sparse_start = epochs // 6, epochs * 2 // 3, epochs * 5 // 6, epochs // 3
    setups = {
        "float": [],
        "int8_qat": [QuantizationAwareTraining(q_start, bn_freeze, obs_freeze)],
        "int8_qat_2_4": [
            QuantizationAwareTraining(q_start, bn_freeze, obs_freeze),
            TwoFourSparsity(sparse_start),
        ],
    }
    out: dict[str, Any] = {}
    for name, callbacks in setups.items():
        pl.seed_everything(0, verbose=False)
        module = ImageClassifier(max_epochs=epochs)
        trainer = _trainer(epochs, callbacks, devices=1)
        start = time.perf_counter()
        trainer.fit(module, DigitsDataModule())
        row: dict[str, Any] = {
            "train_s": round(time.perf_counter() - start, 1),
            "torch_top1": _test_accuracy(module),
        }
        if callbacks:
            ckpt = work / f"{name}.ckpt"
            trainer.save_checkpoint(ckpt)
            result = export_package(ckpt, work / f"{name}.edgepkg", progress=False)
            row.update(
                native_int8_top1=result.metrics["int8"]["top1"],
                native_vs_qat_agreement=result.metrics["native_vs_qat_top1_agreement"],
                sparse_layers=result.sparse_layers,
            )
        out[name] = row
        print(f"{name}: {row}", file=sys.stderr)
    return out


def worker(args: argparse.Namespace) -> None:
    """One distributed run (under torchrun): train, then rank 0 writes accuracy, bytes and speed."""
    import pytorch_lightning as pl

    from cloud_trainer.comm import GradientCompression
    from cloud_trainer.lightning import DigitsDataModule, ImageClassifier

    spec = json.loads(args.worker)
    pl.seed_everything(0, verbose=False)
    compression = GradientCompression(
        spec["method"],
        rank=spec.get("rank", 2),
        ratio=spec.get("ratio", 0.01),
        start_iter=spec.get("start_iter", 10),
    )
    trainer = _trainer(
        args.epochs, [compression], devices=int(os.environ.get("WORLD_SIZE", "1")), strategy="ddp"
    )
    module = ImageClassifier(max_epochs=args.epochs)
    dm = DigitsDataModule()
    start = time.perf_counter()
    trainer.fit(module, dm)
    seconds = time.perf_counter() - start
    if trainer.is_global_zero:
        steps = trainer.global_step
        world = trainer.world_size
        counter = compression.counter
        warmup = spec.get("start_iter", 10) if spec["method"] == "powersgd" else 0
        Path(args.out).write_text(
            json.dumps(
                {
                    "top1": _test_accuracy(module),
                    "bytes_per_step": counter.mean_per_step(skip=warmup) if counter.per_step else None,
                    "steps": steps,
                    "world": world,
                    "samples_per_s": steps * dm.batch_size * world / seconds,
                }
            )
        )


def _torchrun(nproc: int, extra: list[str], cwd: Path, restarts: int = 0) -> None:
    cmd = [
        str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "--max-restarts", str(restarts),
        "--monitor-interval", "0.2", *extra,
    ]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}  # fmt: skip
    proc = subprocess.run(
        cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=1800, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{proc.stderr[-3000:]}")


def compression_runs(epochs: int, work: Path) -> dict[str, Any]:
    out = {}
    for spec in COMPRESSORS:
        path = work / f"compress-{spec['label'].replace(' ', '_').replace('%', '')}.json"
        _torchrun(
            2, [__file__, "--worker", json.dumps(spec), "--epochs", str(epochs), "--out", str(path)], work
        )
        out[spec["label"]] = json.loads(path.read_text())
        print(f"{spec['label']}: {out[spec['label']]}", file=sys.stderr)
    return out


def scaling_run(epochs: int, work: Path) -> dict[str, Any]:
    path = work / "one-process.json"
    _torchrun(
        1,
        [__file__, "--worker", json.dumps({"method": "none"}), "--epochs", str(epochs), "--out", str(path)],
        work,
    )
    return json.loads(path.read_text())


def recovery_run(work: Path) -> dict[str, Any]:
    config = work / "recovery.yaml"
    marker = work / "kill.json"
    config.write_text(
        (ROOT / "tests" / "trainer" / "test_crash_recovery.py").read_text().split('CONFIG = """')[1].split('"""')[0]
        .format(max_steps=40, ckpt=work / "ckpt", every=5, extra=f"""    - class_path: cloud_trainer.faults.KillRankAtStep
      init_args: {{step: 27, rank: 1, marker: {marker}}}
    - class_path: cloud_trainer.faults.RecoveryTimer
      init_args: {{marker: {marker}}}""")
    )  # fmt: skip
    _torchrun(2, ["-m", "cloud_trainer.cli", "train", "fit", "--config", str(config)], work, restarts=1)
    return json.loads(marker.with_suffix(".recovery.json").read_text())


def report(results: dict[str, Any]) -> str:
    acc = results["accuracy"]
    lines = [
        (
            f"Digits CNN, scikit-learn digits test split (360 images), seed 0, {results['epochs']} epochs; "
            f"{results['machine']}. Command: `{results['command']}`."
        ),
        "",
        "| model | torch top-1 | native INT8 top-1 | native/QAT agreement |",
        "|---|---|---|---|",
    ]
    for name in ("float", "int8_qat", "int8_qat_2_4"):
        row = acc[name]
        native = f"{row['native_int8_top1']:.4f}" if "native_int8_top1" in row else "-"
        agree = f"{row['native_vs_qat_agreement']:.4f}" if "native_vs_qat_agreement" in row else "-"
        lines.append(f"| {name} | {row['torch_top1']:.4f} | {native} | {agree} |")
    comp = results["compression"]
    base = comp["none"]["bytes_per_step"]
    lines += ["", "Gradient compression, 2 gloo processes (bytes one rank hands to collectives per step, counted):", "",
              "| compressor | top-1 | bytes/step | reduction vs none |", "|---|---|---|---|"]  # fmt: skip
    for label, row in comp.items():
        lines.append(
            f"| {label} | {row['top1']:.4f} | {row['bytes_per_step']:.0f} | {base / row['bytes_per_step']:.1f}x |"
        )
    one, two = results["scaling"], comp["none"]
    lines += ["", (f"Throughput: 1 process {one['samples_per_s']:.0f} samples/s, 2 processes "
                   f"{two['samples_per_s']:.0f} samples/s (one machine, 2 shared cores).")]  # fmt: skip
    rec = results["recovery"]
    lines += [(f"Recovery after SIGKILL of rank 1 at step {rec['killed_at_step']} (torchrun --max-restarts 1): "
               f"training again at step {rec['resumed_at_step']} after {rec['recovery_s']:.1f} s.")]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from bench._report import machine_description, update_section

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {
            "epochs": args.epochs,
            "machine": machine_description(),
            "command": "python bench/train.py " + " ".join(sys.argv[1:]),
            "accuracy": accuracy_runs(args.epochs, work),
            "compression": compression_runs(args.epochs, work),
            "scaling": scaling_run(args.epochs, work),
            "recovery": recovery_run(work),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    text = report(results)
    update_section("Training", text)
    print(text)


if __name__ == "__main__":
    main()
