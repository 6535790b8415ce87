"""Helpers for the fleet tests: a real mosquitto, tiny signed ONNX packages, agent processes.

A plain module (not conftest.py) so that test files import what they use by name.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.package import PackageInfo, make_selftest, write_package

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MODEL = "linear"
IN, OUT = 4, 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Mosquitto:
    """A real mosquitto on a loopback port, from a generated config; restartable on the same port."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Run as root, mosquitto would switch to user "mosquitto", who cannot read pytest's tmp dirs.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"persistence true\npersistence_location {workdir}/\n"
            "autosave_interval 1\n"
            f"{extra_conf or 'allow_anonymous true'}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def write_model_package(
    path: Path,
    version: str,
    key: Ed25519PrivateKey | None,
    seed: int = 0,
    bad_selftest: bool = False,
    k: int = IN,
    zero_weights: bool = False,
    compress: bool = False,
) -> PackageInfo:
    """A real, signed .edgepkg: ONNX Gemm (x @ W + b) with self-test vectors.

    ``k`` (the input width) makes the package bigger: W is k x 3 float32 random values (zeros with
    ``zero_weights``: compressed, a package small to download that expands ~1000x when staged).
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = np.zeros((k, OUT), np.float32) if zero_weights else rng.standard_normal((k, OUT)).astype(np.float32)
    b = rng.standard_normal(OUT).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.linspace(-1, 1, 2 * k, dtype=np.float32).reshape(2, k)
    expected = x @ w + b + (5.0 if bad_selftest else 0.0)
    manifest = {
        "name": MODEL,
        "version": version,
        "created": "2024-05-01T12:00:00Z",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", k]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", OUT]}],
        "artifacts": [{"path": "model.onnx", "kind": "onnx"}, {"path": "selftest.npz", "kind": "selftest"}],
        "selftest": {"artifact": "selftest.npz", "atol": 1e-3, "rtol": 1e-3},
    }
    artifacts = {
        "model.onnx": model.SerializeToString(),
        "selftest.npz": make_selftest({"x": x}, {"y": expected}),
    }
    return write_package(path, manifest, artifacts, key, compress=compress)


def write_key(path_prefix: Path) -> Ed25519PrivateKey:
    """A new signing key; its public half in ``<prefix>.pub`` for trust stores."""
    from cryptography.hazmat.primitives import serialization

    key = Ed25519PrivateKey.generate()
    path_prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path_prefix}.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def seed_device(state_dir: Path, package: Path, trust: Path | None) -> None:
    """Install and commit a first version on a device, as provisioning would."""
    from edge_runtime.package import TrustStore
    from edge_runtime.store import ModelStore

    store = ModelStore(state_dir, trust_store=TrustStore.load(trust) if trust else None)
    installed = store.install(package)
    store.activate(installed.name, installed.sha256)
    pkgs = state_dir / "fleet" / "packages"
    pkgs.mkdir(parents=True, exist_ok=True)
    shutil.copy(package, pkgs / f"{installed.sha256}.edgepkg")


def serving(state_dir: Path, trust: Path | None) -> tuple[str, bool]:
    """What a restarted device would serve: the committed version, and whether it passes its self-test."""
    import edge_runtime
    from edge_runtime.package import TrustStore
    from edge_runtime.store import ModelStore

    ts = TrustStore.load(trust) if trust else None
    store = ModelStore(state_dir, trust_store=ts)
    cur = store.current(MODEL)
    assert cur is not None, "no committed version"
    with edge_runtime.load(
        state_dir / "fleet" / "packages" / f"{cur.sha256}.edgepkg", trust_store=ts, threads=1
    ) as model:
        return cur.version, model.selftest().passed


def start_agent_process(
    fleet: str, device: str, state_dir: Path, broker_url: str, trust: Path | None, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "fleet.cli",
        "agent",
        "--fleet",
        fleet,
        "--device",
        device,
        "--state-dir",
        str(state_dir),
        "--broker",
        broker_url,
        "--telemetry-interval",
        "1",
        *extra,
    ]
    if trust is not None:
        cmd += ["--trust", str(trust)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=out, env=env, cwd=REPO)
