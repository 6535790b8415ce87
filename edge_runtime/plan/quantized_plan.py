"""The quantized plan: what :func:`edge_runtime.plan.lower` produces and
:class:`edge_runtime.plan.NativeSession` runs.

A plan is a list of :class:`Step` over named buffers. Each step names one kernel
(``op``), the buffers it reads and writes, JSON-able attributes and numpy arrays
(int8 weights, int32 biases, requantization multipliers, lookup tables, float
constants of the steps that run in float). Buffers hold uint8/int8 activations in
the layout the lowering chose (NHWC for feature maps), integer index tensors, or the
float tensors at the entry and the exit.

Serialized form (``to_bytes``), the package's ``native-plan`` artifact: a zip
(readable as an ``.npz``) with ``plan.json`` (format name and version, inputs,
outputs, per-buffer quantization and steps, arrays referenced by member name) and
one ``.npy`` member per array, stored uncompressed. No pickle anywhere, and the
bytes are deterministic (fixed member timestamps, sorted keys) so that the sha256 of
a plan identifies it, which is what the packed-weight cache is keyed by.

:meth:`QuantizedPlan.from_bytes` does not copy the arrays: they are read-only views
of the artifact's bytes (which they keep alive), so reading a plan costs no memory
beyond the bytes themselves.

Versions: 4 adds the [subgraph] step (nodes run in float on onnxruntime or the
reference executor: a partitioned graph, see :mod:`edge_runtime.plan.partition`) and
convolutions and pools whose input height and width are symbolic (``dynamic_hw``:
padding recomputed per input shape); a plan without either is still written as
version 3, so that older runtimes read it. The optional ``macs`` header (per-node
multiply-accumulates, for ``Model.info()``) is ignored by older readers. 3 adds the [attention] step (a fused Q.K^T -> softmax -> .V block, which
older runtimes cannot run); 2 stores embedding tables ([embed] steps) quantized with
the step's output parameters; 1 stored them as float32 (still read: the executor
quantizes them at load).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import struct
import tokenize
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError, PackageFormatError
from edge_runtime.numerics import QuantParams
from edge_runtime.package._json import JsonLimits, loads_bounded

__all__ = ["PLAN_FORMAT", "PLAN_FORMAT_VERSION", "PlanIO", "QuantizedPlan", "Step"]

PLAN_FORMAT = "edge-native-plan"
PLAN_FORMAT_VERSION = 4
_READABLE_VERSIONS = (1, 2, 3, 4)
_HEADER = "plan.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: identical plans give identical bytes
_ARRAY_DTYPES = frozenset({"int8", "uint8", "int32", "int64", "float32"})


@dataclass
class Step:
    """One kernel call: ``outputs = op(inputs; attrs, arrays)``."""

    op: str
    node: str  # the graph node it comes from (for errors and describe())
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kernel(self) -> str:
        """The kernel family it runs on: conv2d/conv2d24/dwconv2d for "conv", gemm/gemm24 for "gemm"."""
        if self.op == "conv":
            if self.attrs.get("depthwise"):
                return "dwconv2d"
            return "conv2d24" if self.attrs.get("sparse") else "conv2d"
        if self.op == "gemm":
            return "gemm24" if self.attrs.get("sparse") else "gemm"
        return self.op


@dataclass
class PlanIO:
    """A graph input or output and the buffer that holds it (float32 or integer)."""

    name: str
    buffer: str
    dtype: str
    shape: list[int | str | None]


@dataclass
class QuantizedPlan:
    """An INT8 execution plan: steps in execution order over named buffers."""

    name: str
    inputs: list[PlanIO]
    outputs: list[PlanIO]
    steps: list[Step]
    # Quantization of every quantized buffer (None: a float or integer buffer).
    params: dict[str, QuantParams | None] = field(default_factory=dict)
    # Multiply-accumulates per sample of the graph's Conv/ConvTranspose/Gemm/MatMul nodes.
    macs: dict[str, int] = field(default_factory=dict)

    # -- facts -------------------------------------------------------------

    def op_histogram(self) -> dict[str, int]:
        """Steps per kernel family (see :attr:`Step.kernel`)."""
        return dict(sorted(Counter(step.kernel for step in self.steps).items()))

    def sparse_layers(self) -> list[str]:
        """Nodes whose GEMM or convolution runs on a 2:4-sparse kernel (gemm24, conv2d24)."""
        return [s.node for s in self.steps if s.op in ("gemm", "conv") and s.attrs.get("sparse")]

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def format_version(self) -> int:
        """The oldest format version that holds this plan (what :meth:`to_bytes` writes)."""
        if any(s.op == "subgraph" or s.attrs.get("dynamic_hw") for s in self.steps):
            return 4
        return 3

    def is_partitioned(self) -> bool:
        """Whether some nodes run outside the native kernels ([subgraph] steps)."""
        return any(s.op == "subgraph" for s in self.steps)

    # -- serialization -----------------------------------------------------

    def to_bytes(self) -> bytes:
        """The portable artifact (see the module docstring)."""
        arrays: dict[str, np.ndarray] = {}
        steps = []
        for index, step in enumerate(self.steps):
            refs = {}
            for key, value in sorted(step.arrays.items()):
                member = f"{index:05d}.{key}"
                arrays[member] = np.ascontiguousarray(value)
                refs[key] = member
            steps.append({
                "op": step.op, "node": step.node, "inputs": step.inputs, "outputs": step.outputs,
                "attrs": step.attrs, "arrays": refs,
            })  # fmt: skip
        header = {
            "format": PLAN_FORMAT,
            "version": self.format_version(),
            "name": self.name,
            "inputs": [vars(io_) for io_ in self.inputs],
            "outputs": [vars(io_) for io_ in self.outputs],
            "params": {k: (None if v is None else v.to_dict()) for k, v in sorted(self.params.items())},
            "steps": steps,
        }
        if self.macs:
            header["macs"] = {str(k): int(v) for k, v in self.macs.items()}
        text = json.dumps(header, sort_keys=True, default=_json_default, separators=(",", ":"))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(zipfile.ZipInfo(_HEADER, _ZIP_TIME), text.encode())
            for member, value in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, value, allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(member + ".npy", _ZIP_TIME), buf.getvalue())
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantizedPlan:
        """Read a plan written by :meth:`to_bytes`; PackageFormatError if it is not one.

        Every malformed input ends in PackageFormatError (a ValueError): a broken zip,
        compression other than stored, a header that is not bounded JSON
        (:data:`PLAN_JSON_LIMITS`) or not of the plan's shape, a step reading a buffer
        that nothing wrote, a member that is missing or not a plain ``.npy`` of an
        allowed dtype and of the size its zip entry says.
        """
        try:
            return _read_plan(cls, data)
        except PackageFormatError:
            raise
        except _READ_ERRORS as exc:
            raise PackageFormatError(f"malformed native plan: {type(exc).__name__}: {exc}") from None


# What a corrupt or hostile plan can make the zip, numpy and JSON readers raise, besides
# PackageFormatError: all of it is reported as "malformed native plan".
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    NotImplementedError,  # zipfile: an unsupported compression method
    tokenize.TokenError,  # numpy: a .npy header that is not a Python literal
    SyntaxError,
    EOFError,
    OSError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    OverflowError,
    AttributeError,
    RecursionError,
    UnicodeDecodeError,
    MemoryError,
    EdgeRuntimeError,  # QuantizationError from QuantParams.from_dict
)

# plan.json is small and machine-written: shallow, short numbers, finite floats.
PLAN_JSON_LIMITS = JsonLimits(max_depth=32, max_number_chars=64)
_MAX_HEADER_BYTES = 64 << 20


def _bad(message: str) -> PackageFormatError:
    return PackageFormatError(f"malformed native plan: {message}")


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, (int, float)):
        raise _bad(f"{where} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    _expect(value, list, where)
    for i, item in enumerate(value):
        _expect(item, str, f"{where}[{i}]")
    return value


def _plan_io(value: Any, where: str) -> PlanIO:
    _expect(value, dict, where)
    if set(value) != {"name", "buffer", "dtype", "shape"}:
        raise _bad(f"{where} must have exactly name, buffer, dtype and shape, got {sorted(value)}")
    for key in ("name", "buffer", "dtype"):
        _expect(value[key], str, f"{where}.{key}")
    _expect(value["shape"], list, f"{where}.shape")
    for i, dim in enumerate(value["shape"]):
        if (
            dim is not None
            and not isinstance(dim, str)
            and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 0)
        ):
            raise _bad(f"{where}.shape[{i}] must be a non-negative integer, a name or null, got {dim!r}")
    return PlanIO(**value)


def _read_plan(cls: type[QuantizedPlan], data: bytes) -> QuantizedPlan:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        info = zf.getinfo(_HEADER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise PackageFormatError(f"not a native plan (expected a zip holding {_HEADER}): {exc}") from None
    if info.file_size > _MAX_HEADER_BYTES:
        raise _bad(f"{_HEADER} is {info.file_size} bytes, over the limit of {_MAX_HEADER_BYTES}")
    header = loads_bounded(zf.read(info), PLAN_JSON_LIMITS, _bad, _HEADER)
    _expect(header, dict, _HEADER)
    if header.get("format") != PLAN_FORMAT:
        raise PackageFormatError(f"not a native plan: format {header.get('format')!r}")
    if header.get("version") not in _READABLE_VERSIONS:
        raise PackageFormatError(
            f"native plan format version {header.get('version')} is not supported by this runtime "
            f"(it reads versions {', '.join(map(str, _READABLE_VERSIONS))}); re-run `edge quantize` "
            "with this runtime"
        )
    name = _expect(header.get("name"), str, "name")
    inputs = [
        _plan_io(v, f"inputs[{i}]") for i, v in enumerate(_expect(header.get("inputs"), list, "inputs"))
    ]
    outputs = [
        _plan_io(v, f"outputs[{i}]") for i, v in enumerate(_expect(header.get("outputs"), list, "outputs"))
    ]
    params: dict[str, QuantParams | None] = {}
    for key, value in _expect(header.get("params"), dict, "params").items():
        params[key] = None if value is None else QuantParams.from_dict(_expect(value, dict, f"params.{key}"))

    written = {io_.buffer for io_ in inputs}
    steps = []
    for index, raw in enumerate(_expect(header.get("steps"), list, "steps")):
        where = f"steps[{index}]"
        _expect(raw, dict, where)
        missing = {"op", "node", "inputs", "outputs", "attrs", "arrays"} - set(raw)
        if missing:
            raise _bad(f"{where} lacks {', '.join(sorted(missing))}")
        op = _expect(raw["op"], str, f"{where}.op")
        node = _expect(raw["node"], str, f"{where}.node")
        step_inputs = _str_list(raw["inputs"], f"{where}.inputs")
        step_outputs = _str_list(raw["outputs"], f"{where}.outputs")
        unknown = [b for b in step_inputs if b and b not in written]
        if unknown:
            raise _bad(
                f"{where} ({op} of node {node!r}) reads buffer(s) {', '.join(unknown)} that nothing wrote"
            )
        written.update(step_outputs)
        attrs = _expect(raw["attrs"], dict, f"{where}.attrs")
        arrays = {}
        for key, member in _expect(raw["arrays"], dict, f"{where}.arrays").items():
            _expect(member, str, f"{where}.arrays.{key}")
            value = _read_npy(zf, data, member + ".npy")
            if value.dtype.name not in _ARRAY_DTYPES:
                raise PackageFormatError(f"plan array {member} has dtype {value.dtype}")
            arrays[key] = value
        steps.append(Step(op, node, step_inputs, step_outputs, attrs, arrays))
    unwritten = [o.buffer for o in outputs if o.buffer not in written]
    if unwritten:
        raise _bad(f"output buffer(s) {', '.join(unwritten)} are written by no step")
    macs: dict[str, int] = {}
    for key, value in _expect(header.get("macs", {}), dict, "macs").items():
        _expect(value, int, f"macs.{key}")
        if value < 0:
            raise _bad(f"macs.{key} must be non-negative, got {value}")
        macs[key] = value
    return cls(name=name, inputs=inputs, outputs=outputs, steps=steps, params=params, macs=macs)


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (skipped fields), name length, extra length
# The .npy header numpy writes for a plain C-ordered array. numpy's own reader parses a header with
# ast.literal_eval (about 0.15 ms, a third of a MobileNetV2 package's load over its ~200 arrays);
# this one form is read with a regular expression, any other goes to numpy's reader.
_NPY_HEADER = re.compile(
    rb"\{'descr': '(\\|[iu]1|<[iu][248]|<f[48])', 'fortran_order': False, 'shape': \((\d+,|(?:\d+(?:, \d+)+)?)\), \} *\n"
)


def _read_npy_header(fh: io.BytesIO, major: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy header after the magic string."""
    start = fh.tell()
    size = struct.unpack("<H" if major == 1 else "<I", fh.read(2 if major == 1 else 4))[0]
    match = _NPY_HEADER.fullmatch(fh.read(size))
    if match is None:
        fh.seek(start)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        return read(fh)
    shape = tuple(int(d) for d in match.group(2).split(b",") if d.strip())
    return shape, False, np.dtype(match.group(1).decode())


