"""Hostile and clumsy clients of ``edge serve``: each attack from the hardening issue, reproduced.

Huge and deeply nested bodies, oversized declared shapes, bad model names, a FIFO as a model,
bodies that never arrive and slowloris heads. Each must end as a typed refusal (its HTTP status)
or a bounded cost, and the server must keep serving afterwards.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
from serve_helpers import infer_doc, post_json, request, write_linear

from edge_runtime.serve import ModelConfig, ServeConfig
from edge_runtime.serve import app as app_module
from edge_runtime.serve.errors import ModelNameError, ServeConfigError

INFER = "/v2/models/linear/infer"


@pytest.fixture
def srv(start_server, linear_v1):
    return start_server({"linear": linear_v1})


def _still_serves(srv) -> None:
    x = np.ones((2, 4), np.float32)
    resp = post_json(srv.url + INFER, infer_doc(x))
    assert resp.status == 200, resp.body[:200]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


# --- bodies that expand ---


def test_63_mib_json_body_is_refused_without_expanding(srv) -> None:
    """63 MiB of numbers (under the 64 MiB limit) used to take RSS from 82 to 861 MB."""
    count = (63 << 20) // 4
    body = (b'{"inputs":[{"name":"x","shape":[%d,4],"datatype":"FP32","data":[' % (count // 4)) + (
        b"1.0," * (count - 1) + b"1.0]}]}"
    )
    assert len(body) < 64 << 20
    rss_before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
        peak_known = True
    except OSError:
        peak_known = False
    resp = request(srv.url + INFER, "POST", body, {"Content-Type": "application/json"}, timeout=60)
    assert resp.status == 413, resp.body[:300]
    assert b"over the limit" in resp.body
    if peak_known:
        growth_mb = (_status_kb("VmHWM") - rss_before) / 1024
        # The body itself is held once or twice while it is read (63-126 MB); decoding it
        # would have cost some 800 MB. 320 MB leaves a generous margin for the allocator.
        assert growth_mb < 320, f"peak RSS grew by {growth_mb:.0f} MB"
    _still_serves(srv)


def test_declared_shape_over_the_element_limit_is_refused_before_building(srv) -> None:
    doc = {"inputs": [{"name": "x", "shape": [1 << 40, 4], "datatype": "FP32", "data": [1.0]}]}
    resp = post_json(srv.url + INFER, doc)
    assert resp.status == 413 and "elements" in resp.json()["error"]
    binary = {
        "inputs": [
            {
                "name": "x",
                "shape": [1 << 30, 1 << 30],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 16},
            }
        ]
    }
    import json

    header = json.dumps(binary).encode()
    resp = request(
        srv.url + INFER,
        "POST",
        header + b"\0" * 16,
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 413, resp.body


def test_json_value_limit_is_configurable(start_server, linear_v1) -> None:
    srv = start_server({"linear": linear_v1}, max_json_values=100)
    resp = post_json(srv.url + INFER, infer_doc(np.ones((40, 4), np.float32)))
    assert resp.status == 413 and "values" in resp.json()["error"]
    _still_serves(srv)


@pytest.mark.parametrize("where", ["top", "data"])
def test_deep_nesting_is_400_not_500(srv, where: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    if where == "top":
        body = deep
    else:
        body = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":' + deep + b"}]}"
    resp = request(srv.url + INFER, "POST", body, {"Content-Type": "application/json"})
    assert resp.status == 400, resp.body[:200]
    error = resp.json()["error"]
    assert "nested" in error and "Recursion" not in error
    _still_serves(srv)


def test_liveness_answers_while_a_large_body_parses(srv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse of a large body runs off the event loop: while it is held in the parser,
    /v2/health/live answers. Synchronised on events, not on timing."""
    parsing, release = threading.Event(), threading.Event()
    real = app_module.parse_infer_request

    def held_parse(*args, **kwargs):
        parsing.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "parse_infer_request", held_parse)
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    doc = infer_doc(x, request_id="r" * (app_module._PARSE_INLINE_BYTES + 1024))  # parsed off the loop
    result: list = []
    client = threading.Thread(target=lambda: result.append(post_json(srv.url + INFER, doc, timeout=60)))
    client.start()
    try:
        assert parsing.wait(30), "the request never reached the parser"
        live = request(srv.url + "/v2/health/live", timeout=10)  # times out if the loop is blocked
        assert live.status == 200 and live.json() == {"live": True}
    finally:
        release.set()
        client.join(60)
    assert result and result[0].status == 200, result[0].body[:300]


