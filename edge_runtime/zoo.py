"""Where the reference models and the digits test split live on disk, and how to load them.

``bench/build_models.py`` (which needs torch) trains and exports the reference models
into a cache directory; this module finds them again with numpy and the standard library
only, so the device side, its tests and its benchmarks can use them without torch.

The cache directory is ``$EDGE_CACHE_DIR`` when set, else ``~/.cache/edge-runtime/models``.
It holds, per model NAME, ``NAME.onnx`` (float ONNX, opset 17, dynamic dim ``batch``) and
``NAME.json`` (input and output specs, parameter count, accuracy where measured, torch
version, seed), and ``digits_test.npz``: the held-out fifth of scikit-learn's digits
(``x`` float32 [360, 1, 8, 8] in [0, 1], ``y`` int64 [360]) that ``digits_cnn`` was
never trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ModelNotFoundError

__all__ = [
    "CACHE_ENV_VAR",
    "DIGITS_TEST_FILE",
    "MODEL_NAMES",
    "cache_dir",
    "digits_test_path",
    "load_digits_test",
    "model_metadata",
    "model_path",
]

CACHE_ENV_VAR = "EDGE_CACHE_DIR"
# The reference models bench/build_models.py knows how to build (cloud_trainer.models.MODELS).
MODEL_NAMES = ("digits_cnn", "mobilenet_v2", "resnet18", "minilm_encoder")
DIGITS_TEST_FILE = "digits_test.npz"
# The digits test split is written by the digits_cnn build, next to the model it scores.
_DIGITS_MODEL = "digits_cnn"


def cache_dir() -> Path:
    """The model cache: ``$EDGE_CACHE_DIR`` if set and not empty, else ``~/.cache/edge-runtime/models``.

    Read on every call (not at import), so a test or a process can redirect it by
    setting the variable. The directory is not created here: only a build writes.
    """
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "edge-runtime" / "models"


def _build_hint(name: str) -> str:
    return (
        f"build it with: python bench/build_models.py --only {name} (cache: {cache_dir()}, ${CACHE_ENV_VAR})"
    )


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ModelNotFoundError(f"no reference model {name!r}; the zoo has {', '.join(MODEL_NAMES)}")


def model_path(name: str) -> Path:
    """The cached float ONNX file of reference model ``name``.

    Raises :class:`~edge_runtime.errors.ModelNotFoundError` for a name the zoo does not
    know or a model not built yet; the message says which command builds it.
    """
    _check_name(name)
    path = cache_dir() / f"{name}.onnx"
    if not path.is_file():
        raise ModelNotFoundError(
            f"reference model {name!r} is not built ({path} missing); {_build_hint(name)}"
        )
    return path


def model_metadata(name: str) -> dict[str, Any]:
    """The JSON sidecar of reference model ``name``: input/output specs, parameters, accuracy, provenance."""
    _check_name(name)
    path = cache_dir() / f"{name}.json"
    if not path.is_file():
        raise ModelNotFoundError(
            f"reference model {name!r} has no metadata ({path} missing); {_build_hint(name)}"
        )
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def digits_test_path() -> Path:
    """The cached digits test split (``digits_test.npz``); raises ``ModelNotFoundError`` when not built."""
    path = cache_dir() / DIGITS_TEST_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"the digits test split is not built ({path} missing); {_build_hint(_DIGITS_MODEL)}"
        )
    return path


def load_digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The digits test split: ``x`` float32 [N, 1, 8, 8] in [0, 1] and ``y`` int64 [N].

    It is the same split ``digits_cnn``'s recorded accuracy was measured on, so a backend's
    accuracy on it compares directly with ``model_metadata("digits_cnn")["accuracy"]["test"]``.
    Raises ``ModelNotFoundError`` when the file is missing or not in this layout (a stale build).
    """
    path = digits_test_path()
    with np.load(path, allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    if (
        x.dtype != np.float32
        or x.ndim != 4
        or x.shape[1:] != (1, 8, 8)
        or y.dtype != np.int64
        or y.shape != x.shape[:1]
    ):
        raise ModelNotFoundError(
            f"{path} holds x {x.dtype}{list(x.shape)} and y {y.dtype}{list(y.shape)}, not float32 [N, 1, 8, 8] "
            f"and int64 [N]; rebuild it with: python bench/build_models.py --only {_DIGITS_MODEL} --force"
        )
    return x, y
