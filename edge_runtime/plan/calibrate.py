"""Calibration: per-tensor activation quantization from sample inputs.

Each calibration batch runs through the float graph and every float tensor streams
into one observer from :mod:`edge_runtime.numerics`; each observer finally proposes
the tensor's :class:`~edge_runtime.numerics.QuantParams`. The graph runs on
onnxruntime when it is installed (the float ONNX model of the graph with every tensor
to calibrate as an extra output, :func:`edge_runtime.plan.partition.float_onnx`: one
call per batch), else, or when onnxruntime cannot take the model, on the numpy
reference executor (:mod:`edge_runtime.graph.reference`) through its ``observe`` hook.
Both feed each observer the same tensors in the same order, so the ranges agree
within float32 rounding (tests/plan/test_calibrate_engines.py). Tensors whose
consumers need a shared scale (Concat inputs, the layout ops that keep their input's
parameters) are calibrated on their own here and unified later by
:func:`edge_runtime.plan.lower`.

Progress: a tqdm bar with an ETA when tqdm is installed (the dev extra), else one log
line per batch on stderr with the elapsed time and, when the number of batches is
known, an ETA.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from edge_runtime.errors import QuantizationError
from edge_runtime.graph import Graph, reference
from edge_runtime.numerics import (
    ActivationDType,
    EntropyObserver,
    MinMaxObserver,
    Observer,
    PercentileObserver,
    QuantParams,
)

__all__ = [
    "CALIBRATION_ENGINES",
    "CALIBRATION_METHODS",
    "AtInputShapes",
    "calibrate",
    "parse_input_shape",
    "tensors_to_calibrate",
]

CALIBRATION_ENGINES = ("auto", "onnxruntime", "reference")

CALIBRATION_METHODS: dict[str, Callable[[ActivationDType], Observer]] = {
    "minmax": lambda dtype: MinMaxObserver(dtype),
    "percentile": lambda dtype: PercentileObserver(dtype=dtype),
    "entropy": lambda dtype: EntropyObserver(dtype=dtype),
}


def _is_float_dtype(dtype: np.dtype | None) -> bool:
    # An unknown dtype is assumed float; calibrate() then skips any non-float value it sees.
    return dtype is None or np.issubdtype(np.dtype(dtype), np.floating)


def tensors_to_calibrate(graph: Graph) -> list[str]:
    """Names of the tensors the native plan quantizes, in execution order.

    These are the float graph inputs and every float tensor a node produces. Integer
    tensors (token ids, shapes) stay integer and need no parameters.
    """
    names: list[str] = []
    seen: set[str] = set()
    for info in graph.inputs:
        if _is_float_dtype(info.dtype) and info.name not in seen:
            names.append(info.name)
            seen.add(info.name)
    for node in graph.nodes:
        for name in node.outputs:
            if not name or name in seen:
                continue
            info = graph.info(name)
            if _is_float_dtype(None if info is None else info.dtype):
                names.append(name)
                seen.add(name)
    return names


def calibrate(
    graph: Graph,
    batches: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    progress: bool = True,
    dtype: ActivationDType = "uint8",
    engine: str = "auto",
    info: dict | None = None,
) -> dict[str, QuantParams]:
    """Activation quantization parameters per tensor name (see :func:`tensors_to_calibrate`).

    ``batches`` yields feeds (arrays by graph input name), each run as one batch;
    ``engine`` runs the float graph: ``"auto"`` (onnxruntime when installed and able to
    run the graph, else the reference executor), ``"onnxruntime"`` or ``"reference"``.
    ``info``, when given, receives ``engine`` (the one used) and ``reason`` (why not
    onnxruntime), ``batches`` and ``seconds``;
    ``method`` picks the observer: ``"minmax"`` (full range), ``"percentile"``
    (99.99th percentile of |x|) or ``"entropy"`` (KL-divergence threshold).
    Activations are uint8 asymmetric by default (``dtype="int8"`` for signed).
    Raises QuantizationError for an unknown method, no batches, or a tensor that
    never held a finite value.
    """
    if method not in CALIBRATION_METHODS:
        raise QuantizationError(
            f"calibration method {method!r}: expected one of {sorted(CALIBRATION_METHODS)}"
        )
    if engine not in CALIBRATION_ENGINES:
        raise QuantizationError(f"calibration engine {engine!r}: expected one of {list(CALIBRATION_ENGINES)}")
    order = tensors_to_calibrate(graph)
    wanted = set(order)
    make = CALIBRATION_METHODS[method]
    observers: dict[str, Observer] = {}

    def observe(name: str, value: np.ndarray) -> None:
        if name not in wanted or not np.issubdtype(np.asarray(value).dtype, np.floating):
            return
        observer = observers.get(name)
        if observer is None:
            observer = observers[name] = make(dtype)
        observer.update(value)

    started = time.perf_counter()
    runner, reason = (None, "the reference executor was asked for") if engine == "reference" else \
        _onnxruntime_runner(graph, [n for n in order if n not in set(graph.input_names)])  # fmt: skip
    if runner is None and engine == "onnxruntime":
        raise QuantizationError(f"calibration on onnxruntime is not possible: {reason}")
    used = "reference" if runner is None else "onnxruntime"
    count = 0
    for feeds in _progress(batches, progress, f"calibrating {graph.name} ({method}, {used})"):
        if runner is None:
            reference.run(graph, feeds, observe=observe)
        else:
            for name in graph.input_names:  # the inputs first, then the tensors in execution order
                if name in feeds:
                    observe(name, np.asarray(feeds[name]))
            for name, value in runner(feeds):
                observe(name, value)
        count += 1
    if info is not None:
        info.update(engine=used, reason=reason, batches=count, seconds=time.perf_counter() - started)
    if count == 0:
        raise QuantizationError("calibration needs at least one batch of inputs; none was given")

    params: dict[str, QuantParams] = {}
    for name in tensors_to_calibrate(graph):
        if name not in observers:
            continue  # integer at run time (e.g. an index tensor of unknown dtype)
        try:
            params[name] = observers[name].compute()
        except QuantizationError as exc:
            raise QuantizationError(f"tensor {name!r}: {exc}") from exc
    return params


def _onnxruntime_runner(graph: Graph, names: Sequence[str]):
    """(``run(feeds) -> [(name, value)]``, "") on onnxruntime, or (None, why not)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime is not installed"
    try:
        from edge_runtime.plan.partition import float_onnx

        model = float_onnx(graph, outputs=list(dict.fromkeys(names)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                           else (os.cpu_count() or 1))  # fmt: skip
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure means: calibrate on the reference executor
        return None, f"onnxruntime cannot run the float graph ({type(exc).__name__}: {str(exc)[:300]})"
    outputs = [o.name for o in model.graph.output]
    inputs = {i.name for i in session.get_inputs()}

    def run(feeds: Mapping[str, np.ndarray]):
        values = session.run(outputs, {k: v for k, v in feeds.items() if k in inputs})
        return zip(outputs, values)

    return run, ""


def _progress(items: Iterable[Mapping[str, np.ndarray]], enabled: bool, label: str):
    """Wrap ``items`` in a tqdm bar (with its ETA) when available, else log one line per
    batch on stderr: count, elapsed time and, when the number of batches is known, the ETA."""
    if not enabled:
        yield from items
        return
    try:
        total: int | None = len(items)  # type: ignore[arg-type]
    except TypeError:  # an iterable of unknown size (some define __len__ and raise)
        total = None
    try:
        from tqdm import tqdm
    except ImportError:
        start = time.perf_counter()
        for count, item in enumerate(items, start=1):
            yield item
            elapsed = time.perf_counter() - start
            line = f"{label}: {count}" + (f"/{total}" if total else "") + f" batches, {elapsed:.1f} s"
            if total:
                line += f", ETA {elapsed / count * (total - count):.1f} s"
            print(line, file=sys.stderr, flush=True)
        return
    yield from tqdm(items, desc=label, total=total, unit="batch", leave=False)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"image:1x3x320x320"`` -> ``("image", (1, 3, 320, 320))``; QuantizationError otherwise."""
    name, sep, dims = str(text).rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 1 for d in shape):
        raise QuantizationError(
            f"input shape {text!r}: expected NAME:D0xD1x..., e.g. image:1x3x320x320 (positive sizes)"
        )
    return name, shape


class AtInputShapes:
    """Calibration batches at representative input sizes (``edge quantize --input-shape``).

    ``shapes`` lists (input name, shape) pairs; the k-th shape given for each input makes
    the k-th size, and the whole of ``batches`` (an iterable that can be iterated again)
    is fed once per size, each batch resized to it: the dimensions after the first (the
    batch, kept from the data) are interpolated linearly (separably, pixel centres
    aligned, as an image resize does). Inputs without a listed shape are fed as they are.
    Raises QuantizationError for an unknown input or a shape whose rank or fixed
    dimensions the model does not accept (``inputs``: the graph's input infos)."""

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]], shapes: Sequence[tuple[str, Sequence[int]]],
                 inputs: Sequence = ()) -> None:  # fmt: skip
        self.batches = batches
        declared = {info.name: info.shape for info in inputs}
        per_input: dict[str, list[tuple[int, ...]]] = {}
        for name, shape in shapes:
            if declared and name not in declared:
                raise QuantizationError(f"input shape for {name!r}: the model's inputs are {sorted(declared)}")
            want = declared.get(name)
            if want is not None:
                if len(want) != len(shape):
                    raise QuantizationError(
                        f"input shape {name}:{'x'.join(map(str, shape))}: the input has rank {len(want)}"
                    )
                for axis, (d, s) in enumerate(zip(want, shape)):
                    if axis and isinstance(d, int) and d != s:
                        raise QuantizationError(
                            f"input shape {name}:{'x'.join(map(str, shape))}: dimension {axis} is fixed at {d}"
                        )
            per_input.setdefault(name, []).append(tuple(int(d) for d in shape))
        count = max((len(v) for v in per_input.values()), default=0)
        self.sizes = [{name: v[min(k, len(v) - 1)] for name, v in per_input.items()} for k in range(count)]

    def __len__(self) -> int:
        return len(self.batches) * max(1, len(self.sizes))  # type: ignore[arg-type]

    def __iter__(self):
        for size in self.sizes or [{}]:
            for feeds in self.batches:
                yield {k: _resized(np.asarray(v), size[k]) if k in size else v for k, v in feeds.items()}


def _resized(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` with every dimension but the first linearly resampled to ``shape[1:]``."""
    if x.ndim != len(shape):
        raise QuantizationError(f"calibration data of shape {x.shape} cannot be resized to {shape}")
    out = x
    for axis in range(1, x.ndim):
        size = shape[axis]
        n = out.shape[axis]
        if n == size:
            continue
        pos = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        frac = (pos - lo).astype(np.float32)
        view = [1] * out.ndim
        view[axis] = size
        frac = frac.reshape(view)
        a, b = np.take(out, lo, axis=axis), np.take(out, hi, axis=axis)
        out = a * (1 - frac) + b * frac if np.issubdtype(out.dtype, np.floating) else np.take(out, np.rint(
            pos).astype(np.int64), axis=axis)  # fmt: skip
    return np.ascontiguousarray(out.astype(x.dtype, copy=False))
