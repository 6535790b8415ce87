"""Edge runtime: INT8 and 2:4-sparse inference on native kernels for small devices."""

from edge_runtime._version import __version__
from edge_runtime import errors

__all__ = ["__version__", "errors"]
