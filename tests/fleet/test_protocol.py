"""Message validation and the durable outbox (no broker needed)."""

from __future__ import annotations

import json
import time

import pytest

from fleet.errors import ProtocolError
from fleet.protocol import (
    Desired,
    Event,
    Telemetry,
    decode_block,
    encode_block,
    parse_json_message,
    parse_topic,
    topic,
)
from fleet.queue import DurableQueue

SHA = "a" * 64


def _telemetry(**kw):
    d = {
        "v": 1,
        "type": "telemetry",
        "device": "d1",
        "stream": "s1",
        "seq": 3,
        "ts": 1.0,
        "window_s": 10,
        "models": {
            "m": {
                "version": "1",
                "inferences": 5,
                "errors": 0,
                "latency_ms": {"le": [1, 2], "counts": [1, 2, 2]},
            }
        },
    }
    d.update(kw)
    return json.dumps(d).encode()


def test_round_trip_and_topics():
    d = Desired(deployment_id="dep1", model="m", sha256=SHA, size=10, version="2", ts=time.time())
    assert parse_json_message("desired", d.to_json()) == d
    t = parse_json_message("telemetry", _telemetry())
    assert isinstance(t, Telemetry) and t.seq == 3
    assert str(parse_topic(topic("f", "d1", "stream/get"))) == "edge/v1/f/d1/stream/get"


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (_telemetry(v=2), "protocol version"),
        (_telemetry(type="status"), "message type"),
        (_telemetry(seq=-1), "seq"),
        (_telemetry(seq="3"), "seq"),
        (_telemetry(seq=True), "boolean"),
        (_telemetry(device="a/b"), "device"),
        (
            _telemetry(
                models={
                    "m": {
                        "version": "1",
                        "inferences": 1,
                        "errors": 0,
                        "latency_ms": {"le": [1], "counts": [1]},
                    }
                }
            ),
            "latency_ms",
        ),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(payload, why):
    with pytest.raises(ProtocolError, match=why):
        parse_json_message("telemetry", payload)


def test_unknown_fields_are_ignored_and_unknown_topics_refused():
    assert parse_json_message("telemetry", _telemetry(future_field=1)).seq == 3
    for bad in ("edge/v2/f/d/status", "edge/v1/f/d/unknown", "other/v1/f/d/status", "edge/v1/f/+/status"):
        with pytest.raises(ProtocolError):
            parse_topic(bad)
    with pytest.raises(ProtocolError, match="unknown state"):
        Event.from_dict(
            {
                "device": "d",
                "stream": "s",
                "seq": 1,
                "ts": 1,
                "deployment_id": "x",
                "model": "m",
                "sha256": SHA,
                "state": "exploded",
            }
        )


def test_blocks_carry_a_crc():
    b = decode_block(encode_block(SHA, 7, 100, b"hello", "tok"))
    assert (b.index, b.data, b.token, b.intact) == (7, b"hello", "tok", True)
    forged = decode_block(encode_block(SHA, 7, 100, b"hellp", crc32=b.crc32))
    assert not forged.intact
    with pytest.raises(ProtocolError):
        decode_block(b"EDGB\x00\xffshort")


def test_manager_drops_malformed_messages_and_keeps_going(tmp_path):
    from fleet.manager.service import FleetManager, ManagerConfig
    from fleet.mqtt import BrokerConfig

    class Msg:
        def __init__(self, t, p):
            self.topic, self.payload = t, p

    m = FleetManager(ManagerConfig("f", tmp_path, BrokerConfig()))
    m._on_message(None, None, Msg("edge/v1/f/d1/telemetry", b"{garbage"))
    m._on_message(None, None, Msg("edge/v1/f/d1/telemetry", _telemetry(device="d2")))  # claims another id
    m._on_message(None, None, Msg("edge/v1/f/d1/telemetry", _telemetry(device="d1")))
    m._on_message(None, None, Msg("edge/v1/f/d1/telemetry", _telemetry(device="d1")))  # a resend
    assert m.metrics.dropped.labels("invalid")._value.get() == 2
    assert m.metrics.duplicates._value.get() == 1
    assert m.db.one("SELECT COUNT(*) AS n FROM telemetry")["n"] == 1
    m.db.close()


def test_outbox_sequence_survives_reopen_and_ack_deletes(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    seqs = [q.put("telemetry", lambda s: b"x%d" % s) for _ in range(3)]
    assert seqs == [1, 2, 3]
    q.ack(2)
    stream = q.stream
    q.close()
    q = DurableQueue(tmp_path / "q.sqlite")
    assert q.stream == stream
    assert [m.seq for m in q.peek(10)] == [1, 3]
    assert q.put("event", lambda s: b"e") == 4  # never reused, even after deletes and a reopen


def test_outbox_drop_policy_oldest_telemetry_first_then_age(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite", max_bytes=1000)
    q.put("event", lambda s: b"E" * 100)
    for _ in range(20):
        q.put("telemetry", lambda s: b"T" * 100)
    kept = q.peek(100)
    assert sum(len(m.payload) for m in kept) <= 1000
    assert kept[0].kind == "event", "the event was dropped before older telemetry"
    assert [m.seq for m in kept[1:]] == list(range(13, 22)), "not the newest telemetry kept"
    assert q.dropped() == 11
    q.max_age_s = 0.2
    time.sleep(0.3)
    q.put("telemetry", lambda s: b"new")
    assert [m.payload for m in q.peek(100)] == [b"new"]


def test_standalone_swap_lets_runs_in_flight_finish_on_the_old_version() -> None:
    """A run that started before a swap finishes on the old model; the old one closes after it."""
    import threading
    import time

    from fleet.targets import StandaloneTarget, _Served

    events: list[str] = []

    class SlowModel:
        def __init__(self, version: str) -> None:
            self.version, self.closed = version, False

        def run(self, inputs):
            time.sleep(0.2)
            if self.closed:
                raise ValueError("model is closed")
            events.append(f"ran {self.version}")
            return {"y": self.version}

        def close(self) -> None:
            self.closed = True
            events.append(f"closed {self.version}")

    target = StandaloneTarget()
    target._models["m"] = _Served(SlowModel("1.0"), "1.0")
    results: list[dict] = []
    worker = threading.Thread(target=lambda: results.append(target.run("m", None)))
    worker.start()
    time.sleep(0.05)  # the run is in flight on 1.0
    old = target._models["m"]
    with target._lock:
        target._models["m"] = _Served(SlowModel("2.0"), "2.0")
    old.close_when_idle(timeout_s=5)
    worker.join(5)
    assert results == [{"y": "1.0"}]
    assert events == ["ran 1.0", "closed 1.0"]
    assert target.run("m", None) == {"y": "2.0"}


def test_serve_target_counts_ignore_prometheus_created_timestamps() -> None:
    """prometheus_client's `*_created` samples are timestamps: they must not count as inferences."""
    from prometheus_client import CollectorRegistry, Counter

    from fleet.targets import ServeTarget

    registry = CollectorRegistry()
    success = Counter("demo_success", "ok", ["model", "version"], registry=registry)
    success.labels(model="m", version="1").inc(3)
    target = ServeTarget.__new__(ServeTarget)  # _samples needs no manager
    assert target._samples(success, "m", "1") == {"demo_success_total": 3.0}
