"""ISA selection, the thread pool and requantization parameters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from edge_runtime import errors
from edge_runtime.kernels._ffi import check, ffi, lib, ptr

ISA_NAMES = ("scalar", "avx2", "avx512vnni", "neon", "neondot")
_ISA_IDS = {name: i for i, name in enumerate(ISA_NAMES)}


def _name(isa_id: int) -> str:
    return ffi.string(lib.edge_isa_name(isa_id)).decode()


def get_isa() -> str:
    """The ISA the kernels run on now."""
    return _name(lib.edge_isa_get())


def detect_isa() -> str:
    """The best ISA this CPU and build support."""
    return _name(lib.edge_isa_detect())


def supported_isas() -> list[str]:
    """Every ISA this CPU and build can run, scalar first."""
    return [name for name in ISA_NAMES if lib.edge_isa_supported(_ISA_IDS[name])]


def set_isa(name: str) -> None:
    """Run the kernels on ``name`` (process-wide). The EDGE_ISA environment
    variable does the same at start-up. Raises UnsupportedISAError for an ISA
    this machine cannot execute."""
    if name not in _ISA_IDS:
        raise errors.UnsupportedISAError(f"unknown ISA {name!r}: expected one of {', '.join(ISA_NAMES)}")
    check(lib.edge_isa_set(_ISA_IDS[name]), f"set_isa({name!r})")


class use_isa:
    """Context manager that runs the kernels on one ISA, then restores the previous one."""

    _lock = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name
        self.previous = ""

    def __enter__(self) -> str:
        self.previous = get_isa()
        set_isa(self.name)
        return self.name

    def __exit__(self, *exc) -> None:
        set_isa(self.previous)


class ThreadPool:
    """A pool of native worker threads that split GEMM and conv work.

    Idle workers spin for up to 50 us (a model posts its layers microseconds apart),
    then sleep. ``ThreadPool(1)`` runs on the calling thread.
    """

    def __init__(self, num_threads: int) -> None:
        self._pool = ffi.NULL  # so that close() works even when creation fails
        handle = ffi.new("edge_threadpool **")
        check(lib.edge_threadpool_create(int(num_threads), handle), "ThreadPool")
        self._pool = handle[0]

    @property
    def num_threads(self) -> int:
        return int(lib.edge_threadpool_size(self._pool))

    @property
    def handle(self):
        if self._pool == ffi.NULL:
            raise errors.KernelArgumentError("the thread pool was closed")
        return self._pool

    def close(self) -> None:
        if self._pool != ffi.NULL:
            lib.edge_threadpool_destroy(self._pool)
            self._pool = ffi.NULL

    def __enter__(self) -> ThreadPool:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def pool_handle(pool: ThreadPool | None):
    return ffi.NULL if pool is None else pool.handle


def dtype_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def requant_from_scale(scale: float) -> tuple[int, int]:
    """(multiplier, shift) for a real scale in [2^-32, 1), computed by the C library."""
    mult = ffi.new("int32_t *")
    shift = ffi.new("int32_t *")
    check(lib.edge_requant_from_scale(float(scale), mult, shift), "requant_from_scale")
    return int(mult[0]), int(shift[0])


@dataclass
class Requant:
    """Per-output-channel requantization of int32 accumulators to u8/s8.

    ``out = clamp((acc * multiplier + 2^(shift-1)) >> shift, min - zp, max - zp) + zp``
    """

    multiplier: np.ndarray
    shift: np.ndarray
    zero_point: int
    out_min: int
    out_max: int
    _struct: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_scales(
        cls,
        scales: np.ndarray | float,
        channels: int,
        zero_point: int,
        dtype: np.dtype | type = np.uint8,
        out_min: int | None = None,
        out_max: int | None = None,
    ) -> Requant:
        """From real scales (input_scale * weight_scale[n] / output_scale), one or per channel."""
        scales = np.broadcast_to(np.asarray(scales, dtype=np.float64), (channels,))
        pairs = [requant_from_scale(s) for s in scales]
        lo, hi = dtype_range(np.dtype(dtype))
        return cls(
            multiplier=np.array([p[0] for p in pairs], dtype=np.int32),
            shift=np.array([p[1] for p in pairs], dtype=np.int32),
            zero_point=int(zero_point),
            out_min=lo if out_min is None else int(out_min),
            out_max=hi if out_max is None else int(out_max),
        )

    def struct(self):
        """The C ``edge_q8_requant`` (kept alive with this object)."""
        if self._struct is None:
            self.multiplier = np.ascontiguousarray(self.multiplier, dtype=np.int32)
            self.shift = np.ascontiguousarray(self.shift, dtype=np.int32)
            s = ffi.new("edge_q8_requant *")
            s.multiplier = ptr(self.multiplier, "const int32_t *")
            s.shift = ptr(self.shift, "const int32_t *")
            s.output_zero_point = self.zero_point
            s.output_min = self.out_min
            s.output_max = self.out_max
            self._struct = s
        return self._struct

    def apply(self, acc: np.ndarray) -> np.ndarray:
        """The numpy definition of the rule (the oracle the tests compare against)."""
        acc = acc.astype(np.int64)
        shift = self.shift.astype(np.int64)
        scaled = (acc * self.multiplier.astype(np.int64) + (np.int64(1) << (shift - 1))) >> shift
        scaled = np.clip(scaled, self.out_min - self.zero_point, self.out_max - self.zero_point)
        return scaled + self.zero_point
