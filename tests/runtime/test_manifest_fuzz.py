"""Property-based fuzzing of the manifest reader and writer (hypothesis, fixed small budget).

Any input ends in a valid :class:`Manifest` or a PackageFormatError, never another exception;
what the writer accepts, the reader reads back unchanged.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkg_helpers import base_manifest

from edge_runtime.errors import PackageFormatError
from edge_runtime.package import Manifest, parse_manifest_bytes

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
)


def _valid() -> dict[str, Any]:
    doc = base_manifest(schema_version=1)
    doc["artifacts"] = [
        {"path": "model.onnx", "kind": "onnx", "size": 160, "sha256": "a" * 64},
        {"path": "plan/model.plan", "kind": "native-plan", "size": 16384, "sha256": "b" * 64},
        {"path": "selftest.npz", "kind": "selftest", "size": 100, "sha256": "c" * 64},
    ]
    return doc


VALID_BYTES = Manifest.from_dict(_valid()).to_json_bytes()

HOSTILE_LEAVES = st.sampled_from(
    [10**70, float("inf"), float("-inf"), float("nan"), 1e308, "", "../x", "a\n", None, True]
) | st.builds(lambda: -(10**5000))  # built, not listed: hypothesis cannot repr it
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | HOSTILE_LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _read(data: bytes) -> Manifest | None:
    try:
        return parse_manifest_bytes(data)
    except PackageFormatError as exc:
        assert isinstance(exc, ValueError)
        return None


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _read(data)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.binary(max_size=3)), min_size=1, max_size=8
    )
)
def test_mutated_manifest_bytes(edits: list[tuple[float, bytes]]) -> None:
    data = bytearray(VALID_BYTES)
    for where, insert in edits:
        at = int(where * len(data))
        data[at : at + 1] = insert
    manifest = _read(bytes(data))
    if manifest is not None:
        assert parse_manifest_bytes(manifest.to_json_bytes()) == manifest


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
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
def test_replaced_fields_read_and_write_typed(data: st.DataObject) -> None:
    """A field replaced by any value (deep, huge, non-finite, odd strings): the writer's and the
    reader's verdicts agree, and each is a Manifest or PackageFormatError."""
    doc = _valid()
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(paths))
        parent: Any = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        written = Manifest.from_dict(copy.deepcopy(doc)).to_json_bytes()
    except PackageFormatError:
        written = None
    try:
        text = json.dumps(doc).encode()  # NaN/Infinity appear as the bare words, as a hostile writer would
    except ValueError:  # an integer over Python's digit limit: the writer above refused it
        assert written is None
        return
    read = _read(text)
    if written is None:
        assert read is None
    else:
        assert read is not None and read.to_json_bytes() == written


@FUZZ
@given(depth=st.integers(1, 3000), kind=st.sampled_from(["[", '{"a":']))
def test_nesting_depth(depth: int, kind: str) -> None:
    close = "]" if kind == "[" else "}"
    doc = _valid()
    text = json.dumps(doc).replace(
        '"metrics": {', '"metrics": {"deep": ' + kind * depth + "0" + close * depth + ", ", 1
    )
    manifest = _read(text.encode())
    assert (manifest is not None) == (depth <= 62)  # root and metrics are two levels
