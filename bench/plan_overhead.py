"""What the plan interpreter saves: a warm native call as one C program against the step-by-step
Python path (the one a signature's first call takes), batch 1, 1 thread.

    python bench/plan_overhead.py                       # digits_cnn, mobilenet_v2, resnet18
    python bench/plan_overhead.py --models digits_cnn --rounds 5

Each cell is the median CPU time of the calling thread per call (``time.thread_time``: at 1 thread
every backend computes on the calling thread, and a shared machine's other work does not count),
with the wall-clock p10 beside it. The rows of a model are measured round-robin in ``--rounds``
slices so that drifting load hits all of them. Rows:
  native compiled    NativeSession.run: one edge_plan_run call per C segment (the default)
  native python      the same session stepping through the plan in Python, one cffi call per step
                     (executor._PROGRAMS = False: what every call cost before the interpreter)
  ort int8           onnxruntime on its own static INT8 quantization (as bench/models.py builds it)
The difference of the first two is the per-call Python and cffi cost the interpreter removes.
Writes bench/results/plan_overhead.json (not with --no-write).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import models as bench_models  # bench/models.py (bench/ is on the path when run as a script)
import numpy as np
from _report import machine_description

RESULTS = Path(__file__).resolve().parent / "results" / "plan_overhead.json"
DEFAULT_MODELS = ("digits_cnn", "mobilenet_v2", "resnet18")


def _feeds(session: Any, name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        if name == "minilm_encoder":
            shape = [1, 128]
        if "float" in spec.type:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
        elif "mask" in spec.name:
            feeds[spec.name] = np.ones(shape, np.int64)
        else:
            feeds[spec.name] = rng.integers(0, 1000, shape).astype(np.int64)
    return feeds


def _times(fn, calls: int) -> list[tuple[float, float]]:
    fn()
    fn()
    out = []
    for _ in range(calls):
        cpu, wall = time.thread_time(), time.perf_counter()
        fn()
        out.append((time.thread_time() - cpu, time.perf_counter() - wall))
    return out


def measure(name: str, rounds: int, calls: int) -> dict[str, Any]:
    import onnxruntime as ort

    import edge_runtime
    from edge_runtime.plan import executor

    model = edge_runtime.load(str(bench_models.build_package(name, None)), backend="native", threads=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    ort_session = ort.InferenceSession(
        str(bench_models.build_ort_int8(name)), options, providers=["CPUExecutionProvider"]
    )
    feeds = _feeds(ort_session, name)

    def python_path() -> None:
        executor._PROGRAMS = False
        try:
            model.run(feeds)
        finally:
            executor._PROGRAMS = True

    rows = {
        "native compiled": lambda: model.run(feeds),
        "native python": python_path,
        "ort int8": lambda: ort_session.run(None, feeds),
    }
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    for _ in range(rounds):
        for label, fn in rows.items():
            samples[label] += _times(fn, calls)
    result: dict[str, Any] = {
        label: {
            "cpu_ms_p50": float(np.median([c for c, _ in v]) * 1e3),
            "wall_ms_p10": float(np.percentile([w for _, w in v], 10) * 1e3),
        }
        for label, v in samples.items()
    }
    result["program"] = model.info()["session"]["program"]
    result["steps"] = model.info()["session"]["steps"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo models")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin slices per model (default 3)")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per row and slice (default 30)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    from edge_runtime import kernels

    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        res = results[name] = measure(name, args.rounds, args.calls)
        saved = res["native python"]["cpu_ms_p50"] - res["native compiled"]["cpu_ms_p50"]
        cells = ", ".join(
            f"{k} {v['cpu_ms_p50']:.3f} ms cpu (wall p10 {v['wall_ms_p10']:.3f})"
            for k, v in res.items()
            if isinstance(v, dict) and "cpu_ms_p50" in v
        )
        print(
            f"{name} ({res['steps']} steps, {res['program']}): {cells}; saved {saved:.3f} ms a call",
            flush=True,
        )
    if not args.no_write:
        payload = {
            "isa": kernels.get_isa(),
            "machine": machine_description(),
            "command": "python bench/plan_overhead.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "models": results,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
