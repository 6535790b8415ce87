"""Partitioned plans: what the native kernels lack runs in float, the rest natively.

The lowering is made to lack an operator (Tanh: its handler removed) and to refuse one
form of a convolution (the node named "refused"), so that the tests do not depend on
which operators the lowering knows today.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from native_models import make_model, prepare, rng, value
from onnx import helper

import edge_runtime.plan.lower  # noqa: F401 - the module (edge_runtime.plan.lower is also the function)
from edge_runtime.errors import UnsupportedOperatorError
from edge_runtime.plan import NativeSession, QuantizedPlan, calibrate, lower
from edge_runtime.plan.partition import SegmentRunner

lower_module = sys.modules["edge_runtime.plan.lower"]

ort = pytest.importorskip("onnxruntime")


def _weights(r, *shape):
    return (r.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _model():
    r = rng(21)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="stem", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Tanh", ["r1"], ["t1"], name="unknown_op"),
        n("Conv", ["t1", "w2", "b2"], ["c2"], name="refused", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Relu", ["c2"], ["r2"], name="relu2"),
        n("Conv", ["r2", "w3", "b3"], ["c3"], name="native_after", kernel_shape=[1, 1]),
        n("Add", ["c3", "r1"], ["y"], name="join"),
    ]  # fmt: skip
    inits = {
        "w1": _weights(r, 8, 3, 3, 3), "b1": np.full(8, 0.1, np.float32),
        "w2": _weights(r, 8, 8, 3, 3), "b2": np.zeros(8, np.float32),
        "w3": _weights(r, 8, 8, 1, 1), "b3": np.zeros(8, np.float32),
    }  # fmt: skip
    return make_model(nodes, [value("x", ["N", 3, 12, 12])], [value("y", None)], inits)


@pytest.fixture
def lacking(monkeypatch):
    """The lowering without a Tanh operator, and refusing the convolution named "refused"."""
    monkeypatch.delattr(lower_module._Lowering, "_op_Tanh")
    conv = lower_module._Lowering._op_Conv

    def refusing(self, node):
        if node.name == "refused":
            raise UnsupportedOperatorError(f"{node}: a form the kernels do not run (test)")
        return conv(self, node)

    monkeypatch.setattr(lower_module._Lowering, "_op_Conv", refusing)


def _feeds(seed=0, batch=2):
    return {"x": rng(seed).standard_normal((batch, 3, 12, 12)).astype(np.float32)}


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture
def partitioned(lacking):
    model = _model()
    graph = prepare(model)
    params = calibrate(graph, [_feeds(0), _feeds(1)], progress=False)
    return model, graph, params, lower(graph, params)


def test_unsupported_nodes_run_in_float_between_native_segments(partitioned) -> None:
    model, _, params, plan = partitioned
    subgraphs = [s for s in plan.steps if s.op == "subgraph"]
    assert len(subgraphs) == 1  # Tanh and the refused conv: one segment
    assert [n["name"] for n in subgraphs[0].attrs["nodes"]] == ["unknown_op", "refused"]
    assert plan.format_version() == 4 and plan.is_partitioned()
    plan = QuantizedPlan.from_bytes(plan.to_bytes())  # the serialized form runs too
    session = NativeSession(plan, cache_dir=False)
    try:
        for seed in (0, 1):  # the calibration data: no clipping, only rounding
            feeds = _feeds(seed)
            got = session.run(feeds)["y"]
            want = _ort(model, feeds)
            error = np.abs(got - want)
            step = params["y"].scale
            assert error.mean() <= 2 * step and error.max() <= 8 * step, (error.mean(), error.max(), step)
        report = session.describe()["partition"]
    finally:
        session.close()
    assert report["nodes"]["unknown_op"] == "onnxruntime" and report["nodes"]["refused"] == "onnxruntime"
    for name in ("stem", "native_after", "join"):
        assert report["nodes"][name] == "native"
    assert report["segments"] == [{"step": report["segments"][0]["step"], "engine": "onnxruntime",
                                   "nodes": ["unknown_op", "refused"]}]  # fmt: skip
    # MACs per sample: stem 12*12*8*27, refused 12*12*8*72, native_after 12*12*8*8.
    macs = {"stem": 144 * 8 * 27, "refused": 144 * 8 * 72, "native_after": 144 * 8 * 8}
    assert plan.macs == macs
    total = sum(macs.values())
    assert report["macs_per_sample"] == {"total": total, "native": total - macs["refused"],
                                         "onnxruntime": macs["refused"]}  # fmt: skip
    assert report["native_mac_share"] == round((total - macs["refused"]) / total, 4)


def test_reference_executor_when_the_plan_has_no_onnx_segment(partitioned) -> None:
    _, _, _, plan = partitioned
    with_ort = NativeSession(plan, cache_dir=False)
    want = with_ort.run(_feeds(4))["y"]
    for step in plan.steps:
        if step.op == "subgraph":
            step.arrays.pop("onnx")  # as lowered where onnx is not installed
    session = NativeSession(plan, cache_dir=False)
    try:
        got = session.run(_feeds(4))["y"]
        assert set(session.describe()["partition"]["segments"][0]["engine"].split()) == {"reference"}
    finally:
        session.close()
        with_ort.close()
    np.testing.assert_allclose(got, want, atol=2 * plan.params["y"].scale if plan.params.get("y") else 1e-3)


def test_segment_runner_falls_back_without_onnxruntime(partitioned, monkeypatch) -> None:
    import builtins

    _, _, _, plan = partitioned
    step = next(s for s in plan.steps if s.op == "subgraph")
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime (test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    runner = SegmentRunner(step.attrs, step.arrays)
    assert runner.engine == "reference" and "not installed" in runner.reason


def test_nothing_native_is_refused(lacking) -> None:
    n = helper.make_node
    model = make_model(
        [n("Tanh", ["x"], ["y"], name="only_tanh")], [value("x", ["N", 4])], [value("y", None)]
    )
    graph = prepare(model)
    params = calibrate(graph, [{"x": np.ones((1, 4), np.float32)}], progress=False)
    with pytest.raises(UnsupportedOperatorError, match="only_tanh"):
        lower(graph, params)


def test_partition_false_refuses_the_first_foreign_node(partitioned) -> None:
    _, graph, params, _ = partitioned
    with pytest.raises(UnsupportedOperatorError, match="unknown_op"):
        lower(graph, params, partition=False)


def test_model_info_and_edge_inspect_report_the_partition(lacking, tmp_path, capsys) -> None:
    import edge_runtime
    from edge_runtime.cli import main
    from edge_runtime.quantize.pipeline import QuantizeOptions, quantize_model

    model = _model()
    path = tmp_path / "partitioned.onnx"
    path.write_bytes(model.SerializeToString())
    data = tmp_path / "calibration.npy"
    np.save(data, rng(5).standard_normal((8, 3, 12, 12)).astype(np.float32))
    out = tmp_path / "partitioned.edgepkg"
    quantize_model(path, out, QuantizeOptions(calibration=data, progress=False))
    with edge_runtime.load(out, backend="native", profile=None, threads=1) as loaded:
        info = loaded.info()
        result = loaded.run(_feeds(6))["y"]
        loaded.selftest(raise_on_failure=True)
    partition = info["partition"]
    assert partition["nodes"]["refused"] == "onnxruntime" and partition["nodes"]["stem"] == "native"
    assert 0.0 < partition["native_mac_share"] < 1.0
    assert result.shape == (2, 8, 12, 12)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "native plan:" in text and "of MACs on native kernels" in text and "unknown_op, refused" in text
    assert main(["inspect", str(out), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["partition"]["native_mac_share"] == partition["native_mac_share"]


def test_shape_arithmetic_of_a_dynamic_detector_runs_in_a_segment(tmp_path) -> None:
    """A feature-pyramid join whose upsampling size is the Shape of the finer map: the shape
    arithmetic (which does not fold with a symbolic height and width) runs in float, the
    convolutions natively, from one package at every size."""
    import edge_runtime
    from edge_runtime.quantize.pipeline import QuantizeOptions, quantize_model

    r = rng(31)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], name="c1", strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Relu", ["c1"], ["r1"], name="r1"),
        n("Conv", ["r1", "w2"], ["c2"], name="c2", strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Shape", ["r1"], ["s1"], name="shape"),
        n("Resize", ["c2", "", "", "s1"], ["up"], name="up", mode="nearest"),
        n("Add", ["r1", "up"], ["a"], name="fpn_add"),
        n("Conv", ["a", "w3"], ["y"], name="head", kernel_shape=[1, 1]),
    ]  # fmt: skip
    inits = {"w1": _weights(r, 8, 3, 3, 3), "w2": _weights(r, 8, 8, 3, 3), "w3": _weights(r, 4, 8, 1, 1)}
    model = make_model(nodes, [value("x", ["N", 3, "H", "W"])], [value("y", None)], inits)
    path = tmp_path / "fpn.onnx"
    path.write_bytes(model.SerializeToString())
    data = tmp_path / "calibration.npy"
    images = r.standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.save(data, images)
    result = quantize_model(path, tmp_path / "fpn.edgepkg", QuantizeOptions(calibration=data, progress=False))
    step = result.activations["y"].scale
    with edge_runtime.load(tmp_path / "fpn.edgepkg", backend="native", profile=None, threads=1) as loaded:
        error = np.abs(loaded.run({"x": images})["y"] - _ort(model, {"x": images}))
        assert error.mean() <= step and error.max() <= 4 * step
        for h, w in ((48, 64), (20, 28)):
            y = loaded.run({"x": rng(h).standard_normal((1, 3, h, w)).astype(np.float32)})["y"]
            assert y.shape == (1, 4, h // 2, w // 2)
        partition = loaded.info()["partition"]
    assert partition["nodes"]["shape"] == "onnxruntime"
    assert all(partition["nodes"][k] == "native" for k in ("c1", "c2", "head"))
    assert partition["native_mac_share"] == 1.0
