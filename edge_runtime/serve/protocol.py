"""The Open Inference Protocol (KServe v2) on the wire: datatypes, requests, responses.

Pure functions between bytes and numpy, with no HTTP in them, so that they can
be tested alone. Two request forms are accepted:

* JSON: ``{"id", "parameters", "inputs": [{"name", "shape", "datatype", "data"}], "outputs"}``
  where ``data`` is row-major, flat or nested.
* The binary tensor data extension: the body is a JSON header of
  ``Inference-Header-Content-Length`` bytes followed by the raw little-endian
  bytes of every input whose ``parameters.binary_data_size`` is set, in the
  order the inputs are listed.

Responses carry an output as JSON ``data`` unless the request asked for it as
binary (``outputs[i].parameters.binary_data`` or the request parameter
``binary_data_output``), in which case it follows the JSON header the same way.

Both HTTP forms and the gRPC API (:mod:`edge_runtime.serve.grpc_api`) build a request's
arrays through one :class:`InputsBuilder` and check requested outputs with
:func:`requested_output`: the same limits, checks and messages whatever the wire.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edge_runtime.package._json import JsonLimits, loads_bounded
from edge_runtime.serve.errors import InferenceRequestError, RequestTooLargeError

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "InputsBuilder",
    "ModelLike",
    "RequestLimits",
    "RequestedOutput",
    "TensorSpecLike",
    "datatype_of",
    "dtype_of",
    "encode_infer_response",
    "parse_infer_request",
    "requested_output",
    "tensor_metadata",
    "wire_bytes",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

# Protocol datatype <-> numpy dtype (little-endian on the wire). BYTES and BF16 are not served:
# no model of this runtime takes strings, and numpy has no bfloat16.
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_DATATYPE_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items()}


@dataclass(frozen=True)
class RequestLimits:
    """What one inference request may expand to, beyond its size in bytes (``max_request_mib``).

    ``max_elements``: tensor elements over all inputs, from the declared shapes, checked
    before any array is built (16 Mi: a 64 MiB FP32 body). ``max_json_values``: values
    in the JSON part, counted on the raw bytes before decoding (commas and brackets):
    each costs some 30 bytes of Python objects while it is decoded, so 2 Mi of them
    cost about 64 MiB; larger tensors belong in the binary extension.
    ``max_json_depth``: nesting of the JSON part (a tensor of rank 60 still fits).
    """

    max_elements: int = 1 << 24
    max_json_values: int = 1 << 21
    max_json_depth: int = 64

    def json_limits(self, yield_gil: bool = False) -> JsonLimits:
        # Numbers are decoded as json decodes them (no checking hook: bodies hold millions);
        # Python's own 4,300-digit integer limit and parse_constant (NaN, Infinity) still apply.
        return JsonLimits(
            max_depth=self.max_json_depth,
            max_values=self.max_json_values,
            check_numbers=False,
            yield_gil=yield_gil,
        )


DEFAULT_LIMITS = RequestLimits()


@runtime_checkable
class TensorSpecLike(Protocol):
    """An input or output of a model: dynamic dimensions are names (``"batch"``)."""

    name: str
    dtype: Any  # "float32" or a numpy dtype
    shape: Sequence[int | str]


@runtime_checkable
class ModelLike(Protocol):
    """What the server needs from a model: :class:`edge_runtime.Model` has exactly this."""

    @property
    def inputs(self) -> Sequence[TensorSpecLike]: ...

    @property
    def outputs(self) -> Sequence[TensorSpecLike]: ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def info(self) -> dict[str, Any]: ...

    def selftest(self) -> Any: ...

    def close(self) -> None: ...


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a protocol datatype name; InferenceRequestError if not served."""
    try:
        return _DTYPES[datatype]
    except (KeyError, TypeError):
        raise InferenceRequestError(
            f"datatype {datatype!r} is not supported; use one of {', '.join(_DTYPES)}"
        ) from None


def datatype_of(dtype: Any) -> str:
    """The protocol datatype name of a numpy dtype or a manifest dtype string (``"float32"``)."""
    if dtype == "bfloat16":
        return "BF16"
    dt = np.dtype(dtype)
    try:
        return _DATATYPE_BY_KIND[(dt.kind, dt.itemsize)]
    except KeyError:
        raise ValueError(f"dtype {dt} has no Open Inference Protocol datatype") from None


