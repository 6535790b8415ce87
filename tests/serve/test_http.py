"""Protocol conformance against a real server on a loopback port, with real HTTP clients."""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import expected_logits, infer_doc, metric, post_json, request, write_linear

from edge_runtime import __version__
from edge_runtime.serve import BatchingConfig


@pytest.fixture
def srv(start_server, linear_v1):
    return start_server({"linear": linear_v1})


def test_server_metadata_and_health(srv):
    meta = request(srv.url + "/v2").json()
    assert meta["name"] == "edge-runtime" and meta["version"] == __version__
    assert "binary_tensor_data" in meta["extensions"]
    assert request(srv.url + "/v2/health/live").json() == {"live": True}
    ready = request(srv.url + "/v2/health/ready")
    assert ready.status == 200 and ready.json() == {"ready": True}


def test_model_metadata_and_ready(srv):
    for path in ("/v2/models/linear", "/v2/models/linear/versions/1.0"):
        meta = request(srv.url + path).json()
        assert meta["name"] == "linear" and meta["versions"] == ["1.0"] and meta["platform"] == "edge_numpy"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"] == [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ]
        assert request(srv.url + path + "/ready").json()["ready"] is True
    config = request(srv.url + "/v2/models/linear/config").json()
    assert config["max_batch_size"] == 8 and config["input"][0]["data_type"] == "TYPE_FP32"


def test_infer_json_echoes_id_and_computes(srv):
    x = np.array([[0.5, -1, 2, 0], [1, 1, 1, 1]], np.float32)
    resp = post_json(srv.url + "/v2/models/linear/infer", infer_doc(x, "req-42"))
    assert resp.status == 200 and resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["id"] == "req-42" and doc["model_name"] == "linear" and doc["model_version"] == "1.0"
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["logits"]["datatype"] == "FP32" and out["logits"]["shape"] == [2, 3]
    np.testing.assert_allclose(np.reshape(out["logits"]["data"], (2, 3)), expected_logits(x, 1), rtol=1e-5)
    assert out["label"]["datatype"] == "INT64"
    assert out["label"]["data"] == expected_logits(x, 1).argmax(1).tolist()


def test_infer_nested_data_versioned_url_and_requested_outputs(srv):
    doc = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}],
        "outputs": [{"name": "label"}],
    }
    resp = post_json(srv.url + "/v2/models/linear/versions/1.0/infer", doc)
    assert resp.status == 200
    assert [o["name"] for o in resp.json()["outputs"]] == ["label"]


def test_binary_tensor_data_both_directions(srv):
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [5, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    ).encode()
    resp = request(
        srv.url + "/v2/models/linear/infer",
        "POST",
        header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 200, resp.body
    assert resp.headers["content-type"] == "application/octet-stream"
    n = int(resp.headers["inference-header-content-length"])
    doc = json.loads(resp.body[:n])
    logits_meta, label_meta = doc["outputs"]
    assert logits_meta["parameters"]["binary_data_size"] == 5 * 3 * 4 and "data" not in logits_meta
    logits = np.frombuffer(resp.body[n:], "<f4").reshape(5, 3)
    np.testing.assert_allclose(logits, expected_logits(x, 1), rtol=1e-5)
    assert label_meta["data"] == logits.argmax(1).tolist()


def test_binary_output_for_all_by_request_parameter(srv):
    x = np.ones((1, 4), np.float32)
    resp = post_json(
        srv.url + "/v2/models/linear/infer", infer_doc(x, parameters={"binary_data_output": True})
    )
    n = int(resp.headers["inference-header-content-length"])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(resp.body[:n])["outputs"]]
    assert sizes == [12, 8] and len(resp.body) == n + 20
    assert struct.unpack("<q", resp.body[-8:])[0] == int(expected_logits(x, 1).argmax())


@pytest.mark.parametrize(
    ("doc", "status", "fragment"),
    [
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 400, "FP32"),
        (
            {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]},
            400,
            "shape",
        ),
        (
            {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            400,
            "elements",
        ),
        ({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}, 400, "unknown input"),
        (
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "STRING", "data": [1, 2, 3, 4]}]},
            400,
            "datatype",
        ),
        ({"inputs": []}, 400, "inputs"),
        (
            {
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                "outputs": [{"name": "missing"}],
            },
            400,
            "unknown output",
        ),
    ],
)
def test_bad_requests_are_400_in_the_error_format(srv, doc, status, fragment):
    resp = post_json(srv.url + "/v2/models/linear/infer", doc)
    assert resp.status == status
    assert fragment in resp.json()["error"]


def test_invalid_json_and_bad_binary_lengths_are_400(srv):
    resp = request(
        srv.url + "/v2/models/linear/infer", "POST", b"{not json", {"Content-Type": "application/json"}
    )
    assert resp.status == 400 and "JSON" in resp.json()["error"]
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
            ]
        }
    ).encode()
    resp = request(
        srv.url + "/v2/models/linear/infer",
        "POST",
        header + b"\0" * 8,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert resp.status == 400 and "fewer binary bytes" in resp.json()["error"]


def test_unknown_model_version_and_route_are_404(srv):
    x = np.ones((1, 4), np.float32)
    for path in ("/v2/models/nope", "/v2/models/linear/versions/9"):
        resp = request(srv.url + path)
        assert resp.status == 404 and "error" in resp.json()
    assert post_json(srv.url + "/v2/models/nope/infer", infer_doc(x)).status == 404
    assert post_json(srv.url + "/v2/models/linear/versions/9/infer", infer_doc(x)).status == 404
    assert request(srv.url + "/v2/nothing-here").json()["error"]


def test_concurrent_clients_form_batches(start_server, tmp_path):
    path = write_linear(tmp_path / "slow.json", "1.0", seed=1, delay_s=0.01)
    srv = start_server({"linear": path}, BatchingConfig(max_batch_size=16, max_queue_delay_us=5_000))
    xs = [np.full((1, 4), i, np.float32) for i in range(96)]

    def call(x):
        return post_json(srv.url + "/v2/models/linear/infer", infer_doc(x))

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(call, xs))
    for x, resp in zip(xs, responses):
        assert resp.status == 200
        logits = resp.json()["outputs"][0]["data"]
        np.testing.assert_allclose(logits, expected_logits(x, 1).ravel(), rtol=1e-5)
    text = request(srv.url + "/metrics").body.decode()
    count = metric(text, "nv_inference_count_total", model="linear", version="1.0")
    execs = metric(text, "nv_inference_exec_count_total", model="linear", version="1.0")
    assert count == 96  # the self-test at load runs outside the batcher
    assert execs < count, f"no batch formed: {execs} executions for {count} inferences"


def test_metrics_exposition(srv):
    post_json(srv.url + "/v2/models/linear/infer", infer_doc(np.ones((3, 4), np.float32)))
    post_json(srv.url + "/v2/models/linear/infer", {"inputs": []})
    resp = request(srv.url + "/metrics")
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.body.decode()
    assert metric(text, "nv_inference_request_success_total", model="linear", version="1.0") == 1
    assert metric(text, "nv_inference_request_failure_total", model="linear", reason="OTHER") == 1
    assert metric(text, "nv_inference_count_total", model="linear") == 3
    assert metric(text, "edge_model_current_version", model="linear", version="1.0") == 1
    assert metric(text, "edge_model_load_total", model="linear", result="success") == 1
    for name in (
        "nv_inference_queue_duration_us_total",
        "nv_inference_compute_infer_duration_us_total",
        "edge_inference_queue_duration_seconds_bucket",
        "edge_inference_compute_duration_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
