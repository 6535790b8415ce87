"""Inference backends and their registry.

:data:`BACKENDS` maps a name to a :class:`Backend`; ``auto`` selection in
:func:`edge_runtime.load` walks the device profile's order, then any other
registered backend, in this table's order. A new engine is a new
:class:`Backend` subclass registered with :func:`register_backend`.

==============  =====================================  ===========================================
name            artifact kinds (preferred first)       run() from several threads
==============  =====================================  ===========================================
native          native-plan, onnx                      concurrent (a buffer set per caller)
onnxruntime     onnx-qdq, onnx                         concurrent (InferenceSession.run is safe)
tflite          tflite                                 serialised by a per-session lock
==============  =====================================  ===========================================
"""

from edge_runtime.backends._base import Artifact, Backend, OpenOptions, Session
from edge_runtime.backends.native import NativeBackend
from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edge_runtime.backends.tflite import TFLiteBackend
from edge_runtime.errors import BackendUnavailableError

__all__ = [
    "BACKENDS",
    "Artifact",
    "Backend",
    "OpenOptions",
    "Session",
    "get_backend",
    "register_backend",
]

BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, *, replace: bool = False) -> None:
    """Add ``backend`` under ``backend.name``; ValueError if the name is taken and not ``replace``."""
    if backend.name in BACKENDS and not replace:
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend


def get_backend(name: str) -> Backend:
    """The registered backend called ``name``; BackendUnavailableError naming the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; known: auto, {', '.join(BACKENDS)}"
        ) from None


for _backend in (NativeBackend(), OnnxRuntimeBackend(), TFLiteBackend()):
    register_backend(_backend)
del _backend