def tensor_metadata(spec: TensorSpecLike) -> dict[str, Any]:
    """``{"name", "datatype", "shape"}`` with -1 for every dynamic dimension."""
    return {
        "name": spec.name,
        "datatype": datatype_of(spec.dtype),
        "shape": [d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape],
    }


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A parsed, validated inference request."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False  # the request-level default for outputs

    @property
    def rows(self) -> int:
        """The batch size: the first dimension of the inputs (1 for scalars)."""
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1


def _bad(message: str) -> InferenceRequestError:
    return InferenceRequestError(message)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise _bad(f"{where}.shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where}.parameters must be a JSON object")
    return value


def _check_against_spec(name: str, array: np.ndarray, datatype: str, spec: TensorSpecLike) -> None:
    expected = datatype_of(spec.dtype)
    if datatype != expected:
        raise _bad(f"input {name!r} has datatype {datatype}, the model expects {expected}")
    want = list(spec.shape)
    if array.ndim != len(want) or any(
        isinstance(w, int) and w >= 0 and w != got for w, got in zip(want, array.shape)
    ):
        shown = [d if isinstance(d, int) and d >= 0 else -1 for d in want]
        raise _bad(f"input {name!r} has shape {list(array.shape)}, the model expects {shown}")


_CONVERT_CHUNK = 1 << 16


def _to_array(data: Any, dtype: np.dtype[Any], off_loop: bool) -> np.ndarray:
    """``np.asarray(data, dtype)``; off the loop, a long list is converted in slices so that
    the GIL changes hands between them (one call over millions of values holds it throughout)."""
    if not off_loop or not isinstance(data, list) or len(data) <= _CONVERT_CHUNK:
        return np.asarray(data, dtype=dtype)
    parts = [
        np.asarray(data[i : i + _CONVERT_CHUNK], dtype=dtype) for i in range(0, len(data), _CONVERT_CHUNK)
    ]
    return np.concatenate(parts)  # ValueError when the slices disagree on the inner shape (ragged data)


class InputsBuilder:
    """A request's input arrays, checked against the model's inputs: one definition for every wire.

    ``declare`` the inputs' shapes first (the elements limit, before any array is built),
    then ``add`` each input from raw little-endian bytes or from a sequence of values,
    then ``done`` (every model input given). Raises InferenceRequestError naming the
    field at fault (RequestTooLargeError over ``limits``).
    """

    def __init__(self, input_specs: Sequence[TensorSpecLike], limits: RequestLimits, off_loop: bool = False):
        self._specs = {s.name: s for s in input_specs}
        self._limits = limits
        self._off_loop = off_loop
        self.inputs: dict[str, np.ndarray] = {}

    def declare(self, shapes: Sequence[Any]) -> None:
        """Refuse shapes (one per input, in order) over ``limits.max_elements`` in all."""
        limit = self._limits.max_elements
        total = 0
        for i, value in enumerate(shapes):
            shape = _shape(value, f"inputs[{i}]")
            if any(d > limit for d in shape):  # even beside a 0: numpy cannot shape it
                raise RequestTooLargeError(
                    f"inputs[{i}].shape {list(shape)} has a dimension over the limit of {limit} elements"
                )
            total += math.prod(shape)
            if total > limit:
                raise RequestTooLargeError(
                    f"the inputs' shapes hold {total}+ elements, over the limit of {limit}"
                )

    def add(
        self,
        where: str,
        name: Any,
        shape: Any,
        datatype: Any,
        *,
        raw: bytes | memoryview | None = None,
        data: Any = None,
        raw_field: str = "binary_data_size",
    ) -> None:
        """Input ``name`` from ``raw`` bytes (``raw_field`` names them in messages) or ``data`` values."""
        if not isinstance(name, str):
            raise _bad(f"{where}.name must be a string")
        if name not in self._specs:
            raise _bad(f"unknown input {name!r}; the model's inputs are {', '.join(self._specs)}")
        if name in self.inputs:
            raise _bad(f"input {name!r} is given twice")
        shape = _shape(shape, where)
        dtype = dtype_of(datatype)
        count = math.prod(shape)
        if raw is not None:
            if len(raw) != count * dtype.itemsize:
                raise _bad(
                    f"input {name!r}: {raw_field} is {len(raw)} bytes but shape {list(shape)} of "
                    f"{datatype} needs {count * dtype.itemsize}"
                )
            array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        else:
            try:
                array = _to_array(data, dtype, self._off_loop)
            except (TypeError, ValueError, OverflowError) as exc:
                raise _bad(f"input {name!r}: data is not {datatype} ({exc})") from None
            if array.size != count:
                raise _bad(
                    f"input {name!r}: data has {array.size} elements but shape {list(shape)} needs {count}"
                )
            array = array.reshape(shape)
        _check_against_spec(name, array, datatype, self._specs[name])
        self.inputs[name] = array

    def done(self) -> dict[str, np.ndarray]:
        missing = [n for n in self._specs if n not in self.inputs]
        if missing:
            raise _bad(f"missing input(s) {', '.join(missing)}")
        return self.inputs


