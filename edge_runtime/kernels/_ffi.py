"""The thin binding layer over the compiled kernels.

Loads the cffi extension, checks that it was built from this source tree's
version, and turns C status codes into typed exceptions carrying the C side's
detail message. Friendly wrappers live in :mod:`edge_runtime.kernels`.
"""

from __future__ import annotations

import numpy as np

from edge_runtime import errors
from edge_runtime._version import __version__

try:
    from edge_runtime._edge_kernels import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise errors.NativeBuildError(
        "the native kernels are not built: run `pip install -e .` (or `pip install .`) "
        f"from the repository root ({exc})"
    ) from exc

_built_version = ffi.string(lib.edge_version()).decode()
if _built_version != __version__:  # pragma: no cover - a stale editable build
    raise errors.NativeBuildError(
        f"the native kernels were built for version {_built_version} but the Python code is "
        f"{__version__}: rebuild with `pip install -e .`"
    )

_STATUS_ERRORS: dict[int, type[errors.EdgeRuntimeError]] = {
    lib.EDGE_ERR_INVALID_ARGUMENT: errors.KernelArgumentError,
    lib.EDGE_ERR_SHAPE: errors.ShapeError,
    lib.EDGE_ERR_ALIGNMENT: errors.AlignmentError,
    lib.EDGE_ERR_NOT_2_4_SPARSE: errors.NotSparseError,
    lib.EDGE_ERR_UNSUPPORTED_ISA: errors.UnsupportedISAError,
    lib.EDGE_ERR_OUT_OF_MEMORY: MemoryError,  # type: ignore[dict-item]
    lib.EDGE_ERR_PACKED_FORMAT: errors.PackedFormatError,
}

DTYPES = {
    np.dtype(np.uint8): lib.EDGE_DTYPE_U8,
    np.dtype(np.int8): lib.EDGE_DTYPE_S8,
    np.dtype(np.int32): lib.EDGE_DTYPE_S32,
    np.dtype(np.float32): lib.EDGE_DTYPE_F32,
}

ALIGNMENT = 64


def check(status: int, what: str) -> None:
    """Raise the typed error for a failed C call, with the C side's detail."""
    if status == lib.EDGE_OK:
        return
    detail = ffi.string(lib.edge_last_error()).decode(errors="replace")
    reason = ffi.string(lib.edge_status_string(status)).decode()
    cls = _STATUS_ERRORS.get(status, errors.KernelError)
    raise cls(f"{what}: {reason}" + (f": {detail}" if detail else ""))


def aligned_empty(nbytes: int) -> np.ndarray:
    """A uint8 buffer of nbytes whose data pointer is 64-byte aligned."""
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset : offset + nbytes]


def ptr(array: np.ndarray | None, ctype: str = "void *"):
    """A cffi pointer to a numpy array's data (NULL for None)."""
    if array is None:
        return ffi.NULL
    return ffi.cast(ctype, array.ctypes.data)
