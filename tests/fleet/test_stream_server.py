"""The manager's stream server without a broker: paced by acknowledgements, in turn, bounded.

The sender thread is not started: each test calls ``pump()`` itself, so nothing depends on timing.
"""

from __future__ import annotations

import hashlib

import pytest

from fleet.errors import NotFoundError
from fleet.manager.stream import StreamServer
from fleet.protocol import StreamGet, decode_block

BLOCK = 1024
FILE = bytes(range(256)) * 64  # 16 blocks
SHA = hashlib.sha256(FILE).hexdigest()


class Broker:
    """Stands in for paho: records what was published and hands out message ids."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int]] = []  # (device, block index, mid)

    def publish(self, device: str, payload: bytes) -> int:
        mid = len(self.sent) + 1
        self.sent.append((device, decode_block(payload).index, mid))
        return mid


def read_block(file_id: str, index: int, block_size: int) -> tuple[bytes, int]:
    if file_id != SHA:
        raise NotFoundError(f"no package {file_id[:12]}")
    return FILE[index * block_size : (index + 1) * block_size], len(FILE)


def server(broker: Broker, limited: list[tuple[str, int]] | None = None, **kw) -> StreamServer:
    opts = {
        "device_bytes_per_s": 1e9,
        "device_burst_bytes": 1e9,
        "package_bytes_per_s": 1e9,
        "package_burst_bytes": 1e9,
        "max_outstanding_bytes": 2 * BLOCK,
    }
    opts.update(kw)
    return StreamServer(
        broker.publish,
        read_block,
        limited=lambda name, n: (limited if limited is not None else []).append((name, n)),
        **opts,
    )


def test_blocks_go_out_as_the_broker_acknowledges_them_one_device_after_the_other():
    broker = Broker()
    s = server(broker)
    for device in ("a", "b", "c"):
        s.request(device, StreamGet(SHA, BLOCK, 0, 3, "t"))
    s.pump()
    # Two blocks' worth outstanding at most: the rest waits here, nothing is dropped.
    assert [(d, i) for d, i, _ in broker.sent] == [("a", 0), ("b", 0)]
    while len(broker.sent) < 9:
        before = len(broker.sent)
        s.acknowledged(broker.sent[before - 1][2])
        s.pump()
        assert len(broker.sent) > before, "an acknowledgement let nothing more out"
    assert [(d, i) for d, i, _ in broker.sent] == [(d, i) for i in range(3) for d in ("a", "b", "c")], (
        "one block per device in turn"
    )
    assert s.waiting_devices == 0


def test_a_block_asked_again_while_unacknowledged_is_not_sent_twice():
    broker = Broker()
    s = server(broker, max_outstanding_bytes=8 * BLOCK)
    s.request("a", StreamGet(SHA, BLOCK, 0, 4, "t"))
    s.pump()
    assert [i for _, i, _ in broker.sent] == [0, 1, 2, 3]
    s.request("a", StreamGet(SHA, BLOCK, 0, 4, "t"))  # its block timeout ran out meanwhile
    s.pump()
    assert [i for _, i, _ in broker.sent] == [0, 1, 2, 3]
    assert s.duplicates_avoided == 4
    for _, _, mid in list(broker.sent):
        s.acknowledged(mid)
    s.request("a", StreamGet(SHA, BLOCK, 2, 2, "t"))  # acknowledged by the broker, lost after: resent
    s.pump()
    assert [i for _, i, _ in broker.sent] == [0, 1, 2, 3, 2, 3]


def test_a_new_request_replaces_what_a_device_still_waited_for():
    """What waits for a device is bounded by one request, however often it asks."""
    broker = Broker()
    s = server(broker, max_outstanding_bytes=BLOCK)
    for offset in range(16):
        s.request("greedy", StreamGet(SHA, BLOCK, offset, 1, "t"))
    assert s.waiting_devices == 1
    s.pump()
    assert [i for _, i, _ in broker.sent] == [15]


def test_the_device_bucket_still_bounds_what_a_hostile_device_gets():
    broker, limited = Broker(), []
    burst = 3 * (BLOCK + 256)  # three blocks and their framing cost
    s = server(
        broker, limited, device_bytes_per_s=0.0, device_burst_bytes=burst, max_outstanding_bytes=1 << 30
    )
    for _ in range(20):
        s.request("evil", StreamGet(SHA, BLOCK, 0, 16, "t"))  # the whole file, twenty times
        s.pump()
        for _, _, mid in list(broker.sent):
            s.acknowledged(mid)
    assert len(broker.sent) <= 3 + 1, broker.sent  # the burst (a full bucket admits one more)
    assert sum(n for name, n in limited if name == "stream_device") > 0
    s.request("other", StreamGet(SHA, BLOCK, 0, 2, "t"))  # another device is not affected
    s.pump()
    assert [i for d, i, _ in broker.sent if d == "other"] == [0, 1]


def test_an_empty_package_bucket_makes_blocks_wait_not_vanish():
    broker, limited = Broker(), []
    s = server(
        broker,
        limited,
        package_bytes_per_s=0.0,
        package_burst_bytes=BLOCK + 256,
        max_outstanding_bytes=1 << 30,
    )
    s.request("a", StreamGet(SHA, BLOCK, 0, 3, "t"))
    s.pump()
    assert [i for _, i, _ in broker.sent] == [0]
    assert s.waiting_devices == 1 and not limited
    for n in (1, 2):
        s._packages.get(SHA, 0.0).tokens = BLOCK + 256  # the bucket refilled
        s.pump()
        assert [i for _, i, _ in broker.sent] == list(range(n + 1))
    assert s.waiting_devices == 0


def test_an_unknown_file_gets_one_error_block():
    broker = Broker()
    s = server(broker)
    s.request("a", StreamGet("0" * 64, BLOCK, 0, 8, "t"))
    s.pump()
    assert len(broker.sent) == 1 and s.waiting_devices == 0


@pytest.mark.parametrize("limit", [1, 3])
def test_waiting_devices_are_bounded(limit):
    broker, limited = Broker(), []
    s = server(broker, limited, max_outstanding_bytes=0, max_waiting_devices=limit)
    for k in range(5):
        s.request(f"d{k}", StreamGet(SHA, BLOCK, 0, 2, "t"))
    assert s.waiting_devices == limit
    assert sum(n for name, n in limited if name == "stream_waiting") == 2 * (5 - limit)
