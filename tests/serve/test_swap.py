"""Hot swap, back-pressure and the repository API, over HTTP against a real server."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from serve_helpers import expected_logits, infer_doc, load_linear, metric, post_json, request, write_linear

from edge_runtime.serve import BatchingConfig


def _load(srv, name, path):
    return post_json(f"{srv.url}/v2/repository/models/{name}/load", {"parameters": {"path": str(path)}})


class _Load:
    """Clients posting requests in a loop (bounded in time and count): (start time, status, version)."""

    def __init__(
        self, url: str, clients: int = 4, max_requests: int = 2000, max_seconds: float = 20.0
    ) -> None:
        self.url, self.results = url, []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._budget = max_requests
        self._deadline = time.monotonic() + max_seconds
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client, i) for i in range(clients)]

    def _client(self, i: int) -> None:
        x = np.full((1, 4), i, np.float32)
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if self._budget == 0:
                    return
                self._budget -= 1
            start = time.monotonic()
            resp = post_json(self.url, infer_doc(x))
            version = resp.json().get("model_version") if resp.status == 200 else None
            with self._lock:
                self.results.append((start, resp.status, version))

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < n and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self) -> list[tuple[float, int, str | None]]:
        self._stop.set()
        for f in self._futures:
            f.result(30)
        self._pool.shutdown()
        return self.results


def test_hot_swap_under_load_has_no_failed_requests(start_server, tmp_path):
    v1 = write_linear(tmp_path / "v1.json", "1.0", seed=1, delay_s=0.002)
    v2 = write_linear(tmp_path / "v2.json", "2.0", seed=2, delay_s=0.002)
    models = []

    def loader(path):
        models.append(load_linear(path))
        return models[-1]

    srv = start_server(
        {"linear": v1}, BatchingConfig(max_batch_size=4, max_queue_delay_us=1000), loader=loader
    )
    load = _Load(srv.url + "/v2/models/linear/infer")
    load.wait_for(20)
    resp = _load(srv, "linear", v2)
    swapped = time.monotonic()
    assert resp.status == 200, resp.body
    assert resp.json()["version"] == "2.0" and resp.json()["previous_version"] == "1.0"
    load.wait_for(len(load.results) + 20)
    results = load.stop()
    assert all(status == 200 for _, status, _ in results), {s for _, s, _ in results}
    assert "1.0" in {v for _, _, v in results}
    after = [v for start, _, v in results if start > swapped]
    assert after and set(after) == {"2.0"}  # every request sent after the switch ran on the new version
    # The new version computes with the new weights; the old one was closed once drained.
    x = np.ones((1, 4), np.float32)
    out = post_json(srv.url + "/v2/models/linear/infer", infer_doc(x)).json()
    np.testing.assert_allclose(out["outputs"][0]["data"], expected_logits(x, 2).ravel(), rtol=1e-5)
    deadline = time.monotonic() + 5
    while not models[0].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert models[0].closed and not models[1].closed
    text = request(srv.url + "/metrics").body.decode()
    assert metric(text, "edge_model_current_version", model="linear", version="2.0") == 1
    assert metric(text, "edge_model_current_version", model="linear", version="1.0") == 0


def test_in_flight_requests_finish_on_the_old_version(start_server, tmp_path):
    v1 = write_linear(tmp_path / "v1.json", "1.0", seed=1, delay_s=0.3)
    v2 = write_linear(tmp_path / "v2.json", "2.0", seed=2)
    srv = start_server({"linear": v1}, BatchingConfig(max_batch_size=1))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            post_json, srv.url + "/v2/models/linear/infer", infer_doc(np.ones((1, 4), np.float32))
        )
        time.sleep(0.1)  # it is computing on 1.0 now
        result = srv.manager.swap("linear", v2)  # the fleet agent's entry point
        assert result.ok and result.version == "2.0"
        resp = slow.result(10)
    assert resp.status == 200 and resp.json()["model_version"] == "1.0"
    np.testing.assert_allclose(
        resp.json()["outputs"][0]["data"], expected_logits(np.ones((1, 4)), 1).ravel(), rtol=1e-5
    )


def test_bad_packages_leave_the_old_version_serving(start_server, tmp_path, caplog):
    v1 = write_linear(tmp_path / "v1.json", "1.0", seed=1)
    failing = write_linear(tmp_path / "bad.json", "2.0", seed=2, bad_selftest=True)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    srv = start_server({"linear": v1})
    with caplog.at_level(logging.ERROR, logger="edge_runtime.serve"):
        for path, reason in (
            (failing, "self-test"),
            (corrupt, "cannot load"),
            (tmp_path / "missing", "cannot load"),
        ):
            resp = _load(srv, "linear", path)
            assert resp.status == 400
            body = resp.json()
            assert reason in body["error"] and body["version"] == "1.0" and body["ok"] is False
            assert request(srv.url + "/v2/models/linear").json()["versions"] == ["1.0"]
            assert (
                post_json(srv.url + "/v2/models/linear/infer", infer_doc(np.ones((1, 4), np.float32))).status
                == 200
            )
    assert "version 1.0 keeps serving" in caplog.text
    text = request(srv.url + "/metrics").body.decode()
    assert metric(text, "edge_model_load_total", model="linear", result="failure") == 3
    assert metric(text, "edge_model_current_version", model="linear", version="1.0") == 1


def test_queue_full_answers_503(start_server, tmp_path):
    slow = write_linear(tmp_path / "slow.json", "1.0", seed=1, delay_s=0.2)
    srv = start_server({"linear": slow}, BatchingConfig(max_batch_size=1, max_queue_size=2))
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(
                post_json, srv.url + "/v2/models/linear/infer", infer_doc(np.ones((1, 4), np.float32))
            )
            for _ in range(8)
        ]
        responses = [f.result(30) for f in futures]
    statuses = sorted(r.status for r in responses)
    assert statuses.count(503) >= 4 and 200 in statuses, statuses
    assert all("queue is full" in r.json()["error"] for r in responses if r.status == 503)
    text = request(srv.url + "/metrics").body.decode()
    assert metric(
        text, "nv_inference_request_failure_total", model="linear", reason="REJECTED"
    ) == statuses.count(503)


def test_repository_index_load_new_model_and_unload(start_server, tmp_path, linear_v1):
    srv = start_server({"linear": linear_v1})
    other = write_linear(tmp_path / "other.json", "7", seed=3)
    assert _load(srv, "other", other).status == 200
    index = {m["name"]: m for m in post_json(srv.url + "/v2/repository/index", {}).json()}
    assert index["other"] == {"name": "other", "version": "7", "state": "READY"}
    assert request(srv.url + "/v2/models/other/ready").status == 200
    assert post_json(srv.url + "/v2/repository/models/other/unload", {}).status == 200
    assert request(srv.url + "/v2/models/other").status == 404
    assert post_json(srv.url + "/v2/repository/index", {}).json()[1]["state"] == "UNAVAILABLE"
    # Reload from where it was loaded last: no path needed.
    resp = post_json(srv.url + "/v2/repository/models/other/load", {})
    assert resp.status == 200 and resp.json()["version"] == "7"


def test_a_load_lowers_the_gil_switch_interval_and_restores_it(tmp_path):
    """While a package loads, other threads (the event loop, the batchers) get the GIL back
    every 0.5 ms instead of every 5 ms; afterwards, success or failure, it is as it was."""
    import sys

    from edge_runtime.serve import ModelManager

    seen = []

    def loader(path):
        seen.append(sys.getswitchinterval())
        raise ValueError("not a package")

    before = sys.getswitchinterval()
    manager = ModelManager(loader=loader)
    result = manager.swap("m", tmp_path / "missing.edgepkg")
    assert not result.ok and "not a package" in result.error
    assert seen == [min(before, 0.0005)]
    assert sys.getswitchinterval() == before
    manager.close()
