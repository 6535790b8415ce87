"""The gRPC API (KServe v2 / Triton GRPCInferenceService) through tritonclient.grpc and raw stubs.

A real ``edge serve`` process on free loopback ports for the end-to-end checks (the same
answers as HTTP and as Model.run in-process, size limits, drain), and in-process servers
with a model that blocks on a gate for the states that need one (a full queue, the RPC
limit): every wait is on a state, never on time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import (
    LinearModel,
    NotifySocket,
    expected_logits,
    infer_doc,
    load_linear,
    post_json,
    write_linear,
    write_onnx_package,
)

from edge_runtime.serve import BatchingConfig, ServeConfig, ServeConfigError
from edge_runtime.serve.config import grpc_address

grpcclient = pytest.importorskip("tritonclient.grpc")
grpc = pytest.importorskip("grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

REPO = Path(__file__).resolve().parents[2]


def _status(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


def _infer(client, x: np.ndarray, model: str = "linear", **kwargs):
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], **kwargs)


# --- a real `edge serve` process ---


def test_edge_serve_grpc_matches_http_and_model_run(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    del onnxruntime
    import edge_runtime

    pkg = write_onnx_package(tmp_path / "linear-1.0.edgepkg", "1.0", seed=1)
    config = tmp_path / "serve.toml"
    config.write_text('[server]\nmax_request_mib = 1\ngrpc = "127.0.0.1:0"\n')
    notify = NotifySocket()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.serve", "serve", "--config", str(config)]
        + ["--model", f"linear={pkg}", "--port", "0", "--backend", "onnxruntime", "--threads", "1"],
        env=dict(os.environ, NOTIFY_SOCKET=notify.name, PYTHONPATH=str(REPO)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = notify.wait_for("READY=1", timeout=60)
        url = re.search(r"http://127\.0\.0\.1:\d+", ready).group(0)
        address = re.search(r"gRPC on (127\.0\.0\.1:\d+)", ready).group(1)
        client = grpcclient.InferenceServerClient(address)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("linear") and not client.is_model_ready("nope")
        assert client.get_server_metadata().name == "edge-runtime"
        meta = client.get_model_metadata("linear", as_json=True)
        assert meta["versions"] == ["1.0"] and meta["platform"] == "edge_onnxruntime"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
        assert client.get_model_config("linear").config.max_batch_size == 8

        x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
        result = _infer(client, x, request_id="r1")
        got = result.as_numpy("logits")
        assert result.get_response().id == "r1" and result.get_response().model_version == "1.0"
        http = post_json(url + "/v2/models/linear/infer", infer_doc(x)).json()["outputs"][0]
        model = edge_runtime.load(pkg, backend="onnxruntime", profile=None, threads=1)
        try:
            direct = model.run({"x": x})["logits"]
        finally:
            model.close()
        np.testing.assert_array_equal(got, np.asarray(http["data"], np.float32).reshape(3, 3))
        np.testing.assert_array_equal(got, direct)
        np.testing.assert_allclose(got, expected_logits(x, 1), rtol=1e-5)

        with pytest.raises(InferenceServerException) as exc:
            _infer(client, x, model="nope")
        assert _status(exc.value) == "NOT_FOUND" and "unknown model 'nope'" in exc.value.message()
        with pytest.raises(InferenceServerException) as exc:
            _infer(client, x.reshape(4, 3))
        assert _status(exc.value) == "INVALID_ARGUMENT"
        assert "input 'x' has shape [4, 3], the model expects [-1, 4]" in exc.value.message()
        # 1.1 MiB of input against max_request_mib = 1: refused before it is decoded.
        big = np.zeros((72_000, 4), np.float32)
        with pytest.raises(InferenceServerException) as exc:
            _infer(client, big)
        assert _status(exc.value) == "RESOURCE_EXHAUSTED"
        np.testing.assert_array_equal(_infer(client, x).as_numpy("logits"), got)  # still serving
        client.close()

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


# --- in-process servers ---


class Gate:
    """Holds every Model.run while closed; ``entered`` is set once a run waits at it."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()

    def close(self) -> None:
        self.entered.clear()
        self.opened.clear()

    def loader(self, path: Path) -> LinearModel:
        model = load_linear(path)
        run = model.run

        def gated(inputs):
            if not self.opened.is_set():
                self.entered.set()
                assert self.opened.wait(60), "the test never opened the gate"
            return run(inputs)

        model.run = gated  # type: ignore[method-assign]
        return model


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture
def linear_pkg(tmp_path):
    return write_linear(tmp_path / "linear.json", "1.0", seed=1)


