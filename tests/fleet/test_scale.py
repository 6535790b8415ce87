"""Several manager instances on one PostgreSQL database and one broker (docs/scaling.md).

Real PostgreSQL (Debian's package, a throwaway cluster), real mosquitto, managers as real
``edge fleet serve`` processes (SIGKILL is SIGKILL), simulated devices as paho clients that
publish QoS 1 telemetry and answer desired states with events. Skipped without PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fleet_helpers import REPO, Mosquitto, free_port, wait_for, write_model_package
from paho.mqtt.enums import CallbackAPIVersion

from fleet.protocol import Event, Status, Telemetry, topic

FLEET = "scale"
TOKEN = "scale-test-token-0123456789abcdef"
BROKER_CONF = "allow_anonymous true\nmax_inflight_messages 200\nmax_queued_messages 100000\n"


class ManagerProcess:
    """``edge fleet serve --database ...`` in a subprocess; restartable on the same state directory."""

    def __init__(self, work: Path, name: str, broker: Mosquitto, database: str) -> None:
        self.state = work / name
        self.state.mkdir(parents=True, exist_ok=True)
        self.token_file = work / "api-token"
        self.token_file.write_text(TOKEN + "\n")
        os.chmod(self.token_file, 0o600)
        self.port = free_port()
        self.broker, self.database, self.log = broker, database, work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ManagerProcess:
        cmd = [
            sys.executable, "-m", "fleet.cli", "fleet", "serve", "--fleet", FLEET,
            "--state-dir", str(self.state), "--broker", self.broker.url, "--database", self.database,
            "--http", f"127.0.0.1:{self.port}", "--token-file", str(self.token_file),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env, cwd=REPO)
        wait_for(self._healthy, 60, f"manager {self.state.name} to answer")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"manager exited: {self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    @property
    def client_id(self) -> str:
        return f"edge-fleet-manager-{FLEET}-{(self.state / 'instance-id').read_text().strip()}"

    def api(self, method: str, path: str, body: Any = None, data: bytes | None = None) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def metric(self, name: str, labels: str = "") -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + ("{" if labels or "{" in line else " ")) and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Devices:
    """Simulated devices: one paho client each; QoS 1 telemetry, events answering desired states."""

    def __init__(self, broker: Mosquitto, n: int, answer_after_s: float = 0.5) -> None:
        self.ids = [f"dev-{i:03d}" for i in range(n)]
        self.stream = uuid.uuid4().hex[:12]
        self.acked: set[tuple[str, int]] = set()  # (device, seq) the broker acknowledged
        self.sent = 0
        self._pending: dict[tuple[str, int], tuple[str, int]] = {}
        self._lock = threading.Lock()
        self.answer_after_s = answer_after_s
        self.clients: dict[str, mqtt.Client] = {}
        self._event_seq = 0
        for d in self.ids:
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"edge-{FLEET}-{d}", protocol=mqtt.MQTTv311
            )
            c.max_inflight_messages_set(100)
            c.on_publish = self._on_publish
            c.on_message = self._on_desired
            c.user_data_set(d)
            c.connect("127.0.0.1", broker.port, keepalive=30)
            c.subscribe(topic(FLEET, d, "desired"), qos=1)
            c.loop_start()
            self.clients[d] = c
            status = Status(device=d, state="online", ts=time.time(), agent_version="sim", models={})
            c.publish(topic(FLEET, d, "status"), status.to_json(), qos=1, retain=True)
        self.seq = dict.fromkeys(self.ids, 0)

    def _on_publish(self, client: Any, device: str, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            key = self._pending.pop((device, mid), None)
            if key is not None:
                self.acked.add(key)

    def _on_desired(self, client: Any, device: str, msg: Any) -> None:
        if not msg.payload:
            return
        desired = json.loads(msg.payload)

        def answer() -> None:
            with self._lock:
                self._event_seq += 1
                seq = self._event_seq
            e = Event(
                device=device, stream=self.stream, seq=seq, ts=time.time(),
                deployment_id=desired["deployment_id"], model=desired["model"], sha256=desired["sha256"],
                state="succeeded", version=desired.get("version"), serving_sha256=desired["sha256"],
            )  # fmt: skip
            client.publish(topic(FLEET, device, "event"), e.to_json(), qos=1)

        threading.Timer(self.answer_after_s, answer).start()

    def send(self, rate_per_s: float, seconds: float) -> None:
        """Telemetry from every device, ``rate_per_s`` messages a second in all, for ``seconds``."""
        start, n = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            due = int((time.monotonic() - start) * rate_per_s)
            while n < due:
                d = self.ids[n % len(self.ids)]
                self.seq[d] += 1
                t = Telemetry(
                    device=d, stream=self.stream, seq=self.seq[d], ts=time.time(), window_s=1.0,
                    models={"m": {"version": "1", "inferences": 1, "errors": 0}},
                    system={"cpu_percent": 1.0}, queue={"depth": 0, "dropped": 0},
                )  # fmt: skip
                with self._lock:
                    info = self.clients[d].publish(topic(FLEET, d, "telemetry"), t.to_json(), qos=1)
                    self._pending[(d, info.mid)] = (d, self.seq[d])
                self.sent += 1
                n += 1
            time.sleep(0.005)

    def wait_acked(self, timeout: float = 30) -> None:
        wait_for(lambda: len(self.acked) == self.sent, timeout, "the broker to acknowledge every message")

    def close(self) -> None:
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()


def _db(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql, args or None).fetchall()


@pytest.fixture
def pg_url(postgres: Any) -> str:
    return str(postgres.new_database())


@pytest.fixture
def scale_broker(tmp_path: Path) -> Any:
    m = Mosquitto(tmp_path / "broker", extra_conf=BROKER_CONF).start()
    yield m
    m.stop()


@pytest.fixture
def managers(tmp_path: Path, scale_broker: Mosquitto, pg_url: str) -> Any:
    started: list[ManagerProcess] = []

    def start(n: int) -> list[ManagerProcess]:
        for i in range(n):
            started.append(ManagerProcess(tmp_path, f"m{len(started)}", scale_broker, pg_url).start())
        return started[-n:]

    yield start
    for m in started:
        m.stop()


def _stored(url: str, stream: str) -> dict[tuple[str, int], int]:
    return {
        (d, s): n
        for d, s, n in _db(
            url, "SELECT device, seq, COUNT(*) FROM telemetry WHERE stream=%s GROUP BY 1, 2", stream
        )
    }


def test_two_managers_split_telemetry_and_count_it_once(managers, scale_broker, pg_url):
    a, b = managers(2)
    devices = Devices(scale_broker, 20)
    try:
        devices.send(rate_per_s=400, seconds=3)
        devices.wait_acked()
        wait_for(lambda: len(_stored(pg_url, devices.stream)) == devices.sent, 30, "every message stored")
    finally:
        devices.close()
    stored = _stored(pg_url, devices.stream)
    assert set(stored) == devices.acked and set(stored.values()) == {1}
    got_a = a.metric("fleet_messages_total", 'kind="telemetry"')
    got_b = b.metric("fleet_messages_total", 'kind="telemetry"')
    assert got_a > 0 and got_b > 0, (got_a, got_b)  # split between the instances
    counted = a.metric("fleet_inferences_total") + b.metric("fleet_inferences_total")
    assert counted == devices.sent  # each message counted exactly once, by one of them
    (models,) = _db(pg_url, "SELECT COUNT(*), SUM(inferences) FROM telemetry_models")
    assert models == (devices.sent, devices.sent)
    # Both answer the API, with the same state.
    assert len(a.api("GET", "/api/v1/devices")) == len(b.api("GET", "/api/v1/devices")) == 20
    assert a.api("GET", "/api/v1/telemetry")["messages"] == b.api("GET", "/api/v1/telemetry")["messages"]


def test_sigkill_mid_ingestion_loses_nothing_acknowledged_and_counts_nothing_twice(
    managers, scale_broker, pg_url
):
    a, _b = managers(2)
    devices = Devices(scale_broker, 20)
    try:
        sender = threading.Thread(target=devices.send, args=(500, 4))
        sender.start()
        time.sleep(1.5)
        a.kill()  # mid-ingestion: batches in flight, messages queued in its session
        sender.join()
        devices.wait_acked()
        # Not restarted: what the broker queued for it (its share, its unacknowledged in-flight
        # messages) is drained by the survivor once its heartbeat expired.
        wait_for(lambda: len(_stored(pg_url, devices.stream)) == devices.sent, 60, "every message stored")
    finally:
        devices.close()
    stored = _stored(pg_url, devices.stream)
    assert set(stored) == devices.acked  # nothing the broker acknowledged to a device is lost
    assert set(stored.values()) == {1}  # ... and nothing is stored twice
    (models,) = _db(pg_url, "SELECT COUNT(*), SUM(inferences) FROM telemetry_models")
    assert models == (devices.sent, devices.sent)


def test_sigkill_ticker_holder_mid_rollout_the_other_takes_over(managers, scale_broker, pg_url, tmp_path):
    a, b = managers(2)
    devices = Devices(scale_broker, 8, answer_after_s=1.0)
    try:
        pkg = tmp_path / "pkg.edgepkg"
        write_model_package(pkg, "2.0", None)
        row = a.api("POST", "/api/v1/packages", data=pkg.read_bytes())
        wait_for(lambda: len(b.api("GET", "/api/v1/devices")) == 8, 20, "devices registered")
        holder = wait_for(
            lambda: _db(pg_url, "SELECT holder FROM leases WHERE name='ticker'"), 20, "a lease"
        )[0][0]
        leader, other = (a, b) if holder == a.client_id else (b, a)
        assert holder == leader.client_id
        # Created through the instance that does not run the ticker: any instance answers the API.
        dep = other.api(
            "POST",
            "/api/v1/deployments",
            {"package": row["sha256"], "spec": {"targets": {"all": True}, "waves": [0.25, 0.5, 0.75, 1.0]}},
        )
        wait_for(lambda: leader.api("GET", f"/api/v1/deployments/{dep['id']}")["wave"] >= 1, 30, "wave 2")
        killed = time.monotonic()
        leader.kill()
        wait_for(
            lambda: _db(pg_url, "SELECT holder FROM leases WHERE name='ticker'")[0][0] == other.client_id,
            15,
            "the other instance to take the lease",
        )
        failover = time.monotonic() - killed
        final = wait_for(
            lambda: (s := other.api("GET", f"/api/v1/deployments/{dep['id']}"))["state"] != "running" and s,
            60,
            "the rollout to finish",
        )
    finally:
        devices.close()
    assert final["state"] == "succeeded", final
    assert final["counts"] == {"succeeded": 8}
    assert failover < 10, failover


def test_package_in_the_database_is_served_by_every_instance_with_range(managers, pg_url, tmp_path):
    a, b = managers(2)
    pkg = tmp_path / "pkg.edgepkg"
    write_model_package(pkg, "3.0", None, k=300_000)  # ~3.6 MB: several 1 MiB chunks
    row = a.api("POST", "/api/v1/packages", data=pkg.read_bytes())
    (chunks,) = _db(pg_url, "SELECT COUNT(*) FROM package_chunks WHERE sha256=%s", row["sha256"])
    assert chunks[0] == -(-pkg.stat().st_size // (1 << 20))
    req = urllib.request.Request(
        f"{b.url}/api/v1/packages/{row['sha256']}/content",
        headers={"Authorization": f"Bearer {TOKEN}", "Range": "bytes=1048570-1048600"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 206
        assert r.read() == pkg.read_bytes()[1048570:1048601]
    assert b.api("GET", "/api/v1/packages")[0]["sha256"] == row["sha256"]


def test_manager_log_names_no_database_password(tmp_path, scale_broker, postgres):
    """A refused connection is reported with the URL's password masked."""
    m = ManagerProcess(tmp_path, "bad", scale_broker, f"postgresql://nobody:s3cret@127.0.0.1:{free_port()}/x")
    with pytest.raises(AssertionError, match="cannot open the database"):
        m.start()
    assert "s3cret" not in m.log.read_text()
    assert re.search(r"nobody:\*\*\*@", m.log.read_text())