def _read_npy(zf: zipfile.ZipFile, data: bytes, name: str) -> np.ndarray:
    """Member ``name`` of the plan zip as an array: a read-only view of ``data`` when the
    member is stored and its payload is aligned for its dtype, else a copy.

    The ``.npy`` header's shape and dtype must account for exactly the member's bytes,
    so that a forged header never makes numpy allocate more than the member holds.
    """
    info = zf.getinfo(name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _bad(f"member {name} uses compression method {info.compress_type}; plans are stored")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.header_offset + _LOCAL_HEADER.size > len(data):
            raise _bad(f"member {name}: local zip header out of range")
        signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(data, info.header_offset)
        if signature != b"PK\x03\x04":
            raise PackageFormatError(f"plan member {name}: bad local zip header")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if start + info.file_size > len(data):
            raise _bad(f"member {name}: its bytes run past the end of the plan")
        fh = io.BytesIO(memoryview(data)[start : start + info.file_size])
    else:
        fh = io.BytesIO(zf.read(name))  # bounded: the reader enforces file_size and the CRC
    major, _ = np.lib.format.read_magic(fh)
    if major not in (1, 2):
        raise _bad(f"member {name}: .npy format version {major} is not read")
    shape, fortran, dtype = _read_npy_header(fh, major)
    if dtype.hasobject:
        raise _bad(f"member {name} holds Python objects")
    count = math.prod(shape)
    if fh.tell() + count * dtype.itemsize != info.file_size:
        raise _bad(f"member {name}: shape {shape} of {dtype} does not match its {info.file_size} bytes")
    if info.compress_type == zipfile.ZIP_STORED and not fortran:
        array = np.frombuffer(data, dtype, count, offset=start + fh.tell()).reshape(shape)
        return array if array.flags.aligned else array.copy()
    fh.seek(0)
    return np.lib.format.read_array(fh, allow_pickle=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable in a plan")