def test_a_full_queue_is_resource_exhausted(start_server, linear_pkg):
    gate = Gate()
    batching = BatchingConfig(max_batch_size=1, max_queue_size=1, workers=1)
    srv = start_server({"linear": linear_pkg}, batching, loader=gate.loader, grpc="127.0.0.1:0")
    x = np.ones((1, 4), np.float32)
    gate.close()
    with ThreadPoolExecutor(2) as pool:
        clients = [grpcclient.InferenceServerClient(srv.grpc_address) for _ in range(3)]
        running = pool.submit(_infer, clients[0], x)
        assert gate.entered.wait(30)  # the worker holds the first request
        queued = pool.submit(_infer, clients[1], x)
        batcher = srv.manager.get("linear").batcher
        _wait_for(lambda: batcher.queued() == 1, "the second request to queue")
        with pytest.raises(InferenceServerException) as exc:
            _infer(clients[2], x)
        assert _status(exc.value) == "RESOURCE_EXHAUSTED" and "the queue is full" in exc.value.message()
        gate.opened.set()
        for future in (running, queued):
            np.testing.assert_allclose(future.result(30).as_numpy("logits"), expected_logits(x, 1), rtol=1e-5)
        for client in clients:
            client.close()


def test_calls_over_the_concurrency_bound_are_refused(start_server, linear_pkg):
    gate = Gate()
    srv = start_server(
        {"linear": linear_pkg}, loader=gate.loader, grpc="127.0.0.1:0", grpc_max_concurrent_rpcs=1
    )
    x = np.ones((1, 4), np.float32)
    gate.close()
    first, second = (grpcclient.InferenceServerClient(srv.grpc_address) for _ in range(2))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(_infer, first, x)
        assert gate.entered.wait(30)
        with pytest.raises(InferenceServerException) as exc:
            second.is_server_live()
        assert _status(exc.value) == "RESOURCE_EXHAUSTED"
        gate.opened.set()
        assert running.result(30).as_numpy("logits").shape == (1, 3)
    assert second.is_server_live()  # the bound is on calls in progress, not on calls made
    first.close()
    second.close()


def _stub(srv):
    channel = grpc.insecure_channel(srv.grpc_address)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _request(x: np.ndarray, **contents) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="linear")
    t = request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    for field, values in contents.items():
        getattr(t.contents, field).extend(values)
    return request


def test_typed_contents_and_their_errors(start_server, linear_pkg):
    srv = start_server({"linear": linear_pkg}, grpc="127.0.0.1:0")
    channel, stub = _stub(srv)
    try:
        x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
        response = stub.ModelInfer(_request(x, fp32_contents=x.ravel().tolist()))
        assert [o.name for o in response.outputs] == ["logits", "label"]
        logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 3)
        np.testing.assert_allclose(logits, expected_logits(x, 1), rtol=1e-5)
        assert np.frombuffer(response.raw_output_contents[1], np.int64).tolist() == list(logits.argmax(1))

        only_label = _request(x, fp32_contents=x.ravel().tolist())
        only_label.outputs.add(name="label")
        response = stub.ModelInfer(only_label)
        assert [o.name for o in response.outputs] == ["label"] and len(response.raw_output_contents) == 1

        cases = [
            (_request(x, int_contents=[1] * 8), "must hold its values in contents.fp32_contents"),
            (_request(x, fp32_contents=[1.0] * 7), "data has 7 elements but shape [2, 4] needs 8"),
            (_request(x), "data has 0 elements"),
            (service_pb2.ModelInferRequest(model_name="linear"), "'inputs' must be a non-empty list"),
        ]
        raw_twice = _request(x)
        raw_twice.raw_input_contents.extend([x.tobytes(), x.tobytes()])
        cases.append((raw_twice, "raw_input_contents holds 2 tensor(s) for 1 input(s)"))
        short = _request(x)
        short.raw_input_contents.append(x.tobytes()[:-4])
        cases.append((short, "raw_input_contents[0] is 28 bytes but shape [2, 4] of FP32 needs 32"))
        negative = _request(x, fp32_contents=x.ravel().tolist())
        negative.inputs[0].shape[0] = -2
        cases.append((negative, "inputs[0].shape must be a list of non-negative integers"))
        unknown_output = _request(x, fp32_contents=x.ravel().tolist())
        unknown_output.outputs.add(name="probs")
        cases.append((unknown_output, "unknown output 'probs'"))
        for request, message in cases:
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelInfer(request)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
            assert message in exc.value.details()
        # Over the elements limit: refused from the declared shape, before any array.
        huge = _request(np.zeros((1, 4), np.float32))
        huge.inputs[0].shape[0] = 1 << 30
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(huge)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the limit" in exc.value.details()
    finally:
        channel.close()


def test_a_closing_server_is_unavailable_and_not_ready(start_server, linear_pkg):
    srv = start_server({"linear": linear_pkg}, grpc="127.0.0.1:0")
    client = grpcclient.InferenceServerClient(srv.grpc_address)
    try:
        assert client.is_server_ready()
        srv.manager.close(timeout=10)  # what SIGTERM's drain does first
        assert client.is_server_live() and not client.is_server_ready()
        assert not client.is_model_ready("linear")
        with pytest.raises(InferenceServerException) as exc:
            _infer(client, np.ones((1, 4), np.float32))
        assert _status(exc.value) == "UNAVAILABLE" and "shutting down" in exc.value.message()
    finally:
        client.close()


