"""Typed errors of the cloud trainer.

Every error raised on purpose by ``cloud_trainer`` derives from
:class:`TrainerError`; specific errors also derive from the matching builtin
so that generic handlers keep working::

    TrainerError
    ├── DataSplitError (ValueError)       a data set request that cannot be met (bad split, bad size)
    ├── UnknownModelError (LookupError) a reference model name that does not exist
    ├── ExportError (RuntimeError)      an ONNX export that failed or cannot be checked
    │   └── ExportMismatchError         onnxruntime's outputs differ from torch's beyond tolerance
    ├── QATError (RuntimeError)         a model QAT cannot prepare, or quantization parameters asked too early
    ├── SparsityError (RuntimeError)    a 2:4 mask that cannot be computed or does not fit the weights
    ├── CompressionError (ValueError)   an unknown gradient compressor or bad compressor settings
    ├── CheckpointError (RuntimeError)  a checkpoint that cannot be found or read
    ├── TrainConfigError (ValueError)   a training configuration that cannot run
    └── PushError (RuntimeError)        an upload to the fleet manager that failed
"""

from __future__ import annotations

__all__ = ["DataSplitError", "ExportError", "ExportMismatchError", "TrainerError", "UnknownModelError"]


class TrainerError(Exception):
    """Base of every error the cloud trainer raises on purpose."""


class DataSplitError(ValueError, TrainerError):
    """A data set request that cannot be met: fractions that do not sum to one, an empty split."""


class UnknownModelError(LookupError, TrainerError):
    """A reference model name that :data:`cloud_trainer.models.MODELS` does not hold."""


class ExportError(RuntimeError, TrainerError):
    """An ONNX export that failed, or a check of it that could not run (onnxruntime missing)."""


class ExportMismatchError(ExportError):
    """An exported model whose onnxruntime outputs differ from torch's beyond the tolerance."""


class QATError(RuntimeError, TrainerError):
    """A model quantization-aware training cannot prepare, or quantization parameters asked for too early."""


class SparsityError(RuntimeError, TrainerError):
    """A 2:4 mask that cannot be computed, or masks (from a checkpoint) that do not fit the model."""


class CompressionError(ValueError, TrainerError):
    """An unknown gradient compressor, or settings it cannot run with."""


class CheckpointError(RuntimeError, TrainerError):
    """A checkpoint that cannot be found or read."""


class TrainConfigError(ValueError, TrainerError):
    """A training configuration that cannot run (missing section, bad value)."""


class PushError(RuntimeError, TrainerError):
    """An upload of a package to the fleet manager that failed (connection, HTTP status)."""
