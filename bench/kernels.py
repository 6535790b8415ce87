"""INT8 GEMM kernels side by side, single thread by default.

    python bench/kernels.py [--threads N] [--quick]

Columns (GOP/s = 2*M*N*K / time, median over a fixed time budget):
  dense        edge_runtime.kernels.gemm, prepacked weights, fused requantization, u8 out
  sparse 2:4   edge_runtime.kernels.sparse.gemm24, the same with 2:4-sparse weights
  ORT MMI      onnxruntime MatMulInteger (int32 out), constant (prepacked) weights
  ORT QLMM     onnxruntime QLinearMatMul (u8 out), constant (prepacked) weights
  numpy f32    numpy float32 matmul, BLAS limited to the same threads

Also the machine's copy bandwidth (a large numpy copy, bytes read + written /
time) and the effective bandwidth of the M = 1 kernels (packed weight bytes /
time) as a fraction of it. Writes bench/results/kernels.json and the
"Kernels" section of BENCHMARKS.md (not with --quick).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, update_section

from edge_runtime.kernels import Requant, ThreadPool, get_isa
from edge_runtime.kernels.gemm import gemm, pack_gemm

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
MS = (1, 8, 64, 256)
KNS = (256, 1024, 4096)


def measure(fn, budget: float) -> float:
    """Median seconds of fn() over about `budget` seconds (at least 5 runs)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def copy_bandwidth(nbytes: int, budget: float) -> float:
    """Bytes read + written per second by a large numpy copy."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    return 2 * nbytes / measure(lambda: np.copyto(dst, src), budget)


def ort_session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_models(w: np.ndarray, k: int, threads: int):
    """MatMulInteger and QLinearMatMul sessions with w (N, K) as a constant B (K, N)."""
    from onnx import TensorProto, helper, numpy_helper

    n = w.shape[0]
    b = numpy_helper.from_array(np.ascontiguousarray(w.T), "B")
    scalars = [
        numpy_helper.from_array(np.array(3, np.uint8), "a_zp"),
        numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
        numpy_helper.from_array(np.array(0.01, np.float32), "b_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "b_zp"),
        numpy_helper.from_array(np.array(0.5, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zp"),
    ]
    a_info = helper.make_tensor_value_info("A", TensorProto.UINT8, [None, k])
    sessions = {}
    for name, node, out_type in [
        ("ort_mmi", helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"]), TensorProto.INT32),
        (
            "ort_qlmm",
            helper.make_node(
                "QLinearMatMul", ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp", "y_scale", "y_zp"], ["Y"]
            ),
            TensorProto.UINT8,
        ),
    ]:
        used = [t for t in scalars if t.name in node.input]
        graph = helper.make_graph(
            [node], name, [a_info], [helper.make_tensor_value_info("Y", out_type, [None, n])], [b, *used]
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        sessions[name] = ort_session(model, threads)
    return sessions


def sparse_api():
    try:
        from edge_runtime.kernels.sparse import gemm24, pack_gemm24

        return gemm24, pack_gemm24, ""
    except ImportError as exc:  # the 2:4 kernels are optional here
        return None, None, f"2:4 column skipped: {exc}"


def prune(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep 2 random weights of every 4 along K (2:4 sparsity)."""
    n, k = w.shape
    k4 = (k + 3) // 4 * 4
    groups = np.pad(w, ((0, 0), (0, k4 - k))).reshape(n, -1, 4).copy()
    drop = np.argsort(rng.random(groups.shape), axis=-1)[..., :2]
    np.put_along_axis(groups, drop, 0, axis=-1)
    return np.ascontiguousarray(groups.reshape(n, k4)[:, :k])


