"""Continuous batching in edge serve: the [llm] limits (config, flags), batches observed through the
edge_llm_batch_sequences histogram, the bounded queue (503), cancellation and the per-request context.

The engine is paused deterministically through its on_step hook (never by sleeping): while the first
generation is held after a decode step, the others queue; released, they decode in one batch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from edge_runtime.serve import ServeConfig
from edge_runtime.serve.cli import config_from_args
from edge_runtime.serve.config import ModelConfig, config_from_dict
from edge_runtime.serve.errors import ServeConfigError
from edge_runtime.serve.llm_limits import LLMLimits
from edge_runtime.serve.manager import default_loader
from edge_runtime.serve.server import ServerThread

LIMITS = LLMLimits(max_sequences=4, max_queue=3, max_context=48)


def _wait(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _HeldEngine:
    """Holds the LLM engine's thread after its next decode step (through its ``on_step`` hook,
    whose observer still runs) until :meth:`release`; ``paused`` is set once it holds."""

    def __init__(self, engine) -> None:
        self.engine, self.observe = engine, engine.on_step
        self.paused, self.gate = threading.Event(), threading.Event()
        engine.on_step = self._hold

    def _hold(self, decoded: int) -> None:
        self.observe(decoded)
        if not self.gate.is_set():
            self.paused.set()
            self.gate.wait(60)

    def release(self) -> None:
        self.gate.set()
        self.engine.on_step = self.observe


def _metric(server, name: str, **labels: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


@pytest.fixture(scope="module")
def server(packages):
    config = ServeConfig(
        host="127.0.0.1",
        port=0,
        drain_timeout_s=5,
        models=(ModelConfig("tiny", packages("llama", "int8"), llm=LIMITS),),
    )
    with ServerThread(config, loader=default_loader("auto", 1)) as srv:
        status, body = _post(
            srv.url + "/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 2}
        )
        assert status == 200, body  # the engine exists from here on, with the configured limits
        yield srv


def test_limits_from_the_config_and_the_flags(tmp_path):
    doc = {
        "llm": {"max_sequences": 6, "max_queue": 10},
        "models": {
            "a": {"path": "a.edgepkg"},
            "b": {"path": "b.edgepkg", "llm": {"max_sequences": 2, "max_context": 512}},
        },
    }
    config = config_from_dict(doc, tmp_path)
    assert config.llm_limits("a") == LLMLimits(max_sequences=6, max_queue=10)
    assert config.llm_limits("b") == LLMLimits(max_sequences=2, max_queue=10, max_context=512)
    assert config.llm_limits("not-configured") == config.llm  # a model the fleet agent installed
    with pytest.raises(ServeConfigError, match="max_batch"):
        config_from_dict({"llm": {"max_batch": 4}}, tmp_path)
    with pytest.raises(ServeConfigError, match=r"models\.b\]\.llm.*max_sequences"):
        config_from_dict({"models": {"b": {"path": "b", "llm": {"max_sequences": 0}}}}, tmp_path)

    import argparse

    from edge_runtime.serve.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "--model", "m=m.edgepkg", "--llm-max-sequences", "3", "--llm-max-context", "99"]
    )
    flagged = config_from_args(args)
    assert flagged.llm_limits("m") == LLMLimits(max_sequences=3, max_context=99)
    help_text = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--llm-max-sequences", "--llm-max-queue", "--llm-max-context", "--llm-prefill-tokens"):
        assert flag in help_text


def test_engine_takes_the_configured_limits(server):
    engine = server.manager.get("tiny").model.engine()
    assert (engine.max_batch, engine.max_queue) == (LIMITS.max_sequences, LIMITS.max_queue)


def test_decode_steps_batch_and_the_queue_answers_503_beyond_its_bound(server):
    engine = server.manager.get("tiny").model.engine()
    assert engine.on_step is not None  # the server's batch-size histogram

    before_count = _metric(server, "edge_llm_batch_sequences_count", model="tiny")
    before_le2 = _metric(server, "edge_llm_batch_sequences_bucket", model="tiny", le="2.0")
    results: dict[int, tuple[int, bytes]] = {}

    def run(i: int) -> None:
        results[i] = _post(
            server.url + "/v1/completions",
            {"model": "tiny", "prompt": f"Hello {i}", "max_tokens": 12, "temperature": 0},
        )

    held = _HeldEngine(engine)
    threads = [threading.Thread(target=run, args=(0,))]
    try:
        threads[0].start()
        assert held.paused.wait(60), "the first generation never decoded"
        # The engine thread is held after a decode step: the next three requests wait in the queue.
        for i in (1, 2, 3):
            threads.append(threading.Thread(target=run, args=(i,)))
            threads[-1].start()
        _wait(lambda: engine.queued() == 3, "three queued generations")
        status, body = _post(
            server.url + "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2}
        )
        assert status == 503, body
        assert json.loads(body)["error"]["type"] == "overloaded_error"
    finally:
        held.release()
        for t in threads:
            t.join(60)
    assert sorted(results) == [0, 1, 2, 3] and all(s == 200 for s, _ in results.values()), results
    steps = _metric(server, "edge_llm_batch_sequences_count", model="tiny") - before_count
    up_to_two = _metric(server, "edge_llm_batch_sequences_bucket", model="tiny", le="2.0") - before_le2
    assert steps > up_to_two, "no decode step ran more than two sequences together"
    assert _metric(server, "edge_llm_batch_sequences_bucket", model="tiny", le="4.0") == _metric(
        server, "edge_llm_batch_sequences_count", model="tiny"
    ), "a decode step ran more sequences than max_sequences"
    assert _metric(server, "edge_llm_requests_total", model="tiny", finish_reason="rejected") >= 1
    assert _metric(server, "edge_llm_queue_duration_seconds_count", model="tiny") >= 4


def test_a_client_that_goes_away_frees_its_slot(server):
    engine = server.manager.get("tiny").model.engine()
    cancelled = _metric(server, "edge_llm_requests_total", model="tiny", finish_reason="cancelled")
    held = _HeldEngine(engine)
    try:
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 40, "stream": True, "temperature": 0}
        req = urllib.request.Request(
            server.url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        r = urllib.request.urlopen(req, timeout=60)
        assert held.paused.wait(60)
        assert engine.running() == 1
        r.close()  # the client goes away while its generation is mid-way
    finally:
        held.release()
    _wait(lambda: engine.running() == 0, "the cancelled generation to leave the batch")
    _wait(
        lambda: (
            _metric(server, "edge_llm_requests_total", model="tiny", finish_reason="cancelled") > cancelled
        ),
        "the cancellation to be counted",
    )
    status, _ = _post(server.url + "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 3})
    assert status == 200


def test_a_non_streamed_request_whose_client_goes_away_is_cancelled(server):
    """A non-streamed answer writes nothing until it is complete: the handler watches the connection."""
    import socket

    engine = server.manager.get("tiny").model.engine()
    cancelled = _metric(server, "edge_llm_requests_total", model="tiny", finish_reason="cancelled")
    held = _HeldEngine(engine)
    body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 40, "temperature": 0}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert held.paused.wait(60)  # its generation is running, held after a decode step
        # The socket is closed: the handler notices while the engine is still held.
        _wait(
            lambda: (
                _metric(server, "edge_llm_requests_total", model="tiny", finish_reason="cancelled")
                > cancelled
            ),
            "the handler to cancel the generation of a client that went away",
        )
    finally:
        held.release()
    _wait(lambda: engine.running() == 0, "the cancelled generation to leave the batch")


def test_context_per_request(server):
    model = server.manager.get("tiny").model
    assert model.context > LIMITS.max_context  # the server's limit, not the model's, refuses
    words = "word " * 30
    status, body = _post(server.url + "/v1/completions", {"model": "tiny", "prompt": words, "max_tokens": 40})
    assert status == 400, body
    message = json.loads(body)["error"]["message"]
    assert "llm.max_context" in message and "lower max_tokens" in message
    status, body = _post(
        server.url + "/v2/models/tiny/generate", {"text_input": words, "parameters": {"max_tokens": 40}}
    )
    assert status == 400 and b"max_context" in body
    n = len(model.tokenize("Hello"))
    status, body = _post(
        server.url + "/v1/completions",
        {"model": "tiny", "prompt": "Hello", "max_tokens": LIMITS.max_context - n, "temperature": 0},
    )
    assert status == 200, body