def test_grpc_address_config():
    assert grpc_address("127.0.0.1:8001") == ("127.0.0.1", 8001)
    assert grpc_address("[::1]:0") == ("::1", 0)
    assert ServeConfig(grpc="0.0.0.0:8001").grpc_host_port == ("0.0.0.0", 8001)
    assert ServeConfig().grpc_host_port is None
    for bad in ("8001", "host:", ":8001", "host:70000", "host:port"):
        with pytest.raises(ServeConfigError, match="server.grpc must be HOST:PORT"):
            ServeConfig(grpc=bad)
    with pytest.raises(ServeConfigError, match="grpc_max_concurrent_rpcs must be an integer >= 1"):
        ServeConfig(grpc_max_concurrent_rpcs=0)


def test_grpc_flag_over_the_config(tmp_path):
    import argparse

    from edge_runtime.serve.cli import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    config = tmp_path / "serve.toml"
    config.write_text('[server]\ngrpc = "127.0.0.1:8001"\n')
    assert config_from_args(parser.parse_args(["serve", "--config", str(config)])).grpc == "127.0.0.1:8001"
    args = parser.parse_args(["serve", "--config", str(config), "--grpc", "off"])
    assert config_from_args(args).grpc_host_port is None
    args = parser.parse_args(["serve", "--grpc", "[::1]:9001"])
    assert config_from_args(args).grpc_host_port == ("::1", 9001)


def test_a_model_loading_or_failed_is_unavailable(start_server, linear_pkg, tmp_path):
    entered, release = threading.Event(), threading.Event()

    def loader(path: Path) -> LinearModel:
        if path.name.startswith("slow"):
            entered.set()
            assert release.wait(60), "the test never released the load"
        return load_linear(path)

    srv = start_server({"linear": linear_pkg}, loader=loader, grpc="127.0.0.1:0")
    client = grpcclient.InferenceServerClient(srv.grpc_address)
    x = np.ones((1, 4), np.float32)
    slow = write_linear(tmp_path / "slow.json", "2.0", seed=2)
    with ThreadPoolExecutor(1) as pool:
        swap = pool.submit(srv.manager.swap, "other", slow)
        assert entered.wait(30)  # the first load of "other" is under way
        assert not client.is_model_ready("other") and not client.is_server_ready()
        with pytest.raises(InferenceServerException) as exc:
            _infer(client, x, model="other")
        assert _status(exc.value) == "UNAVAILABLE" and "it is loading" in exc.value.message()
        release.set()
        assert swap.result(30).ok
    np.testing.assert_allclose(
        _infer(client, x, model="other").as_numpy("logits"), expected_logits(x, 2), rtol=1e-5
    )
    bad = write_linear(tmp_path / "bad.json", "3.0", seed=3, bad_selftest=True)
    assert not srv.manager.swap("third", bad).ok
    with pytest.raises(InferenceServerException) as exc:
        _infer(client, x, model="third")
    assert _status(exc.value) == "UNAVAILABLE" and "its last load failed" in exc.value.message()
    client.close()


def test_typed_contents_of_each_datatype():
    from edge_runtime.package import TensorSpec
    from edge_runtime.serve.errors import InferenceRequestError
    from edge_runtime.serve.grpc_api import parse_grpc_request
    from edge_runtime.serve.protocol import RequestLimits

    def parse(datatype: str, dtype: str, **contents):
        request = service_pb2.ModelInferRequest(model_name="m")
        t = request.inputs.add(name="a", datatype=datatype, shape=[2])
        for field, values in contents.items():
            getattr(t.contents, field).extend(values)
        specs = (TensorSpec("a", dtype, ("batch",)),)
        return parse_grpc_request(request, specs, ["y"], RequestLimits()).inputs["a"]

    assert parse("BOOL", "bool", bool_contents=[True, False]).tolist() == [True, False]
    assert parse("INT8", "int8", int_contents=[-128, 127]).dtype == np.int8
    assert parse("UINT16", "uint16", uint_contents=[0, 65535]).tolist() == [0, 65535]
    assert parse("INT64", "int64", int64_contents=[-(2**40), 3]).tolist() == [-(2**40), 3]
    assert parse("FP64", "float64", fp64_contents=[0.5, -1.0]).dtype == np.float64
    with pytest.raises(InferenceRequestError, match="input 'a': data is not INT8"):
        parse("INT8", "int8", int_contents=[1, 300])
    with pytest.raises(InferenceRequestError, match="FP16 has no typed contents; send raw_input_contents"):
        parse("FP16", "float16", fp32_contents=[1.0, 2.0])
    with pytest.raises(InferenceRequestError, match="datatype 'BYTES' is not supported"):
        parse("BYTES", "float32", bytes_contents=[b"a", b"b"])
    with pytest.raises(InferenceRequestError, match="input 'a' has datatype INT32, the model expects INT64"):
        parse("INT32", "int64", int_contents=[1, 2])