def requested_output(
    where: str, name: Any, output_names: Sequence[str], parameters: Mapping[str, Any]
) -> str:
    """``name`` if the model has that output and nothing unsupported is asked of it."""
    if not isinstance(name, str):
        raise _bad(f"{where} must be an object with a string 'name'")
    if name not in output_names:
        raise _bad(f"unknown output {name!r}; the model's outputs are {', '.join(output_names)}")
    if "classification" in parameters:
        raise _bad("the classification extension is not supported")
    return name


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    input_specs: Sequence[TensorSpecLike],
    output_names: Sequence[str],
    limits: RequestLimits = DEFAULT_LIMITS,
    *,
    off_loop: bool = False,
) -> InferRequest:
    """Decode and validate a request body against the model's interface.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None
    when absent: the whole body is JSON). Raises InferenceRequestError with a
    message naming the field at fault (RequestTooLargeError, one of them, when
    the body is over ``limits``); never anything else for any body.
    ``off_loop``: the caller runs this on a worker thread beside an event loop; the
    JSON numbers are then decoded so that the loop gets the GIL meanwhile (slower).
    """
    try:
        return _parse(body, header_length, input_specs, output_names, limits, off_loop)
    except RecursionError:  # not expected past the depth limit: a last line of defence
        raise _bad("request body is nested too deeply") from None


def _parse(
    body: bytes,
    header_length: int | None,
    input_specs: Sequence[TensorSpecLike],
    output_names: Sequence[str],
    limits: RequestLimits,
    off_loop: bool,
) -> InferRequest:
    if header_length is None:
        header, binary = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise _bad(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    doc = loads_bounded(
        header, limits.json_limits(yield_gil=off_loop), _bad, "request body", too_large=RequestTooLargeError
    )
    if not isinstance(doc, dict):
        raise _bad("request body must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("'inputs' must be a non-empty list")
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise _bad(f"inputs[{i}] must be a JSON object")
    builder = InputsBuilder(input_specs, limits, off_loop)
    builder.declare([item.get("shape") for item in raw_inputs])

    offset = 0
    for i, item in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        name = item.get("name")
        params = _parameters(item.get("parameters"), where)
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(f"{where}.parameters.binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise _bad(f"input {name!r}: the body holds fewer binary bytes than binary_data_size")
            builder.add(
                where, name, item.get("shape"), item.get("datatype"), raw=binary[offset : offset + size]
            )
            offset += size
        elif "data" in item:
            builder.add(where, name, item.get("shape"), item.get("datatype"), data=item["data"])
        else:
            raise _bad(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise _bad(
            f"the body has {len(binary) - offset} binary bytes that no input's binary_data_size claims"
        )
    inputs = builder.done()

    params = _parameters(doc.get("parameters"), "request")
    binary_default = bool(params.get("binary_data_output", False))
    outputs = None
    if doc.get("outputs") is not None:
        raw_outputs = doc["outputs"]
        if not isinstance(raw_outputs, list):
            raise _bad("'outputs' must be a list")
        outputs = []
        for i, item in enumerate(raw_outputs):
            where = f"outputs[{i}]"
            if not isinstance(item, dict):
                raise _bad(f"{where} must be an object with a string 'name'")
            oparams = _parameters(item.get("parameters"), where)
            name = requested_output(where, item.get("name"), output_names, oparams)
            outputs.append(RequestedOutput(name, bool(oparams.get("binary_data", binary_default))))
    return InferRequest(inputs, request_id, params, outputs, binary_default)


def wire_bytes(array: np.ndarray) -> bytes:
    """A tensor's bytes on the wire (the binary extension, gRPC raw contents): row-major, little-endian."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    results: Mapping[str, np.ndarray],
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (Content-Type, and the header length when binary)."""
    wanted = request.outputs or [RequestedOutput(n, request.binary_output) for n in results]
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in wanted:
        array = np.asarray(results[out.name])
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if out.binary:
            data = wire_bytes(array)
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
