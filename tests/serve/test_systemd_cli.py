"""The systemd unit (verified by systemd-analyze), MemoryDenyWriteExecute, the CLI and the config file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import write_linear, write_onnx_package

from edge_runtime.serve import ServeConfigError, load_config
from edge_runtime.serve.__main__ import main as serve_main
from edge_runtime.serve.sdnotify import Notifier, watchdog_interval
from edge_runtime.serve.systemd import render_unit

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy/systemd/edge-serve.service"


def test_shipped_unit_is_the_rendered_template():
    assert UNIT.read_text() == render_unit()


def test_install_service_writes_a_unit_systemd_analyze_accepts(tmp_path, capsys):
    assert (
        serve_main(["serve", "--install-service", "--prefix", str(tmp_path), "--config", "/etc/edge/s.toml"])
        == 0
    )
    unit = tmp_path / "etc/systemd/system/edge-serve.service"
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith("serve --config /etc/edge/s.toml")
    assert Path(exec_start.removeprefix("ExecStart=").split()[0]).is_file()  # this install's edge
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "StateDirectory=edge",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "MemoryDenyWriteExecute=yes",
    ):
        assert line in text.splitlines(), line
    out = capsys.readouterr().out
    assert "systemctl daemon-reload" in out and "systemctl enable --now edge-serve.service" in out
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd provides it)")
    result = subprocess.run(
        [analyze, "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "edge-serve.service" not in result.stderr, result.stderr  # no warning about our unit


_MDWE_CHECK = """
import ctypes, sys
import numpy as np
assert ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0, "PR_SET_MDWE failed"
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("MDWE not enforced")
except OSError:
    pass
import aiohttp, prometheus_client, edge_runtime
from edge_runtime.kernels import gemm, pack_gemm
acc = gemm(np.ones((2, 8), np.uint8), pack_gemm(np.ones((3, 8), np.int8)), out_dtype=np.int32)
assert (acc == 8).all()
model = edge_runtime.load(sys.argv[1], backend="onnxruntime", profile=None, threads=1)
assert model.selftest().passed
print("ok")
"""


def test_memory_deny_write_execute_is_compatible(tmp_path):
    """The kernel's PR_SET_MDWE enforces what MemoryDenyWriteExecute=yes does: no W+X memory."""
    pytest.importorskip("onnxruntime")
    pkg = write_onnx_package(tmp_path / "m.edgepkg", "1.0")
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_CHECK, str(pkg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    if "PR_SET_MDWE failed" in result.stderr:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_watchdog_interval_and_notifier_without_systemd():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert not Notifier({}).notify("READY=1")


def test_config_file_schema(tmp_path):
    (tmp_path / "serve.toml").write_text(
        textwrap.dedent("""
        [server]
        port = 9000
        [batching]
        max_batch_size = 4
        max_queue_delay_us = 200
        [models.a]
        path = "a.edgepkg"
        [models.b]
        path = "/abs/b.edgepkg"
        selftest = false
        [models.b.batching]
        max_batch_size = 16
        preferred_batch_sizes = [8, 16]
    """)
    )
    config = load_config(tmp_path / "serve.toml")
    a, b = config.models
    assert config.port == 9000 and a.path == tmp_path / "a.edgepkg" and a.batching.max_batch_size == 4
    assert b.batching.max_batch_size == 16 and b.batching.preferred_batch_sizes == (8, 16)
    assert b.batching.max_queue_delay_us == 200 and b.selftest is False
    (tmp_path / "bad.toml").write_text("[server]\nprot = 1\n")
    with pytest.raises(ServeConfigError, match="prot"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "bad.json").write_text('{"models": {"a": {"path": "x", "batching": {"max_batch": 3}}}}')
    with pytest.raises(ServeConfigError, match="max_batch"):
        load_config(tmp_path / "bad.json")


def test_swap_command_against_a_running_server(start_server, tmp_path, linear_v1, capsys):
    srv = start_server({"linear": linear_v1})
    v2 = write_linear(tmp_path / "v2.json", "2.0", seed=2)
    assert serve_main(["swap", "linear", str(v2), "--url", srv.url]) == 0
    assert "now serving version 2.0 (was 1.0)" in capsys.readouterr().out
    bad = write_linear(tmp_path / "v3.json", "3.0", seed=3, bad_selftest=True)
    assert serve_main(["swap", "linear", str(bad), "--url", srv.url]) == 1
    assert "self-test failed" in capsys.readouterr().err
    assert srv.manager.get("linear").version == "2.0"
    assert np.isfinite(
        srv.manager.get("linear").model.run({"x": np.ones((1, 4), np.float32)})["logits"]
    ).all()