def run_shape(m, kn, threads, budget, pool, sparse, rng):
    from threadpoolctl import threadpool_limits

    n = k = kn
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    bias = rng.integers(-1000, 1000, n, dtype=np.int32)
    requant = Requant.from_scales(1e-4, n, 128)
    out = np.empty((m, n), dtype=np.uint8)
    row = {"m": m, "n": n, "k": k}

    packed = pack_gemm(w, bias)
    row["dense_s"] = measure(lambda: gemm(a, packed, 3, requant, np.uint8, out=out, pool=pool), budget)
    row["dense_packed_bytes"] = int(packed.buffer.nbytes)
    gemm24, pack_gemm24, _ = sparse
    if gemm24 is not None:
        packed24 = pack_gemm24(prune(w, rng), bias)
        row["sparse_s"] = measure(lambda: gemm24(a, packed24, 3, requant, np.uint8, pool=pool), budget)
        row["sparse_packed_bytes"] = int(packed24.buffer.nbytes)
    try:
        for name, session in ort_models(w, k, threads).items():
            row[f"{name}_s"] = measure(lambda s=session: s.run(None, {"A": a}), budget)
    except ImportError:
        pass
    af, wf = a.astype(np.float32), np.ascontiguousarray(w.T.astype(np.float32))
    with threadpool_limits(threads):
        row["numpy_f32_s"] = measure(lambda: af @ wf, budget)
    return row


COLUMNS = [
    ("dense", "dense"),
    ("sparse", "sparse 2:4"),
    ("ort_mmi", "ORT MMI"),
    ("ort_qlmm", "ORT QLMM"),
    ("numpy_f32", "numpy f32"),
]


def gops(row, key):
    t = row.get(f"{key}_s")
    return None if t is None else 2 * row["m"] * row["n"] * row["k"] / t / 1e9


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def table(rows, copy_bw):
    head = ["M", "K=N"] + [f"{label} GOP/s" for _, label in COLUMNS] + ["dense/MMI", "sparse/dense", "M=1 BW"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["m"]), str(row["k"])] + [fmt(gops(row, key)) for key, _ in COLUMNS]
        mmi, dense, sparse = row.get("ort_mmi_s"), row["dense_s"], row.get("sparse_s")
        cells.append(fmt(mmi / dense if mmi else None, 2) + ("x" if mmi else ""))
        cells.append(fmt(dense / sparse if sparse else None, 2) + ("x" if sparse else ""))
        bw = ""
        if row["m"] == 1:
            bw = f"{row['dense_packed_bytes'] / dense / copy_bw:.0%}"
            if sparse:
                bw += f" / {row['sparse_packed_bytes'] / sparse / copy_bw:.0%}"
        cells.append(bw or "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    parser.add_argument("--quick", action="store_true", help="short budget and a subset of shapes; no report")
    parser.add_argument("--budget", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--json", type=Path, default=None, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)

    budget = args.budget if args.budget is not None else (0.02 if args.quick else 0.5)
    shapes = [(m, kn) for kn in ((256,) if args.quick else KNS) for m in ((1, 8) if args.quick else MS)]
    copy_bytes = (16 if args.quick else 256) << 20
    command = "python bench/kernels.py" + (f" --threads {args.threads}" if args.threads != 1 else "")
    command += " --quick" if args.quick else ""

    copy_bw = copy_bandwidth(copy_bytes, budget)
    sparse = sparse_api()
    rng = np.random.default_rng(0)
    pool = ThreadPool(args.threads) if args.threads > 1 else None
    rows = []
    for m, kn in shapes:
        rows.append(run_shape(m, kn, args.threads, budget, pool, sparse, rng))
        print(f"  measured M={m} K=N={kn}", file=sys.stderr, flush=True)

    notes = [f"Copy bandwidth (numpy, {copy_bytes >> 20} MiB, read + write): {copy_bw / 1e9:.1f} GB/s."]
    notes.append("M=1 BW: packed weight bytes streamed per second by dense / sparse, as a fraction of it.")
    if sparse[2]:
        notes.append(sparse[2])
    markdown = table(rows, copy_bw)
    print(markdown)
    print("\n".join(notes))

    result = {
        "machine": machine_description(),
        "isa": get_isa(),
        "threads": args.threads,
        "command": command,
        "budget_s": budget,
        "copy_bandwidth_bytes_per_s": copy_bw,
        "notes": notes,
        "rows": rows,
    }
    path = args.json or RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick:
        update_section(
            "Kernels",
            f"Machine: {result['machine']}; ISA {result['isa']}; {args.threads} thread(s).\n"
            f"Command: `{command}` (median over {budget} s per cell).\n\n"
            f"{markdown}\n\n" + "\n".join(f"- {note}" for note in notes),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