def test_too_many_rows_are_refused_before_splitting(srv) -> None:
    """A request of 10^9 rows (a zero-copy broadcast here) used to be cut into 10^8 jobs on the
    event loop before the queue bound refused it; now the count is checked first."""
    from edge_runtime.serve.errors import InferenceRequestError

    rows = np.broadcast_to(np.float32(0), (10**9, 4))
    with pytest.raises(InferenceRequestError, match="more than the queue holds"):
        srv.manager.submit("linear", None, {"x": rows})


# --- model names and sources ---


@pytest.mark.parametrize("name", ["a/../b", "..", ".", "x" * 5000, "a b", "-x", ""])
def test_invalid_model_names_are_refused_by_the_manager(srv, linear_v1, name: str) -> None:
    with pytest.raises(ModelNameError) as info:
        srv.manager.swap(name, linear_v1)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["a%2F..%2Fb", "..%2F..%2Fetc", "x" * 5000, "%2E%2E"])
def test_invalid_model_names_are_refused_over_http(srv, linear_v1, name: str) -> None:
    resp = post_json(srv.url + f"/v2/repository/models/{name}/load", {"parameters": {"path": str(linear_v1)}})
    assert resp.status in (400, 404), resp.body[:200]
    assert resp.status != 200
    assert sorted(srv.manager.names()) == ["linear"]


def test_invalid_model_name_in_config() -> None:
    with pytest.raises(ServeConfigError, match="not valid"):
        ServeConfig(models=(ModelConfig("../evil", Path("m.edgepkg")),))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_model_is_refused_and_later_loads_work(srv, tmp_path: Path) -> None:
    fifo = tmp_path / "model.edgepkg"
    os.mkfifo(fifo)
    resp = post_json(
        srv.url + "/v2/repository/models/other/load", {"parameters": {"path": str(fifo)}}, timeout=20
    )
    assert resp.status == 400 and "not a regular file" in resp.json()["error"]
    good = write_linear(tmp_path / "good.json", "2.0", seed=2)
    resp = post_json(
        srv.url + "/v2/repository/models/other/load", {"parameters": {"path": str(good)}}, timeout=20
    )
    assert resp.status == 200 and resp.json()["ok"]


# --- bodies that never arrive, heads that never end ---


def _connect(srv) -> socket.socket:
    parts = urlsplit(srv.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
    return sock


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_announced_10_gib_is_413_before_reading(srv) -> None:
    sock = _connect(srv)
    try:
        sock.sendall(
            b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10737418240\r\n\r\n" + b"{" * 100
        )
        head = _read_head(sock)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    _still_serves(srv)


def test_body_that_stops_arriving_is_408(start_server, linear_v1) -> None:
    srv = start_server({"linear": linear_v1}, body_timeout_s=0.5)
    sock = _connect(srv)
    try:
        sock.sendall(
            b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b" " * 100
        )
        head = _read_head(sock)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 408"), head[:200]
    assert b"connection: close" in head.lower()
    _still_serves(srv)


def test_slowloris_head_is_closed(start_server, linear_v1) -> None:
    srv = start_server({"linear": linear_v1}, header_timeout_s=1.0)
    sock = _connect(srv)
    closed = False
    try:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.2)
        deadline = time.monotonic() + 20  # a bound on the test only: the server's is 1 s
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"X")  # a header that never ends
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset by the server
                closed = True
                break
    finally:
        sock.close()
    assert closed, "the server kept a slowloris connection open"
    _still_serves(srv)


def test_url_quoting_helper_sanity() -> None:
    assert quote("a/../b", safe="") == "a%2F..%2Fb"
