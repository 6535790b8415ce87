"""End to end through edge_runtime.load (onnxruntime backend) and existing KServe/Triton clients."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import expected_logits, infer_doc, post_json, request, write_onnx_package

from edge_runtime.serve import BatchingConfig

pytest.importorskip("onnxruntime")


def _edge_loader(path):
    import edge_runtime

    return edge_runtime.load(path, backend="onnxruntime", profile=None, threads=1)


@pytest.fixture
def onnx_srv(start_server, tmp_path):
    pkg = write_onnx_package(tmp_path / "linear-1.0.edgepkg", "1.0", seed=1)
    return start_server(
        {"linear": pkg}, BatchingConfig(max_batch_size=8, max_queue_delay_us=500), loader=_edge_loader
    )


def test_real_package_metadata_and_inference(onnx_srv):
    meta = request(onnx_srv.url + "/v2/models/linear").json()
    assert meta["versions"] == ["1.0"] and meta["platform"] == "edge_onnxruntime"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    resp = post_json(onnx_srv.url + "/v2/models/linear/infer", infer_doc(x, "a"))
    assert resp.status == 200, resp.body
    np.testing.assert_allclose(
        np.reshape(resp.json()["outputs"][0]["data"], (3, 3)), expected_logits(x, 1), rtol=1e-5
    )


def test_swap_between_real_packages_and_a_failing_self_test(onnx_srv, tmp_path):
    bad = write_onnx_package(tmp_path / "linear-bad.edgepkg", "9.9", seed=2, bad_selftest=True)
    result = onnx_srv.manager.swap("linear", bad)
    assert not result.ok and "self-test FAILED" in result.error and result.version == "1.0"
    good = write_onnx_package(tmp_path / "linear-2.0.edgepkg", "2.0", seed=2)
    result = onnx_srv.manager.swap("linear", good)
    assert result.ok and (result.version, result.previous_version) == ("2.0", "1.0")
    x = np.ones((1, 4), np.float32)
    out = post_json(onnx_srv.url + "/v2/models/linear/versions/2.0/infer", infer_doc(x)).json()
    np.testing.assert_allclose(out["outputs"][0]["data"], expected_logits(x, 2).ravel(), rtol=1e-5)


def test_tritonclient_http_works_unchanged(onnx_srv):
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(onnx_srv.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("linear")
        assert client.get_server_metadata()["name"] == "edge-runtime"
        assert client.get_model_metadata("linear")["inputs"][0]["shape"] == [-1, 4]
        x = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
        for binary in (True, False):
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("logits", binary_data=binary)
            result = client.infer("linear", [inp], outputs=[out], request_id="t1")
            np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x, 1), rtol=1e-5)
            assert result.get_response()["id"] == "t1"
        with pytest.raises(Exception, match="unknown model"):
            client.get_model_metadata("nope")
    finally:
        client.close()
