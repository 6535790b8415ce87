"""The manager's package stream server (``stream/get`` -> ``stream/data``): in order, paced, bounded.

A device asks for ``count`` blocks from ``offset`` (:class:`~fleet.protocol.StreamGet`); the blocks
go out as QoS 1 ``stream/data`` messages. Two things bound what the manager sends:

- **Amplification** (a hostile device): each block is paid for from the device's token bucket;
  what it cannot pay is not sent and counted (``fleet_limited_total{limit="stream_device"}``). The
  agent asks again for what it misses, so a download slows, never fails.
- **Congestion** (a rollout to many devices): at most ``max_outstanding_bytes`` of blocks are
  published and not yet acknowledged by the broker. The rest waits here, per device, and is sent
  as the broker acknowledges earlier blocks, one block per device in turn (round robin), and
  within the package's token bucket. Nothing is dropped for congestion: publishing all that is
  asked at once used to queue hundreds of MiB in the MQTT client, the devices' block timeouts ran
  out while their blocks were still queued, and each retry queued the same blocks again (1,000
  devices moved 4.6 times the package size and did not finish in 300 s).

What waits is bounded: one request per device (a new request from a device replaces what it still
had waiting: it asks for what it misses now), at most 64 blocks (:class:`StreamGet`'s limit), and
at most ``max_waiting_devices`` devices (beyond that a request is refused and counted, the device
asks again). A block the device asks for again while it is still waiting or not yet acknowledged
by the broker is not sent twice (``duplicates_avoided``).

Threads: :meth:`request` and :meth:`acknowledged` are called on the MQTT network thread and only
record; one sender thread (:meth:`start`) reads the blocks and publishes them. paho calls
``on_publish`` (hence :meth:`acknowledged`) holding its outgoing-message lock, which ``publish``
takes too: :meth:`acknowledged` therefore takes no lock of ours (a lock-free append), so the sender
publishing under our lock can never deadlock with it.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from fleet.errors import NotFoundError
from fleet.protocol import StreamGet, encode_block

__all__ = ["StreamServer", "TokenBucket", "TokenBuckets"]

log = logging.getLogger(__name__)

ERROR_COST = 256  # bytes charged for an error block (a request for a file we do not have)
_OUTSTANDING_STALE_S = 60.0  # a publish the broker never acknowledged stops counting after this


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; spend with ``tokens -= n`` after :meth:`refill`."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    @property
    def full(self) -> bool:
        return self.tokens >= self.burst

    def admits(self, cost: float) -> bool:
        """Whether a cost may be paid now (a full bucket admits one cost larger than its burst)."""
        return self.tokens >= cost or self.full


class TokenBuckets:
    """Token buckets by key, at most ``max_keys`` of them (full ones are forgotten first)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def get(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                for k in [k for k, b in self._buckets.items() if b.refill(now) >= b.burst]:
                    del self._buckets[k]
                if len(self._buckets) >= self.max_keys:  # all busy: forget the oldest
                    del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        bucket.refill(now)
        return bucket


@dataclass
class _Waiting:
    """What one device still waits for: blocks ``next .. end-1`` of ``req``'s file."""

    req: StreamGet
    next: int
    end: int


class StreamServer:
    """Serves block requests; see the module docstring for the bounds.

    ``publish(topic_device, payload) -> mid`` sends one ``stream/data`` message (QoS 1) and returns
    its MQTT message id; :meth:`acknowledged` is to be called with the id when the broker
    acknowledged it (paho's ``on_publish``). ``read_block(file_id, index, block_size)`` returns
    ``(data, file size)`` or raises :class:`~fleet.errors.NotFoundError`. ``limited(name, n)``
    counts what was not sent, ``warn(device, text)`` logs it (rate-limited by the caller),
    ``sent(n)`` counts bytes streamed.
    """

    def __init__(
        self,
        publish: Callable[[str, bytes], int],
        read_block: Callable[[str, int, int], tuple[bytes, int]],
        *,
        device_bytes_per_s: float,
        device_burst_bytes: float,
        package_bytes_per_s: float,
        package_burst_bytes: float,
        max_outstanding_bytes: int = 8 << 20,
        max_waiting_devices: int = 100000,
        limited: Callable[[str, int], None] = lambda _name, _n: None,
        warn: Callable[[str, str], None] = lambda _device, _text: None,
        sent: Callable[[int], None] = lambda _n: None,
        block_filter: Callable[[str, int, bytes], bytes] | None = None,
    ) -> None:
        self._publish, self._read_block = publish, read_block
        self._devices = TokenBuckets(device_bytes_per_s, device_burst_bytes)
        self._packages = TokenBuckets(package_bytes_per_s, package_burst_bytes)
        self.max_outstanding_bytes, self.max_waiting_devices = max_outstanding_bytes, max_waiting_devices
        self._limited, self._warn, self._sent = limited, warn, sent
        self.block_filter = block_filter
        self._lock = threading.Lock()
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()  # device -> its request; in turn
        # mid -> (device, file id, index, bytes, published at): published, not yet acknowledged.
        self._outstanding: dict[int, tuple[str, str, int, int, float]] = {}
        self._in_flight: set[tuple[str, str, int]] = set()
        self._outstanding_bytes = 0
        self._acks: deque[int] = deque()  # acknowledged mids, appended by the network thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.duplicates_avoided = 0  # blocks asked again while not yet acknowledged: not resent

    def start(self) -> StreamServer:
        self._thread = threading.Thread(target=self._run, name="fleet-stream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    # --- the network thread's entry points: they only record ---

    def request(self, device: str, req: StreamGet) -> None:
        """A device's ``stream/get``: it replaces what the device still had waiting."""
        now = time.monotonic()
        with self._lock:
            mine = self._devices.get(device, now)
            if mine.tokens < ERROR_COST and not mine.full:  # in debt: not even a file read
                self._limited("stream_device", req.count)
                self._waiting.pop(device, None)
                return
            if device not in self._waiting and len(self._waiting) >= self.max_waiting_devices:
                self._limited("stream_waiting", req.count)
                self._warn(device, f"stream/get from {device}: {len(self._waiting)} devices wait, refused")
                return
            # Replaces what it still waited for (it asks for what it misses now); keeps its turn.
            self._waiting[device] = _Waiting(req, req.offset, req.offset + req.count)
        self._wake.set()

    def acknowledged(self, mid: int) -> None:
        """The broker acknowledged message ``mid`` (any of the manager's; others are ignored)."""
        self._acks.append(mid)
        self._wake.set()

    # --- the sender thread ---

    def _run(self) -> None:
        while not self._stop.is_set():
            # Woken by a request or an acknowledgement; a package bucket refills with time.
            self._wake.wait(0.05 if self._waiting else 1.0)
            self._wake.clear()
            try:
                self.pump()
            except Exception:  # the stream must go on; the next wake retries
                log.exception("the stream sender failed; retrying")
                time.sleep(0.5)

    def pump(self) -> None:
        """Account for acknowledgements, then send what waits and fits."""
        with self._lock:
            now = time.monotonic()
            while self._acks:
                self._forget(self._acks.popleft())
            for mid in [m for m, it in self._outstanding.items() if now - it[4] > _OUTSTANDING_STALE_S]:
                self._forget(mid)  # lost with a broken connection: the stream must not stall
            self._pump(now)

    def _forget(self, mid: int) -> None:
        item = self._outstanding.pop(mid, None)
        if item is not None:
            device, file_id, index, size, _at = item
            self._outstanding_bytes -= size
            self._in_flight.discard((device, file_id, index))

    @property
    def waiting_devices(self) -> int:
        return len(self._waiting)

    @property
    def outstanding_bytes(self) -> int:
        return self._outstanding_bytes

    # --- sending ---

    def _pump(self, now: float) -> None:
        """Send one block per waiting device in turn while the outstanding bytes allow."""
        while self._waiting and self._outstanding_bytes < self.max_outstanding_bytes:
            device, w = next(iter(self._waiting.items()))
            if not self._send_next(device, w, now):
                return  # the package's bucket is empty: the next wake (50 ms) resumes
            if w.next >= w.end:
                del self._waiting[device]
            else:
                self._waiting.move_to_end(device)

    def _send_next(self, device: str, w: _Waiting, now: float) -> bool:
        """Send block ``w.next`` (or what ends the request); False when the package's bucket is empty."""
        req, index = w.req, w.next
        if (device, req.file_id, index) in self._in_flight:
            self.duplicates_avoided += 1  # published, not yet acknowledged: on its way already
            w.next += 1
            return True
        mine = self._devices.get(device, now)
        try:
            data, size = self._read_block(req.file_id, index, req.block_size)
        except NotFoundError as exc:
            w.next = w.end
            if mine.tokens < ERROR_COST:
                self._limited("stream_device", 1)
                return True
            mine.tokens -= ERROR_COST
            self._publish(device, encode_block(req.file_id, index, 0, b"", req.token, str(exc)))
            return True
        if not data:
            w.next = w.end  # past the end of the file
            return True
        cost = len(data) + ERROR_COST
        if not mine.admits(cost):
            # The amplification bound: the rest of this request is not sent (the agent asks again).
            left = w.end - index
            w.next = w.end
            self._limited("stream_device", left)
            self._warn(
                device, f"stream/get from {device}: over the stream rate limit, {left} block(s) not sent"
            )
            return True
        package = self._packages.get(req.file_id, now)
        if not package.admits(cost):
            return False  # waits (keeps its turn) until the package's bucket refills
        mine.tokens -= cost
        package.tokens -= cost
        crc = zlib.crc32(data)
        if self.block_filter is not None:
            data = self.block_filter(device, index, data)  # sent under the original crc
        mid = self._publish(device, encode_block(req.file_id, index, size, data, req.token, crc32=crc))
        self._outstanding[mid] = (device, req.file_id, index, len(data), now)
        self._in_flight.add((device, req.file_id, index))
        self._outstanding_bytes += len(data)
        self._sent(len(data))
        w.next += 1
        return True
