"""Python API of the native INT8 kernels.

Thin wrappers that check shapes and dtypes, pack weights once, and raise the
typed errors of :mod:`edge_runtime.errors`. Calls release the GIL.
"""

from edge_runtime.kernels.core import (
    ISA_NAMES,
    Requant,
    ThreadPool,
    detect_isa,
    get_isa,
    requant_from_scale,
    set_isa,
    supported_isas,
    use_isa,
)

__all__ = [
    "ISA_NAMES",
    "Requant",
    "ThreadPool",
    "detect_isa",
    "get_isa",
    "requant_from_scale",
    "set_isa",
    "supported_isas",
    "use_isa",
]
