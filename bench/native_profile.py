"""Where a native INT8 package spends its time: per plan step, and in a warm load.

    python bench/native_profile.py PACKAGE.edgepkg                 # per step kind, then the slowest steps
    python bench/native_profile.py PACKAGE.edgepkg --load          # cProfile of a warm load + first run
    python bench/native_profile.py ~/.cache/edge-runtime/models/bench/minilm_encoder.dense.*.edgepkg \
        --zoo minilm_encoder

Inputs: with --zoo NAME, bench/models.py's latency inputs of that reference model;
else seeded random data from the package's input specs (floats ~ N(0, 1), integers in
[0, 100), the batch and other named dims from --batch / --dim). Each step of the
plan is timed with perf_counter around its call, over --iters runs after a warm-up; the
per-step times add up to a little more than a run (the timer's own cost). The figures
in BENCHMARKS.md's "what limits" notes come from this script.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

import edge_runtime
from edge_runtime.benchmark import random_inputs
from edge_runtime.plan.executor import NativeSession


def _session(model) -> NativeSession:
    """The NativeSession behind a loaded native model."""
    seen, todo = set(), [model]
    while todo:
        obj = todo.pop()
        if isinstance(obj, NativeSession):
            return obj
        if id(obj) in seen or not hasattr(obj, "__dict__"):
            continue
        seen.add(id(obj))
        todo.extend(v for v in vars(obj).values() if hasattr(v, "__dict__"))
    raise SystemExit("not a model on the native backend (load it with backend='native')")


def _label(session: NativeSession, index: int) -> tuple[str, str]:
    """(kind, layer) of a step: convs by kernel shape and input size, other steps by op."""
    step = session.plan.steps[index]
    if step.op != "conv":
        return step.op, f"{step.op} {step.node}"
    h, w, c = step.attrs["input_hwc"]
    shape = session._weight_shapes[index]
    kind = "conv depthwise" if step.attrs["depthwise"] else f"conv {shape[2]}x{shape[3]}"
    return kind, f"{kind} {h}x{w}x{c} -> {shape[0]}, stride {step.attrs['stride'][0]}"


def profile_steps(model, feeds, iters: int, top: int) -> None:
    session = _session(model)
    for _ in range(10):
        model.run(feeds)
    times = collections.defaultdict(float)
    original = session._prepared

    def timed(index, fn):
        def run(env, slot):
            start = time.perf_counter()
            fn(env, slot)
            times[index] += time.perf_counter() - start

        return run

    session._prepared = [timed(i, fn) for i, fn in enumerate(original)]
    try:
        for _ in range(iters):
            model.run(feeds)
    finally:
        session._prepared = original
    runs = []
    for _ in range(iters):
        start = time.perf_counter()
        model.run(feeds)
        runs.append(time.perf_counter() - start)
    by_kind, by_layer = collections.Counter(), collections.Counter()
    counts = collections.Counter()
    for index, seconds in times.items():
        kind, layer = _label(session, index)
        by_kind[kind] += seconds / iters
        by_layer[layer] += seconds / iters
        counts[kind] += 1
    print(f"run p50 {np.median(runs) * 1e3:.3f} ms; steps add up to {sum(by_kind.values()) * 1e3:.3f} ms")
    print("\nby step kind:")
    for kind, seconds in by_kind.most_common():
        print(f"  {kind:20s} {seconds * 1e3:8.3f} ms  ({counts[kind]} steps)")
    print(f"\nslowest {top} steps:")
    for layer, seconds in by_layer.most_common(top):
        print(f"  {seconds * 1e3:8.3f} ms  {layer}")


def profile_load(path: Path, feeds, threads: int, top: int) -> None:
    model = edge_runtime.load(path, backend="native", threads=threads, profile=None)
    model.run(feeds)
    model.close()  # imports, packed cache and page cache are warm from here on
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    model = edge_runtime.load(path, backend="native", threads=threads, profile=None)
    model.run(feeds)
    profiler.disable()
    print(f"warm load + first run: {(time.perf_counter() - start) * 1e3:.1f} ms (under cProfile)")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=N", help="another named dim")
    parser.add_argument("--zoo", help="a reference model name: use bench/models.py's inputs for it")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--load", action="store_true", help="profile a warm load instead of the steps")
    args = parser.parse_args(argv)
    dims = {k: int(v) for k, v in (d.split("=", 1) for d in args.dim)}
    model = edge_runtime.load(args.package, backend="native", threads=args.threads, profile=None)
    if args.zoo:
        from models import latency_feeds  # bench/models.py, beside this script

        feeds = latency_feeds(args.zoo, args.batch)
    else:
        feeds = random_inputs(model.inputs, batch=args.batch, dims=dims, seed=0)
    if args.load:
        model.close()
        profile_load(args.package, feeds, args.threads, args.top)
    else:
        profile_steps(model, feeds, args.iters, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
