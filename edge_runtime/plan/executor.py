"""Running a :class:`QuantizedPlan` on the C kernels.

At load, :class:`NativeSession` packs every GEMM and convolution's weights for
the kernels (or reads them from the packed-weight cache, see :class:`PackedCache`).
Per call it quantizes the float inputs, runs the steps in order and dequantizes
the outputs.

Buffers: the outputs of the integer steps (GEMMs, convolutions, add/mul, lookup
tables, pools, the entry quantization) and the convolutions' im2col workspaces
are allocated once per input-shape signature (so once per batch size: the batch
dimension is dynamic) on first use and reused by later calls; the few most
recent signatures are kept. With them each step binds, once per signature, its
C parameter structs and cffi pointers (the shapes are validated, with typed
errors, when a signature is first seen). A Relu/Clip after an Add or Mul
(ResNet's residual joins) is done by the add/mul kernel's own clamp.

The plan runs in C: a signature's first call steps through the plan in Python
(each step a closure that binds its buffers and calls its kernel), then the
bound steps are compiled into a program (native/include/edge/plan.h): an array
of op records, each a kernel call with its arguments bound (parameter structs,
packed weights, requantization, input/output buffers, workspaces), plus the
byte moves between kernels (the NCHW -> NHWC entry permutation, the im2col of an
image stem, transposes) and clamps. Later calls run it with one
``edge_plan_run`` call, which releases the GIL for the whole run and reports the
index of a failing op, so the step's typed error is raised as on the Python
path. Steps that stay in Python (float subgraphs and fallbacks, float attention,
embedding gathers, concatenation, moves other than reshapes and transposes)
split the program into C segments, one C call each (a reshape of a Python
step's output joins the next segment as a view made per call); a tensor a segment reads from outside it (the feed,
a Python step's output) is pointed to per call, after checking its shape. An
image CNN (MobileNetV2, ResNet-18) is one segment: one C call per inference; a
BERT-style encoder is its embedding gathers in Python, then one segment.
``describe()["program"]`` says what the latest compiled call ran.

Dynamic shapes: any input dimension may change between calls, not only the batch.
A convolution or pool lowered with a symbolic input height/width (``dynamic_hw``)
works out its padding per input shape when that shape's buffer set is bound, and a
convolution rewrites the geometry header of its packed weights when the shape
changes (the weights after the header do not depend on the input size; the C
kernels check the header against each call), so the weights are packed once.

Partitions: a ``subgraph`` step runs the nodes the kernels lack in float32 on
onnxruntime or the reference executor (:mod:`edge_runtime.plan.partition`), with
dequantization before and quantization after; :meth:`NativeSession.partition` says
which nodes run where.

Batches: on one thread, a batch larger than a slice runs the plan's leading
per-sample steps (an image model's convolutions, up to its global pooling) on
slices of the batch, so that each slice's early high-resolution activations stay
in cache, and the rest (the classifier GEMM) on the whole batch. Same bits. Each
slice shape has a buffer set and C program of its own: one C call per slice.

Threads: one call uses the session's native thread pool of ``threads`` workers
(the kernels split their work over it). Calls from several Python threads run at
once: each takes a buffer set of its own for its signature (made and bound on
demand, at most ``_MAX_ARENAS`` = 4 per signature; a further concurrent caller
waits for one to be given back). The C programs of the call that holds the
thread pool use it; a call that finds it held runs its programs on its own
thread rather than queue for the pool's workers (the pool itself takes one job
at a time, so the Python path of a first call shares it safely).
:meth:`NativeSession.warm_up` binds several buffer sets ahead of concurrent
callers. A plan with a convolution of symbolic input size rewrites the shared
packed header per shape, so its calls take turns.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import kernels
from edge_runtime.errors import KernelArgumentError, ModelInputError, ShapeError, UnsupportedOperatorError
from edge_runtime.graph import Node
from edge_runtime.graph.reference import evaluate_node
from edge_runtime.kernels._ffi import DTYPES, aligned_empty, check, ffi, lib
from edge_runtime.kernels.conv import _check_io as _check_conv_io
from edge_runtime.kernels.conv import pack_conv2d24
from edge_runtime.kernels.core import dtype_range
from edge_runtime.kernels.ops import _broadcast_layout, _pool_params, _q8
from edge_runtime.numerics import QuantParams
from edge_runtime.plan.quantized_plan import QuantizedPlan, Step

__all__ = ["NativeSession", "PackedCache", "default_cache_dir", "packed_format_versions"]

_MAX_SIGNATURES = 8  # input-shape signatures whose buffer sets are kept
# Buffer sets per signature: one per caller running at once (see NativeSession._acquire).
_MAX_ARENAS = 4
# Warm calls run the bound C programs (False: every call steps through the plan in Python,
# the path a signature's first call takes; the tests compare the two).
_PROGRAMS = True
_Q8 = (np.dtype(np.uint8), np.dtype(np.int8))
_OUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int32))
# Move steps that only reshape (a view of the same bytes in the same order).
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
# Steps that never mix the samples of a batch (NHWC tensors, batch first): a leading
# run of them may run on slices of the batch (see NativeSession._run_prefix_in_chunks).
_PER_SAMPLE_STEPS = frozenset(
    {"quantize", "conv", "add", "mul", "lut", "lut_channels", "clamp", "maxpool", "global_avgpool"}
)
# About a core's L2 cache: MobileNetV2 (1.2 MB a sample at 112x112x96) then runs its
# early layers one sample at a time, measured the best on a Zen 5 core (1 MiB L2):
# batch 16 at 2.1 ms a sample against 2.9 ms unsliced, 2.4 ms in slices of 2.
_CHUNK_BYTES = 1 << 20
# Steps that may call numpy's BLAS (float matmul and attention; the reference op of a float fallback).
_BLAS_STEPS = frozenset({"matmul", "attention", "float", "subgraph"})
# Bytes of the packed headers that describe the input geometry (see native/src/q8-conv and
# q8-dwconv): a convolution with a symbolic input height/width rewrites them per input shape.
_CONV_HEADER_BYTES = 128
_DWCONV_HEADER_BYTES = 64


def _dynamic_padding(attrs: Mapping[str, Any], hw: tuple[int, int], kernel, strides, dilations) -> list[int]:
    """(top, left, bottom, right) padding of a ``dynamic_hw`` convolution or pool for an
    input of height and width ``hw``: ONNX's auto_pad rule and ceil_mode, as the lowering
    applies them to a static shape."""
    from edge_runtime.graph.reference import _spatial_pads
    from edge_runtime.plan.lower import _ceil_extra

    node = Node(
        "Conv", "", [], [], {"auto_pad": attrs.get("auto_pad", "NOTSET"), "pads": list(attrs["pads"])}
    )
    pads = [int(p) for p in _spatial_pads(node, hw, kernel, strides, dilations)]
    if attrs.get("ceil_mode"):
        extra = _ceil_extra(hw, kernel, strides, dilations, pads)
        pads = [pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1]]
    return pads


def _bind_input(env: dict, src: str, slot: dict, bind: Callable) -> tuple[np.ndarray, tuple]:
    """A step's input and its bound call arguments, bound again only when the input's shape or
    dtype changed (``bind`` checks the shape once; warm calls reuse its buffers and pointers)."""
    x = env[src]
    b = slot.get("b")
    if b is None or b[0] != x.shape or b[1] != x.dtype:
        b = slot["b"] = bind(x)
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x, b


def _address(array: np.ndarray):
    """A cffi pointer to a C-contiguous array's data (``from_buffer``: several times
    cheaper than ``.ctypes``, which matters for the hundreds of calls of a small model)."""
    return ffi.from_buffer(array)


def _numpy_im2col(params: kernels.Conv2dParams, depthwise: bool) -> bool:
    """Whether a convolution runs as numpy im2col + GEMM (see NativeSession._conv_as_gemm):
    few input channels, a kernel wider than 1, one group, no dilation, K within the GEMM's."""
    return (
        not depthwise
        and params.groups == 1
        and params.in_c <= 4
        and params.kernel_w > 1
        and params.dilation == (1, 1)
        and params.kernel_h * params.kernel_w * params.in_c <= 65536
    )


def _floats(array: np.ndarray):
    """``float *`` to a C-contiguous float32 array (cffi passes untyped buffers only as ``void *``)."""
    return ffi.from_buffer("float[]", array)


def default_cache_dir() -> Path:
    """``$EDGE_CACHE_DIR/packed``, else ``~/.cache/edge-runtime/packed``."""
    root = os.environ.get("EDGE_CACHE_DIR")
    return Path(root) / "packed" if root else Path.home() / ".cache" / "edge-runtime" / "packed"


_FORMAT_VERSIONS: dict[str, str] | None = None


def packed_format_versions() -> dict[str, str]:
    """Magic and version of every packed layout, read from the C library's own headers
    (first 8 bytes of a tiny packed buffer), plus the kernels' build version."""
    global _FORMAT_VERSIONS
    if _FORMAT_VERSIONS is None:
        from edge_runtime.kernels._ffi import ffi, lib

        w = np.ones((1, 1, 3, 3), np.int8)
        samples = {
            "gemm": kernels.pack_gemm(np.ones((1, 4), np.int8)).buffer,
            "gemm24": kernels.pack_gemm24(np.array([[1, 0, 1, 0]], np.int8)).buffer,
            "conv2d": kernels.pack_conv2d(w, input_shape=(1, 3, 3, 1)).buffer,
            "conv2d24": pack_conv2d24(w * np.int8(0), input_shape=(1, 3, 3, 1)).buffer,
            "dwconv2d": kernels.pack_dwconv2d(w, input_shape=(1, 3, 3, 1)).buffer,
        }
        versions = {k: v[:8].tobytes().hex() for k, v in samples.items()}
        versions["kernels"] = ffi.string(lib.edge_version()).decode()
        _FORMAT_VERSIONS = versions
    return dict(_FORMAT_VERSIONS)


