"""Train and export the reference models into the model cache (needs torch: the ``trainer`` extra).

    python bench/build_models.py                      # all four, skipping what is cached
    python bench/build_models.py --only digits_cnn    # one model (repeat --only for more)
    python bench/build_models.py --force --out /tmp/models

Writes into the cache directory (``edge_runtime.zoo.cache_dir()``: ``$EDGE_CACHE_DIR``,
else ``~/.cache/edge-runtime/models``), per model NAME:

  NAME.onnx   float ONNX, opset 17, TorchScript exporter, dynamic dim "batch", batch norm kept
  NAME.json   input/output specs, parameter count, onnxruntime-vs-torch max abs difference,
              torch version, seed; for digits_cnn the train/val/test accuracy

and for digits_cnn also digits_cnn.pt (the trained state_dict, for fine-tuning) and
digits_test.npz (x float32 [360,1,8,8], y int64 [360]: the test split it never saw).

digits_cnn is trained here on scikit-learn's digits (Adam, cosine decay, fixed seeds,
deterministic; a few seconds on two cores) and the build fails below 97% test accuracy.
mobilenet_v2, resnet18 and minilm_encoder keep their seeded random initialization: they
are for speed and numerics, not accuracy. Every export is checked with onnx.checker and
run on onnxruntime against torch at batch 1 and 2; a difference beyond 1e-4 (plus 1e-4
relative) fails the build. A model is rebuilt only when NAME.onnx or NAME.json is
missing, or with --force.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.zoo import DIGITS_TEST_FILE, MODEL_NAMES, cache_dir

MIN_DIGITS_TEST_ACCURACY = 0.97
CHECK_BATCH_SIZES = (1, 2)
DIGITS_TRAINING = {"optimizer": "Adam", "schedule": "cosine", "lr": 3e-3, "batch_size": 32}


class BuildError(RuntimeError):
    """A build that produced a model we must not cache: too inaccurate, or an export that does not match torch."""


def _log(name: str) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(f"[{name}] {message}", flush=True)

    return log


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: the sidecar is written last and marks a complete build."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _is_cached(out: Path, name: str) -> bool:
    files = [out / f"{name}.onnx", out / f"{name}.json"]
    if name == "digits_cnn":
        files.append(out / DIGITS_TEST_FILE)
    return all(f.is_file() for f in files)


def _export_and_check(model: Any, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Export to NAME.onnx, check it, and return the sidecar fields every model shares."""
    import onnx
    import torch

    from cloud_trainer.models import ONNX_OPSET, compare_with_onnxruntime, count_parameters, export_onnx

    path = out / f"{model.name}.onnx"
    start = time.perf_counter()
    export_onnx(model, path)
    log(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    diff = compare_with_onnxruntime(model, path, batch_sizes=CHECK_BATCH_SIZES)
    log(
        f"onnxruntime vs torch at batch {CHECK_BATCH_SIZES}: max abs diff {diff:.2e} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return {
        "name": model.name,
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "opset": ONNX_OPSET,
        "exporter": "torch.onnx.export, TorchScript (dynamo=False), batch norm kept",
        "inputs": [spec.to_dict() for spec in model.input_specs],
        "outputs": [spec.to_dict() for spec in model.output_specs],
        "parameters": count_parameters(model),
        "onnxruntime_check": {"batch_sizes": list(CHECK_BATCH_SIZES), "max_abs_diff": diff},
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def build_digits_cnn(out: Path, epochs: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Train DigitsCNN, write digits_test.npz and digits_cnn.pt, export and check; fail below the accuracy floor."""
    import torch

    from cloud_trainer.data import DIGITS_SPLIT_FRACTIONS, load_digits_splits
    from cloud_trainer.models import DigitsCNN, accuracy, fit_classifier

    data = load_digits_splits(seed=seed)
    log(f"digits: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test (seed {seed})")
    model = DigitsCNN(seed=seed)
    fit = fit_classifier(
        model,
        data.train,
        data.val,
        epochs=epochs,
        batch_size=DIGITS_TRAINING["batch_size"],
        lr=DIGITS_TRAINING["lr"],
        seed=seed,
        log=log,
    )
    scores = {split: accuracy(model, getattr(data, split)) for split in ("train", "val", "test")}
    log(f"trained in {fit.seconds:.1f} s: test accuracy {scores['test']:.4f} (val {scores['val']:.4f})")
    if scores["test"] < MIN_DIGITS_TEST_ACCURACY:
        raise BuildError(
            f"digits_cnn reached {scores['test']:.4f} test accuracy, below {MIN_DIGITS_TEST_ACCURACY}; not cached"
        )

    np.savez(out / DIGITS_TEST_FILE, x=data.test.x, y=data.test.y)
    torch.save(model.state_dict(), out / "digits_cnn.pt")
    meta = _export_and_check(model, out, log)
    meta.update(
        weights="trained",
        seed=seed,
        accuracy=scores,
        dataset={
            "name": "scikit-learn digits (load_digits), pixels / 16",
            "split": "stratified per class, numpy default_rng(seed)",
            "fractions": list(DIGITS_SPLIT_FRACTIONS),
            "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "test_file": DIGITS_TEST_FILE,
        },
        training={**DIGITS_TRAINING, "epochs": epochs, "seconds": round(fit.seconds, 2)},
        state_dict="digits_cnn.pt",
    )
    return meta


def build_untrained(name: str, out: Path, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Export a model with its seeded random weights (no data could train it to meaning offline)."""
    from cloud_trainer.models import build_model

    model = build_model(name, seed=seed)
    meta = _export_and_check(model, out, log)
    meta.update(weights="seeded random initialization (cloud_trainer.models.init_parameters)", seed=seed)
    for attr in ("num_classes", "image_size", "vocab_size", "seq_len", "hidden"):
        if hasattr(model, attr):
            meta[attr] = getattr(model, attr)
    return meta


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_models.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="cache directory (default: $EDGE_CACHE_DIR or ~/.cache/edge-runtime/models)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=MODEL_NAMES,
        metavar="NAME",
        help=f"build only this model (repeatable); one of {', '.join(MODEL_NAMES)}",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the files are cached")
    parser.add_argument("--epochs", type=int, default=30, help="digits_cnn training epochs (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="weights, split and shuffling seed (default 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    # Deterministic kernels for the training; restored on return, for callers such as tests.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _build(args)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _build(args: argparse.Namespace) -> int:
    import torch

    out = (args.out or cache_dir()).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(MODEL_NAMES)
    print(
        f"building {', '.join(names)} into {out} (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        flush=True,
    )
    failed = []
    for name in names:
        log = _log(name)
        if not args.force and _is_cached(out, name):
            log(f"cached, skipping (--force rebuilds): {out / (name + '.onnx')}")
            continue
        start = time.perf_counter()
        try:
            if name == "digits_cnn":
                meta = build_digits_cnn(out, args.epochs, args.seed, log)
            else:
                meta = build_untrained(name, out, args.seed, log)
        except Exception as exc:  # noqa: BLE001 - report every model: one failure must not hide the rest.
            log(f"FAILED: {type(exc).__name__}: {exc}")
            (out / f"{name}.json").unlink(missing_ok=True)  # No sidecar: the model counts as not built.
            failed.append(name)
            continue
        meta["build_seconds"] = round(time.perf_counter() - start, 2)
        _write_json(out / f"{name}.json", meta)
        log(f"done in {meta['build_seconds']:.1f} s: {meta['parameters']:,} parameters")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
