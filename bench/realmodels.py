"""Real models from the field: native INT8 against onnxruntime float and onnxruntime INT8.

For every model of the corpus (tests/realmodels/corpus.py; ``pip install -e .[corpus]``):

- MACs per inference and the share the plan runs on native int8 kernels (the rest runs in
  float steps or partitioned subgraphs);
- agreement with the float model on held-out generated inputs (the corpus's measure per model:
  top-1, mask IoU, per-step argmax, speech decisions) of the native plan and of onnxruntime's
  own INT8 (a QDQ model from ``onnxruntime.quantization.quantize_static`` on the same
  calibration data);
- latency, batch 1, 1 and 2 threads, p50 of the timed runs, for native INT8, onnxruntime
  float and onnxruntime INT8, in one run on one machine;
- where the plan converts (``edge to-tflite --int8``: every step has a TFLite int8 operator),
  "LiteRT/XNNPACK INT8 (same quantization)": the same plan as a fully quantized .tflite on
  LiteRT's interpreter (XNNPACK delegate), its latency and agreement beside the others.

Writes bench/results/realmodels.json and, with ``--markdown``, appends a "Real models" table to
BENCHMARKS.md.

    python bench/realmodels.py [--models ocr-cls,ocr-det] [--seconds 2] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "realmodels"))

from corpus import CALIBRATION, CORPUS, HELD_OUT, CorpusModel, available


def _p50(fn, feeds: dict[str, np.ndarray], seconds: float, warmup: int = 3, min_runs: int = 10) -> float:
    for _ in range(warmup):
        fn(feeds)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn(feeds)
        times.append(time.perf_counter() - t0)
        if len(times) >= 2000:
            break
    return statistics.median(times) * 1e3


def _ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _ort_int8_session_bytes(model_bytes: bytes, calibration: list[dict[str, np.ndarray]], method: str):
    """(QDQ bytes, per_channel): per-channel weights, else per-tensor where onnxruntime's
    per-channel export is invalid (an opset-12 model's DequantizeLinear gets an axis)."""
    import onnxruntime as ort

    for per_channel in (True, False):
        data = _ort_int8(model_bytes, calibration, method, per_channel)
        try:
            ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's InvalidGraph has no stable import path
            print(f"onnxruntime INT8 per_channel={per_channel} does not load: {exc}"[:200], file=sys.stderr)
            continue
        return data, per_channel
    raise RuntimeError("onnxruntime's quantize_static made no loadable model")


def _ort_int8(
    model_bytes: bytes, calibration: list[dict[str, np.ndarray]], method: str, per_channel: bool
) -> bytes:
    """onnxruntime's static INT8 (QDQ, per-channel int8 weights, uint8 activations) calibrated
    with the same method as the native plan."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}  # fmt: skip

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        quantize_static(
            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method],
        )  # fmt: skip
        return dst.read_bytes()


def _litert_int8(plan: Any, threads: int, output_name: str):
    """``run(feeds)`` -> output ``output_name`` on LiteRT for the plan written as an int8 .tflite,
    or None (with the reason on stderr) when a step of the plan has no TFLite int8 operator."""
    from ai_edge_litert.interpreter import Interpreter

    from edge_runtime.backends.tflite_int8 import plan_to_tflite_int8
    from edge_runtime.errors import UnsupportedOperatorError

    try:
        data = plan_to_tflite_int8(plan)
    except UnsupportedOperatorError as exc:
        print(f"no LiteRT INT8 row: {exc}"[:300], file=sys.stderr)
        return None
    interpreter = Interpreter(model_content=data, num_threads=threads)
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    output = next(d["index"] for d in interpreter.get_output_details() if d["name"] == output_name)
    shapes: dict[str, tuple[int, ...]] = {}

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        for name, value in feeds.items():
            if shapes.get(name) != value.shape:
                interpreter.resize_tensor_input(inputs[name], list(value.shape))
                interpreter.allocate_tensors()
                shapes[name] = value.shape
            interpreter.set_tensor(inputs[name], value)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    return run


def _score(model: CorpusModel, want: list[np.ndarray], got: list[np.ndarray]) -> float:
    if model.metric_name == "mask IoU":
        return model.metric(
            np.concatenate([w.ravel() for w in want]), np.concatenate([g.ravel() for g in got])
        )
    return float(np.mean([model.metric(w, g) for w, g in zip(want, got)]))


def bench_model(key: str, seconds: float) -> dict[str, Any]:
    from edge_runtime import plan as native
    from edge_runtime.graph import import_onnx, optimize

    model = CORPUS[key]
    data = model.model_bytes()  # pinned where the corpus pins (one resolution for every engine)
    calibration = model.make(np.random.default_rng(0), CALIBRATION[key])
    held = model.make(np.random.default_rng(1), HELD_OUT[key])
    graph = optimize(import_onnx(data))
    params = native.calibrate(graph, calibration, method=model.method, progress=False)
    plan = native.lower(graph, params)
    int8_bytes, per_channel = _ort_int8_session_bytes(data, calibration, model.method)

    float1 = _ort_session(model.model_bytes(pinned=False), 1)
    want = [float1.run([model.output], f)[0] for f in held]
    result: dict[str, Any] = {
        "model": key,
        "package": model.package,
        "file": model.relpath,
        "exporter": model.exporter,
        "kind": model.kind,
        "input_shapes": {k: list(v.shape) for k, v in held[0].items()},
        "metric": model.metric_name,
        "threshold": model.threshold,
        "calibration": f"{model.method}, {len(calibration)} generated inputs",
        "ort_int8_per_channel": per_channel,
    }
    latency: dict[str, dict[str, float]] = {}
    for threads in (1, 2):
        session = native.NativeSession(plan, threads=threads)
        if threads == 1:
            got = [session.run(f)[model.output] for f in held]
            result["agreement_native_int8"] = round(_score(model, want, got), 4)
            report = session.partition()
            result["macs"] = int(report.get("macs_total", sum(getattr(plan, "macs", {}).values())))
            result["native_mac_share"] = report.get("native_mac_share")
            result["partition"] = {k: v for k, v in report.items() if k not in ("nodes",)}
        feeds = held[0]
        ort_float = _ort_session(model.model_bytes(pinned=False), threads)
        ort_int8 = _ort_session(int8_bytes, threads)
        engines = {
            "native_int8": session.run,
            "ort_float": lambda f, s=ort_float: s.run(None, f),
            "ort_int8": lambda f, s=ort_int8: s.run(None, f),
        }
        litert = _litert_int8(plan, threads, model.output)
        if litert is not None:
            engines["litert_int8"] = litert
            if threads == 1:
                result["agreement_litert_int8"] = round(_score(model, want, [litert(f) for f in held]), 4)
        for name, fn in engines.items():
            latency.setdefault(name, {})[f"{threads}t_p50_ms"] = round(_p50(fn, feeds, seconds), 3)
        session.close()
    ort_int8 = _ort_session(int8_bytes, 1)
    got = [ort_int8.run([model.output], f)[0] for f in held]
    result["agreement_ort_int8"] = round(_score(model, want, got), 4)
    result["latency"] = latency
    return result


def machine() -> dict[str, Any]:
    from edge_runtime import kernels

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort

    return {
        "cpu": cpu,
        "isa": kernels.get_isa(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }


def markdown(results: list[dict[str, Any]], where: dict[str, Any], command: str) -> str:
    lines = [
        "",
        "## Real models",
        "",
        (
            f"`{command}` on {where['cpu']} (`edge isa`: {where['isa']}), onnxruntime {where['onnxruntime']}; "
            "batch 1, p50 latency in ms at 1 / 2 threads. Agreement with onnxruntime float on held-out "
            "generated inputs (docs/realmodels.md); ORT INT8 is onnxruntime's quantize_static (QDQ, "
            "per-channel, per-tensor where marked *) with the same calibration data and method (minmax; "
            "det percentile, VAD entropy). Native MACs: the share of the model's multiply-accumulates on the int8 kernels. "
            "LiteRT INT8: LiteRT/XNNPACK INT8 (same quantization), the native plan written by `edge to-tflite "
            "--int8`, where every step converts (else -); native / LiteRT is the latency ratio at 1 / 2 threads."
        ),
        "",
        (
            "| model | exporter | input | MMACs | native MACs | measure | native INT8 | ORT INT8 | LiteRT INT8 "
            "| native INT8 ms | ORT float ms | ORT INT8 ms | LiteRT INT8 ms | native / LiteRT |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lat = r["latency"]
        shape = "x".join(str(d) for d in next(iter(r["input_shapes"].values())))
        share = r.get("native_mac_share")
        share_s = "-" if share is None else f"{100 * share:.1f}%"

        def ms(name: str, lat: dict = lat) -> str:
            if name not in lat:
                return "-"
            return f"{lat[name]['1t_p50_ms']:.2f} / {lat[name]['2t_p50_ms']:.2f}"

        ratio = "-"
        if "litert_int8" in lat:
            ratio = " / ".join(
                f"{lat['native_int8'][k] / lat['litert_int8'][k]:.2f}x" for k in ("1t_p50_ms", "2t_p50_ms")
            )
        lite = r.get("agreement_litert_int8")
        lite_s = "-" if lite is None else f"{lite:.3f}"

        lines.append(
            f"| {r['model']} ({r['kind']}) | {r['exporter']} | {shape} | {r['macs'] / 1e6:.1f} | {share_s} "
            f"| {r['metric']} | {r['agreement_native_int8']:.3f} | {r['agreement_ort_int8']:.3f}"
            f"{'' if r.get('ort_int8_per_channel', True) else '*'} "
            f"| {lite_s} | {ms('native_int8')} | {ms('ort_float')} | {ms('ort_int8')} | {ms('litert_int8')} "
            f"| {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated corpus keys (default: all installed)")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="timed seconds per engine and thread count"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "realmodels.json"))
    parser.add_argument("--markdown", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    keys = args.models.split(",") if args.models else available()
    if not keys:
        print("no corpus model installed: pip install -e .[corpus]", file=sys.stderr)
        return 1
    results = []
    for key in keys:
        t0 = time.perf_counter()
        results.append(bench_model(key, args.seconds))
        r = results[-1]
        print(
            f"{key}: {r['metric']} native {r['agreement_native_int8']:.3f} ort-int8 {r['agreement_ort_int8']:.3f}; "
            f"p50 1t native {r['latency']['native_int8']['1t_p50_ms']:.2f} ms, ort float "
            f"{r['latency']['ort_float']['1t_p50_ms']:.2f} ms, ort int8 {r['latency']['ort_int8']['1t_p50_ms']:.2f} ms "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    where = machine()
    command = "python bench/realmodels.py" + (f" --models {args.models}" if args.models else "")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": where, "command": command, "results": results}, indent=2) + "\n")
    table = markdown(results, where, command)
    print(table)
    if args.markdown:
        with open(ROOT / "BENCHMARKS.md", "a") as fh:
            fh.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
