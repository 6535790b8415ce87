"""edge serve with a language model: the OpenAI Python client (streaming), /v1/completions, KServe v2
generate, a bounded queue, cancellation and the metrics; on a real server on a loopback port."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from edge_runtime.serve import ServeConfig
from edge_runtime.serve.config import ModelConfig
from edge_runtime.serve.manager import default_loader
from edge_runtime.serve.server import ServerThread

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(packages):
    config = ServeConfig(
        host="127.0.0.1", port=0, drain_timeout_s=5, models=(ModelConfig("tiny", packages("qwen2", "int8")),)
    )
    with ServerThread(config, loader=default_loader("auto", 1)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_models_lists_the_language_model(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_chat_streaming_with_the_openai_client(client, server):
    messages = [{"role": "user", "content": "The capital of France is"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason in ("stop", "length")
    assert usage.completion_tokens == whole.usage.completion_tokens >= 1
    assert usage.prompt_tokens == whole.usage.prompt_tokens > 5
    # the same generation through the Python API
    model = server.manager.get("tiny").model
    ids = model.tokenize(model.apply_chat_template(messages))
    assert model.generate(ids, max_new_tokens=12).text == whole.choices[0].message.content


def test_completions_stop_seed_and_max_tokens(client):
    a = client.completions.create(model="tiny", prompt="Hello world", max_tokens=8, temperature=0.9, seed=3)
    b = client.completions.create(model="tiny", prompt="Hello world", max_tokens=8, temperature=0.9, seed=3)
    assert a.choices[0].text == b.choices[0].text
    assert a.usage.completion_tokens <= 8
    greedy = client.completions.create(model="tiny", prompt="Hello world", max_tokens=8, temperature=0)
    text = greedy.choices[0].text
    if len(text) >= 3:
        cut = client.completions.create(
            model="tiny", prompt="Hello world", max_tokens=8, temperature=0, stop=[text[1:3]]
        )
        assert cut.choices[0].finish_reason == "stop" and text.startswith(cut.choices[0].text)


def test_errors(client, server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="word " * 300, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="x", temperature=-1)


def test_kserve_generate_and_generate_stream(server):
    status, body = _post(
        server.url + "/v2/models/tiny/generate",
        {"text_input": "Hello world", "parameters": {"max_tokens": 6}},
    )
    assert status == 200
    doc = json.loads(body)
    assert doc["model_name"] == "tiny" and isinstance(doc["text_output"], str)
    status, body = _post(
        server.url + "/v2/models/tiny/generate_stream",
        {"text_input": "Hello world", "parameters": {"max_tokens": 6}},
    )
    assert status == 200
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == doc["text_output"]
    assert events[-1]["finish_reason"] == doc["finish_reason"]


def test_concurrent_streams_are_batched_and_metrics_exported(client, server):
    engine = server.manager.get("tiny").model.engine()
    steps, tokens = engine.steps, engine.batched_tokens
    results = {}

    def run(i: int) -> None:
        r = client.completions.create(model="tiny", prompt=f"Hello {i}", max_tokens=24, temperature=0)
        results[i] = r.usage.completion_tokens

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4
    assert engine.batched_tokens - tokens > engine.steps - steps  # some steps decoded several sequences
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for name in (
        "edge_llm_time_to_first_token_seconds_bucket",
        "edge_llm_inter_token_latency_seconds_bucket",
        "edge_llm_tokens_per_second_bucket",
        "edge_llm_generated_tokens_total",
    ):
        assert name in text


def test_queue_bound_and_cancellation(server):
    model = server.manager.get("tiny").model
    engine = model.engine()
    old = engine.max_queue
    engine.max_queue = 0
    try:
        status, body = _post(
            server.url + "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2}
        )
        assert status == 503, body
    finally:
        engine.max_queue = old
    # A client that goes away mid-stream: its generation leaves the batch.
    req = urllib.request.Request(
        server.url + "/v1/completions",
        json.dumps(
            {
                "model": "tiny",
                "prompt": "Hello",
                "max_tokens": 200,
                "stream": True,
                "temperature": 0,
                "stop": ["\x00never"],
            }
        ).encode(),
        {"Content-Type": "application/json"},
    )
    r = urllib.request.urlopen(req, timeout=30)
    r.readline()
    r.close()
    deadline = time.monotonic() + 10
    while engine.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running() == 0


def test_the_edge_serve_command_streams_to_the_openai_client(packages, tmp_path):
    """`edge serve --model NAME=MODEL.edgepkg` as a user starts it, on a free loopback port."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime.cli",
            "serve",
            "--model",
            f"tiny={packages('llama', 'int8')}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "edge serve did not become ready"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert isinstance(text, str)
    finally:
        proc.terminate()
        proc.wait(30)
