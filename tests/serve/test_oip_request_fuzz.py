"""Property-based fuzzing of the Open Inference Protocol request parser (JSON and binary tensors).

``parse_infer_request`` is pure (bytes in, arrays out), so it is fuzzed directly with a fixed,
derandomized budget: any body ends in a valid InferRequest or an InferenceRequestError (400, or
413 for RequestTooLargeError), never another exception.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_runtime.package import TensorSpec
from edge_runtime.serve.errors import InferenceRequestError
from edge_runtime.serve.protocol import InferRequest, RequestLimits, parse_infer_request

FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
)
SPECS = (TensorSpec("x", "float32", ("batch", 4)), TensorSpec("ids", "int64", ("batch",)))
OUTPUTS = ("logits", "label")
LIMITS = RequestLimits(max_elements=4096, max_json_values=8192, max_json_depth=16)
DATATYPES = ["FP32", "INT64", "UINT8", "BOOL", "FP16", "BYTES", "BF16", "", 7, None]


def _parse(body: bytes, header_length: int | None) -> InferRequest | None:
    try:
        parsed = parse_infer_request(body, header_length, SPECS, OUTPUTS, LIMITS)
    except InferenceRequestError as exc:
        assert isinstance(exc, ValueError)
        return None
    assert set(parsed.inputs) == {"x", "ids"}
    assert parsed.inputs["x"].dtype == np.float32 and parsed.inputs["x"].shape[1:] == (4,)
    return parsed


@FUZZ
@given(body=st.binary(max_size=256), header_length=st.one_of(st.none(), st.integers(-5, 300)))
def test_arbitrary_bytes(body: bytes, header_length: int | None) -> None:
    _parse(body, header_length)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=4),
)
DATA = st.recursive(SCALARS, lambda c: st.lists(c, max_size=5), max_leaves=24)
SHAPES = st.lists(
    st.one_of(st.integers(-1, 6), st.sampled_from([2**31, 2**62, 2**80]), st.text(max_size=2)), max_size=4
)


@st.composite
def tensor(draw: st.DrawFn, binary: bool) -> tuple[dict[str, Any], bytes]:
    name = draw(st.sampled_from(["x", "ids", "x", "y", 3]))
    shape = draw(st.one_of(SHAPES, st.just([2, 4]), st.just([2])))
    item: dict[str, Any] = {"name": name, "shape": shape, "datatype": draw(st.sampled_from(DATATYPES))}
    blob = b""
    if binary and draw(st.booleans()):
        blob = draw(st.binary(max_size=64))
        size = draw(st.one_of(st.just(len(blob)), st.integers(-2, 80), st.just("8")))
        item["parameters"] = {"binary_data_size": size}
    elif draw(st.booleans()):
        item["data"] = draw(DATA)
    else:
        count = int(np.prod([d for d in shape if isinstance(d, int) and 0 <= d < 10])) if shape else 1
        item["data"] = draw(st.lists(st.floats(-1e3, 1e3), min_size=count, max_size=count))
    if draw(st.booleans()):
        item.pop("shape", None) if draw(st.booleans()) else item.pop("datatype", None)
    return item, blob


@st.composite
def request_body(draw: st.DrawFn) -> tuple[bytes, int | None]:
    binary = draw(st.booleans())
    tensors = draw(st.lists(tensor(binary), min_size=0, max_size=3))
    doc: dict[str, Any] = {"inputs": [t for t, _ in tensors]}
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.text(max_size=4), st.integers()))
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["logits", "label", "nope", 1])},
                    optional={
                        "parameters": st.one_of(
                            st.none(), st.dictionaries(st.text(max_size=12), SCALARS, max_size=2)
                        )
                    },
                ),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.one_of(st.just([]), st.dictionaries(st.sampled_from(["binary_data_output", "x"]), SCALARS))
        )
    header = json.dumps(doc).encode()
    blobs = b"".join(b for _, b in tensors)
    if not binary:
        return header, None
    length = draw(st.one_of(st.just(len(header)), st.integers(-1, len(header) + len(blobs) + 2)))
    return header + blobs, length


@FUZZ
@given(request_body())
@example(
    (b'{"inputs": [{"name": "x", "shape": [0, 4611686018427387904], "datatype": "FP32", "data": []}]}', None)
)
def test_structured_requests(body_and_length: tuple[bytes, int | None]) -> None:
    _parse(*body_and_length)


def test_a_valid_request_still_parses() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    doc = {
        "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.tolist()},
            {"name": "ids", "shape": [2], "datatype": "INT64", "data": [1, 2]},
        ]
    }
    parsed = _parse(json.dumps(doc).encode(), None)
    assert parsed is not None
    np.testing.assert_array_equal(parsed.inputs["x"], x)


@FUZZ
@given(depth=st.integers(1, 5000))
def test_nesting_never_escapes(depth: int) -> None:
    data = "[" * depth + "1" + "]" * depth
    body = '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":' + data + "}]}"
    assert _parse(body.encode(), None) is None  # wrong shape or too deep: both typed


def test_off_loop_conversion_matches_on_loop() -> None:
    """Off the event loop a long list is converted in slices (the GIL changes hands between them):
    flat, nested and ragged data give what one conversion gives."""
    limits = RequestLimits()
    rows = 70_000  # more rows than one slice
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    ids = list(range(rows))
    for data in (x.ravel().tolist(), x.tolist()):
        doc = {
            "inputs": [
                {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": data},
                {"name": "ids", "shape": [rows], "datatype": "INT64", "data": ids},
            ]
        }
        body = json.dumps(doc).encode()
        on = parse_infer_request(body, None, SPECS, OUTPUTS, limits)
        off = parse_infer_request(body, None, SPECS, OUTPUTS, limits, off_loop=True)
        np.testing.assert_array_equal(on.inputs["x"], off.inputs["x"])
        np.testing.assert_array_equal(off.inputs["x"], x)
    ragged = x.tolist()
    ragged[-1] = [1.0, 2.0]
    doc["inputs"][0]["data"] = ragged
    for off_loop in (False, True):
        try:
            parse_infer_request(json.dumps(doc).encode(), None, SPECS, OUTPUTS, limits, off_loop=off_loop)
        except InferenceRequestError:
            continue
        raise AssertionError("ragged data was accepted")
