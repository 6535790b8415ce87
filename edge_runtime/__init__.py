"""Edge runtime: INT8 and 2:4-sparse inference on native kernels for small devices."""

from typing import TYPE_CHECKING, Any

from edge_runtime import errors
from edge_runtime._version import __version__

if TYPE_CHECKING:
    from edge_runtime.model import Model, load

__all__ = ["Model", "__version__", "errors", "load"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `load` pulls in numpy, onnxruntime glue and the package reader, which
    # `import edge_runtime.errors` (device_profiles, the fleet agent, `edge --version`) does not need.
    if name in ("Model", "load"):
        from edge_runtime import model

        return getattr(model, name)
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")
