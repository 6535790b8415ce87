"""Property-based tests of every MQTT message validator: any input ends in a ProtocolError or a valid result.

A valid result is one that encodes to finite JSON and parses back to itself; any other exception
(TypeError, OverflowError, RecursionError, KeyError ...) is a bug: the receiver would log it as
"unexpected" instead of dropping the message with a reason. The budget is small and fixed
(derandomized), so the test is fast and reproducible.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.errors import ProtocolError
from fleet.protocol import (
    BLOCK_MAGIC,
    MAX_JSON_DEPTH,
    decode_block,
    encode_block,
    json_depth,
    loads_bounded,
    parse_json_message,
)
from fleet.targets import LATENCY_BUCKETS_MS

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SHA = "0123456789abcdef" * 4

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "a" * 200, "\x1b[2J", SHA, "dev-1", "1.0", "online", "succeeded", "install"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ids = st.sampled_from(["dev-1", "a", "x" * 64, "x" * 65, "-bad", "a/b", "", "d1.rollback"]) | json_values
numbers = (
    st.sampled_from([0, 1, 1.5, -1, 1e18, 1 << 53, 1 << 64, 4096, 65536, 1e400]) | st.floats() | st.integers()
)
hist = st.fixed_dictionaries(
    {
        "le": st.just(list(LATENCY_BUCKETS_MS)) | st.lists(numbers, max_size=6) | json_values,
        "counts": st.lists(st.integers(min_value=-1, max_value=100), min_size=0, max_size=14) | json_values,
    }
)
model_stats = st.fixed_dictionaries(
    {},
    optional={
        "version": st.just("1.0") | json_values,
        "inferences": numbers | json_values,
        "errors": numbers | json_values,
        "latency_ms": hist | json_values,
        "sha256": st.just(SHA) | json_values,
    },
)
models = st.dictionaries(
    ids.filter(lambda v: isinstance(v, str)) | st.text(max_size=8), model_stats, max_size=4
)
system = st.dictionaries(
    st.sampled_from(
        ["cpu_percent", "mem_used_bytes", "mem_total_bytes", "temperature_c", "throttled", "load_1m", "x"]
    ),
    numbers | json_values,
    max_size=6,
)

FIELDS: dict[str, dict[str, Any]] = {
    "status": {
        "device": ids,
        "state": st.sampled_from(["online", "offline", "away"]) | json_values,
        "ts": numbers,
        "agent_version": json_values,
        "profile": json_values,
        "tags": st.lists(st.text(max_size=5), max_size=40) | json_values,
        "group": json_values,
        "models": models | json_values,
        "deployment_id": ids,
        "alerts": json_values,
    },
    "telemetry": {
        "device": ids,
        "stream": ids,
        "seq": numbers,
        "ts": numbers,
        "window_s": numbers,
        "models": models | json_values,
        "system": system | json_values,
        "queue": st.dictionaries(st.sampled_from(["depth", "dropped"]), numbers | json_values) | json_values,
    },
    "event": {
        "device": ids,
        "stream": ids,
        "seq": numbers,
        "ts": numbers,
        "deployment_id": ids,
        "model": ids,
        "sha256": st.just(SHA) | json_values,
        "state": st.sampled_from(["accepted", "failed", "nope"]) | json_values,
        "version": json_values,
        "reason": st.text(max_size=3000) | json_values,
        "step": json_values,
        "serving_sha256": st.just(SHA) | json_values,
        "progress": st.dictionaries(st.sampled_from(["bytes", "total", "x"]), numbers | json_values)
        | json_values,
    },
    "desired": {
        "deployment_id": ids,
        "model": ids,
        "sha256": st.just(SHA) | json_values,
        "size": numbers,
        "version": json_values,
        "ts": numbers,
        "action": st.sampled_from(["install", "rollback", "x"]) | json_values,
        "block_size": numbers,
        "allow_downgrade": json_values,
        "health": st.dictionaries(
            st.sampled_from(["window_s", "max_error_rate", "max_latency_ratio", "min_inferences"]),
            numbers | json_values,
        )
        | json_values,
    },
    "cmd": {"cmd": st.sampled_from(["report", "reboot"]) | json_values, "id": json_values},
    "stream/get": {
        "file_id": st.just(SHA) | json_values,
        "block_size": numbers,
        "offset": numbers,
        "count": numbers,
        "token": json_values,
    },
}
TYPES = {
    "status": "status",
    "telemetry": "telemetry",
    "event": "event",
    "desired": "desired",
    "cmd": "cmd",
    "stream/get": "stream_get",
}


def _message(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"v": st.just(1) | st.sampled_from([2, True, 1.0, "1"]), "type": st.just(TYPES[kind]) | json_values},
        optional=FIELDS[kind],
    )


def _check(kind: str, payload: bytes) -> None:
    try:
        result = parse_json_message(kind, payload)
    except ProtocolError:
        return
    # A valid result: finite JSON that parses back to the same message.
    encoded = result.to_json()
    json.loads(encoded, parse_constant=lambda name: pytest.fail(f"{kind} result encodes {name}"))
    assert parse_json_message(kind, encoded) == result


@pytest.mark.parametrize("kind", sorted(FIELDS))
@FUZZ
@given(data=st.data())
def test_json_message_validators_end_in_a_typed_error_or_a_valid_result(kind, data):
    message = data.draw(_message(kind))
    _check(kind, json.dumps(message, allow_nan=True).encode())


@pytest.mark.parametrize("kind", sorted(FIELDS))
@FUZZ
@given(payload=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()))
def test_json_message_validators_on_arbitrary_payloads(kind, payload):
    _check(kind, payload)


@FUZZ
@given(
    header=st.dictionaries(
        st.sampled_from(["f", "i", "n", "c", "t", "e", "x"]), json_values | numbers, max_size=7
    )
    | json_values,
    data=st.binary(max_size=64),
    raw=st.binary(max_size=80),
)
def test_block_decoder_ends_in_a_typed_error_or_a_block(header, data, raw):
    head = json.dumps(header, allow_nan=True).encode()
    for payload in (struct.pack(">4sH", BLOCK_MAGIC, len(head)) + head + data, raw, BLOCK_MAGIC + raw):
        try:
            block = decode_block(payload)
        except ProtocolError:
            continue
        again = decode_block(
            encode_block(
                block.file_id,
                block.index,
                block.total_size,
                block.data,
                block.token,
                block.error,
                block.crc32,
            )
        )
        assert again == block


@FUZZ
@given(value=json_values)
def test_bounded_loads_agrees_with_json_or_refuses(value):
    text = json.dumps(value, allow_nan=True)
    try:
        parsed = loads_bounded(text)
    except ProtocolError:
        return
    assert json_depth(parsed) <= MAX_JSON_DEPTH
    assert parsed == json.loads(text)  # accepted: no NaN or Infinity in it


def test_deep_nesting_is_refused_not_a_recursion_error():
    for depth in (MAX_JSON_DEPTH + 1, 5_000, 200_000):
        with pytest.raises(ProtocolError, match="deeper|JSON|over the limit"):
            parse_json_message("telemetry", b"[" * depth + b"]" * depth)