class PackedCache:
    """Packed weights on disk, one file per (model id, packed formats, ISA).

    The model id is the sha256 of the plan artifact (from the package manifest), or
    of the serialized plan. File layout (little-endian): the magic ``EDGEPKD1``, the
    entry count (u32), the crc32 of the data (u32), then per entry its step index
    (u32), offset into the data (u64) and size (u64); then the data: every packed
    buffer at a 64-byte-aligned offset. :meth:`load` reads the data with one
    ``readinto`` into a single 64-byte-aligned buffer and hands out views of it, so
    the weights are read once, straight into the memory the kernels use.

    Written to a temporary file and renamed, so a reader never sees half a file and
    concurrent writers of the same key are harmless. A file that cannot be read,
    or whose crc32 differs, is ignored (and rewritten).
    """

    MAGIC = b"EDGEPKD1"
    _HEAD = struct.Struct("<8sII")
    _ENTRY = struct.Struct("<IQQ")
    _ALIGN = 64

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def key(self, model_sha256: str, isa: str) -> str:
        formats = json.dumps(packed_format_versions(), sort_keys=True)
        return hashlib.sha256(f"{model_sha256}|{formats}|{isa}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.packed"

    def load(self, key: str) -> dict[int, np.ndarray] | None:
        """{step index: aligned packed buffer}, or None when there is no usable file."""
        try:
            with open(self.path(key), "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                head = fh.read(self._HEAD.size)
                magic, count, crc = self._HEAD.unpack(head)
                if magic != self.MAGIC:
                    return None
                table = fh.read(self._ENTRY.size * count)
                entries = [self._ENTRY.unpack_from(table, i * self._ENTRY.size) for i in range(count)]
                start = _round_up(self._HEAD.size + len(table), self._ALIGN)
                total = size - start
                if total < 0 or any(off % self._ALIGN or off + n > total for _, off, n in entries):
                    return None
                data = aligned_empty(total)
                fh.seek(start)
                if fh.readinto(memoryview(data)) != total or zlib.crc32(data) != crc:
                    return None
        except (OSError, struct.error):
            return None
        return {step: data[off : off + n] for step, off, n in entries}

    def store(self, key: str, buffers: Mapping[int, np.ndarray]) -> None:
        entries, chunks, offset = [], [], 0
        for step, buf in sorted(buffers.items()):
            if offset % self._ALIGN:
                chunks.append(bytes(self._ALIGN - offset % self._ALIGN))
                offset = _round_up(offset, self._ALIGN)
            entries.append(self._ENTRY.pack(step, offset, buf.nbytes))
            chunks.append(buf.reshape(-1).view(np.uint8).data)
            offset += buf.nbytes
        crc = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
        head = self._HEAD.pack(self.MAGIC, len(entries), crc) + b"".join(entries)
        head += bytes(_round_up(len(head), self._ALIGN) - len(head))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".packing-", suffix=".packed")
            with os.fdopen(fd, "wb") as fh:
                fh.write(head)
                for chunk in chunks:
                    fh.write(chunk)
            os.replace(tmp, self.path(key))
        except OSError:
            pass  # a read-only or full disk only costs the next load its packing time


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


# -- the bound C program (native/include/edge/plan.h) ---------------------------------

# A step's C calls, as its ``ops(env, slot)`` gives them: (kind, {argument: value}) where the
# kind names an edge_plan_kind and the union member of its arguments.
_OP_KINDS = {
    "gemm": ("EDGE_PLAN_GEMM", "gemm"), "gemm24": ("EDGE_PLAN_GEMM24", "gemm"),
    "conv2d": ("EDGE_PLAN_CONV2D", "conv"), "conv2d24": ("EDGE_PLAN_CONV2D24", "conv"),
    "dwconv2d": ("EDGE_PLAN_DWCONV2D", "conv"), "add": ("EDGE_PLAN_ADD", "add"), "mul": ("EDGE_PLAN_MUL", "mul"),
    "lut": ("EDGE_PLAN_LUT", "lut"), "maxpool2d": ("EDGE_PLAN_MAXPOOL2D", "maxpool"),
    "avgpool2d": ("EDGE_PLAN_AVGPOOL2D", "avgpool"), "global_avgpool": ("EDGE_PLAN_GLOBAL_AVGPOOL", "global_avgpool"),
    "quantize": ("EDGE_PLAN_QUANTIZE", "quantize"), "dequantize": ("EDGE_PLAN_DEQUANTIZE", "dequantize"),
    "layernorm": ("EDGE_PLAN_LAYERNORM", "layernorm"), "clamp": ("EDGE_PLAN_CLAMP", "clamp"),
    "permute": ("EDGE_PLAN_PERMUTE", "permute"), "im2col": ("EDGE_PLAN_IM2COL", "im2col"),
    "copy": ("EDGE_PLAN_COPY", "copy"), "attention": ("EDGE_PLAN_ATTENTION", "attention"),
    "lut_channels": ("EDGE_PLAN_LUT_CHANNELS", "lut_channels"), "softmax": ("EDGE_PLAN_SOFTMAX", "softmax"),
}  # fmt: skip
_MAX_DIMS = 6  # EDGE_PLAN_MAX_DIMS


class _In:
    """An op argument that is the data of the environment's tensor ``name`` (a buffer bound
    earlier in the same C segment, or a tensor from outside it, pointed to per call), ``offset``
    bytes in (a slice of it, one sample of a batch)."""

    __slots__ = ("name", "offset")

    def __init__(self, name: str, offset: int = 0) -> None:
        self.name, self.offset = name, offset


def _offset(pointer: Any, offset: int) -> Any:
    return pointer if not offset else ffi.cast("void *", ffi.cast("char *", pointer) + offset)


class _Fresh:
    """An op's float32 output ``name`` of ``shape``, allocated per call (it is returned)."""

    __slots__ = ("name", "shape")

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


def _void(array: np.ndarray):
    return ffi.cast("void *", ffi.from_buffer(array))


def _permute_op(x: np.ndarray, perm: tuple[int, ...], y: np.ndarray, x_ptr: Any = None) -> tuple[str, dict]:
    """The op that writes ``x.transpose(perm)`` into contiguous ``y`` (x contiguous)."""
    if len(perm) > _MAX_DIMS:
        raise ShapeError(f"a permutation of {len(perm)} dimensions (at most {_MAX_DIMS})")
    strides = _contiguous_strides(x.shape, x.itemsize)
    pad = [0] * (_MAX_DIMS - len(perm))
    return "permute", {
        "ndim": len(perm), "element_size": x.itemsize, "shape": [x.shape[p] for p in perm] + pad,
        "x_strides": [strides[p] for p in perm] + pad, "x": x_ptr if x_ptr is not None else _address(x),
        "y": _address(y),
    }  # fmt: skip


def _move_view(node: Node, values: list) -> np.ndarray | None:
    """A move step's output as a numpy view of its input ``values[0]`` (the reference ops copy):
    Slice with positive steps, DepthToSpace, and nearest Resize by integer factors (asymmetric,
    floor: every input element repeated, a stride of 0). None for any other move."""
    from edge_runtime.graph.reference import _attr_or_input, _slice_bounds

    x = values[0]
    op = node.op_type
    if op == "Slice":
        starts = _attr_or_input(node, values, "starts", 1)
        ends = _attr_or_input(node, values, "ends", 2)
        axes = _attr_or_input(node, values, "axes", 3) or list(range(len(starts)))
        steps = _attr_or_input(node, values, "steps", 4) or [1] * len(starts)
        index = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if int(step) <= 0:
                return None
            axis = int(axis) % x.ndim
            lo, hi = _slice_bounds(int(start), int(end), int(step), x.shape[axis])
            index[axis] = slice(lo, hi, int(step))
        return x[tuple(index)]
    if op == "DepthToSpace" and x.ndim == 4:
        b = int(node.attrs.get("blocksize", 0))
        n, c, h, w = x.shape
        if b < 1 or c % (b * b):
            return None
        if node.attrs.get("mode", "DCR") == "DCR":
            return x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
        return x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    if op == "Resize" and len(values) == 1:
        a = node.attrs
        scales = a.get("scales")
        if a.get("mode") != "nearest" or a.get("coordinate_transformation_mode") != "asymmetric" \
                or a.get("nearest_mode", "round_prefer_floor") != "floor" or not scales \
                or len(scales) != x.ndim:  # fmt: skip
            return None
        shape, strides = [], []
        for n, stride, f in zip(x.shape, x.strides, scales):
            if float(f) < 1 or float(f) != int(f):
                return None
            shape += [n, int(f)]
            strides += [stride, 0]
        return np.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)
    return None


def _strided_dims(view: np.ndarray) -> list[tuple[int, int]]:
    """(size, byte stride) of ``view``'s dimensions in order, without unit dimensions and with
    neighbours merged where the outer one steps over the inner one exactly."""
    dims: list[tuple[int, int]] = []
    for n, stride in zip(view.shape, view.strides):
        if n == 1:
            continue
        if dims and dims[-1][1] == stride * n:
            dims[-1] = (dims[-1][0] * n, stride)
        else:
            dims.append((n, stride))
    return dims or [(1, 1)]


def _contiguous_strides(shape: tuple[int, ...], itemsize: int) -> list[int]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


class _Segment:
    """Consecutive plan steps bound as one C program: one edge_plan_run call per run.

    ``inputs``: the tensors from outside the segment (the feeds, Python steps' outputs),
    pointed to per call after checking they have the bound shape and dtype; ``fresh``:
    float outputs allocated per call; ``publish``: the bound buffers the segment fills,
    put into the environment for the steps and outputs after it; ``views``: reshapes of
    tensors from outside (dst, src, src shape, dtype, dst shape), made per call first."""

    __slots__ = (
        "count",
        "failed",
        "fresh",
        "inputs",
        "keep",
        "ops",
        "publish",
        "start",
        "stop",
        "views",
        "whats",
    )

    def __init__(self, start: int, stop: int, specs: list, env: dict[str, Any], stable: set[str],
                 publish: dict[str, np.ndarray], views: list) -> None:  # fmt: skip
        self.start, self.stop = start, stop
        self.count = len(specs)
        self.ops = ffi.new("edge_plan_op[]", max(1, self.count))
        self.whats = [what for what, _, _ in specs]
        self.failed = ffi.new("size_t *")
        self.publish = publish
        self.views = views
        self.keep: list[Any] = []
        inputs: dict[str, tuple[tuple[int, ...], np.dtype, list]] = {}
        fresh: dict[str, tuple[tuple[int, ...], list]] = {}
        for j, (_, kind, fields) in enumerate(specs):
            code, member = _OP_KINDS[kind]
            op = self.ops[j]
            op.kind = getattr(lib, code)
            record = getattr(op.args, member)
            for field, value in fields.items():
                if isinstance(value, _In):
                    array = env[value.name]
                    if value.name in stable:
                        self.keep.append(array)
                        setattr(record, field, _offset(_void(array), value.offset))
                    else:
                        inputs.setdefault(value.name, (array.shape, array.dtype, []))[2].append(
                            (record, field, value.offset)
                        )
                elif isinstance(value, _Fresh):
                    fresh.setdefault(value.name, (value.shape, []))[1].append((record, field))
                elif isinstance(value, ffi.CData):
                    self.keep.append(value)
                    setattr(record, field, ffi.cast("void *", value))
                else:
                    setattr(record, field, value)
        self.inputs = [(name, shape, dtype, records) for name, (shape, dtype, records) in inputs.items()]
        self.fresh = [(name, shape, records) for name, (shape, records) in fresh.items()]

    def run(self, env: dict[str, Any], pool: Any) -> bool:
        """One C call; False (nothing run) when an input does not have its bound shape. The
        float outputs made per call come first: a later op of the segment may read one."""
        for name, shape, records in self.fresh:
            y = env[name] = np.empty(shape, np.float32)
            pointer = _void(y)
            for record, field in records:
                setattr(record, field, pointer)
        for dst, src, src_shape, dtype, dst_shape in self.views:
            x = env[src]
            if x.shape != src_shape or x.dtype != dtype:
                return False
            env[dst] = x.reshape(dst_shape)
        held = []
        for name, shape, dtype, records in self.inputs:
            x = env[name]
            if x.shape != shape or x.dtype != dtype:
                return False
            if not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
                held.append(x)
            pointer = _void(x)
            for record, field, offset in records:
                setattr(record, field, _offset(pointer, offset))
        status = lib.edge_plan_run(self.ops, self.count, pool, self.failed) if self.count else 0
        if status:
            i = self.failed[0]
            check(status, self.whats[i] if i < self.count else "plan run")
        env.update(self.publish)
        return True


class _Program:
    """A range of plan steps on one buffer set: ``parts`` in order, each a C segment or the
    index of a step that runs in Python."""

    __slots__ = ("parts", "stats")

    def __init__(self, parts: list, steps: int) -> None:
        self.parts = parts
        segments = [p for p in parts if isinstance(p, _Segment)]
        self.stats = {
            "steps": steps,
            "c_segments": len(segments),
            "c_ops": sum(p.count for p in segments),
            "python_steps": len(parts) - len(segments),
        }


class _Arena:
    """One buffer set: a dict per step where it binds its buffers for one input-shape
    signature (and one more for the batch slicing), the C programs compiled from them,
    and the buffer sets of the batch's slices."""

    __slots__ = ("programs", "slices", "slots")

    def __init__(self, steps: int) -> None:
        self.slots: list[dict[str, Any]] = [{} for _ in range(steps + 1)]
        self.programs: dict[tuple[int, int], _Program] = {}
        self.slices: dict[tuple[int, ...], _Arena] = {}


class _Arenas:
    """The buffer sets of one signature: those free, and how many exist."""

    __slots__ = ("count", "free")

    def __init__(self) -> None:
        self.free: list[_Arena] = []
        self.count = 0


