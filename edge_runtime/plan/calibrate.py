"""Calibration: per-tensor activation quantization from sample inputs.

The float reference executor (:mod:`edge_runtime.graph.reference`) runs the graph
on each calibration batch; its ``observe`` hook streams every float tensor into one
observer from :mod:`edge_runtime.numerics`, and each observer finally proposes the
tensor's :class:`~edge_runtime.numerics.QuantParams`. Tensors whose consumers need a
shared scale (Concat inputs, the layout ops that keep their input's parameters)
are calibrated on their own here and unified later by :func:`edge_runtime.plan.lower`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping

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

__all__ = ["CALIBRATION_METHODS", "calibrate", "tensors_to_calibrate"]

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
) -> dict[str, QuantParams]:
    """Activation quantization parameters per tensor name (see :func:`tensors_to_calibrate`).

    ``batches`` yields feeds (arrays by graph input name) for ``graph.reference``;
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
    wanted = set(tensors_to_calibrate(graph))
    make = CALIBRATION_METHODS[method]
    observers: dict[str, Observer] = {}

    def observe(name: str, value: np.ndarray) -> None:
        if name not in wanted or not np.issubdtype(np.asarray(value).dtype, np.floating):
            return
        observer = observers.get(name)
        if observer is None:
            observer = observers[name] = make(dtype)
        observer.update(value)

    count = 0
    for feeds in _progress(batches, progress, f"calibrating {graph.name} ({method})"):
        reference.run(graph, feeds, observe=observe)
        count += 1
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


def _progress(items: Iterable[Mapping[str, np.ndarray]], enabled: bool, label: str):
    """Wrap ``items`` in a tqdm bar when available, else a plain stderr counter."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        for count, item in enumerate(items, start=1):
            yield item
            print(f"\r{label}: {count} batches", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return
    try:
        total: int | None = len(items)  # type: ignore[arg-type]
    except TypeError:  # an iterable of unknown size (some define __len__ and raise)
        total = None
    yield from tqdm(items, desc=label, total=total, unit="batch", leave=False)
