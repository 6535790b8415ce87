"""Typed errors of the cloud trainer.

Every error raised on purpose by ``cloud_trainer`` derives from
:class:`TrainerError`; specific errors also derive from the matching builtin
so that generic handlers keep working::

    TrainerError
    ├── DatasetError (ValueError)       a data set request that cannot be met (bad split, bad size)
    ├── UnknownModelError (LookupError) a reference model name that does not exist
    └── ExportError (RuntimeError)      an ONNX export that failed or cannot be checked
        └── ExportMismatchError         onnxruntime's outputs differ from torch's beyond tolerance
"""

from __future__ import annotations

__all__ = ["DatasetError", "ExportError", "ExportMismatchError", "TrainerError", "UnknownModelError"]


class TrainerError(Exception):
    """Base of every error the cloud trainer raises on purpose."""


class DatasetError(ValueError, TrainerError):
    """A data set request that cannot be met: fractions that do not sum to one, an empty split."""


class UnknownModelError(LookupError, TrainerError):
    """A reference model name that :data:`cloud_trainer.models.MODELS` does not hold."""


class ExportError(RuntimeError, TrainerError):
    """An ONNX export that failed, or a check of it that could not run (onnxruntime missing)."""


class ExportMismatchError(ExportError):
    """An exported model whose onnxruntime outputs differ from torch's beyond the tolerance."""
