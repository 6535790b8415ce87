"""Cloud trainer: the reference models, their data and (later) Lightning training with QAT and 2:4 sparsity.

Names are imported lazily (PEP 562), so that ``import cloud_trainer`` and
``cloud_trainer.data`` or ``cloud_trainer.errors`` work without torch; touching a
model name imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cloud_trainer import errors

if TYPE_CHECKING:
    from cloud_trainer.data import DigitsSplits, Split, load_digits_splits, make_synthetic_images
    from cloud_trainer.models import (
        MODELS,
        DigitsCNN,
        MiniLMEncoder,
        MobileNetV2,
        ReferenceModel,
        ResNet18,
        TensorSpec,
        build_model,
        compare_with_onnxruntime,
        export_onnx,
        fit_classifier,
    )

__all__ = [
    "MODELS",
    "DigitsCNN",
    "DigitsSplits",
    "MiniLMEncoder",
    "MobileNetV2",
    "ReferenceModel",
    "ResNet18",
    "Split",
    "TensorSpec",
    "build_model",
    "compare_with_onnxruntime",
    "errors",
    "export_onnx",
    "fit_classifier",
    "load_digits_splits",
    "make_synthetic_images",
]

_LAZY = {
    **dict.fromkeys(
        ("DigitsSplits", "Split", "load_digits_splits", "make_synthetic_images"), "cloud_trainer.data"
    ),
    **dict.fromkeys(
        (
            "MODELS",
            "DigitsCNN",
            "MiniLMEncoder",
            "MobileNetV2",
            "ReferenceModel",
            "ResNet18",
            "TensorSpec",
            "build_model",
            "compare_with_onnxruntime",
            "export_onnx",
            "fit_classifier",
        ),
        "cloud_trainer.models",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cloud_trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
