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

Versions: 3 adds the [attention] step (a fused Q.K^T -> softmax -> .V block, which
older runtimes cannot run); 2 stores embedding tables ([embed] steps) quantized with
the step's output parameters; 1 stored them as float32 (still read: the executor
quantizes them at load).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.errors import PackageFormatError
from edge_runtime.numerics import QuantParams

__all__ = ["PLAN_FORMAT", "PLAN_FORMAT_VERSION", "PlanIO", "QuantizedPlan", "Step"]

PLAN_FORMAT = "edge-native-plan"
PLAN_FORMAT_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
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

    # -- facts -------------------------------------------------------------

    def op_histogram(self) -> dict[str, int]:
        """Steps per kernel family (see :attr:`Step.kernel`)."""
        return dict(sorted(Counter(step.kernel for step in self.steps).items()))

    def sparse_layers(self) -> list[str]:
        """Nodes whose GEMM or convolution runs on a 2:4-sparse kernel (gemm24, conv2d24)."""
        return [s.node for s in self.steps if s.op in ("gemm", "conv") and s.attrs.get("sparse")]

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

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
            "version": PLAN_FORMAT_VERSION,
            "name": self.name,
            "inputs": [vars(io_) for io_ in self.inputs],
            "outputs": [vars(io_) for io_ in self.outputs],
            "params": {k: (None if v is None else v.to_dict()) for k, v in sorted(self.params.items())},
            "steps": steps,
        }
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
        """Read a plan written by :meth:`to_bytes`; PackageFormatError if it is not one."""
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            header = json.loads(zf.read(_HEADER))
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise PackageFormatError(f"not a native plan (expected a zip holding {_HEADER}): {exc}") from exc
        if header.get("format") != PLAN_FORMAT:
            raise PackageFormatError(f"not a native plan: format {header.get('format')!r}")
        if header.get("version") not in _READABLE_VERSIONS:
            raise PackageFormatError(
                f"native plan format version {header.get('version')} is not supported by this runtime "
                f"(it reads versions {', '.join(map(str, _READABLE_VERSIONS))}); re-run `edge quantize` "
                "with this runtime"
            )
        try:
            steps = []
            for raw in header["steps"]:
                arrays = {}
                for key, member in raw["arrays"].items():
                    value = _read_npy(zf, data, member + ".npy")
                    if value.dtype.name not in _ARRAY_DTYPES:
                        raise PackageFormatError(f"plan array {member} has dtype {value.dtype}")
                    arrays[key] = value
                steps.append(
                    Step(raw["op"], raw["node"], raw["inputs"], raw["outputs"], raw["attrs"], arrays)
                )
            return cls(
                name=header["name"],
                inputs=[PlanIO(**v) for v in header["inputs"]],
                outputs=[PlanIO(**v) for v in header["outputs"]],
                steps=steps,
                params={
                    k: (None if v is None else QuantParams.from_dict(v)) for k, v in header["params"].items()
                },
            )
        except (KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
            if isinstance(exc, PackageFormatError):
                raise
            raise PackageFormatError(f"malformed native plan: {exc!r}") from exc


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (skipped fields), name length, extra length


def _read_npy(zf: zipfile.ZipFile, data: bytes, name: str) -> np.ndarray:
    """Member ``name`` of the plan zip as an array: a read-only view of ``data`` when the
    member is stored and its payload is aligned for its dtype, else a copy."""
    info = zf.getinfo(name)
    if info.compress_type == zipfile.ZIP_STORED:
        signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(data, info.header_offset)
        if signature != b"PK\x03\x04":
            raise PackageFormatError(f"plan member {name}: bad local zip header")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        view = memoryview(data)[start : start + info.file_size]
        fh = io.BytesIO(view)
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        count = int(np.prod(shape, dtype=np.int64))
        if not fortran and not dtype.hasobject and fh.tell() + count * dtype.itemsize == info.file_size:
            array = np.frombuffer(data, dtype, count, offset=start + fh.tell()).reshape(shape)
            return array if array.flags.aligned else array.copy()
    with zf.open(name) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable in a plan")
