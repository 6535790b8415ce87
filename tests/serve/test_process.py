"""The server as a process: sd_notify on a real notify socket, SIGTERM drain, SIGHUP reload.

Models are real packages (ONNX Gemm + self-test vectors) loaded through
edge_runtime.load on onnxruntime, as in production.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import NotifySocket, infer_doc, metric, post_json, request, write_onnx_package

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]


def _spawn(
    args: list[str], notify: NotifySocket, watchdog_usec: int | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=notify.name, PYTHONPATH=str(REPO))
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.serve", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _url(ready_message: str) -> str:
    match = re.search(r"http://127\.0\.0\.1:\d+", ready_message)
    assert match, ready_message
    return match.group(0)


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out.decode()


def test_sd_notify_watchdog_and_sigterm_drain(tmp_path):
    pkg = write_onnx_package(tmp_path / "linear-1.0.edgepkg", "1.0", seed=1)
    notify = NotifySocket()
    # A long queue delay keeps the accepted requests queued when SIGTERM arrives.
    proc = _spawn(
        [
            "serve",
            "--model",
            f"linear={pkg}",
            "--port",
            "0",
            "--backend",
            "onnxruntime",
            "--max-batch-size",
            "64",
            "--max-queue-delay-us",
            "1500000",
        ],
        notify,
        watchdog_usec=300_000,
    )
    try:
        ready = notify.wait_for("READY=1")
        url = _url(ready)
        assert "STATUS=serving 1 model(s)" in ready
        notify.wait_for("WATCHDOG=1", timeout=5)
        assert request(url + "/v2/health/ready").status == 200
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(
                    post_json, url + "/v2/models/linear/infer", infer_doc(np.full((1, 4), i, np.float32))
                )
                for i in range(8)
            ]
            deadline, pending = time.monotonic() + 10, 0.0
            while pending < 8 and time.monotonic() < deadline:  # all 8 accepted and waiting in the queue
                text = request(url + "/metrics").body.decode()
                pending = metric(text, "nv_inference_pending_request_count", model="linear")
                time.sleep(0.02)
            assert pending == 8
            proc.send_signal(signal.SIGTERM)
            responses = [f.result(30) for f in futures]
        assert [r.status for r in responses] == [200] * 8
        assert all(r.json()["model_version"] == "1.0" for r in responses)
        notify.wait_for("STOPPING=1", timeout=10)
        code, log = _finish(proc)
        assert code == 0, log
        assert "draining in-flight requests" in log and "stopped" in log
        watchdogs = sum(m.split("\n").count("WATCHDOG=1") for m in notify.messages)
        assert watchdogs >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_sighup_rereads_the_config_and_swaps(tmp_path):
    v1 = write_onnx_package(tmp_path / "linear-1.0.edgepkg", "1.0", seed=1)
    v2 = write_onnx_package(tmp_path / "linear-2.0.edgepkg", "2.0", seed=2)
    bad = write_onnx_package(tmp_path / "linear-3.0.edgepkg", "3.0", seed=3, bad_selftest=True)
    config = tmp_path / "serve.toml"

    def write_config(path: Path) -> None:
        config.write_text(
            f'[server]\nport = 0\nbackend = "onnxruntime"\n\n[models.linear]\npath = "{path.name}"\n'
        )

    write_config(v1)
    notify = NotifySocket()
    proc = _spawn(["serve", "--config", str(config)], notify)
    try:
        url = _url(notify.wait_for("READY=1"))
        assert request(url + "/v2/models/linear").json()["versions"] == ["1.0"]
        write_config(bad)  # fails its self-test: 1.0 keeps serving
        notify.messages.clear()
        proc.send_signal(signal.SIGHUP)
        assert "STATUS=reloaded: 0/1 model(s) swapped" in notify.wait_for("READY=1")
        assert request(url + "/v2/models/linear").json()["versions"] == ["1.0"]
        write_config(v2)
        notify.messages.clear()
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in notify.wait_for("RELOADING=1")
        assert "STATUS=reloaded: 1/1 model(s) swapped" in notify.wait_for("READY=1")
        assert request(url + "/v2/models/linear").json()["versions"] == ["2.0"]
        proc.send_signal(signal.SIGTERM)
        code, log = _finish(proc)
        assert code == 0, log
        assert "self-test FAILED" in log and "version 1.0 keeps serving" in log
        assert "swapped version 1.0 -> 2.0" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
