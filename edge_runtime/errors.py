"""Typed errors of the edge runtime.

Every error raised on purpose by ``edge_runtime`` derives from
:class:`EdgeRuntimeError`; specific errors also derive from the matching
builtin so that generic handlers keep working::

    EdgeRuntimeError
    ├── KernelError                      a native kernel refused its arguments
    │   ├── ShapeError (ValueError)      dimensions that do not fit together
    │   ├── AlignmentError (ValueError)  a buffer that must be 64-byte aligned is not
    │   ├── NotSparseError (ValueError)  weights that are not 2:4 sparse
    │   ├── PackedFormatError (ValueError)
    │   └── KernelArgumentError (ValueError)
    ├── UnsupportedISAError (RuntimeError)  an ISA this CPU or build cannot run
    ├── NativeBuildError (ImportError)   the compiled extension is missing or stale
    ├── PackageError (ValueError)        a model package that cannot be trusted or read
    │   ├── PackageFormatError           truncated zip, bad manifest, unknown schema
    │   ├── IntegrityError               an artifact whose size or sha256 differs
    │   ├── SignatureError               missing or bad signature, unknown key
    │   └── PackageTooLargeError         over a size limit
    ├── StoreError                       the on-device model store refused an operation
    │   └── ModelNotFoundError (LookupError)  a model, version or previous version it does not hold
    ├── ModelInputError (ValueError)     wrong input name, dtype or shape
    │   └── DatasetError                 calibration or evaluation data that does not fit the model
    ├── GraphError (ValueError)          an ONNX model or graph that is invalid or cannot be rewritten
    ├── QuantizationError (ValueError)   quantization parameters that cannot be represented
    ├── UnsupportedOperatorError (NotImplementedError)
    ├── BackendUnavailableError (RuntimeError)  a backend not installed or not built, or none fits the model
    └── SelfTestError (RuntimeError)     self-test outputs outside their tolerance, or no vectors to run

:class:`~device_profiles.errors.ProfileError` (a device profile that cannot be found or parsed) is
defined by ``device_profiles``, below the runtime in the import graph, and re-exported here.
"""

from __future__ import annotations

from device_profiles.errors import ProfileError  # noqa: F401 - re-exported


class EdgeRuntimeError(Exception):
    """Base of every error the edge runtime raises on purpose."""


class KernelError(EdgeRuntimeError):
    """A native kernel returned a failure status."""


class ShapeError(ValueError, KernelError):
    """Tensor or weight dimensions that do not fit together."""


class AlignmentError(ValueError, KernelError):
    """A buffer the kernel needs 64-byte aligned is not."""


class NotSparseError(ValueError, KernelError):
    """Weights with more than two non-zeros in some group of four along K."""


class PackedFormatError(ValueError, KernelError):
    """Packed weights of another layout or version."""


class KernelArgumentError(ValueError, KernelError):
    """Any other argument a kernel refused (a range, a dtype, a null pointer)."""


class UnsupportedISAError(RuntimeError, EdgeRuntimeError):
    """An instruction set this CPU or this build cannot run."""


class NativeBuildError(ImportError, EdgeRuntimeError):
    """The compiled kernel extension is missing or does not match the Python code."""


class PackageError(ValueError, EdgeRuntimeError):
    """A model package that cannot be read or trusted."""


class PackageFormatError(PackageError):
    """Not a readable package: truncated archive, bad manifest, unknown schema, bad path."""


class IntegrityError(PackageError):
    """An artifact whose size or sha256 differs from the manifest."""


class SignatureError(PackageError):
    """A missing or bad signature, or a key the trust store does not hold."""


class PackageTooLargeError(PackageError):
    """A package, manifest or artifact over its size limit."""


class StoreError(EdgeRuntimeError):
    """The on-device model store refused an operation (bad name, broken layout)."""


class ModelNotFoundError(LookupError, StoreError):
    """A model name, version or previous version the store does not hold."""


class ModelInputError(ValueError, EdgeRuntimeError):
    """An input of the wrong name, dtype or shape; the message says what was expected."""


class DatasetError(ModelInputError):
    """Calibration or evaluation data that is unreadable or does not fit the model's inputs."""


class GraphError(ValueError, EdgeRuntimeError):
    """An ONNX model that fails the checker, or a graph that is malformed; names the node or tensor."""


class QuantizationError(ValueError, EdgeRuntimeError):
    """A scale, zero point or requantization multiplier outside what the integer kernels represent."""


class UnsupportedOperatorError(NotImplementedError, EdgeRuntimeError):
    """A graph operator the chosen backend cannot run; names the operator and node."""


class BackendUnavailableError(RuntimeError, EdgeRuntimeError):
    """A backend that is not installed or not implemented here, or no backend that can run the model."""


class SelfTestError(RuntimeError, EdgeRuntimeError):
    """A model whose self-test outputs differ from the expected ones, or that carries no vectors."""


