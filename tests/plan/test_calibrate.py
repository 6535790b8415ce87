"""Calibration: which tensors get parameters, and what each method proposes."""

from __future__ import annotations

import numpy as np
import pytest
from native_models import prepare, rng, small_cnn, small_transformer

from edge_runtime.errors import QuantizationError
from edge_runtime.graph import reference
from edge_runtime.numerics import MinMaxObserver
from edge_runtime.plan import calibrate, tensors_to_calibrate


def _batches(shape, count=4, seed=1):
    r = rng(seed)
    return [{"x": r.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def test_tensors_cover_inputs_and_every_node_output() -> None:
    graph = prepare(small_cnn())
    names = tensors_to_calibrate(graph)
    assert names[0] == "x"
    assert set(names) == {"x"} | {o for n in graph.nodes for o in n.outputs}


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_tensor_gets_uint8_params(method: str) -> None:
    graph = prepare(small_transformer())
    params = calibrate(graph, _batches((2, 6, 16)), method=method, progress=False)
    assert set(params) == set(tensors_to_calibrate(graph))
    assert all(p.dtype == "uint8" for p in params.values())


def test_minmax_matches_an_observer_fed_by_hand() -> None:
    graph = prepare(small_cnn())
    batches = _batches((2, 3, 16, 16))
    observer = MinMaxObserver()
    for feeds in batches:
        observer.update(reference.run(graph, feeds)["logits"])
    assert calibrate(graph, batches, progress=False)["logits"] == observer.compute()


def test_clipping_methods_narrow_an_outlier() -> None:
    graph = prepare(small_cnn())
    batches = _batches((8, 3, 16, 16), count=3)  # 18k values: the outlier is < 0.01%
    batches[0]["x"][0, 0, 0, 0] = 80.0  # one outlier in the input
    full = calibrate(graph, batches, "minmax", progress=False)["x"]
    clipped = calibrate(graph, batches, "percentile", progress=False)["x"]
    assert clipped.scale < full.scale / 4


def test_errors_are_typed() -> None:
    graph = prepare(small_cnn())
    with pytest.raises(QuantizationError, match="calibration method"):
        calibrate(graph, _batches((1, 3, 16, 16)), method="bogus")
    with pytest.raises(QuantizationError, match="at least one batch"):
        calibrate(graph, [], progress=False)
