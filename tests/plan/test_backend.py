"""The native backend behind the backend interface: plans from the package or lowered at open."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from native_models import make_model, prepare, rng, small_cnn, value
from onnx import helper

from edge_runtime.backends import Artifact, OpenOptions
from edge_runtime.backends.native import NativeBackend
from edge_runtime.errors import BackendUnavailableError, UnsupportedOperatorError
from edge_runtime.plan import NativeSession, calibrate, lower


@pytest.fixture(scope="module")
def cnn():
    model = small_cnn()
    graph = prepare(model)
    feeds = {"x": rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)}
    params = calibrate(graph, [feeds], progress=False)
    return model, graph, params, feeds


def _manifest(params=None, layers=()):
    quantization = {"activations": {k: v.to_dict() for k, v in params.items()}} if params else {}
    sparsity = SimpleNamespace(pattern="2:4", layers=tuple(layers)) if layers else None
    return SimpleNamespace(quantization=quantization, sparsity=sparsity)


def test_available_when_the_extension_imports() -> None:
    ok, why = NativeBackend().available()
    assert ok and "INT8" in why


def test_opens_a_native_plan_artifact(cnn) -> None:
    _, graph, params, feeds = cnn
    plan = lower(graph, params)
    artifact = Artifact("model.plan", "native-plan", plan.to_bytes())
    session = NativeBackend().open(artifact, OpenOptions(threads=1))
    assert [s.name for s in session.inputs] == ["x"] and session.inputs[0].shape == ("batch", 3, 16, 16)
    assert session.concurrent is True
    want = NativeSession(plan, cache_dir=False).run(feeds)["logits"]
    np.testing.assert_array_equal(session.run(feeds)["logits"], want)
    assert session.describe()["plan"] == "native-plan artifact"


def test_lowers_onnx_with_the_manifest_parameters(cnn) -> None:
    model, graph, params, feeds = cnn
    artifact = Artifact("model.onnx", "onnx", model.SerializeToString())
    session = NativeBackend().open(artifact, OpenOptions(threads=2, manifest=_manifest(params)))
    want = NativeSession(lower(graph, params), cache_dir=False).run(feeds)["logits"]
    np.testing.assert_array_equal(session.run(feeds)["logits"], want)
    info = session.describe()
    assert info["threads"] == 2 and info["ops"]["dwconv2d"] == 1


def test_refuses_onnx_without_parameters(cnn) -> None:
    model = cnn[0]
    artifact = Artifact("model.onnx", "onnx", model.SerializeToString())
    with pytest.raises(BackendUnavailableError, match="edge quantize"):
        NativeBackend().open(artifact, OpenOptions(threads=1, manifest=_manifest()))
    with pytest.raises(BackendUnavailableError, match="onnxruntime"):
        NativeBackend().open(artifact, OpenOptions(threads=1))


def test_unsupported_operator_refused_for_auto_fallback() -> None:
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up")]
    model = make_model(nodes, [value("x", ["batch", 2, 4, 4])], [value("y", None)],
                       {"w": np.ones((2, 2, 2, 2), np.float32)})  # fmt: skip
    graph = prepare(model)
    params = calibrate(graph, [{"x": np.ones((1, 2, 4, 4), np.float32)}], progress=False)
    artifact = Artifact("model.onnx", "onnx", model.SerializeToString())
    with pytest.raises(UnsupportedOperatorError, match="ConvTranspose"):
        NativeBackend().open(artifact, OpenOptions(threads=1, manifest=_manifest(params)))
