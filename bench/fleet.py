"""Fleet benchmark against a real mosquitto on this machine: ingestion, a 5 MB rollout, wire overhead.

    .venv/bin/python bench/fleet.py [--devices 1000] [--window 20] [--ota-devices 100] [--package-mb 5]
                                    [--parts ingestion,rollout,scale] [--scale-rate 5000] [--scale-devices 1000]

Everything runs on this machine, each part in its own process: mosquitto, the manager (``edge fleet
serve``, its CPU read from /proc/<pid>/stat) and the load generators (simulated devices, several
hundred per process, all of a process's paho clients driven by one selector loop). The load
generators share the cores with the manager and the broker; the report says how much they used.

1. Ingestion: ``--devices`` simulated devices publish a real v1 ``telemetry`` message (QoS 1, one
   model with a latency histogram, system and queue fields) every second, each at its own phase,
   for ``--window`` seconds after a warm-up. Measured: telemetry the manager stored per second
   (rows of its ``telemetry`` table received in the window), the ingestion lag (manager receipt
   minus device timestamp, p50/p99), and the manager's CPU in cores.
2. Rollout: a signed ``--package-mb`` MB package to ``--ota-devices`` simulated devices. Each one
   receives the retained desired state, downloads over the MQTT stream protocol (stream/get windows
   of 8 blocks of 64 KiB, as the agent does; each complete window written to a file and hashed as
   it arrives, as the agent writes its ``.part``), checks the sha256 of the whole file and then the
   package's signature and artifact hashes with the real ``open_package(..., trust_store).verify()``;
   it skips loading the model, its self-test and the health window (reported as succeeded at once).
   Measured: from ``deploy`` to the deployment's ``succeeded``.
3. Wire bytes per device: every MQTT packet of its download counted in the simulated device (both
   directions: PUBLISH fixed header, topic, packet id and payload; PUBACKs), against the package
   size; cross-checked with mosquitto's ``$SYS/broker/bytes/sent`` over the rollout.

4. At scale (``--parts scale``, docs/scaling.md): a throwaway PostgreSQL (Debian's package) and a
   mosquitto with ``max_inflight_messages 1000``; ``--scale-devices`` devices offer ``--scale-rate``
   telemetry messages/s (QoS 1) to one SQLite manager, one PostgreSQL manager and two PostgreSQL
   managers (``edge fleet serve --database``), each run in turn; then one of two is SIGKILLed mid-window
   (every (device, seq) the broker acknowledged to a device is checked to be stored exactly once), and
   the ticker's holder is SIGKILLed ``--failovers`` times (time until the other holds the lease).

``--parts`` picks which parts run; the others' figures are kept from the last results file.
Writes bench/results/fleet.json and the "Fleet" and "Fleet at scale" sections of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import pwd
import secrets
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench._report import machine_description, update_section
from fleet.protocol import (
    Desired,
    Event,
    Status,
    StreamGet,
    Telemetry,
    decode_block,
    topic,
)
from fleet.targets import LatencyHistogram

FLEET = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESULTS = REPO / "bench" / "results" / "fleet.json"
TARGET_CORES, TARGET_ROLLOUT_S, TARGET_OVERHEAD = 1.0, 60.0, 0.05


# --- processes: mosquitto and the manager ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat): ours and everyone else's."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and its direct children (PostgreSQL: the postmaster and its backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == root or int(fields[1]) == root:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f} s")


def start_mosquitto(
    work: Path,
    name: str = "mosquitto",
    settings: str = "sys_interval 1\nmax_queued_messages 100000\nmax_inflight_messages 64\n",
) -> tuple[subprocess.Popen[bytes], int]:
    """A mosquitto on a free loopback port, its config and log in ``work`` under ``name``."""
    port = free_port()
    conf = work / f"{name}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
        f"persistence false\n{settings}message_size_limit 2097152\n"
    )
    log = open(work / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stdout=log, stderr=log
    )
    wait_port(port, proc, "mosquitto")
    return proc, port


# The manager's API needs a bearer token: one made for this run.
API_TOKEN = secrets.token_urlsafe(32)


def start_manager(work: Path, broker_port: int, trust: Path) -> tuple[subprocess.Popen[bytes], str]:
    http = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGE_FLEET_TOKEN": API_TOKEN}
    log = open(work / "manager.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "fleet", "serve", "--fleet", FLEET, "--state-dir", str(work / "manager"),
         "--broker", f"mqtt://127.0.0.1:{broker_port}", "--http", f"127.0.0.1:{http}", "--trust", str(trust)],
        env=env, cwd=REPO, stdout=log, stderr=log,
    )  # fmt: skip
    wait_port(http, proc, "the manager")
    return proc, f"http://127.0.0.1:{http}"


def api(base: str, method: str, path: str, body: Any = None, data: bytes | None = None) -> Any:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


# --- simulated devices: many paho clients per process, one selector loop ---


def _client(device: str, port: int, on_message: Any = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device}", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(64)
    if on_message is not None:
        c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=60)
    return c


def _status(device: str, models: dict[str, dict[str, str]] | None = None) -> bytes:
    return Status(
        device=device, state="online", ts=time.time(), agent_version="sim", models=models or {}
    ).to_json()


class Loop:
    """Drives many non-threaded paho clients with one selector (paho's external event loop API)."""

    def __init__(self, clients: list[mqtt.Client]) -> None:
        self.clients = clients
        self.sel = selectors.DefaultSelector()
        for c in clients:
            self.sel.register(c.socket(), selectors.EVENT_READ, c)  # type: ignore[arg-type]
        self._misc = self._flush = time.monotonic()

    def step(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            key.data.loop_read()
        # paho writes a packet as soon as it is queued (no network thread); what a full socket
        # buffer left over is flushed here, every 20 ms rather than on every step (cheaper).
        if time.monotonic() - self._flush >= 0.02:
            self._flush = time.monotonic()
            for c in self.clients:
                if c.want_write():
                    c.loop_write()
        if time.monotonic() - self._misc >= 1.0:
            self._misc = time.monotonic()
            for c in self.clients:
                c.loop_misc()


_SEQ_MARK, _TS_MARK = 987654321987654, 1234567890.25  # placeholders in the pre-encoded payload


def telemetry_template(device: str, stream: str) -> tuple[bytes, bytes, bytes]:
    """A device's real v1 telemetry message encoded once, split around its ``seq`` and ``ts``.

    ``head + seq + mid + ts + tail`` is byte for byte what ``Telemetry(...).to_json()`` gives for
    that seq and ts (checked), so the load generators do not pay for encoding each message.
    """
    hist = LatencyHistogram()
    for ms in (3, 4, 4, 5, 7, 9, 12, 30):
        hist.observe(ms)
    t = Telemetry(
        device=device, stream=stream, seq=_SEQ_MARK, ts=_TS_MARK, window_s=1.0,
        models={"digits": {"version": "1.0", "inferences": 8, "errors": 0, "latency_ms": hist.to_dict()}},
        system={"cpu_percent": 12.5, "mem_used_bytes": 123456789, "mem_total_bytes": 4 << 30,
                "temperature_c": 48.2, "throttled": 0},
        queue={"depth": 0, "dropped": 0},
    )  # fmt: skip
    full = t.to_json()
    seq_at, ts_at = full.index(str(_SEQ_MARK).encode()), full.index(repr(_TS_MARK).encode())
    assert seq_at < ts_at, "telemetry keys are sorted: seq before ts"
    head, mid = full[:seq_at], full[seq_at + len(str(_SEQ_MARK)) : ts_at]
    tail = full[ts_at + len(repr(_TS_MARK)) :]
    ts = time.time()
    check = dataclasses.replace(t, seq=7, ts=ts).to_json()
    assert head + b"7" + mid + repr(ts).encode() + tail == check, "telemetry template does not round-trip"
    return head, mid, tail


def telemetry_worker(
    first: int,
    count: int,
    port: int,
    start_at: float,
    stop_at: float,
    out: Any,
    hz: float = 1.0,
    track: bool = False,
    fleet_size: int = 1000,
) -> None:
    """``count`` of ``fleet_size`` devices each sending ``hz`` telemetry messages a second, at evenly spread phases.

    Cheap per message: the payload is pre-encoded (:func:`telemetry_template`), the devices send
    in a fixed cyclic order (one pointer, no scan of all of them), and a client is polled for
    writing only after it published. ``track``: also report every (device, seq) the broker
    acknowledged (PUBACK received).
    """
    ids = [f"sim-{i:04d}" for i in range(first, first + count)]
    clients = [_client(d, port) for d in ids]
    acked: list[tuple[str, int]] = []
    inflight: dict[tuple[int, int], tuple[str, int]] = {}
    if track:
        for k, c in enumerate(clients):
            c.user_data_set(k)
            c.on_publish = lambda _c, k, mid, _rc, _p: (
                (key := inflight.pop((k, mid), None)) is not None and acked.append(key)
            )
    loop = Loop(clients)
    for d, c in zip(ids, clients):
        c.publish(topic(FLEET, d, "status"), _status(d), qos=1, retain=True)
    stream = uuid.uuid4().hex[:16]
    templates = [telemetry_template(d, stream) for d in ids]
    topics = [topic(FLEET, d, "telemetry") for d in ids]
    seq = [0] * count
    # Device k of the whole fleet sends at start_at + k/N + j/hz seconds: a uniform load. Within
    # this process the phases increase with k, so the sending order is k = 0, 1, ..., count-1, 0, ...
    period = 1.0 / hz
    nxt = [start_at + (first + k) / fleet_size * period for k in range(count)]
    k, sent = 0, 0
    while time.time() < stop_at:
        now = time.time()
        while now >= nxt[k]:
            nxt[k] += period
            seq[k] += 1
            head, mid, tail = templates[k]
            payload = b"".join((head, str(seq[k]).encode(), mid, repr(now).encode(), tail))
            info = clients[k].publish(topics[k], payload, qos=1)
            if track:
                inflight[(k, info.mid)] = (ids[k], seq[k])
            sent += 1
            k = k + 1 if k + 1 < count else 0
        loop.step(max(0.0, min(0.01, nxt[k] - time.time())))
    deadline = time.time() + 10  # let the last acknowledgements arrive
    while time.time() < deadline and (any(c.want_write() for c in clients) or (track and inflight)):
        loop.step(0.01)
    for c in clients:
        c.disconnect()
    out.put(("telemetry", first, sent, acked if track else None, stream))


def _mqtt_publish_bytes(topic_len: int, payload_len: int, qos: int) -> int:
    """Size of a PUBLISH packet on the wire: fixed header, topic, packet id (QoS > 0), payload."""
    remaining = 2 + topic_len + (2 if qos else 0) + payload_len
    varint = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + varint + remaining


PUBACK = 4


@dataclass
class _Download:
    desired: Desired
    blocks: dict[int, bytes] = field(default_factory=dict)
    next_offset: int = 0
    requested_at: float = 0.0
    wire: int = 0
    requests: int = 0  # stream/get sent
    retries: int = 0  # of them, asked again after the block timeout
    duplicates: int = 0  # blocks received that it already had
    timeout_s: float = 3.0  # the block timeout, doubled per retry without progress (the agent's)
    file: Any = None  # the package as it arrives, window by window (as the agent writes its .part)
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0


class OtaDevice:
    """A simulated device's OTA path: download, sha256, signature and hashes, then the events."""

    WINDOW = 8

    def __init__(self, device: str, port: int, trust: Path, scratch: Path) -> None:
        self.device, self.trust, self.scratch = device, trust, scratch
        self.stream, self.seq = uuid.uuid4().hex[:16], 0
        self.client = _client(device, port, self._on_message)
        self.dl: _Download | None = None
        self.result: dict[str, Any] | None = None
        self.client.subscribe(topic(FLEET, device, "desired"), qos=1)
        self.client.subscribe(topic(FLEET, device, "stream/data"), qos=1)
        self.client.publish(topic(FLEET, device, "status"), _status(device), qos=1, retain=True)

    def _publish(self, kind: str, payload: bytes, count: bool = False) -> None:
        t = topic(FLEET, self.device, kind)
        self.client.publish(t, payload, qos=1)
        if count and self.dl is not None:
            self.dl.wire += _mqtt_publish_bytes(len(t), len(payload), 1) + PUBACK

    def _event(self, state: str, **kw: Any) -> None:
        assert self.dl is not None
        d = self.dl.desired
        self.seq += 1
        e = Event(device=self.device, stream=self.stream, seq=self.seq, ts=time.time(), deployment_id=d.deployment_id,
                  model=d.model, sha256=d.sha256, state=state, version=d.version, **kw)  # fmt: skip
        self._publish("event", e.to_json())

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/desired"):
            if msg.payload and self.dl is None:
                self.dl = _Download(Desired.from_dict(json.loads(msg.payload)))
                self._event("accepted")
                self._request()
            return
        if self.dl is None:
            return
        self.dl.wire += _mqtt_publish_bytes(len(msg.topic), len(msg.payload), msg.qos) + PUBACK
        b = decode_block(msg.payload)
        if b.file_id == self.dl.desired.sha256 and (
            b.index < self.dl.next_offset or b.index in self.dl.blocks
        ):
            self.dl.duplicates += 1
        elif b.file_id == self.dl.desired.sha256 and b.intact:
            self.dl.blocks[b.index] = b.data
            if all(i in self.dl.blocks for i in range(self.dl.next_offset, self._window_end())):
                # A complete window goes to the file and the running sha256 (memory: one window).
                if self.dl.file is None:
                    self.dl.file = open(self._path(), "wb")  # noqa: SIM115 - closed in _finish
                for i in range(self.dl.next_offset, self._window_end()):
                    data = self.dl.blocks.pop(i)
                    self.dl.file.write(data)
                    self.dl.digest.update(data)
                    self.dl.size += len(data)
                self.dl.next_offset = self._window_end()
                self.dl.timeout_s = 3.0  # progress: back to the first timeout
                if self.dl.next_offset >= self._nblocks():
                    self._finish()
                else:
                    self._request()

    def _path(self) -> Path:
        return self.scratch / f"{self.device}.edgepkg"

    def _nblocks(self) -> int:
        d = self.dl.desired  # type: ignore[union-attr]
        return max(1, -(-d.size // d.block_size))

    def _window_end(self) -> int:
        return min(self.dl.next_offset + self.WINDOW, self._nblocks())  # type: ignore[union-attr]

    def _request(self) -> None:
        """Ask for the window's blocks from the first one missing (a retry asks only for the rest)."""
        assert self.dl is not None
        d = self.dl.desired
        first = next(i for i in range(self.dl.next_offset, self._window_end()) if i not in self.dl.blocks)
        count = self._window_end() - first
        self.dl.requested_at = time.monotonic()
        self.dl.requests += 1
        req = StreamGet(d.sha256, d.block_size, first, count, self.device)
        self._publish("stream/get", req.to_json(), count=True)

    def retry_stalled(self) -> None:
        """After the block timeout without the window: ask again, and wait twice as long next time."""
        dl = self.dl
        if dl is not None and self.result is None and time.monotonic() - dl.requested_at > dl.timeout_s:
            dl.retries += 1
            dl.timeout_s = min(30.0, dl.timeout_s * 2)
            self._request()

    def _finish(self) -> None:
        from edge_runtime.package import TrustStore, open_package

        assert self.dl is not None
        downloaded_at = time.time()
        d = self.dl.desired
        self.dl.file.close()
        path = self._path()
        ok = self.dl.digest.hexdigest() == d.sha256
        reason = None if ok else "sha256 mismatch"
        if ok:
            try:
                with open_package(path, trust_store=TrustStore.load(self.trust)) as pkg:
                    pkg.verify()
            except Exception as exc:  # noqa: BLE001 - reported as the device would
                ok, reason = False, f"verify: {exc}"
        path.unlink()
        if ok:
            self._event("verified")
            self._event("swapped")
            self._event("succeeded", serving_sha256=d.sha256)
        else:
            self._event("failed", step="verify", reason=reason)
        self.result = {"device": self.device, "ok": ok, "bytes": self.dl.size, "wire": self.dl.wire,
                       "downloaded_at": downloaded_at, "verified_at": time.time(),
                       "requests": self.dl.requests, "retries": self.dl.retries,
                       "duplicates": self.dl.duplicates}  # fmt: skip
        self.dl.blocks.clear()


def ota_worker(first: int, count: int, port: int, trust: str, stop_at: float, out: Any) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    devices = [OtaDevice(f"ota-{i:03d}", port, Path(trust), scratch) for i in range(first, first + count)]
    loop = Loop([d.client for d in devices])
    out.put(("ota-ready", first, count))
    last_retry = time.monotonic()
    while time.time() < stop_at and not all(d.result for d in devices):
        loop.step(0.01)
        if time.monotonic() - last_retry > 1.0:
            last_retry = time.monotonic()
            for d in devices:
                d.retry_stalled()
    end = time.time() + 3  # flush the last events
    while time.time() < end:
        loop.step(0.01)
    shutil.rmtree(scratch, ignore_errors=True)
    out.put(("ota", first, [d.result for d in devices]))


# --- the package ---


def make_key(trust: Path) -> Any:
    """A release signing key; its public half in ``trust/bench.pub`` (the trust store of all sides)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    trust.mkdir(parents=True, exist_ok=True)
    (trust / "bench.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def make_package(path: Path, size_mb: float, key: Any) -> str:
    """A package signed by ``key`` whose ONNX Gemm weights make it ``size_mb`` MB (random, incompressible)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.package import make_selftest, write_package

    k = int(size_mb * 1e6 / 12)  # k x 3 float32
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((k, 3)).astype(np.float32), np.zeros(3, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.zeros((1, k), np.float32)
    manifest = {
        "name": "digits", "version": "2.0", "created": "2024-05-01T12:00:00Z",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", k]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}],
        "artifacts": [{"path": "model.onnx", "kind": "onnx"}, {"path": "selftest.npz", "kind": "selftest"}],
        "selftest": {"artifact": "selftest.npz", "atol": 1e-3, "rtol": 1e-3},
    }  # fmt: skip
    artifacts = {
        "model.onnx": model.SerializeToString(),
        "selftest.npz": make_selftest({"x": x}, {"y": x @ w + b}),
    }
    return write_package(path, manifest, artifacts, key, compress=False).sha256


# --- the run ---


def sys_bytes(port: int) -> dict[str, int]:
    """mosquitto's $SYS byte counters (updated every second with sys_interval 1)."""
    got: dict[str, int] = {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sys-{uuid.uuid4().hex[:6]}")
    c.on_message = lambda _c, _u, m: got.__setitem__(m.topic.rsplit("/", 1)[1], int(m.payload))
    c.connect("127.0.0.1", port)
    c.subscribe("$SYS/broker/bytes/+")
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        c.loop(0.1)
    c.disconnect()
    return got


def ingestion(
    args: argparse.Namespace, port: int, manager: subprocess.Popen[bytes], work: Path
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    per = -(-args.devices // args.procs)
    start_at = time.time() + 3 + 0.002 * args.devices  # time to connect everyone first
    window_start = start_at + args.warmup
    stop_at = window_start + args.window
    procs = [
        ctx.Process(
            target=telemetry_worker,
            args=(i, min(per, args.devices - i), port, start_at, stop_at, out, 1.0, False, args.devices),
        )
        for i in range(0, args.devices, per)
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, window_start - time.time()))
    cpu0, load0 = cpu_seconds(manager.pid), sum(cpu_seconds(p.pid) for p in procs)  # type: ignore[arg-type]
    t0 = time.monotonic()
    time.sleep(max(0.0, stop_at - time.time()))
    elapsed = time.monotonic() - t0
    cpu1, load1 = cpu_seconds(manager.pid), sum(cpu_seconds(p.pid) for p in procs)  # type: ignore[arg-type]
    sent = sum(out.get(timeout=60)[2] for _ in procs)
    for p in procs:
        p.join(30)
    time.sleep(2)  # the manager drains what is left
    db = sqlite3.connect(f"file:{work / 'manager' / 'fleet.sqlite'}?mode=ro", uri=True)
    in_window = db.execute(
        "SELECT COUNT(*) FROM telemetry WHERE received >= ? AND received < ?", (window_start, stop_at)
    ).fetchone()[0]
    lags = sorted(
        r[0] for r in db.execute("SELECT received - ts FROM telemetry WHERE ts >= ?", (window_start,))
    )
    stored = db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
    db.close()
    q = lambda f: round(lags[min(len(lags) - 1, int(f * len(lags)))] * 1e3, 1) if lags else None
    return {
        "devices": args.devices,
        "processes": len(procs),
        "window_s": round(elapsed, 2),
        "offered_msgs_per_s": args.devices,
        "ingested_msgs_per_s": round(in_window / args.window, 1),
        "sent_total": sent,
        "stored_total": stored,
        "lag_ms_p50": q(0.5),
        "lag_ms_p99": q(0.99),
        "lag_ms_max": round(lags[-1] * 1e3, 1) if lags else None,
        "manager_cores": round((cpu1 - cpu0) / elapsed, 3),
        "load_generator_cores": round((load1 - load0) / elapsed, 3),
    }


def rollout(
    args: argparse.Namespace,
    port: int,
    base: str,
    work: Path,
    trust: Path,
    key: Any,
    broker_pid: int,
    manager_pid: int,
) -> dict[str, Any]:
    pkg_path = work / "bench.edgepkg"
    sha = make_package(pkg_path, args.package_mb, key)
    size = pkg_path.stat().st_size
    api(base, "POST", "/api/v1/packages", data=pkg_path.read_bytes())
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    nproc = 2
    per = -(-args.ota_devices // nproc)
    stop_at = time.time() + 600
    procs = [
        ctx.Process(
            target=ota_worker, args=(i, min(per, args.ota_devices - i), port, str(trust), stop_at, out)
        )
        for i in range(0, args.ota_devices, per)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        assert out.get(timeout=120)[0] == "ota-ready"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        online = [
            d for d in api(base, "GET", "/api/v1/devices") if d["online"] and d["id"].startswith("ota-")
        ]
        if len(online) >= args.ota_devices:
            break
        time.sleep(0.5)
    sys0, broker_cpu0 = sys_bytes(port), cpu_seconds(broker_pid)
    manager_cpu0, load0 = cpu_seconds(manager_pid), os.getloadavg()[0]
    devices_cpu0 = sum(cpu_seconds(p.pid) for p in procs)  # type: ignore[arg-type]
    spec = {"targets": {"devices": [f"ota-{i:03d}" for i in range(args.ota_devices)]}, "block_size": 65536}
    t0, t0_wall = time.monotonic(), time.time()
    dep = api(base, "POST", "/api/v1/deployments", {"package": sha, "spec": spec})
    state = dep["state"]
    while state == "running" and time.monotonic() - t0 < 300:
        time.sleep(0.25)
        state = api(base, "GET", f"/api/v1/deployments/{dep['id']}")["state"]
    elapsed = time.monotonic() - t0
    devices_cpu1 = sum(cpu_seconds(p.pid) for p in procs)  # type: ignore[arg-type]
    results = [r for _ in procs for r in out.get(timeout=120)[2] if r]
    for p in procs:
        p.join(30)
    time.sleep(1.5)  # one $SYS interval
    sys1, broker_cpu1 = sys_bytes(port), cpu_seconds(broker_pid)
    manager_cpu1 = cpu_seconds(manager_pid)
    wire = [r["wire"] for r in results]
    per_device = sum(wire) / len(wire) if wire else 0
    sent = sys1.get("sent", 0) - sys0.get("sent", 0)
    limited = manager_counters(base, "fleet_limited_total")
    return {
        "devices": args.ota_devices,
        "package_bytes": size,
        "state": state,
        "seconds": round(elapsed, 2),
        "succeeded": sum(r["ok"] for r in results),
        "aggregate_mb_per_s": round(size * len(results) / elapsed / 1e6, 1),
        "wire_bytes_per_device": round(per_device),
        "wire_overhead": round(per_device / size - 1, 5) if size else None,
        "broker_sys_bytes_sent_per_device": round(sent / args.ota_devices) if sent else None,
        "broker_cores": round((broker_cpu1 - broker_cpu0) / elapsed, 3),
        "manager_cores": round((manager_cpu1 - manager_cpu0) / elapsed, 3),
        "simulated_devices_cores": round((devices_cpu1 - devices_cpu0) / elapsed, 3),
        # Why bytes moved more than once: the devices' retries (after their block timeout) and the
        # blocks they received twice; what the manager held back (its limits, by name).
        # The last device's download complete, and its verification (sha256, signature) done.
        "last_downloaded_s": round(max(r["downloaded_at"] for r in results) - t0_wall, 1)
        if results
        else None,
        "last_verified_s": round(max(r["verified_at"] for r in results) - t0_wall, 1) if results else None,
        "block_requests": sum(r["requests"] for r in results),
        "block_request_retries": sum(r["retries"] for r in results),
        "duplicate_blocks_received": sum(r["duplicates"] for r in results),
        "manager_limited": limited,
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "deployment": dep["id"],
    }


# --- at scale: PostgreSQL, several managers (docs/scaling.md) ---

TARGET_RATE, TARGET_LAG_S, TARGET_FAILOVER_S = 5000.0, 1.0, 10.0
SCALE_ROLLOUT_DEVICES = 1000  # a rollout to this many devices or more is reported in "Fleet at scale"


class Postgres:
    """A throwaway PostgreSQL cluster (Debian's package; run as user postgres when we are root)."""

    def __init__(self) -> None:
        import glob

        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
        if not dirs:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = Path(dirs[-1])
        self.version = self.bindir.parent.name
        self.root = Path(tempfile.mkdtemp(prefix="fleet-bench-pg-"))
        self.port = free_port()
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(self.root, "postgres")

    def start(self) -> Postgres:
        run = lambda *c: subprocess.run(
            [*self.user, *map(str, c)], check=True, capture_output=True, timeout=120
        )
        run(self.bindir / "initdb", "-D", self.root / "data", "-A", "trust", "-U", "postgres", "-E", "UTF8")
        # Durable defaults (fsync on, synchronous_commit on): a commit is on disk when it returns.
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB"
        run(
            self.bindir / "pg_ctl",
            "-D",
            self.root / "data",
            "-o",
            opts,
            "-l",
            self.root / "log",
            "-w",
            "start",
        )
        return self

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        return int((self.root / "data" / "postmaster.pid").read_text().split()[0])

    def new_database(self) -> str:
        import psycopg

        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run([*self.user, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "stop"],
                       capture_output=True, timeout=60, check=False)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def start_scale_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    return start_mosquitto(
        work, "mosquitto-scale", "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
    )


def start_instance(
    work: Path, name: str, broker_port: int, database: str | None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    http = free_port()
    state = work / name
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGE_FLEET_TOKEN": API_TOKEN}
    log = open(work / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    cmd = [sys.executable, "-m", "fleet.cli", "fleet", "serve", "--fleet", FLEET, "--state-dir", str(state),
           "--broker", f"mqtt://127.0.0.1:{broker_port}", "--http", f"127.0.0.1:{http}"]  # fmt: skip
    if database:
        cmd += ["--database", database]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=log)
    wait_port(http, proc, f"manager {name}")
    return proc, f"http://127.0.0.1:{http}", state


def _rows(database: str | None, state: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if database:
        import psycopg

        with psycopg.connect(database) as c:
            return c.execute(sql.replace("?", "%s"), args or None).fetchall()
    db = sqlite3.connect(f"file:{state / 'fleet.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


WRITER_COUNTERS = (
    "fleet_telemetry_batches_total",
    "fleet_telemetry_batched_messages_total",
    "fleet_telemetry_store_seconds_total",
    "fleet_telemetry_writer_idle_seconds_total",
    "fleet_message_handler_seconds_total",
)


def writer_counters(base: str) -> dict[str, float]:
    """The manager's telemetry-writer time accounting, from its /metrics (zeros if it is gone)."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return dict.fromkeys(WRITER_COUNTERS, 0.0)
    out = dict.fromkeys(WRITER_COUNTERS, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        base = name.split("{", 1)[0]  # labelled counters (by kind) summed
        if base in out:
            out[base] += float(value)
        if base == "fleet_message_handler_seconds_total":
            out[name] = float(value)
    return out


def writer_summary(
    before: list[dict[str, float]], after: list[dict[str, float]], seconds: float
) -> dict[str, Any]:
    """Per manager over the window: batches, mean batch, and the share of time storing, idle, in the handler."""
    out: list[dict[str, Any] | None] = []
    for b, a in zip(before, after):
        if a["fleet_telemetry_batches_total"] < b["fleet_telemetry_batches_total"]:
            out.append(None)  # SIGKILLed during the window: its counters are gone
            continue
        d = {k: a[k] - b[k] for k in WRITER_COUNTERS}
        n = d["fleet_telemetry_batches_total"]
        out.append({
            "batches_per_s": round(n / seconds, 1),
            "mean_batch": round(d["fleet_telemetry_batched_messages_total"] / n, 1) if n else None,
            "ms_per_batch": round(d["fleet_telemetry_store_seconds_total"] / n * 1e3, 1) if n else None,
            "writer_storing": round(d["fleet_telemetry_store_seconds_total"] / seconds, 3),
            "writer_idle": round(d["fleet_telemetry_writer_idle_seconds_total"] / seconds, 3),
            "network_thread_in_handler": round(d["fleet_message_handler_seconds_total"] / seconds, 3),
            "handler_by_kind": {k.split('"')[1]: round((a[k] - b.get(k, 0.0)) / seconds, 3)
                                for k in a if k.startswith("fleet_message_handler_seconds_total{")},
        })  # fmt: skip
    return {"per_manager": out}


def manager_counters(base: str, name: str) -> dict[str, float]:
    """A labelled counter of the manager's /metrics, by its first label's value."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(name + "{"):
            label = line.split('"')[1]
            out[label] = float(line.rsplit(" ", 1)[1])
    return out


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def scale_run(
    args: argparse.Namespace, work: Path, pg: Postgres | None, managers: int, kill_at: float | None = None
) -> dict[str, Any]:
    """Telemetry at ``--scale-rate`` into ``managers`` instances; optionally SIGKILL one mid-window."""
    engine = "postgresql" if pg else "sqlite"
    run_dir = work / f"{engine}-{managers}-{args.scale_rate:g}{'-kill' if kill_at is not None else ''}"
    run_dir.mkdir()
    database = pg.new_database() if pg else None
    broker, port = start_scale_broker(run_dir)
    instances = [start_instance(run_dir, f"m{i}", port, database) for i in range(managers)]
    state0 = instances[0][2]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs_n = args.procs
    per = -(-args.scale_devices // procs_n)
    hz = args.scale_rate / args.scale_devices
    start_at = time.time() + 3 + 0.002 * args.scale_devices
    window_start = start_at + args.warmup
    stop_at = window_start + args.scale_window
    track = kill_at is not None
    gens = [
        ctx.Process(target=telemetry_worker,
                    args=(i, min(per, args.scale_devices - i), port, start_at, stop_at, out, hz, track,
                          args.scale_devices))
        for i in range(0, args.scale_devices, per)
    ]  # fmt: skip
    for g in gens:
        g.start()
    time.sleep(max(0.0, window_start - time.time()))
    pids = [p.pid for p, _, _ in instances]
    survivors = pids[:-1] if kill_at is not None else pids  # CPU of the instances that live through
    cpu0 = sum(cpu_seconds(pid) for pid in survivors)
    broker0, gens0 = cpu_seconds(broker.pid), sum(cpu_seconds(g.pid) for g in gens)  # type: ignore[arg-type]
    load0, busy0, busy_t0 = os.getloadavg()[0], machine_busy_seconds(), time.monotonic()
    pg0 = tree_cpu_seconds(pg.pid) if pg else 0.0
    counters0 = [writer_counters(base) for _, base, _ in instances]
    t0 = time.monotonic()
    killed = None
    if kill_at is not None:
        time.sleep(kill_at)
        victim = instances[-1][0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed = time.time()
    time.sleep(max(0.0, stop_at - time.time()))
    elapsed = time.monotonic() - t0
    cpu1 = sum(cpu_seconds(pid) for pid in survivors)
    broker1, gens1 = cpu_seconds(broker.pid), sum(cpu_seconds(g.pid) for g in gens)  # type: ignore[arg-type]
    load1, busy1, busy_t1 = os.getloadavg()[0], machine_busy_seconds(), time.monotonic()
    pg1 = tree_cpu_seconds(pg.pid) if pg else 0.0
    counters1 = [writer_counters(base) for _, base, _ in instances]
    results = [out.get(timeout=120) for _ in gens]
    for g in gens:
        g.join(30)
    sent = sum(r[2] for r in results)
    streams = [r[4] for r in results]
    marks = ", ".join("?" for _ in streams)
    # Drain: wait until what was sent is stored (or nothing more arrives for 15 s, or the drain cap).
    last, still, cap = -1, time.monotonic(), time.monotonic() + args.drain_cap * (3 if track else 1)
    while time.monotonic() < cap:
        stored = _rows(
            database, state0, f"SELECT COUNT(*) FROM telemetry WHERE stream IN ({marks})", tuple(streams)
        )[0][0]
        if stored >= sent:
            break
        if stored != last:
            last, still = stored, time.monotonic()
        elif time.monotonic() - still > 15:
            break
        time.sleep(0.5)
    in_window = _rows(database, state0, "SELECT COUNT(*) FROM telemetry WHERE received >= ? AND received < ?",
                      (window_start, stop_at))[0][0]  # fmt: skip
    lags = sorted(r[0] for r in _rows(database, state0, "SELECT received - ts FROM telemetry WHERE ts >= ? AND ts < ?",
                                        (window_start, stop_at)))  # fmt: skip
    q = lambda f: round(lags[min(len(lags) - 1, int(f * len(lags)))] * 1e3, 1) if lags else None
    # The rate the managers kept up while messages came: rows over the span of their receipt times.
    first, last_rx = _rows(database, state0, f"SELECT MIN(received), MAX(received) FROM telemetry WHERE stream IN ({marks})",
                           tuple(streams))[0]  # fmt: skip
    span = (last_rx - first) if first is not None and last_rx is not None else 0.0
    r: dict[str, Any] = {
        "engine": engine,
        "managers": managers,
        "devices": args.scale_devices,
        "offered_msgs_per_s": round(args.scale_rate, 1),
        "window_s": round(elapsed, 2),
        "sent_total": sent,
        "stored_total": stored,
        "ingested_msgs_per_s": round(in_window / args.scale_window, 1),
        "sustained_msgs_per_s": round(stored / span, 1) if span > 0 else None,
        "sent_msgs_per_s": round(sent / (stop_at - start_at), 1),
        "lag_ms_p50": q(0.5),
        "lag_ms_p99": q(0.99),
        "lag_ms_max": round(lags[-1] * 1e3, 1) if lags else None,
        "manager_cores": round((cpu1 - cpu0) / elapsed, 3),
        "broker_cores": round((broker1 - broker0) / elapsed, 3),
        "load_generator_cores": round((gens1 - gens0) / elapsed, 3),
        "postgresql_cores": round((pg1 - pg0) / elapsed, 3) if pg else None,
        # All cores of the machine busy (2.0: saturated), including other people's jobs.
        "machine_busy_cores": round((busy1 - busy0) / (busy_t1 - busy_t0), 3),
        "loadavg_1m": [round(load0, 2), round(load1, 2)],
        "writer": writer_summary(counters0, counters1, elapsed) if engine == "postgresql" else None,
    }
    if track:
        acked = {tuple(k) for res in results for k in (res[3] or [])}
        have = {
            (d, s_)
            for d, s_ in _rows(
                database,
                state0,
                f"SELECT device, seq FROM telemetry WHERE stream IN ({marks})",
                tuple(streams),
            )
        }
        dup_rows = _rows(database, state0,
                         f"SELECT COUNT(*) - COUNT(DISTINCT device || '/' || stream || '/' || seq) FROM telemetry WHERE stream IN ({marks})",
                         tuple(streams))[0][0]  # fmt: skip
        models = _rows(database, state0, f"SELECT COUNT(*), SUM(inferences) FROM telemetry_models WHERE stream IN ({marks})",
                       tuple(streams))[0]  # fmt: skip
        r.update({
            "killed_after_s": kill_at,
            "acked_by_broker": len(acked),
            "lost": len(acked - have),
            "stored_twice": int(dup_rows),
            "models_rows_per_window": round(models[0] / max(1, len(have)), 4),
            "inferences_counted": int(models[1] or 0),
            "inferences_expected": len(have) * 8,
            "drained_after_kill_s": round(time.time() - killed, 1) if killed else None,
        })  # fmt: skip
    _stop([p for p, _, _ in instances])
    _stop([broker])
    return r


def failover_run(args: argparse.Namespace, work: Path, pg: Postgres) -> dict[str, Any]:
    """Two instances; SIGKILL the ticker's holder; time until the other holds the lease."""
    run_dir = work / "failover"
    run_dir.mkdir()
    database = pg.new_database()
    broker, port = start_scale_broker(run_dir)
    instances = [start_instance(run_dir, f"m{i}", port, database) for i in range(2)]
    ids = {
        f"edge-fleet-manager-{FLEET}-{(st / 'instance-id').read_text().strip()}": p for p, _, st in instances
    }
    lease = lambda: _rows(database, run_dir, "SELECT holder FROM leases WHERE name='ticker'")
    deadline = time.monotonic() + 30
    while not lease() and time.monotonic() < deadline:
        time.sleep(0.1)
    times = []
    for _ in range(args.failovers):
        holder = lease()[0][0]
        victim = ids[holder]
        t0 = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        while time.monotonic() - t0 < 60:
            now = lease()
            if now and now[0][0] != holder:
                break
            time.sleep(0.05)
        times.append(round(time.monotonic() - t0, 2))
        # Bring the victim back (same state directory, same id) for the next round.
        name = next(st.name for p, _, st in instances if p is victim)
        proc, base, st = start_instance(run_dir, name, port, database)
        instances = [(proc, base, st) if p is victim else (p, b, s_) for p, b, s_ in instances]
        ids[holder] = proc
        time.sleep(2)
    _stop([p for p, _, _ in instances])
    _stop([broker])
    return {"lease_ttl_s": 5.0, "tick_s": 0.5, "failover_s": times, "failover_s_max": max(times)}


def scale(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pg = Postgres().start()
    try:
        runs = [
            scale_run(args, work, None, 1),
            scale_run(args, work, pg, 1),
            scale_run(args, work, pg, 2),
        ]
        lower = [
            scale_run(argparse.Namespace(**{**vars(args), "scale_rate": float(rate)}), work, pg, 2)
            for rate in filter(None, args.scale_lower_rates.split(","))
        ]
        for r in [*runs, *lower]:
            print(json.dumps(r), flush=True)
        kill = scale_run(args, work, pg, 2, kill_at=args.scale_window / 2)
        print(json.dumps(kill), flush=True)
        fo = failover_run(args, work, pg)
        print(json.dumps(fo), flush=True)
        return {"postgresql": pg.version, "runs": runs, "lower_rates": lower, "sigkill": kill, "failover": fo}
    finally:
        pg.stop()


def render_scale(r: dict[str, Any]) -> str:
    sc = r["scale"]
    r = {**r, **{k: sc[k] for k in ("date", "command", "args") if k in sc}}
    ok = lambda b: "PASS" if b else "MISS"
    row = lambda x: (
        f"| {x['engine']} | {x['managers']} | {x['offered_msgs_per_s']:g} | {x['sent_msgs_per_s']:g} | "
        f"{x['ingested_msgs_per_s']:g} | {x['sustained_msgs_per_s']} | {x['stored_total']} of {x['sent_total']} | "
        f"{x['lag_ms_p50']} | {x['lag_ms_p99']} | {x['manager_cores']} | {x.get('postgresql_cores')} | "
        f"{x.get('broker_cores')} | {x.get('load_generator_cores')} | {x.get('machine_busy_cores')} | {x.get('loadavg_1m')} |"
    )
    rows = "\n".join(row(x) for x in sc["runs"])
    two = next(x for x in sc["runs"] if x["engine"] == "postgresql" and x["managers"] == 2)
    k, fo = sc["sigkill"], sc["failover"]
    lower = "".join("\n" + row(x) for x in sc.get("lower_rates", []))
    writer = "\n".join(
        f"| {x['engine']} | {x['managers']} | {x['offered_msgs_per_s']:g} | {m['batches_per_s']} | {m['mean_batch']} | "
        f"{m['ms_per_batch']} | {m['writer_storing']} | {m['writer_idle']} | {m['network_thread_in_handler']} |"
        for x in [*sc["runs"], *sc.get("lower_rates", [])]
        if x.get("writer")
        for m in x["writer"]["per_manager"]
        if m
    )
    ro = sc.get("rollout_1000_devices")
    ro_text = (
        f"""

A {ro["package_bytes"] / 1e6:.1f} MB rollout to {ro["devices"]} simulated devices (one SQLite manager; run {ro.get("date", "")},
`{ro.get("command", "")}`; load average {ro.get("loadavg_1m")} from other jobs): `{ro["state"]}` after
**{ro["seconds"]:g} s**, {ro["succeeded"]} devices downloaded and verified the package; {ro["aggregate_mb_per_s"]} MB/s
out of the broker; each device moved {ro["wire_bytes_per_device"]} B for the {ro["package_bytes"]} B package
({ro["wire_overhead"]:.1%} over); {ro.get("block_requests")} block requests, of them {ro.get("block_request_retries")}
asked again after the device's block timeout (3 s, doubling without progress), {ro.get("duplicate_blocks_received")}
blocks received twice; the manager held back {ro.get("manager_limited") or "nothing"}. The last device had all
blocks {ro.get("last_downloaded_s")} s after the deploy and had verified them at {ro.get("last_verified_s")} s. Each simulated
device writes every complete window to a file and hashes it as it arrives (as the agent does). CPU during the rollout:
manager {ro.get("manager_cores")}, broker {ro.get("broker_cores")}, simulated devices {ro.get("simulated_devices_cores")} cores.
The stream server sends at most 8 MiB unacknowledged by the broker and lets the rest wait, one block per
device in turn (docs/scaling.md); the rate is what the broker's round trips allow on the shared cores."""
        if ro
        else ""
    )
    rate_ok = (
        two["ingested_msgs_per_s"] >= 0.98 * TARGET_RATE and (two["lag_ms_p99"] or 1e9) < TARGET_LAG_S * 1e3
    )
    return f"""Machine: {r["machine"]}. Broker: {r["broker"]}, PostgreSQL {sc["postgresql"]} (fsync and
synchronous_commit on). Run: {r["date"]}. Command: `{r["command"]}`

Everything on this one machine, sharing its cores: mosquitto, PostgreSQL, the manager instances
(`edge fleet serve --database postgresql://...`, or SQLite without it) and {r["args"]["procs"]} load
generator processes ({r["args"]["scale_devices"]} simulated devices, QoS 1, the same 462-byte telemetry as above,
pre-encoded once per device with only `seq` and `ts` filled in per message).
"Sent": what the load generators managed to publish (they share the cores too). "Stored in window":
`telemetry` rows received inside the {r["args"]["scale_window"]:g} s window; "over the receipt span": all the
run's rows divided by the time between the first and the last receipt (the rate the managers
kept up once messages reached them; a backlog left after {r["args"]["drain_cap"]:g} s is not waited for); lag: manager
receipt minus device timestamp. SQLite: one transaction per message, before paho acknowledges it;
PostgreSQL: batches (what queued while the previous batch committed, up to the manager's
`batch_max`), each stored by one statement (one round trip, its own transaction) and each message
acknowledged to the broker after its batch's commit; status messages go through the same writer
(one transaction per batch). "Machine busy cores": all of the machine's CPU time, other people's
jobs included (/proc/stat), over the window.

| engine | managers | offered msg/s | sent msg/s | stored in window msg/s | stored msg/s over the receipt span | stored of sent | lag p50 ms | lag p99 ms | manager cores | PostgreSQL cores | broker cores | load generator cores | machine busy cores (all jobs, of 2) | load average (1 min) at start, end |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}{lower}

Where each PostgreSQL manager's time went in the window (its `/metrics`: `fleet_telemetry_*`,
`fleet_message_handler_seconds_total`; shares of wall time, so a thread waiting for a core counts):

| engine | managers | offered msg/s | batches/s | mean batch | ms per batch | writer storing | writer idle | network thread in the handler |
|---|---|---|---|---|---|---|---|---|
{writer}

| Target | Measured | |
|---|---|---|
| {TARGET_RATE:g} msg/s into PostgreSQL by two managers, p99 lag < {TARGET_LAG_S:g} s | {two["offered_msgs_per_s"]:g} msg/s offered, {two["sent_msgs_per_s"]:g} sent by the load generators, {two["ingested_msgs_per_s"]:g} msg/s stored inside the window and {two["sustained_msgs_per_s"]} msg/s over the receipt span; p99 lag {two["lag_ms_p99"]} ms{"" if rate_ok else " (a backlog: the offered rate is above what this machine sustains)"} | {ok(rate_ok)} |
| leader failover < {TARGET_FAILOVER_S:g} s | lease taken over in {", ".join(map(str, fo["failover_s"]))} s (TTL {fo["lease_ttl_s"]:g} s, tick {fo["tick_s"]:g} s) | {ok(fo["failover_s_max"] < TARGET_FAILOVER_S)} |
| 0 lost, 0 counted twice across a SIGKILL | one of two managers SIGKILLed {k["killed_after_s"]:g} s into the window at {k["offered_msgs_per_s"]:g} msg/s offered: {k["acked_by_broker"]} acknowledged to devices, {k["lost"]} lost, {k["stored_twice"]} stored twice, {k["inferences_counted"]} inferences counted of {k["inferences_expected"]} | {ok(k["lost"] == 0 and k["stored_twice"] == 0 and k["inferences_counted"] == k["inferences_expected"])} |

Raw numbers: `bench/results/fleet.json` (`scale`).{ro_text}"""


def render(r: dict[str, Any]) -> str:
    ing, ota = r["ingestion"], r["rollout"]
    ok = lambda b: "PASS" if b else "MISS"
    cores_ok = (
        ing["manager_cores"] < TARGET_CORES and ing["ingested_msgs_per_s"] >= 0.98 * ing["offered_msgs_per_s"]
    )
    ro_ok = ota["state"] == "succeeded" and ota["seconds"] < TARGET_ROLLOUT_S
    wire_ok = ota["wire_overhead"] is not None and ota["wire_overhead"] < TARGET_OVERHEAD
    return f"""Machine: {r["machine"]}. Broker: {r["broker"]}. Run: {r["date"]}.

Command: `{r["command"]}`

All on one machine: mosquitto, the manager (`edge fleet serve`, SQLite WAL) and the load generators
(simulated devices, {ing["devices"] // ing["processes"]} paho clients per process on one selector loop)
share its cores; the load generators used {ing["load_generator_cores"]} cores during the ingestion window.
Shared, noisy machine (other engineers' jobs ran alongside): treat figures as indicative.

| Target | Measured | |
|---|---|---|
| manager ingests {ing["devices"]} devices at 1 Hz on < {TARGET_CORES:g} core | {ing["ingested_msgs_per_s"]} msg/s stored of {ing["offered_msgs_per_s"]} offered, manager {ing["manager_cores"]} cores (from /proc/&lt;pid&gt;/stat over {ing["window_s"]} s), lag p50 {ing["lag_ms_p50"]} ms, p99 {ing["lag_ms_p99"]} ms | {ok(cores_ok)} |
| {ota["package_bytes"] / 1e6:.1f} MB package to {ota["devices"]} devices in < {TARGET_ROLLOUT_S:g} s | {ota["seconds"]} s to `{ota["state"]}` ({ota["succeeded"]} verified; {ota["aggregate_mb_per_s"]} MB/s out of the broker) | {ok(ro_ok)} |
| wire overhead < {TARGET_OVERHEAD:.0%} of package size | {ota["wire_bytes_per_device"]} B per device for a {ota["package_bytes"]} B package: {ota["wire_overhead"]:.3%} | {ok(wire_ok)} |

How: ingestion counts rows of the manager's `telemetry` table received in the window (each message
is stored in its own transaction before paho acknowledges it); lag is manager receipt minus the
device's timestamp. The rollout is timed from `POST /api/v1/deployments` to the deployment's
`succeeded`; simulated devices download over the MQTT stream protocol (8 × 64 KiB windows), check
sha256 and the real signature/artifact-hash verification (`open_package(...).verify()`), and skip
model loading, self-test and the health window. Wire bytes are every MQTT packet of a device's
download counted in the device (PUBLISH header + topic + packet id + payload, PUBACKs, its
stream/get requests); cross-check: mosquitto's `$SYS/broker/bytes/sent` grew by
{ota["broker_sys_bytes_sent_per_device"]} B per device over the rollout (that includes other
small traffic). Raw numbers: `bench/results/fleet.json`."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="load generator processes")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--ota-devices", type=int, default=100)
    ap.add_argument("--package-mb", type=float, default=5.0)
    ap.add_argument("--no-report", action="store_true", help="do not touch BENCHMARKS.md and results/")
    ap.add_argument(
        "--parts",
        default="ingestion,rollout,scale",
        help="which parts: ingestion and rollout (one SQLite manager), scale (PostgreSQL, several)",
    )
    ap.add_argument(
        "--scale-rate", type=float, default=5000.0, help="telemetry messages/s offered in the scale part"
    )
    ap.add_argument("--scale-devices", type=int, default=1000)
    ap.add_argument(
        "--scale-lower-rates",
        default="",
        help="comma-separated lower rates (msg/s) also offered to two PostgreSQL managers, e.g. 2500",
    )
    ap.add_argument("--scale-window", type=float, default=15.0)
    ap.add_argument("--failovers", type=int, default=3, help="SIGKILLs of the ticker's holder to time")
    ap.add_argument(
        "--drain-cap", type=float, default=60.0, help="seconds to wait for the backlog after a window"
    )
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    broker, port = start_mosquitto(work)
    manager = None
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    try:
        trust = work / "trust"
        key = make_key(trust)
        if parts & {"ingestion", "rollout"}:
            manager, base = start_manager(work, port, trust)
        result: dict[str, Any] = {
            "machine": machine_description(),
            "broker": subprocess.run([shutil.which("mosquitto") or "mosquitto", "-h"], capture_output=True, text=True, check=False).stdout.splitlines()[0],
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join([".venv/bin/python bench/fleet.py", *(sys.argv[1:] if argv is None else argv)]),
        }  # fmt: skip
        result["args"] = vars(args)
        this_run = {"date": result["date"], "command": result["command"]}
        if "ingestion" not in parts and not ("rollout" in parts and args.ota_devices < SCALE_ROLLOUT_DEVICES):
            # The "Fleet" section's run is kept: so are its date, command and arguments (the
            # at-scale parts record their own).
            result.update({k: previous[k] for k in ("date", "command", "args") if k in previous})
        for part in ("ingestion", "rollout", "scale"):
            if part not in parts and part in previous:
                result[part] = previous[part]  # kept from the last run that measured it
        if "ingestion" in parts:
            assert manager is not None
            result["ingestion"] = ingestion(args, port, manager, work)
            print(json.dumps(result["ingestion"], indent=2), flush=True)
        if "rollout" in parts:
            assert manager is not None
            ro = rollout(args, port, base, work, trust, key, broker.pid, manager.pid)
            print(json.dumps(ro, indent=2), flush=True)
            if args.ota_devices >= SCALE_ROLLOUT_DEVICES:
                # The at-scale rollout (issue 17) goes to "Fleet at scale"; the "Fleet" section keeps
                # its 100-device rollout.
                ro.update(this_run)
                result.setdefault("scale", dict(previous.get("scale", {})))["rollout_1000_devices"] = ro
                if "rollout" in previous:
                    result["rollout"] = previous["rollout"]
            else:
                result["rollout"] = ro
        if "scale" in parts:
            # The at-scale rollout's figures stay, from this run or the last results file.
            kept = result.get("scale", previous.get("scale", {})).get("rollout_1000_devices")
            result["scale"] = scale(args, work)
            result["scale"].update(this_run, args=vars(args))
            if kept:
                result["scale"]["rollout_1000_devices"] = kept
    finally:
        for proc in (manager, broker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_report:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        if parts & {"ingestion", "rollout"} and "ingestion" in result and "rollout" in result:
            update_section("Fleet", render(result))
        if "scale" in parts or ("rollout" in parts and args.ota_devices >= SCALE_ROLLOUT_DEVICES):
            update_section("Fleet at scale", render_scale(result))
    if "ingestion" in result and "rollout" in result:
        print(render(result))
    if "scale" in result:
        print(render_scale(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
