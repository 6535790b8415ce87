"""Malformed native plans: every input to the plan reader ends in a plan or a typed error.

The three crafted cases reproduce what a fuzzer found (an untyped NotImplementedError,
tokenize.TokenError and struct.error out of ``QuantizedPlan.from_bytes``); the hypothesis
tests mutate a real plan's bytes and its ``plan.json`` with a fixed, derandomized budget.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from native_models import calibrated, prepare, rng, small_cnn

from edge_runtime.errors import EdgeRuntimeError, PackageFormatError
from edge_runtime.plan import NativeSession, lower
from edge_runtime.plan.quantized_plan import QuantizedPlan

X = rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: a failure shows as found
)


@pytest.fixture(scope="module")
def plan_bytes() -> bytes:
    graph = prepare(small_cnn())
    return lower(graph, calibrated(graph, [{"x": X}])).to_bytes()


def _first_npy_central_entry(data: bytes) -> int:
    """Offset of the central directory record of the first ``.npy`` member."""
    at = data.index(b"PK\x01\x02")
    while True:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, at + 28)
        name = data[at + 46 : at + 46 + name_len]
        if name.endswith(b".npy"):
            return at
        at += 46 + name_len + extra_len + comment_len


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_unknown_compression_method_is_typed(plan_bytes: bytes) -> None:
    central = _first_npy_central_entry(plan_bytes)
    local = struct.unpack_from("<I", plan_bytes, central + 42)[0]
    data = _patched(_patched(plan_bytes, central + 10, "<H", 99), local + 8, "<H", 99)
    with pytest.raises(PackageFormatError, match="compression method 99"):
        QuantizedPlan.from_bytes(data)


def test_npy_header_that_is_not_a_literal_is_typed(plan_bytes: bytes) -> None:
    at = plan_bytes.index(b"{'descr'")
    end = plan_bytes.index(b"}", at)
    data = plan_bytes[:end] + b"[" + plan_bytes[end + 1 :]  # numpy's tokenizer: TokenError
    with pytest.raises(PackageFormatError):
        QuantizedPlan.from_bytes(data)


def test_local_header_offset_out_of_range_is_typed(plan_bytes: bytes) -> None:
    central = _first_npy_central_entry(plan_bytes)
    data = _patched(plan_bytes, central + 42, "<I", 15_344_049)  # struct.error before
    with pytest.raises(PackageFormatError):
        QuantizedPlan.from_bytes(data)


def test_forged_npy_shape_does_not_allocate(plan_bytes: bytes) -> None:
    at = plan_bytes.index(b"'shape': (") + len(b"'shape': (")
    data = plan_bytes[:at] + b"9" + plan_bytes[at:]  # 10x the elements: header no longer fits
    with pytest.raises(PackageFormatError):
        QuantizedPlan.from_bytes(data.replace(b" \n", b"\n", 1))


def _load(data: bytes) -> None:
    """Read and load a plan (and run it); typed errors are fine, anything else fails the test."""
    try:
        plan = QuantizedPlan.from_bytes(data)
    except PackageFormatError as exc:
        assert isinstance(exc, ValueError)
        return
    try:
        NativeSession(plan, cache_dir=False).run({"x": X})
    except EdgeRuntimeError:
        pass


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=16
    ),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzzed_plan_bytes(plan_bytes: bytes, edits: list[tuple[float, int]], cut: float | None) -> None:
    data = bytearray(plan_bytes)
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    _load(bytes(data))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def _with_header(plan_bytes: bytes, header: object) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(plan_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in src.namelist():
            body = json.dumps(header).encode() if name == "plan.json" else src.read(name)
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), body)
    return out.getvalue()


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


@FUZZ
@given(data=st.data())
def test_fuzzed_plan_header_reads_typed(plan_bytes: bytes, data: st.DataObject) -> None:
    """Structural damage to plan.json: the reader itself never raises anything untyped."""
    header = json.loads(zipfile.ZipFile(io.BytesIO(plan_bytes)).read("plan.json"))
    paths = [p for p in _paths(header) if p and p[0] != "params"] + [("params",)]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = header
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a container on this path
    try:
        QuantizedPlan.from_bytes(_with_header(plan_bytes, header))
    except PackageFormatError:
        pass


@FUZZ
@given(data=st.data())
def test_fuzzed_plan_header_loads_typed_on_the_native_backend(plan_bytes: bytes, data: st.DataObject) -> None:
    """Damage the reader accepts (wrong attribute values of a step) ends typed when the backend
    loads and runs the plan: PackageFormatError or another EdgeRuntimeError, never a KeyError."""
    from edge_runtime.backends import Artifact, OpenOptions, get_backend

    header = json.loads(zipfile.ZipFile(io.BytesIO(plan_bytes)).read("plan.json"))
    steps = [p for p in _paths(header) if len(p) > 2 and p[0] == "steps"]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(steps))
        parent = header
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        session = get_backend("native").open(
            Artifact("model.plan", "native-plan", _with_header(plan_bytes, header)), OpenOptions(threads=1)
        )
    except EdgeRuntimeError:
        return
    try:
        session.run({"x": X})
    except EdgeRuntimeError:
        pass
    finally:
        session.close()


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((16, 27), np.int8),
        np.zeros((5,), np.int32),
        np.zeros((), np.float32),
        np.zeros((0, 3), np.uint8),
        np.zeros((2, 3, 4, 5), np.int64),
        np.zeros((3, 2), np.float32, order="F"),  # not the fast form: numpy's reader
        np.zeros(3, ">i4"),  # not the fast form: numpy's reader
    ],
)
def test_npy_header_reader_agrees_with_numpys(array: np.ndarray) -> None:
    from edge_runtime.plan.quantized_plan import _read_npy_header

    buffer = io.BytesIO()
    np.save(buffer, array)
    ours, theirs = io.BytesIO(buffer.getvalue()), io.BytesIO(buffer.getvalue())
    major, _ = np.lib.format.read_magic(ours)
    np.lib.format.read_magic(theirs)
    assert _read_npy_header(ours, major) == np.lib.format.read_array_header_1_0(theirs)
    assert ours.tell() == theirs.tell()