class NativeSession:
    """A loaded :class:`QuantizedPlan`: ``run(feeds)`` -> float32 outputs by name.

    ``threads``: native worker threads for GEMM and convolution. ``cache_dir``:
    where packed weights are cached (default :func:`default_cache_dir`); ``False``
    disables the cache. ``model_sha256``: what identifies the plan in the cache (the
    sha256 of its artifact, from the package manifest); by default the sha256 of the
    serialized plan, which costs a serialization. ``release_weights``: the session
    owns ``plan`` and may drop from it what packing made redundant (the unpacked
    weights and biases) and replace the arrays that are views of the artifact's bytes
    by copies, so that those bytes can be freed: resident memory is then the packed
    weights and the small per-channel arrays, not the artifact and both weight forms.
    """

    def __init__(
        self,
        plan: QuantizedPlan,
        threads: int = 1,
        cache_dir: str | os.PathLike[str] | bool | None = None,
        *,
        model_sha256: str | None = None,
        release_weights: bool = False,
    ) -> None:
        self.plan = plan
        self.threads = max(1, int(threads))
        self.isa = kernels.get_isa()
        self._pool = kernels.ThreadPool(self.threads)
        self._lock = threading.Lock()  # guards the buffer sets, the call count and closing
        self._idle = threading.Condition(self._lock)  # a buffer set was given back, or a call ended
        self._pool_owner = threading.Lock()  # held by the call whose C programs use the pool
        self._calls = 0  # calls in flight (close waits for them)
        self._closed = False
        self._sha256: str | None = model_sha256
        # Per input-shape signature: the buffer sets bound for it (see _Arenas).
        self._buffers: OrderedDict[tuple, _Arenas] = OrderedDict()
        self.last_run: dict[str, int] = {}  # what the latest compiled call ran (see describe())
        self._fresh_outputs: set[str] = set()  # output buffers allocated per call (not copied)
        self._engines: dict[int, str] = {}  # subgraph step -> the engine that runs it
        self.cache_hit: bool | None = None  # None: no cache
        self.load_seconds = 0.0
        start = time.perf_counter()
        # Weight shapes by step, which the steps need after their weights are released.
        self._weight_shapes = {
            i: step.arrays["weights"].shape for i, step in enumerate(plan.steps) if "weights" in step.arrays
        }
        self._packed = self._pack(cache_dir)
        if release_weights:
            self._sha256 = self._plan_sha256()  # describe() reports it; the plan is about to change
            self._release()
        self._fused_clamps = self._find_fusions()
        self._split = self._find_batch_split()
        self._prepared = [self._prepare(i, step) for i, step in enumerate(plan.steps)]
        # The steps that read each tensor, and the tensors the plan returns (see _compile).
        self._readers: dict[str, set[int]] = {}
        for i, step in enumerate(plan.steps):
            for name in step.inputs:
                if name:
                    self._readers.setdefault(name, set()).add(i)
        self._returned = {io_.buffer for io_ in plan.outputs}
        self._blas = _BlasThreads.get() if any(s.op in _BLAS_STEPS for s in plan.steps) else None
        # A convolution with a symbolic input size rewrites the header of its packed weights per
        # input shape: the weights are shared by every buffer set, so such a plan's calls take turns.
        self._serial = (
            threading.Lock()
            if any(s.op == "conv" and s.attrs.get("dynamic_hw") for s in plan.steps)
            else None
        )
        self.load_seconds = time.perf_counter() - start

    # -- load ----------------------------------------------------------------

    def _pack_step(self, step: Step) -> np.ndarray | None:
        a = step.arrays
        if step.op == "gemm":
            pack = kernels.pack_gemm24 if step.attrs["sparse"] else kernels.pack_gemm
            return pack(a["weights"], a["bias"]).buffer
        if step.op == "conv":
            h, w, c = step.attrs["input_hwc"]
            if step.attrs["depthwise"]:
                return kernels.pack_dwconv2d(
                    a["weights"], a["bias"], input_shape=(1, h, w, c),
                    stride=step.attrs["stride"][0], padding=step.attrs["padding"],
                ).buffer  # fmt: skip
            pack = pack_conv2d24 if step.attrs.get("sparse") else kernels.pack_conv2d
            return pack(
                a["weights"], a["bias"], input_shape=(1, h, w, c), stride=tuple(step.attrs["stride"]),
                padding=tuple(step.attrs["padding"]), dilation=tuple(step.attrs["dilation"]),
                groups=step.attrs["groups"],
            ).buffer  # fmt: skip
        return None

    def _plan_sha256(self) -> str:
        """The plan's sha256, computed once (it serializes the whole plan)."""
        if self._sha256 is None:
            self._sha256 = self.plan.sha256()
        return self._sha256

    def _pack(self, cache_dir: str | os.PathLike[str] | bool | None) -> dict[int, np.ndarray]:
        cache = None if cache_dir is False else PackedCache(None if cache_dir in (None, True) else cache_dir)
        key = cache.key(self._plan_sha256(), self.isa) if cache is not None else ""
        if cache is not None:
            stored = cache.load(key)
            if stored is not None and set(stored) == self._packed_steps():
                self.cache_hit = True
                return stored
        packed = {}
        for i, step in enumerate(self.plan.steps):
            buffer = self._pack_step(step)
            if buffer is not None:
                packed[i] = buffer
        if cache is not None:
            self.cache_hit = False
            cache.store(key, packed)
        return packed

    def _packed_steps(self) -> set[int]:
        return {i for i, step in enumerate(self.plan.steps) if step.op in ("gemm", "conv")}

    def _release(self) -> None:
        """Drop what packing made redundant and copy out views of the artifact's bytes
        (see the class docstring). A convolution run as numpy im2col + GEMM keeps its
        weights: it packs them for the GEMM when it is prepared."""
        for index in self._packed:
            step = self.plan.steps[index]
            if step.op == "conv" and _numpy_im2col(
                self._conv_params(index, step), bool(step.attrs["depthwise"])
            ):
                continue
            step.arrays.pop("weights", None)
            step.arrays.pop("bias", None)
        for step in self.plan.steps:
            table = step.arrays.get("table") if step.op == "embed" else None
            if table is not None and table.dtype == np.float32:  # a version-1 plan (see _prep_embed)
                qp = QuantParams.from_dict(step.attrs)
                step.arrays["table"] = kernels.quantize(table, qp.scale, qp.zero_point, qp.numpy_dtype)
            for key, value in step.arrays.items():
                if isinstance(value, np.ndarray) and not value.flags.owndata:
                    step.arrays[key] = value.copy()

    def _prepare(self, index: int, step: Step) -> Callable[[dict[str, Any], dict[str, Any]], None]:
        """A closure that runs ``step`` on the environment (and its buffer set)."""
        make = getattr(self, f"_prep_{step.op}", None)
        if make is None:
            raise UnsupportedOperatorError(f"plan step {index} ({step.node}): unknown step kind {step.op!r}")
        return make(index, step)

    # -- run ------------------------------------------------------------------

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float32 outputs (and integer ones as they are) for float/integer feeds by input name."""
        env, signature = self._feed_env(feeds)
        arenas, arena = self._acquire(signature)
        try:
            self._run_arena(env, arena)
            outputs: dict[str, np.ndarray] = {}
            given: set[str] = set()
            for io_ in self.plan.outputs:
                value = env[io_.buffer]
                # Exit dequantizations allocate per call; any other buffer is reused by the next call.
                fresh = io_.buffer in self._fresh_outputs and io_.buffer not in given
                outputs[io_.name] = value if fresh else np.array(value, copy=True)
                given.add(io_.buffer)
            return outputs
        finally:
            self._give_back(arenas, arena)

    def warm_up(self, feeds: Mapping[str, np.ndarray], callers: int = 1) -> None:
        """Binds ``callers`` buffer sets (at most ``_MAX_ARENAS``) for the shapes of ``feeds``,
        each with its C program, so that as many concurrent calls with those shapes all run
        compiled from the start (a buffer set's first call steps through the plan in Python)."""
        env, signature = self._feed_env(feeds)
        held: list[tuple[_Arenas, _Arena]] = []
        try:
            for _ in range(max(1, min(int(callers), _MAX_ARENAS))):
                held.append(self._acquire(signature))
            for _, arena in held:
                self._run_arena(dict(env), arena)
        finally:
            for arenas, arena in held:
                self._give_back(arenas, arena)

    def _feed_env(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], tuple]:
        """The environment a call starts from (the feeds by buffer name) and its signature."""
        if self._closed:
            raise KernelArgumentError("this NativeSession was closed")
        env: dict[str, Any] = {}
        for io_ in self.plan.inputs:
            if io_.name not in feeds:
                raise ModelInputError(
                    f"input {io_.name!r} missing; the plan expects {[i.name for i in self.plan.inputs]}"
                )
            value = np.asarray(feeds[io_.name])
            if io_.dtype == "float32":
                value = np.ascontiguousarray(value, dtype=np.float32)
            env[io_.buffer] = value
        return env, tuple((k, v.shape, v.dtype.char) for k, v in env.items())

    def _run_arena(self, env: dict[str, Any], arena: _Arena) -> None:
        """Runs the whole plan on one buffer set. The C programs use the session's thread pool
        when no other call holds it, else run on the calling thread (see the module docstring)."""
        serial = self._serial
        if serial is not None:
            serial.acquire()
        owner = self._pool_owner.acquire(blocking=False)
        pool = self._pool.handle if owner else ffi.NULL
        blas = self._blas
        # numpy's BLAS runs on one thread: its idle workers spin for a long time
        # after each product and would take the cores from this session's pool.
        if blas is not None:
            blas.hold()
        try:
            start = 0
            if self._split is not None:
                start = self._run_prefix_in_chunks(env, arena, pool)
            self._run_steps(env, arena, start, len(self._prepared), pool)
        finally:
            if blas is not None:
                blas.drop()
            if owner:
                self._pool_owner.release()
            if serial is not None:
                serial.release()

    def _acquire(self, signature: tuple) -> tuple[_Arenas, _Arena]:
        """A free buffer set for ``signature`` (a new one when all are in use, up to
        ``_MAX_ARENAS``; beyond that the call waits for one to be given back)."""
        with self._lock:
            if self._closed:
                raise KernelArgumentError("this NativeSession was closed")
            arenas = self._buffers.get(signature)
            if arenas is None:
                arenas = self._buffers[signature] = _Arenas()
                while len(self._buffers) > _MAX_SIGNATURES:
                    self._buffers.popitem(last=False)
            else:
                self._buffers.move_to_end(signature)
            while not arenas.free and arenas.count >= _MAX_ARENAS:
                self._idle.wait()
                if self._closed:
                    raise KernelArgumentError("this NativeSession was closed")
            self._calls += 1
            if arenas.free:
                return arenas, arenas.free.pop()
            arenas.count += 1
            return arenas, _Arena(len(self._prepared))

    def _give_back(self, arenas: _Arenas, arena: _Arena) -> None:
        with self._lock:
            arenas.free.append(arena)
            self._calls -= 1
            self._idle.notify_all()

    def _run_steps(self, env: dict[str, Any], arena: _Arena, start: int, stop: int, pool: Any) -> None:
        """Steps ``start`` to ``stop`` on one buffer set: through the buffer set's program for
        that range when it has one (C segments, one C call each, and the steps that stay in
        Python between them), else step by step in Python, which binds the buffer set and
        then compiles its program (so a signature's first call runs in Python)."""
        program = arena.programs.get((start, stop)) if _PROGRAMS else None
        if program is not None:
            stale = False
            for part in program.parts:
                if part.__class__ is int:
                    self._prepared[part](env, arena.slots[part])
                elif not part.run(env, pool):
                    # A tensor from Python changed shape (a data-dependent shape): bind afresh.
                    for i in range(part.start, part.stop):
                        self._prepared[i](env, arena.slots[i])
                    stale = True
            self.last_run = program.stats
            if not stale:
                return
        else:
            for i in range(start, stop):
                self._prepared[i](env, arena.slots[i])
        if _PROGRAMS:
            arena.programs[(start, stop)] = self._compile(env, arena, start, stop)

    def _run_prefix_in_chunks(self, env: dict[str, Any], arena: _Arena, pool: Any) -> int:
        """Runs the per-sample prefix (see :meth:`_find_batch_split`) on slices of the batch.

        A large batch run layer by layer over the whole batch would stream every early,
        high-resolution activation (MobileNetV2: 1.2 MB a sample at 112x112x96) through
        memory, as a batch of them does not fit in cache; slices of ``chunk`` samples
        keep them cached. The prefix steps do not mix samples, so the bits are those of
        the whole batch at once. Each slice shape has a buffer set (and C program) of its
        own inside ``arena``. Returns the index of the first step left to run (0 when the
        batch is not larger than a slice)."""
        prefix, cut, chunk, dynamic_c = self._split  # type: ignore[misc]
        (source,) = [io_.buffer for io_ in self.plan.inputs]
        x = env[source]
        batch = x.shape[0] if x.ndim else 0
        if dynamic_c and x.ndim == 4:  # symbolic height/width: size the slices on this input
            chunk = min(chunk, max(1, _CHUNK_BYTES // max(1, x.shape[2] * x.shape[3] * dynamic_c)))
        if batch <= chunk:
            return 0
        # The cut tensors are gathered into whole-batch buffers kept in this buffer set.
        gathered: dict[str, np.ndarray] = arena.slots[-1].setdefault("gathered", {})
        for lo in range(0, batch, chunk):
            hi = min(batch, lo + chunk)
            part = x[lo:hi]
            sub = {source: part}
            sub_arena = arena.slices.get(part.shape)
            if sub_arena is None:
                sub_arena = arena.slices[part.shape] = _Arena(len(self._prepared))
            self._run_steps(sub, sub_arena, 0, prefix, pool)
            for name in cut:
                value = sub[name]
                full = gathered.get(name)
                if full is None or full.shape != (batch, *value.shape[1:]) or full.dtype != value.dtype:
                    if value.ndim == 0 or value.shape[0] != hi - lo:
                        raise ShapeError(f"batch slicing: {name!r} is {value.shape}, not {hi - lo} rows")
                    full = gathered[name] = np.empty((batch, *value.shape[1:]), value.dtype)
                full[lo:hi] = value
        for name in cut:
            env[name] = gathered[name]
        return prefix

    def _compile(self, env: dict[str, Any], arena: _Arena, start: int, stop: int) -> _Program:
        """The program of steps ``start`` to ``stop`` on ``arena``, from a run that bound them
        (``env`` holds every tensor that run made). A step with ``ops`` (a function of the
        environment and its slot that gives its C calls, or None for this binding) joins the
        current C segment; an alias (a reshape view, a clamp fused into its add) joins it when
        its input is a buffer of that segment; any other step runs in Python and ends the segment."""
        parts: list = []
        specs: list = []
        stable: set[str] = set()
        publish: dict[str, np.ndarray] = {}
        first = start

        views: list[tuple[str, str, tuple[int, ...], np.dtype, tuple[int, ...]]] = []

        def close(i: int) -> None:
            nonlocal specs, stable, publish, views
            if specs or publish or views:
                # Only what a step outside the segment reads, or the plan returns, goes back to Python.
                seen = {
                    n: a
                    for n, a in publish.items()
                    if n in self._returned or any(j < first or j >= i for j in self._readers.get(n, ()))
                }
                parts.append(_Segment(first, i, specs, env, stable, seen, views))
            specs, stable, publish, views = [], set(), {}, []

        for i in range(start, stop):
            fn, step = self._prepared[i], self.plan.steps[i]
            ops = getattr(fn, "ops", None)
            alias = getattr(fn, "alias", None)
            found = None
            view = False
            if ops is not None:
                found = ops(env, arena.slots[i])
            elif alias is not None:
                # A view of its input with its own shape (the same bytes in the same order): of a
                # buffer of the segment, bound once; of a tensor from outside, made per call.
                x, y = env[alias], env[step.outputs[0]]
                if isinstance(x, np.ndarray) and y.size == x.size and y.dtype == x.dtype:
                    if alias in stable and x.flags.c_contiguous:
                        env[step.outputs[0]] = x.reshape(y.shape)
                        found = []
                    elif alias not in stable:
                        views.append((step.outputs[0], alias, x.shape, x.dtype, y.shape))
                        found, view = [], True
            if found is None:
                close(i)
                parts.append(i)
                first = i + 1
                continue
            fresh = {v.name for _, f in found for v in f.values() if isinstance(v, _Fresh)}
            specs.extend((fn.what if found else "", kind, fields) for kind, fields in found)
            for name in step.outputs:
                if name not in fresh and not view:
                    stable.add(name)
                    publish[name] = env[name]
        close(stop)
        return _Program(parts, stop - start)

    def _find_batch_split(self) -> tuple[int, tuple[str, ...], int, int] | None:
        """(prefix length, tensors it hands on, samples per slice, the most channels of a
        convolution with a symbolic input height/width), or None.

        The prefix is the leading run of steps that work sample by sample on NHWC
        tensors (entry quantization, convolutions, element-wise ops, pools) from the
        plan's single input; single-threaded sessions only. The slice size keeps the prefix's largest activation of a
        slice within about ``_CHUNK_BYTES``."""
        if len(self.plan.inputs) != 1 or self.threads != 1:
            # With several threads the kernels split each layer's rows between them, and a
            # slice's rows are too few for that to pay: MobileNetV2 batch 16 on 2 threads
            # took 2.4 ms a sample in slices of 1, 1.9 in slices of 4, 1.8 unsliced.
            return None
        steps = self.plan.steps
        prefix = 0
        largest = 0
        dynamic_c = 0
        for step in steps:
            if step.op not in _PER_SAMPLE_STEPS:
                break
            if step.op == "quantize" and (not step.attrs.get("perm") or step.attrs["perm"][0] != 0):
                break
            if step.op == "conv":
                h, w, c = step.attrs["input_hwc"]
                largest = max(largest, h * w * c)
                if step.attrs.get("dynamic_hw"):  # h, w are stand-ins: the slice is sized per call
                    dynamic_c = max(dynamic_c, c)
            prefix += 1
        if prefix < 2 or prefix == len(steps):
            return None
        produced = {name for step in steps[:prefix] for name in step.outputs}
        later = {name for step in steps[prefix:] for name in step.inputs if name}
        later |= {io_.buffer for io_ in self.plan.outputs}
        cut = tuple(sorted(produced & later))
        chunk = max(1, _CHUNK_BYTES // max(1, largest))
        return prefix, cut, chunk, dynamic_c

    def describe(self) -> dict[str, Any]:
        """ISA, threads, steps, op histogram, sparse layers, batch slicing and packed-cache outcome."""
        split = self._split
        return {
            "engine": "native",
            "isa": self.isa,
            "threads": self.threads,
            "steps": len(self.plan.steps),
            "ops": self.plan.op_histogram(),
            "sparse_layers": self.plan.sparse_layers(),
            "fused_activations": len(self._fused_clamps),
            "batch_slices": None if split is None else {"steps": split[0], "samples": split[2]},
            "packed_cache": {None: "disabled", True: "hit", False: "miss"}[self.cache_hit],
            "load_seconds": round(self.load_seconds, 4),
            "plan_sha256": self._plan_sha256(),
            "input_shapes_cached": len(self._buffers),
            "program": dict(self.last_run),
            "partition": self.partition(),
        }

    def partition(self) -> dict[str, Any]:
        """Which graph nodes run where and the share of MACs on native kernels
        (:func:`edge_runtime.plan.partition.partition_report`)."""
        from edge_runtime.plan.partition import partition_report

        return partition_report(self.plan, self._engines)

    def close(self) -> None:
        """Refuses new calls, waits for the calls in flight, then frees the buffers and the pool."""
        with self._lock:
            self._closed = True
            while self._calls:
                self._idle.wait()
            self._buffers.clear()
            self._pool.close()

    # -- peephole fusion ---------------------------------------------------------

    def _find_fusions(self) -> dict[int, tuple[int, int]]:
        """Clamp steps (Relu/Clip after a residual Add) folded into the add/mul before them.

        Returns {clamp step index: (lo, hi)} for every clamp whose input is produced by
        an add or mul step and read by nothing else (nor returned). The add/mul kernel
        then clamps to [lo, hi] itself: clamp(clamp(v, dtype range), lo, hi) is
        clamp(v, lo, hi) for lo, hi inside the dtype range, so the bits do not change.
        """
        steps = self.plan.steps
        readers = Counter(name for step in steps for name in step.inputs if name)
        returned = {io_.buffer for io_ in self.plan.outputs}
        producer: dict[str, int] = {}
        fused: dict[int, tuple[int, int]] = {}
        for index, step in enumerate(steps):
            if step.op == "clamp":
                src = step.inputs[0]
                j = producer.get(src)
                if (
                    j is not None
                    and steps[j].op in ("add", "mul")
                    and readers[src] == 1
                    and src not in returned
                ):
                    fused[index] = (int(step.attrs["lo"]), int(step.attrs["hi"]))
            for name in step.outputs:
                producer[name] = index
        return fused

    def _clamp_into(self, index: int) -> tuple[int, int] | None:
        """The (lo, hi) a fused clamp asks of step ``index`` (an add or mul), if any."""
        out = self.plan.steps[index].outputs[0]
        for j, bounds in self._fused_clamps.items():
            if self.plan.steps[j].inputs[0] == out:
                return bounds
        return None

    # -- step implementations -----------------------------------------------------
    # Each _prep_<op> returns fn(env, slot) that reads step.inputs from env and
    # writes step.outputs. ``slot`` is the step's own dict in the current buffer set
    # (one per input-shape signature): a step binds there, on its first call for that
    # signature, everything that depends on the shapes (output buffers, C parameter
    # structs, cffi pointers), after validating the shapes with the kernels' typed
    # errors. Later calls only check that the input's shape and dtype are the bound
    # ones and call the C function.

    def _prep_quantize(self, index: int, step: Step):
        qp = QuantParams.from_dict(step.attrs)
        perm = tuple(step.attrs["perm"]) if step.attrs.get("perm") else None
        (src,), (dst,) = step.inputs, step.outputs
        scale, zp, dtype = float(qp.scale), int(qp.zero_point), np.dtype(qp.numpy_dtype)
        code = DTYPES[dtype]
        what = f"{step.node}: quantize {src!r}"

        def bind(x: np.ndarray) -> tuple:
            if x.dtype != np.float32:
                raise KernelArgumentError(f"{what}: expected float32, got {x.dtype}")
            q = np.empty(x.shape, dtype)
            if perm is None:
                return x.shape, q, _address(q), q, None
            if len(perm) != x.ndim:
                raise ShapeError(f"{what}: expected a {len(perm)}-D input, got shape {x.shape}")
            stored = np.empty(tuple(x.shape[p] for p in perm), dtype)
            # NCHW -> NHWC of a few channels: channel planes copied into the strided
            # output are several times faster than numpy's transpose with a tiny last axis.
            planes = perm == (0, 2, 3, 1) and x.shape[1] <= 8
            return x.shape, q, _address(q), stored, planes

        def fn(env, slot):
            x = env[src]
            b = slot.get("b")
            if b is None or b[0] != x.shape:
                b = slot["b"] = bind(x)
            status = lib.edge_f32_q8_quantize(x.size, _floats(x), scale, zp, code, b[2], self._pool.handle)
            if status:
                check(status, what)
            q, stored = b[1], b[3]
            if b[4] is None:
                pass
            elif b[4]:
                for c in range(q.shape[1]):
                    stored[..., c] = q[:, c]
            else:
                np.copyto(stored, q.transpose(perm))
            env[dst] = stored

        def ops(env, slot):
            x, b = env[src], slot["b"]
            found = [("quantize", {"n": x.size, "x": _In(src), "scale": scale, "zero_point": zp, "dtype": code,
                                   "y": b[2]})]  # fmt: skip
            if b[4] is not None:
                found.append(_permute_op(b[1], perm, b[3]))
            return found

        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _prep_dequantize(self, index: int, step: Step):
        qp = QuantParams.from_dict(step.attrs)
        perm = step.attrs.get("perm")
        (src,), (dst,) = step.inputs, step.outputs
        scale, zp = float(qp.scale), int(qp.zero_point)
        what = f"{step.node}: dequantize {src!r}"
        self._fresh_outputs.add(dst)

        def fn(env, slot):
            x = env[src]
            x = np.ascontiguousarray(x.transpose(perm)) if perm else x
            if x.dtype not in _Q8 or not x.flags.c_contiguous:
                x = _q8(x, what)
            y = np.empty(x.shape, np.float32)
            status = lib.edge_q8_f32_dequantize(
                x.size, DTYPES[x.dtype], _address(x), scale, zp, _floats(y), self._pool.handle
            )
            if status:
                check(status, what)
            env[dst] = y

        def ops(env, slot):
            x = env[src]
            if x.dtype not in _Q8:
                return None
            found, source = [], _In(src)
            if perm:
                # The transpose into a buffer of this binding (the permuted tensor is contiguous).
                moved = slot.get("moved")
                if moved is None or moved.shape != tuple(x.shape[p] for p in perm) or moved.dtype != x.dtype:
                    moved = slot["moved"] = np.empty(tuple(x.shape[p] for p in perm), x.dtype)
                found.append(_permute_op(x, tuple(perm), moved, x_ptr=source))
                source = _address(moved)
            y = env[dst]
            found.append(("dequantize", {"n": x.size, "dtype": DTYPES[x.dtype], "x": source, "scale": scale,
                                         "zero_point": zp, "y": _Fresh(dst, y.shape)}))  # fmt: skip
            return found

        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _prep_transpose(self, index: int, step: Step):
        perm = tuple(step.attrs["perm"])
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, slot):
            x = env[src]
            out = slot.get("out")
            if out is None or out.shape != tuple(x.shape[p] for p in perm) or out.dtype != x.dtype:
                out = slot["out"] = np.empty(tuple(x.shape[p] for p in perm), x.dtype)
            np.copyto(out, x.transpose(perm))
            env[dst] = out

        def ops(env, slot):
            x = env[src]
            if x.ndim != len(perm) or x.ndim > _MAX_DIMS:
                return None
            return [_permute_op(x, perm, slot["out"], x_ptr=_In(src))]

        fn.ops, fn.what = ops, f"{step.node}: transpose"  # type: ignore[attr-defined]
        return fn

    def _requant(self, step: Step) -> kernels.Requant:
        return kernels.Requant(
            multiplier=np.ascontiguousarray(step.arrays["multiplier"], np.int32),
            shift=np.ascontiguousarray(step.arrays["shift"], np.int32),
            zero_point=int(step.attrs["zero_point"]),
            out_min=int(step.attrs["out_min"]),
            out_max=int(step.attrs["out_max"]),
        )

    def _prep_gemm(self, index: int, step: Step):
        rq = self._requant(step)
        n, k = self._weight_shapes[index]
        sparse = bool(step.attrs["sparse"])
        buffer = self._packed[index]
        packed: Any = (kernels.PackedGemm24 if sparse else kernels.PackedGemm)(n=n, k=k, buffer=buffer)
        run_c = lib.edge_q8_gemm24 if sparse else lib.edge_q8_gemm
        zp = int(step.attrs["a_zero_point"])
        out_dtype = np.dtype(step.attrs["out_dtype"])
        if out_dtype not in _OUT_DTYPES:
            raise KernelArgumentError(f"plan step {index} ({step.node}): gemm output dtype {out_dtype}")
        rq_struct = ffi.NULL if out_dtype == np.int32 else rq.struct()
        if rq_struct != ffi.NULL and (rq.multiplier.shape != (n,) or rq.shift.shape != (n,)):
            raise ShapeError(f"plan step {index} ({step.node}): requant arrays do not have {n} channels")
        packed_ptr, out_code, pool = _address(buffer), DTYPES[out_dtype], self._pool.handle
        (src,), (dst,) = step.inputs, step.outputs
        what = f"{step.node}: {'gemm24' if sparse else 'gemm'}"

        def bind(x: np.ndarray) -> tuple:
            if x.dtype not in _Q8:
                raise KernelArgumentError(f"{what}: input {src!r} must be uint8 or int8, got {x.dtype}")
            if x.ndim < 1 or x.shape[-1] != k:
                raise ShapeError(f"{what}: input {src!r} has shape {x.shape}, expected (..., {k}) as packed")
            m = x.size // k
            out = np.empty((m, n), out_dtype)
            return x.shape, x.dtype, m, DTYPES[x.dtype], out.reshape(*x.shape[:-1], n), _address(out)

        def fn(env, slot):
            x, b = _bind_input(env, src, slot, bind)
            status = run_c(
                b[2], n, k, b[3], _address(x), k, zp, packed_ptr, out_code, b[5], n, rq_struct, pool
            )
            if status:
                check(status, what)
            env[dst] = b[4]

        def ops(env, slot):
            b = slot["b"]
            return [("gemm24" if sparse else "gemm", {
                "m": b[2], "n": n, "k": k, "a_dtype": b[3], "a": _In(src), "a_stride": k, "a_zero_point": zp,
                "packed": packed_ptr, "c_dtype": out_code, "c": b[5], "c_stride": n, "requant": rq_struct,
            })]  # fmt: skip

        # Keep what the C side points into alive with the closure.
        fn.keep = (packed, rq)  # type: ignore[attr-defined]
        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _conv_params(self, index: int, step: Step) -> kernels.Conv2dParams:
        attrs = step.attrs
        h, w, c = attrs["input_hwc"]
        out_c, _, kernel_h, kernel_w = self._weight_shapes[index]
        return kernels.Conv2dParams(
            batch=1, in_h=h, in_w=w, in_c=c, out_c=out_c, kernel_h=kernel_h,
            kernel_w=kernel_w, stride=tuple(attrs["stride"]), padding=tuple(attrs["padding"]),
            dilation=tuple(attrs["dilation"]), groups=attrs["groups"],
        )  # fmt: skip

    def _prep_conv(self, index: int, step: Step):
        attrs = step.attrs
        rq = self._requant(step)
        params = self._conv_params(index, step)
        depthwise, sparse = bool(attrs["depthwise"]), bool(attrs.get("sparse"))
        buffer = self._packed[index]
        packed = kernels.PackedConv2d(params=params, buffer=buffer, depthwise=depthwise, sparse=sparse)
        zp = int(attrs["x_zero_point"])
        out_dtype = np.dtype(attrs["out_dtype"])
        rq_struct = rq.struct()
        packed_ptr, out_code, pool, pool_handle = (
            _address(buffer),
            DTYPES[out_dtype],
            self._pool,
            self._pool.handle,
        )
        (src,), (dst,) = step.inputs, step.outputs
        what = f"{step.node}: {step.kernel}"
        geometry = self._conv_geometry(index, step, params, packed)

        def bind(x: np.ndarray) -> tuple:
            # The wrappers' checks, once per buffer set: typed errors naming what is wrong.
            shaped, header = geometry(x)
            x, out, batch = _check_conv_io(x, shaped, zp, rq, out_dtype, None, what)
            c_params = replace(shaped.params, batch=batch).c_struct()
            size = 0 if depthwise else kernels.conv2d_workspace_size(shaped, batch, pool)
            workspace = aligned_empty(size) if size else None
            ws_ptr = ffi.NULL if workspace is None else _address(workspace)
            return (x.shape, x.dtype, c_params, DTYPES[x.dtype], out, _address(out), workspace, ws_ptr, size,
                    header)  # fmt: skip

        if _numpy_im2col(params, depthwise):
            return self._conv_as_gemm(step, params, step.arrays["weights"], geometry, rq, zp, out_dtype, what)
        dynamic = bool(attrs.get("dynamic_hw"))

        def use_header(header: np.ndarray | None) -> None:
            # The input geometry of this binding into the packed header (a dynamic_hw convolution;
            # the header is shared by every buffer set, so such a plan's calls take turns, see run()).
            if header is not None:
                buffer[: header.size] = header

        if depthwise:
            run_dw = lib.edge_q8_dwconv2d

            def fn(env, slot):
                x, b = _bind_input(env, src, slot, bind)
                if dynamic:
                    use_header(b[9])
                status = run_dw(
                    b[2], b[3], _address(x), zp, packed_ptr, out_code, b[5], rq_struct, pool_handle
                )
                if status:
                    check(status, what)
                env[dst] = b[4]

        else:
            run_conv = lib.edge_q8_conv2d24 if sparse else lib.edge_q8_conv2d

            def fn(env, slot):
                x, b = _bind_input(env, src, slot, bind)
                if dynamic:
                    use_header(b[9])
                status = run_conv(
                    b[2],
                    b[3],
                    _address(x),
                    zp,
                    packed_ptr,
                    out_code,
                    b[5],
                    rq_struct,
                    b[7],
                    b[8],
                    pool_handle,
                )
                if status:
                    check(status, what)
                env[dst] = b[4]

        kind = "dwconv2d" if depthwise else "conv2d24" if sparse else "conv2d"

        def ops(env, slot):
            b = slot["b"]
            found = []
            if dynamic and b[9] is not None:
                found.append(("copy", {"n": b[9].nbytes, "x": _address(b[9]), "y": packed_ptr}))
            found.append((kind, {
                "params": b[2], "x_dtype": b[3], "x": _In(src), "x_zero_point": zp, "packed": packed_ptr,
                "y_dtype": out_code, "y": b[5], "requant": rq_struct, "workspace": b[7], "workspace_size": b[8],
            }))  # fmt: skip
            return found

        fn.keep = (packed, rq)  # type: ignore[attr-defined]
        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _conv_geometry(
        self, index: int, step: Step, params: kernels.Conv2dParams, packed: kernels.PackedConv2d
    ):
        """``geometry(x) -> (packed for x's height and width, header bytes or None)``.

        A static convolution has one geometry, the packed one. A ``dynamic_hw`` one (a
        symbolic input height/width) gets, per input shape, its padding from the ONNX rule
        and the packed header for that geometry: the packed weights after the header do not
        depend on the input size, so one packed buffer serves every shape, its header
        rewritten when the shape changes (the C kernels check the header against the call)."""
        attrs = step.attrs
        if not attrs.get("dynamic_hw"):
            return lambda x: (packed, None)
        depthwise = packed.depthwise
        size = _DWCONV_HEADER_BYTES if depthwise else _CONV_HEADER_BYTES
        kernel = (params.kernel_h, params.kernel_w)

        def geometry(x: np.ndarray):
            if x.ndim != 4:
                raise ShapeError(f"{step.node}: {step.kernel}: x must be NHWC (4-D), got shape {x.shape}")
            hw = (int(x.shape[1]), int(x.shape[2]))
            pads = _dynamic_padding(attrs, hw, kernel, params.stride, params.dilation)
            shaped = replace(params, in_h=hw[0], in_w=hw[1], padding=tuple(pads))
            shaped.output_size()  # ShapeError for an input too small for the kernel
            zeros = np.zeros(self._weight_shapes[index], np.int8)
            if depthwise:
                dummy = kernels.pack_dwconv2d(zeros, input_shape=(1, *hw, params.in_c), stride=params.stride[0],
                                              padding=pads)  # fmt: skip
            else:
                pack = pack_conv2d24 if packed.sparse else kernels.pack_conv2d
                dummy = pack(zeros, input_shape=(1, *hw, params.in_c), stride=params.stride, padding=tuple(pads),
                             dilation=params.dilation, groups=params.groups)  # fmt: skip
            header = dummy.buffer[:size].copy()
            if header[:8].tobytes() != packed.buffer[:8].tobytes():
                raise KernelArgumentError(f"{step.node}: the packed weights are not of this kernel's format")
            shaped_packed = kernels.PackedConv2d(params=shaped, buffer=packed.buffer, depthwise=depthwise,
                                                 sparse=packed.sparse)  # fmt: skip
            return shaped_packed, header

        return geometry

    def _conv_as_gemm(self, step, params, weights, geometry, rq, zp, out_dtype, what):
        """A convolution with few input channels (an image stem: 3 channels, 7x7) as numpy
        im2col + the dense GEMM. The kernel's im2col copies one input channel run per tap
        (3 bytes here); numpy copies a whole row of taps at once (kernel_w * channels
        contiguous bytes). Same integer products and requantization: the same bits. A 2:4
        convolution runs its 2:4 GEMM the same way."""
        p = params
        (src,), (dst,) = step.inputs, step.outputs
        k = p.kernel_h * p.kernel_w * p.in_c
        # Weights in the im2col order (ky, kx, c), as the C convolution packs them.
        flat = np.ascontiguousarray(weights.transpose(0, 2, 3, 1).reshape(p.out_c, k))
        sparse = step.attrs.get("sparse")
        gemm_packed = (kernels.pack_gemm24 if sparse else kernels.pack_gemm)(flat, step.arrays["bias"])
        run_gemm = lib.edge_q8_gemm24 if sparse else lib.edge_q8_gemm
        gemm_ptr, out_code, pool = _address(gemm_packed.buffer), DTYPES[out_dtype], self._pool.handle
        rq_struct = rq.struct()
        sh, sw = p.stride

        def bind(x: np.ndarray) -> tuple:
            packed, _ = geometry(x)
            g = packed.params
            top, left, bottom, right = g.padding
            x, out, batch = _check_conv_io(x, packed, zp, rq, out_dtype, None, what)
            out_h, out_w = out.shape[1:3]
            padded = np.full((batch, g.in_h + top + bottom, g.in_w + left + right, g.in_c), zp, x.dtype)
            n_s, h_s, w_s, _ = padded.strides
            taps = np.lib.stride_tricks.as_strided(
                padded,
                (batch, out_h, out_w, g.kernel_h, g.kernel_w * g.in_c),
                (n_s, h_s * sh, w_s * sw, h_s, 1),
            )
            a = np.empty((batch * out_h * out_w, k), x.dtype)
            inner = padded[:, top : top + g.in_h, left : left + g.in_w, :]
            geometry_c = {
                "batch": batch,
                "in_h": g.in_h,
                "in_w": g.in_w,
                "channels": g.in_c,
                "padded_h": padded.shape[1],
                "padded_w": padded.shape[2],
                "pad_top": top,
                "pad_left": left,
                "out_h": out_h,
                "out_w": out_w,
                "kernel_h": g.kernel_h,
                "kernel_w": g.kernel_w,
                "stride_h": sh,
                "stride_w": sw,
            }
            return (x.shape, x.dtype, inner, taps, a.reshape(taps.shape), DTYPES[x.dtype], _address(a),
                    a.shape[0], out, _address(out), padded, geometry_c)  # fmt: skip

        def fn(env, slot):
            x = env[src]
            b = slot.get("b")
            if b is None or b[0] != x.shape or b[1] != x.dtype:
                b = slot["b"] = bind(x)
            np.copyto(b[2], x)
            np.copyto(b[4], b[3])
            status = run_gemm(
                b[7], p.out_c, k, b[5], b[6], k, zp, gemm_ptr, out_code, b[9], p.out_c, rq_struct, pool
            )
            if status:
                check(status, what)
            env[dst] = b[8]

        def ops(env, slot):
            b = slot["b"]
            return [
                ("im2col", {**b[11], "x": _In(src), "padded": _address(b[10]), "a": b[6]}),
                ("gemm24" if sparse else "gemm", {
                    "m": b[7], "n": p.out_c, "k": k, "a_dtype": b[5], "a": b[6], "a_stride": k, "a_zero_point": zp,
                    "packed": gemm_ptr, "c_dtype": out_code, "c": b[9], "c_stride": p.out_c, "requant": rq_struct,
                }),
            ]  # fmt: skip

        fn.keep = (gemm_packed, rq)  # type: ignore[attr-defined]
        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _prep_add(self, index: int, step: Step):
        return self._binary(index, step, "add")

    def _prep_mul(self, index: int, step: Step):
        return self._binary(index, step, "mul")

    def _binary(self, index: int, step: Step, op: str):
        a = step.attrs
        scales = (
            float(a["a_scale"]), int(a["a_zero_point"]), float(a["b_scale"]), int(a["b_zero_point"]),
            float(a["y_scale"]), int(a["y_zero_point"]),
        )  # fmt: skip
        bounds = self._clamp_into(index)
        const = step.arrays.get("constant")
        if const is not None:
            const = np.ascontiguousarray(const)
        first = bool(a.get("constant_first"))
        init = lib.edge_q8_add_params_init if op == "add" else lib.edge_q8_mul_params_init
        run_c = lib.edge_q8_add if op == "add" else lib.edge_q8_mul
        inputs, (dst,) = step.inputs, step.outputs
        what = f"{step.node}: {op}"

        def float_binary(x: np.ndarray, y: np.ndarray, lo: int, hi: int) -> np.ndarray:
            fa = kernels.dequantize(np.ascontiguousarray(x), scales[0], scales[1])
            fb = kernels.dequantize(np.ascontiguousarray(y), scales[2], scales[3])
            r = np.ascontiguousarray(fa + fb if op == "add" else fa * fb, dtype=np.float32)
            q = kernels.quantize(r, scales[4], scales[5], x.dtype)
            return np.clip(q, np.array(lo, x.dtype), np.array(hi, x.dtype), out=q)

        def bind(x: np.ndarray, y: np.ndarray) -> tuple:
            x, y = _q8(x, f"{what}: a"), _q8(y, f"{what}: b")
            if x.dtype != y.dtype:
                raise KernelArgumentError(
                    f"{what}: a and b must have the same dtype, got {x.dtype} and {y.dtype}"
                )
            lo, hi = dtype_range(x.dtype)
            if bounds is not None:
                lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
            samples = (1, 0, 0, 0)  # (count, bytes between samples of a, of b, of y)
            try:
                shape, rows, cols, (a_row, a_col), (b_row, b_col) = _broadcast_layout(x, y, what)
            except ShapeError:
                try:
                    np.broadcast_shapes(x.shape, y.shape)
                except ValueError:
                    raise ShapeError(f"{what}: shapes {x.shape} and {y.shape} do not broadcast") from None
                try:
                    # Each sample its own row (an SE gate [N, 1, 1, C] over [N, H, W, C], N > 1):
                    # the kernel's broadcast once per sample.
                    if const is not None or x.ndim != y.ndim or x.shape[0] != y.shape[0] or x.shape[0] < 2:
                        raise ShapeError(what)
                    one, rows, cols, (a_row, a_col), (b_row, b_col) = _broadcast_layout(x[:1], y[:1], what)
                except ShapeError:
                    # A broadcast the kernel does not run (shapes the lowering could not see, e.g.
                    # symbolic dims): dequantize, compute and quantize in float for this shape.
                    return x.shape, y.shape, x.dtype, None, (lo, hi)
                shape = (x.shape[0], *one[1:])
                samples = (x.shape[0], x[0].size, y[0].size, int(np.prod(one)))
            params = ffi.new(f"edge_q8_{op}_params *")
            check(init(*scales, lo, hi, params), f"{what} parameters")
            out = np.empty(shape, x.dtype)
            return (x.shape, y.shape, x.dtype, rows, cols, DTYPES[x.dtype], a_row, a_col, b_row, b_col,
                    out, _address(out), params, samples)  # fmt: skip

        def fn(env, slot):
            if const is None:
                x, y = env[inputs[0]], env[inputs[1]]
            elif first:
                x, y = const, env[inputs[0]]
            else:
                x, y = env[inputs[0]], const
            b = slot.get("b")
            if b is None or b[0] != x.shape or b[1] != y.shape or b[2] != x.dtype:
                b = slot["b"] = bind(x, y)
            if not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            if b[3] is None:
                env[dst] = float_binary(x, y, *b[4])
                return
            if not y.flags.c_contiguous:
                y = np.ascontiguousarray(y)
            count, xs, ys, outs = b[13]
            xp, yp = _address(x), _address(y)
            for i in range(count):
                status = run_c(
                    b[3], b[4], b[5], _offset(xp, i * xs), b[6], b[7], _offset(yp, i * ys), b[8], b[9],
                    _offset(b[11], i * outs), b[12], self._pool.handle,
                )  # fmt: skip
                if status:
                    check(status, what)
            env[dst] = b[10]

        def operand(i: int, offset: int):
            # The constant operand, or the tensor's data (``offset`` bytes in: a sample's).
            if const is None:
                return _In(inputs[i], offset)
            if (i == 0) == first:
                return _address(const)
            return _In(inputs[0], offset)

        def ops(env, slot):
            b = slot["b"]
            if b[3] is None:
                return None  # the float path of this binding
            count, xs, ys, outs = b[13]
            return [(op, {
                "rows": b[3], "cols": b[4], "dtype": b[5], "a": operand(0, i * xs), "a_row_stride": b[6],
                "a_col_stride": b[7], "b": operand(1, i * ys), "b_row_stride": b[8], "b_col_stride": b[9],
                "y": _offset(b[11], i * outs), "params": b[12],
            }) for i in range(count)]  # fmt: skip

        fn.keep = const  # type: ignore[attr-defined]
        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _prep_lut(self, index: int, step: Step):
        table = np.ascontiguousarray(step.arrays["table"])
        if table.dtype != np.uint8 or table.shape != (256,):
            raise KernelArgumentError(
                f"plan step {index} ({step.node}): a lookup table must be 256 uint8 bytes"
            )
        table_ptr = ffi.from_buffer("uint8_t[]", table)
        (src,), (dst,) = step.inputs, step.outputs
        what = f"{step.node}: lut"

        def fn(env, slot):
            x = env[src]
            out = slot.get("out")
            if out is None or out.shape != x.shape or out.dtype != x.dtype:
                _q8(x, f"{what}: x")
                out = slot["out"] = np.empty(x.shape, x.dtype)
                slot["ptr"] = _address(out)
            if not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            status = lib.edge_q8_lut(x.size, table_ptr, _address(x), slot["ptr"], self._pool.handle)
            if status:
                check(status, what)
            env[dst] = out

        def ops(env, slot):
            return [("lut", {"n": env[src].size, "table": table_ptr, "x": _In(src), "y": slot["ptr"]})]

        fn.keep = table  # type: ignore[attr-defined]
        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _prep_lut_channels(self, index: int, step: Step):
        """One 256-entry table per channel along the stored axis ``axis`` (default the last): a
        per-channel PRelu, or an op of a map and a per-channel constant."""
        tables = np.ascontiguousarray(step.arrays["tables"])
        if tables.dtype != np.uint8 or tables.ndim != 2 or tables.shape[1] != 256:
            raise KernelArgumentError(
                f"plan step {index} ({step.node}): per-channel tables must be uint8 of shape (channels, 256)"
            )
        tables_ptr = ffi.from_buffer("uint8_t[]", tables)
        channels = tables.shape[0]
        axis = int(step.attrs.get("axis", -1))
        (src,), (dst,) = step.inputs, step.outputs
        what = f"{step.node}: lut_channels"

        def fn(env, slot):
            x = env[src]
            out = slot.get("out")
            if out is None or out.shape != x.shape or out.dtype != x.dtype:
                _q8(x, f"{what}: x")
                if not -x.ndim <= axis < x.ndim or x.shape[axis] != channels:
                    raise ShapeError(
                        f"{what}: input of shape {x.shape} for {channels} channels along axis {axis}"
                    )
                out = slot["out"] = np.empty(x.shape, x.dtype)
                slot["ptr"] = _address(out)
                a = axis % x.ndim
                slot["dims"] = (int(np.prod(x.shape[:a])), int(np.prod(x.shape[a + 1 :])))
            if not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            outer, inner = slot["dims"]
            status = lib.edge_q8_lut_channels(
                outer, channels, inner, tables_ptr, _address(x), slot["ptr"], self._pool.handle
            )
            if status:
                check(status, what)
            env[dst] = out

        def ops(env, slot):
            outer, inner = slot["dims"]
            return [("lut_channels", {"outer": outer, "channels": channels, "inner": inner, "tables": tables_ptr,
                                      "x": _In(src), "y": slot["ptr"]})]  # fmt: skip

        fn.keep = tables  # type: ignore[attr-defined]
        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _prep_clamp(self, index: int, step: Step):
        (src,), (dst,) = step.inputs, step.outputs
        if index in self._fused_clamps:  # done by the add/mul that produced src

            def alias(env, slot):
                env[dst] = env[src]

            alias.alias = src  # type: ignore[attr-defined]
            return alias
        lo, hi = step.attrs["lo"], step.attrs["hi"]

        def fn(env, slot):
            x = env[src]
            out = slot.get("out")
            if out is None or out.shape != x.shape or out.dtype != x.dtype:
                out = slot["out"] = np.empty(x.shape, x.dtype)
            env[dst] = np.clip(x, np.array(lo, x.dtype), np.array(hi, x.dtype), out=out)

        def ops(env, slot):
            x = env[src]
            if x.dtype not in _Q8:
                return None
            info = np.iinfo(x.dtype)
            if not (info.min <= lo <= info.max and info.min <= hi <= info.max):
                return None
            return [("clamp", {"n": x.size, "dtype": DTYPES[x.dtype], "x": _In(src), "y": _address(slot["out"]),
                               "lo": int(lo), "hi": int(hi)})]  # fmt: skip

        fn.ops, fn.what = ops, f"{step.node}: clamp"  # type: ignore[attr-defined]
        return fn

    def _prep_maxpool(self, index: int, step: Step):
        a = step.attrs
        (src,), (dst,) = step.inputs, step.outputs
        what = f"{step.node}: maxpool2d"

        padding = self._pool_padding(step)

        def bind(x: np.ndarray) -> tuple:
            x = _q8(x, f"{what}: x")
            params, shape = _pool_params(x, a["kernel"], a["stride"], padding(x), a["dilation"], False, what)
            out = np.empty(shape, x.dtype)
            return x.shape, x.dtype, params, DTYPES[x.dtype], out, _address(out)

        def fn(env, slot):
            x, b = _bind_input(env, src, slot, bind)
            status = lib.edge_q8_maxpool2d(b[2], b[3], _address(x), b[5], self._pool.handle)
            if status:
                check(status, what)
            env[dst] = b[4]

        def ops(env, slot):
            b = slot["b"]
            return [("maxpool2d", {"params": b[2], "dtype": b[3], "x": _In(src), "y": b[5]})]

        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _prep_avgpool(self, index: int, step: Step):
        a = step.attrs
        (src,), (dst,) = step.inputs, step.outputs
        padding = self._pool_padding(step)
        x_scale, x_zp = float(a["x_scale"]), int(a["x_zero_point"])
        y_scale, y_zp = float(a["y_scale"]), int(a["y_zero_point"])
        what = f"{step.node}: avgpool2d"

        def bind(x: np.ndarray) -> tuple:
            x = _q8(x, f"{what}: x")
            params, shape = _pool_params(
                x, a["kernel"], a["stride"], padding(x), a["dilation"], a["count_include_pad"], what
            )
            out = np.empty(shape, x.dtype)
            return x.shape, x.dtype, params, DTYPES[x.dtype], out, _address(out), dtype_range(x.dtype)

        def fn(env, slot):
            x, b = _bind_input(env, src, slot, bind)
            lo, hi = b[6]
            status = lib.edge_q8_avgpool2d(
                b[2], b[3], _address(x), x_scale, x_zp, b[5], y_scale, y_zp, lo, hi, self._pool.handle
            )
            if status:
                check(status, what)
            env[dst] = b[4]

        def ops(env, slot):
            b = slot["b"]
            return [("avgpool2d", {
                "params": b[2], "dtype": b[3], "x": _In(src), "x_scale": x_scale, "x_zero_point": x_zp, "y": b[5],
                "y_scale": y_scale, "y_zero_point": y_zp, "y_min": b[6][0], "y_max": b[6][1],
            })]  # fmt: skip

        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    @staticmethod
    def _pool_padding(step: Step) -> Callable[[np.ndarray], list[int]]:
        """``padding(x)`` for a pool on NHWC ``x``: the plan's, or for a ``dynamic_hw`` pool
        the ONNX rule applied to x's height and width."""
        a = step.attrs
        if not a.get("dynamic_hw"):
            return lambda x: a["padding"]

        def padding(x: np.ndarray) -> list[int]:
            if x.ndim != 4:
                raise ShapeError(f"{step.node}: pool input must be NHWC (4-D), got shape {x.shape}")
            return _dynamic_padding(
                a, (int(x.shape[1]), int(x.shape[2])), a["kernel"], a["stride"], a["dilation"]
            )

        return padding

    def _prep_global_avgpool(self, index: int, step: Step):
        a = step.attrs
        x_scale, x_zp = float(a["x_scale"]), int(a["x_zero_point"])
        y_scale, y_zp = float(a["y_scale"]), int(a["y_zero_point"])
        (src,), (dst,) = step.inputs, step.outputs
        what = f"{step.node}: global_avgpool"

        def bind(x: np.ndarray) -> tuple:
            x = _q8(x, f"{what}: x")
            if x.ndim != 4:
                raise ShapeError(f"{what}: x must be NHWC (4-D), got shape {x.shape}")
            n, h, w, c = x.shape
            lo, hi = dtype_range(x.dtype)
            out = np.empty((n, 1, 1, c), x.dtype)
            return x.shape, x.dtype, (n, h * w, c, DTYPES[x.dtype]), (lo, hi), out, _address(out)

        def fn(env, slot):
            x, b = _bind_input(env, src, slot, bind)
            status = lib.edge_q8_global_avgpool(
                *b[2], _address(x), x_scale, x_zp, b[5], y_scale, y_zp, *b[3], self._pool.handle
            )
            if status:
                check(status, what)
            env[dst] = b[4]

        def ops(env, slot):
            b = slot["b"]
            (batch, hw, channels, code), (lo, hi) = b[2], b[3]
            return [("global_avgpool", {
                "batch": batch, "hw": hw, "channels": channels, "dtype": code, "x": _In(src), "x_scale": x_scale,
                "x_zero_point": x_zp, "y": b[5], "y_scale": y_scale, "y_zero_point": y_zp, "y_min": lo, "y_max": hi,
            })]  # fmt: skip

        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    def _prep_concat(self, index: int, step: Step):
        axis = step.attrs["axis"]
        inputs, (dst,) = step.inputs, step.outputs

        def fn(env, slot):
            env[dst] = np.concatenate([env[n] for n in inputs], axis=axis)

        return fn

    def _node(self, step: Step) -> tuple[Node, list[str], list[Any]]:
        node = Node(
            step.attrs["node_op"],
            step.node,
            list(step.inputs),
            list(step.outputs),
            dict(step.attrs["node_attrs"]),
        )
        constants = [step.arrays.get(f"input{i}") for i in range(len(step.inputs))]
        return node, step.inputs, constants

    def _prep_move(self, index: int, step: Step):
        node, inputs, constants = self._node(step)
        (dst,) = step.outputs
        if node.op_type in _RESHAPES and inputs[0] and not any(inputs[1:]):
            # A pure reshape with constant arguments: the reference op decides the output
            # shape once per input shape; later calls reshape the same way (a view).
            src = inputs[0]

            def reshape(env, slot):
                x = env[src]
                shapes = slot.get("shapes")
                if shapes is None or shapes[0] != x.shape:
                    (y,) = evaluate_node(node, [x, *constants[1:]])
                    slot["shapes"] = (x.shape, y.shape)
                    env[dst] = y
                    return
                env[dst] = x.reshape(shapes[1])

            reshape.alias = src  # type: ignore[attr-defined]
            return reshape

        def fn(env, slot):
            values = [env[n] if n else c for n, c in zip(inputs, constants)]
            (env[dst],) = evaluate_node(node, values)

        if node.op_type == "Transpose" and len(inputs) == 1 and inputs[0]:
            src = inputs[0]

            def ops(env, slot):
                # The transpose into a buffer of this binding, which the C segment then fills
                # per call (seeded with this call's result: it may be returned as it is).
                x, y = env[src], env[dst]
                perm = node.attrs.get("perm") or list(range(x.ndim))[::-1]
                if x.ndim > _MAX_DIMS or x.dtype not in _Q8 or y.shape != tuple(x.shape[p] for p in perm):
                    return None
                out = slot.get("out")
                if out is None or out.shape != y.shape or out.dtype != y.dtype:
                    out = slot["out"] = np.empty(y.shape, y.dtype)
                np.copyto(out, y)
                env[dst] = out
                return [_permute_op(x, tuple(int(p) for p in perm), out, x_ptr=_In(src))]

            fn.ops, fn.what = ops, f"{step.node}: transpose"  # type: ignore[attr-defined]
        elif node.op_type in ("Slice", "DepthToSpace", "Resize") and inputs[0] and not any(inputs[1:]):
            src = inputs[0]

            def view_ops(env, slot):
                # A move whose output is a strided view of x (a slice from x's first element, as
                # the stride-2 subsampling after a stride-1 convolution for PaddleOCR's (2, 1)
                # strides; a depth-to-space; a nearest upsampling): the permute op copies the view
                # with its strides into a buffer of this binding (seeded as above). The view is
                # checked once against the reference op's result of this binding.
                x, y = env[src], env[dst]
                if x.dtype not in _Q8 or not x.flags.c_contiguous or y.size == 0:
                    return None
                view = _move_view(node, [x, *constants[1:]])
                if view is None or view.size != y.size:
                    return None
                start = view.__array_interface__["data"][0] - x.__array_interface__["data"][0]
                if not 0 <= start < x.nbytes:
                    return None
                dims = _strided_dims(view)
                if len(dims) > _MAX_DIMS or min(stride for _, stride in dims) < 0:
                    return None
                if not np.array_equal(view.reshape(y.shape), y):
                    return None
                out = slot.get("out")
                if out is None or out.shape != y.shape or out.dtype != y.dtype:
                    out = slot["out"] = np.empty(y.shape, y.dtype)
                np.copyto(out, y)
                env[dst] = out
                pad = [0] * (_MAX_DIMS - len(dims))
                return [("permute", {
                    "ndim": len(dims), "element_size": 1, "shape": [n for n, _ in dims] + pad,
                    "x_strides": [stride for _, stride in dims] + pad, "x": _In(src, start), "y": _address(out),
                })]  # fmt: skip

            fn.ops, fn.what = view_ops, f"{step.node}: {node.op_type.lower()}"  # type: ignore[attr-defined]
        return fn

    def _prep_embed(self, index: int, step: Step):
        axis = int(step.attrs["axis"])
        qp = QuantParams.from_dict(step.attrs)
        table = step.arrays["table"]
        if table.dtype == np.float32:
            # A version-1 plan: quantize the float table once (element-wise, so gathering
            # quantized rows gives the bits of quantizing gathered float rows).
            table = kernels.quantize(np.ascontiguousarray(table), qp.scale, qp.zero_point, qp.numpy_dtype)
        elif table.dtype != qp.numpy_dtype:
            raise KernelArgumentError(
                f"plan step {index} ({step.node}): embedding table is {table.dtype}, its output {qp.numpy_dtype}"
            )
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, slot):
            idx = np.asarray(env[src], dtype=np.int64)
            idx = np.where(idx < 0, idx + table.shape[axis], idx)
            if idx.size and (idx.min() < 0 or idx.max() >= table.shape[axis]):
                raise ModelInputError(
                    f"{step.node}: indices out of range for a table of {table.shape[axis]} rows"
                )
            env[dst] = np.take(table, idx, axis=axis)

        return fn

    def _float_step(self, step: Step, compute: Callable[[list[Any]], np.ndarray]):
        in_params = [None if p is None else QuantParams.from_dict(p) for p in step.attrs["in_params"]]
        out = QuantParams.from_dict(step.attrs["out_params"])
        constants = [step.arrays.get(f"input{i}") for i in range(len(step.inputs))]
        inputs, (dst,) = step.inputs, step.outputs
        # Per input: its constant, or None for an integer buffer, or (scale, zero_point).
        plan = [
            (const, None if qp is None else (qp.scale, qp.zero_point))
            for qp, const in zip(in_params, constants)
        ]
        out_scale, out_zp, out_dtype = out.scale, out.zero_point, out.numpy_dtype

        def fn(env, slot):
            values = []
            for name, (const, deq) in zip(inputs, plan):
                if not name:
                    values.append(const)
                elif deq is None:
                    values.append(env[name])
                else:
                    values.append(kernels.dequantize(env[name], deq[0], deq[1]))
            y = np.ascontiguousarray(compute(values), dtype=np.float32)
            env[dst] = kernels.quantize(y, out_scale, out_zp, out_dtype)

        return fn

    def _prep_subgraph(self, index: int, step: Step):
        """Nodes the native kernels cannot run, in float32 on onnxruntime or the reference
        executor (see edge_runtime.plan.partition): quantized inputs are dequantized, float
        outputs read by native steps are quantized with their parameters."""
        from edge_runtime.plan.partition import SegmentRunner

        runner = SegmentRunner(step.attrs, step.arrays, self.threads)
        self._engines[index] = runner.engine
        inputs, outputs = step.inputs, step.outputs
        in_params = [None if p is None else QuantParams.from_dict(p) for p in step.attrs["in_params"]]
        out_params = [None if p is None else QuantParams.from_dict(p) for p in step.attrs["out_params"]]
        if len(in_params) != len(inputs) or len(out_params) != len(outputs):
            raise KernelArgumentError(f"plan step {index} ({step.node}): subgraph parameters do not match")

        def fn(env, slot):
            values = []
            for name, qp in zip(inputs, in_params):
                value = env[name]
                if qp is not None:
                    value = kernels.dequantize(np.ascontiguousarray(value), qp.scale, qp.zero_point)
                values.append(value)
            for name, qp, value in zip(outputs, out_params, runner(values)):
                if qp is not None:
                    value = kernels.quantize(
                        np.ascontiguousarray(value, np.float32), qp.scale, qp.zero_point, qp.numpy_dtype
                    )
                env[name] = value

        fn.keep = runner  # type: ignore[attr-defined]
        return fn

    def _prep_float(self, index: int, step: Step):
        node, _, _ = self._node(step)
        return self._float_step(step, lambda values: evaluate_node(node, values)[0])

    def _prep_matmul(self, index: int, step: Step):
        # np.matmul on float32 stacks is one BLAS sgemm per matrix (run() keeps BLAS on one thread).
        return self._float_step(
            step,
            lambda v: np.matmul(v[0].astype(np.float32, copy=False), v[1].astype(np.float32, copy=False)),
        )

    def _prep_softmax(self, index: int, step: Step):
        axis = int(step.attrs["node_attrs"].get("axis", -1))

        def compute(values):
            x = values[0]
            if axis in (-1, x.ndim - 1):
                return kernels.softmax(x)
            x = np.moveaxis(x, axis, -1)
            return np.moveaxis(kernels.softmax(x), -1, axis)

        fn = self._float_step(step, compute)
        if len(step.inputs) != 1 or not step.inputs[0]:
            return fn
        (src,), (dst,) = step.inputs, step.outputs
        in_qp = step.attrs["in_params"][0]
        out = QuantParams.from_dict(step.attrs["out_params"])

        def ops(env, slot):
            # Over the last axis of a quantized input (a classifier's output): the same three
            # kernels as the Python path, dequantize -> softmax -> quantize, into buffers of
            # this binding (the output seeded with this call's result, which may be returned).
            x, y = env[src], env[dst]
            if in_qp is None or x.dtype not in _Q8 or x.ndim == 0 or axis not in (-1, x.ndim - 1):
                return None
            if y.shape != x.shape or y.dtype != out.numpy_dtype or x.size >= 2**31:
                return None
            b = slot.get("softmax")
            if b is None or b[0].shape != x.shape:
                b = slot["softmax"] = (np.empty(x.shape, np.float32), np.empty(x.shape, np.float32),
                                       np.empty(x.shape, y.dtype))  # fmt: skip
            floats, probs, q = b
            np.copyto(q, y)
            env[dst] = q
            cols = x.shape[-1]
            return [
                ("dequantize", {"n": x.size, "dtype": DTYPES[x.dtype], "x": _In(src), "scale": float(in_qp["scale"]),
                                "zero_point": int(in_qp["zero_point"]), "y": _address(floats)}),
                ("softmax", {"rows": x.size // cols if cols else 0, "cols": cols, "x": _address(floats),
                             "y": _address(probs)}),
                ("quantize", {"n": x.size, "x": _address(probs), "scale": out.scale, "zero_point": out.zero_point,
                              "dtype": DTYPES[q.dtype], "y": _address(q)}),
            ]  # fmt: skip

        fn.ops, fn.what = ops, f"{step.node}: softmax"  # type: ignore[attr-defined]
        return fn

    def _prep_attention(self, index: int, step: Step):
        """softmax(Q.K^T * scale + mask).V (see lower._attention_chains): on the int8
        attention kernel, or in float32 (the scale folded into Q's dequantization) when
        Q, K^T, V and the output are not quantized alike."""
        (q, kt, mask, v), (dst,) = step.inputs, step.outputs
        in_params = [None if p is None else QuantParams.from_dict(p) for p in step.attrs["in_params"]]
        mask_constant = step.arrays.get("input2")
        scale = float(step.attrs["scale"])
        out = QuantParams.from_dict(step.attrs["out_params"])
        out_scale, out_zp, out_dtype = out.scale, out.zero_point, out.numpy_dtype

        def floats(env, i: int, name: str, factor: float = 1.0) -> np.ndarray:
            qp = in_params[i]
            if qp is None:  # an integer tensor used as a number
                return np.asarray(env[name], np.float32) * np.float32(factor)
            return kernels.dequantize(env[name], qp.scale * factor, qp.zero_point)

        # Q, K^T, V and the output quantized alike: the int8 attention kernel (int8 products,
        # float softmax); anything else: float32 products on dequantized inputs.
        coded = [in_params[0], in_params[1], in_params[3], out]
        int8 = all(p is not None for p in coded) and len({p.dtype for p in coded}) == 1
        params = tuple((p.scale, p.zero_point) for p in coded) if int8 else ()
        pool = self._pool

        def fn_int8(env, slot):
            xs = [env[q], env[kt], env[v]]
            b = slot.get("b")
            if b is None or b[0] != tuple(x.shape for x in xs):
                if any(x.ndim != 4 for x in xs):
                    raise ShapeError(
                        f"{step.node}: attention expects 4-D Q, K^T, V, got {[x.shape for x in xs]}"
                    )
                size = kernels.attention_workspace_size(xs[0].shape, xs[1].shape[3], pool.num_threads)
                b = slot["b"] = (tuple(x.shape for x in xs), aligned_empty(size))
            m = floats(env, 2, mask) if mask else mask_constant
            if m is not None and not m.any():  # no padding: nothing to add (see below)
                m = None
            env[dst] = kernels.attention(*xs, params, scale, m, pool=pool, workspace=b[1])

        def ops_int8(env, slot):
            # Bound here: the output, the float mask (dequantized per call from a quantized mask
            # tensor; always added, where the Python path skips a mask of zeros: adding 0.0 to a
            # score leaves it as it is) and the kernel's parameter struct.
            xs = [env[q], env[kt], env[v]]
            if any(x.ndim != 4 or x.dtype != xs[0].dtype or x.dtype not in _Q8 for x in xs):
                return None
            (batch, heads, sq, d), sk = xs[0].shape, xs[1].shape[3]
            found: list = []
            if mask:
                qp, source = in_params[2], env[mask]
                if qp is None or source.dtype not in _Q8:
                    return None  # an integer mask used as a number: the Python path
                m = slot.get("mask")
                if m is None or m.shape != source.shape:
                    m = slot["mask"] = np.empty(source.shape, np.float32)
                found.append(("dequantize", {"n": source.size, "dtype": DTYPES[source.dtype], "x": _In(mask),
                                             "scale": qp.scale, "zero_point": qp.zero_point, "y": _floats(m)}))  # fmt: skip
            else:
                m = None if mask_constant is None else np.ascontiguousarray(mask_constant, np.float32)
            c = ffi.new("edge_q8_attention_params *")
            c.batch, c.heads, c.s_q, c.s_k, c.d = batch, heads, sq, sk, d
            c.dtype = DTYPES[xs[0].dtype]
            (c.q_scale, c.q_zero_point), (c.kt_scale, c.kt_zero_point) = params[0], params[1]
            (c.v_scale, c.v_zero_point), (c.y_scale, c.y_zero_point) = params[2], params[3]
            c.scale = scale
            if m is not None:
                try:
                    view = np.broadcast_to(m, (batch, heads, sq, sk))
                except ValueError:
                    return None
                c.mask = _floats(m)
                c.mask_strides = [stride // 4 for stride in view.strides]
            y = slot.get("y")
            if y is None or y.shape != (batch, heads, sq, d) or y.dtype != xs[0].dtype:
                y = slot["y"] = np.empty((batch, heads, sq, d), xs[0].dtype)
            np.copyto(y, env[dst])  # this call's result: the output may be returned as it is
            env[dst] = y
            workspace = slot["b"][1]
            found.append(("attention", {"params": c, "q": _In(q), "kt": _In(kt), "v": _In(v), "y": _address(y),
                                        "workspace": _address(workspace), "workspace_size": workspace.nbytes}))  # fmt: skip
            slot["keep"] = (c, m)
            return found

        if int8:
            fn_int8.ops, fn_int8.what = ops_int8, "attention"  # type: ignore[attr-defined]
            return fn_int8

        def fn(env, slot):
            scores = np.matmul(floats(env, 0, q, scale), floats(env, 1, kt))
            m = floats(env, 2, mask) if mask else mask_constant
            # A mask of zeros (no padding: the usual batch-1 case) changes nothing; checking
            # its few values costs far less than adding it to every score.
            if m is not None:
                if np.broadcast_shapes(scores.shape, m.shape) != scores.shape:
                    scores = scores + m
                elif m.any():
                    np.add(scores, m, out=scores)
            kernels.softmax(scores, out=scores)
            env[dst] = kernels.quantize(np.matmul(scores, floats(env, 3, v)), out_scale, out_zp, out_dtype)

        return fn

    def _prep_layernorm(self, index: int, step: Step):
        attrs = step.attrs["node_attrs"]
        axis = int(attrs.get("axis", -1))
        eps = float(attrs.get("epsilon", 1e-5))
        (x_qp, *_), out = step.attrs["in_params"], QuantParams.from_dict(step.attrs["out_params"])
        if x_qp is None or any(step.inputs[1:]):
            return self._float_step(step, self._layernorm_compute(axis, eps))  # gamma/beta computed per call
        x_qp = QuantParams.from_dict(x_qp)
        constants = [step.arrays.get("input1"), step.arrays.get("input2")]
        (src, *_), (dst,) = step.inputs, step.outputs
        out_code = DTYPES[np.dtype(out.numpy_dtype)]
        what = f"{step.node}: layernorm"

        def bind(x: np.ndarray) -> tuple:
            # Integer in, integer out through two float buffers, with gamma and beta
            # broadcast and flattened once per shape: three C calls per run.
            x = _q8(x, what)
            start = axis % x.ndim
            norm_shape = x.shape[start:]
            cols = int(np.prod(norm_shape))
            rows = x.size // cols if cols else 0
            affine = [
                None if v is None
                else np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float32), norm_shape).reshape(cols))
                for v in constants
            ]  # fmt: skip
            xf, yf = np.empty(x.shape, np.float32), np.empty(x.shape, np.float32)
            y = np.empty(x.shape, out.numpy_dtype)
            pointers = [ffi.NULL if v is None else _floats(v) for v in affine]
            return (x.shape, x.dtype, DTYPES[x.dtype], rows, cols, _floats(xf), _floats(yf), y, _address(y),
                    pointers, affine)  # fmt: skip

        def fn(env, slot):
            x, b = _bind_input(env, src, slot, bind)
            n = x.size
            status = lib.edge_q8_f32_dequantize(
                n, b[2], _address(x), x_qp.scale, x_qp.zero_point, b[5], self._pool.handle
            )
            if not status:
                status = lib.edge_f32_layernorm(b[3], b[4], b[5], b[9][0], b[9][1], eps, b[6])
            if not status:
                status = lib.edge_f32_q8_quantize(
                    n, b[6], out.scale, out.zero_point, out_code, b[8], self._pool.handle
                )
            if status:
                check(status, what)
            env[dst] = b[7]

        def ops(env, slot):
            b = slot["b"]
            n = env[src].size
            return [
                ("dequantize", {"n": n, "dtype": b[2], "x": _In(src), "scale": x_qp.scale,
                                "zero_point": x_qp.zero_point, "y": b[5]}),
                ("layernorm", {"rows": b[3], "cols": b[4], "x": b[5], "gamma": b[9][0], "beta": b[9][1],
                               "epsilon": eps, "y": b[6]}),
                ("quantize", {"n": n, "x": b[6], "scale": out.scale, "zero_point": out.zero_point,
                              "dtype": out_code, "y": b[8]}),
            ]  # fmt: skip

        fn.ops, fn.what = ops, what  # type: ignore[attr-defined]
        return fn

    @staticmethod
    def _layernorm_compute(axis: int, eps: float) -> Callable[[list[Any]], np.ndarray]:
        def compute(values):
            x = values[0]
            gamma = values[1] if len(values) > 1 else None
            beta = values[2] if len(values) > 2 else None
            norm_shape = x.shape[axis % x.ndim :]
            cols = int(np.prod(norm_shape))
            params = [
                None if v is None else np.ascontiguousarray(np.broadcast_to(v, norm_shape).reshape(cols), np.float32)
                for v in (gamma, beta)
            ]  # fmt: skip
            return kernels.layernorm(x.reshape(-1, cols), params[0], params[1], eps).reshape(x.shape)

        return compute


