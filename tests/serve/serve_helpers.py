"""Models, packages and HTTP helpers for the serving tests.

``LinearModel`` is a real (if small) classifier in numpy, read from a JSON
file by :func:`load_linear`, so tests can write good, corrupt and
self-test-failing "packages" without the native backends. ``write_onnx_package``
builds a real signed-format ``.edgepkg`` around an ONNX Gemm for the
end-to-end tests through :func:`edge_runtime.load`.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edge_runtime.errors import ModelInputError, SelfTestError
from edge_runtime.package import TensorSpec, make_selftest, write_package

IN, OUT = 4, 3


def weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((IN, OUT)).astype(np.float32), rng.standard_normal(OUT).astype(np.float32)


class LinearModel:
    """logits = x @ W + b; label = argmax. ``delay_s`` per run stands for a slower device."""

    def __init__(
        self,
        name: str,
        version: str,
        w: np.ndarray,
        b: np.ndarray,
        delay_s: float = 0.0,
        selftest: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.version = name, version
        self.w, self.b, self.delay_s = w, b, delay_s
        self._selftest = selftest
        self.inputs = (TensorSpec("x", "float32", ("batch", IN)),)
        self.outputs = (
            TensorSpec("logits", "float32", ("batch", OUT)),
            TensorSpec("label", "int64", ("batch",)),
        )
        self.batch_sizes: list[int] = []
        self.closed = False
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise ValueError(f"model {self.name} is closed")
        x = inputs["x"]
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != IN:
            raise ModelInputError(f"x must be float32 [batch, {IN}], got {x.dtype} {list(x.shape)}")
        with self._lock:
            self.batch_sizes.append(x.shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        logits = x @ self.w + self.b
        return {"logits": logits.astype(np.float32), "label": logits.argmax(axis=1).astype(np.int64)}

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "backend": "numpy"}

    def selftest(self) -> dict[str, Any]:
        if self._selftest is None:
            raise SelfTestError("no self-test vectors")
        got = self.run({"x": np.asarray(self._selftest["x"], np.float32)})["logits"]
        expected = np.asarray(self._selftest["logits"], np.float32)
        return {"passed": bool(np.allclose(got, expected, atol=1e-4))}

    def close(self) -> None:
        self.closed = True


def write_linear(
    path: Path, version: str, seed: int = 0, delay_s: float = 0.0, bad_selftest: bool = False
) -> Path:
    w, b = weights(seed)
    x = np.linspace(-1, 1, 2 * IN, dtype=np.float32).reshape(2, IN)
    expected = x @ w + b + (1.0 if bad_selftest else 0.0)
    doc = {
        "name": "linear",
        "version": version,
        "seed": seed,
        "delay_s": delay_s,
        "selftest": {"x": x.tolist(), "logits": expected.tolist()},
    }
    path.write_text(json.dumps(doc))
    return path


def load_linear(path: Path) -> LinearModel:
    doc = json.loads(Path(path).read_text())  # a corrupt file fails here, as a bad package would
    w, b = weights(doc["seed"])
    return LinearModel(doc["name"], doc["version"], w, b, doc.get("delay_s", 0.0), doc["selftest"])


def expected_logits(x: np.ndarray, seed: int) -> np.ndarray:
    w, b = weights(seed)
    return x.astype(np.float32) @ w + b


def write_onnx_package(
    path: Path, version: str, seed: int = 0, bad_selftest: bool = False, signing_key: Any = None
) -> Path:
    """A real .edgepkg: ONNX Gemm (x @ W + b) with self-test vectors, run by onnxruntime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = weights(seed)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    x = np.linspace(-1, 1, 2 * IN, dtype=np.float32).reshape(2, IN)
    expected = x @ w + b + (1.0 if bad_selftest else 0.0)
    manifest = {
        "name": "linear",
        "version": version,
        "created": "2024-05-01T12:00:00Z",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", IN]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", OUT]}],
        "artifacts": [{"path": "model.onnx", "kind": "onnx"}, {"path": "selftest.npz", "kind": "selftest"}],
        "selftest": {"artifact": "selftest.npz", "atol": 1e-4, "rtol": 0.0},
    }
    artifacts = {
        "model.onnx": model.SerializeToString(),
        "selftest.npz": make_selftest({"x": x}, {"logits": expected}),
    }
    write_package(path, manifest, artifacts, signing_key)
    return path


# --- HTTP ---


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP request on a fresh connection (http.client: a real client, no mocking)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(
            method,
            parts.path + (f"?{parts.query}" if parts.query else ""),
            body=body,
            headers=dict(headers or {}),
        )
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def post_json(url: str, doc: Any, timeout: float = 30.0) -> Response:
    return request(url, "POST", json.dumps(doc).encode(), {"Content-Type": "application/json"}, timeout)


def infer_doc(x: np.ndarray, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    if request_id is not None:
        doc["id"] = request_id
    doc.update(extra)
    return doc


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``, from Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# --- a server process ---


class NotifySocket:
    """A systemd-style notify socket: an AF_UNIX datagram socket in the abstract namespace."""

    def __init__(self) -> None:
        self.name = f"@edge-serve-test-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = 30.0) -> str:
        """The first message (already received or arriving within ``timeout``) with ``field`` in it."""
        for message in self.messages:
            if field in message.split("\n"):
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if field in message.split("\n"):
                return message
        raise AssertionError(f"no {field} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()