class _BlasThreads:
    """Limits numpy's BLAS to one thread during a call, and restores it.

    Uses threadpoolctl's library controllers (a C call each way, about a microsecond);
    without threadpoolctl the BLAS keeps its own setting. The setting is process-wide:
    numpy work in other threads during a call runs on the same limit.
    """

    _instance: _BlasThreads | None = None
    _lock = threading.Lock()

    def __init__(self, controllers: list[Any]) -> None:
        self._controllers = controllers
        self._holders = 0
        self._previous: list[int] | None = None

    @classmethod
    def get(cls) -> _BlasThreads | None:
        with cls._lock:
            if cls._instance is None:
                try:
                    from threadpoolctl import ThreadpoolController

                    found = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
                except Exception:  # noqa: BLE001 - any failure only means "leave BLAS alone"
                    found = []
                cls._instance = cls(found)
            return cls._instance if cls._instance._controllers else None

    def limit(self, threads: int) -> list[int]:
        previous = [c.get_num_threads() for c in self._controllers]
        for c, n in zip(self._controllers, previous):
            if n != threads:
                c.set_num_threads(threads)
        return previous

    def restore(self, previous: list[int] | None) -> None:
        for c, n in zip(self._controllers, previous or []):
            if c.get_num_threads() != n:
                c.set_num_threads(n)

    def hold(self) -> None:
        """One thread for BLAS while any call holds it (calls may run at once, in any
        sessions): the first call in limits it, the last one out restores it."""
        with self._lock:
            if self._holders == 0:
                self._previous = self.limit(1)
            self._holders += 1

    def drop(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                self.restore(self._previous)
