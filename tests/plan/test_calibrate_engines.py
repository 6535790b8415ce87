"""Calibration on onnxruntime (the default where it is installed) and on the reference
executor (the fallback): the same ranges per tensor; the progress log without tqdm;
representative input shapes (``edge quantize --input-shape``)."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest
from native_models import prepare, rng, small_cnn, small_transformer

from edge_runtime.errors import QuantizationError
from edge_runtime.plan import calibrate
from edge_runtime.plan.calibrate import AtInputShapes, parse_input_shape

pytest.importorskip("onnxruntime")


def _range(qp) -> tuple[float, float]:
    lo, hi = (0, 255) if qp.dtype == "uint8" else (-128, 127)
    return (lo - qp.zero_point) * qp.scale, (hi - qp.zero_point) * qp.scale


def _without(monkeypatch, module: str) -> None:
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"no {module} (test)")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("which", ["cnn", "transformer"])
def test_onnxruntime_and_reference_give_the_same_ranges(which) -> None:
    if which == "cnn":
        graph = prepare(small_cnn())
        batches = [{"x": rng(i).standard_normal((4, 3, 16, 16)).astype(np.float32)} for i in range(3)]
    else:
        graph = prepare(small_transformer())
        feeds = {}
        for info in graph.inputs:
            shape = [2 if not isinstance(d, int) else d for d in info.shape]
            if np.issubdtype(info.dtype, np.integer):
                feeds[info.name] = rng(1).integers(0, 50, shape).astype(info.dtype)
            else:
                feeds[info.name] = rng(1).standard_normal(shape).astype(np.float32)
        batches = [feeds]
    on_ort, on_ref = {}, {}
    fast = calibrate(graph, batches, progress=False, engine="onnxruntime", info=on_ort)
    slow = calibrate(graph, batches, progress=False, engine="reference", info=on_ref)
    assert on_ort["engine"] == "onnxruntime" and on_ref["engine"] == "reference"
    assert set(fast) == set(slow) and len(fast) > 5
    for name in slow:
        (a_lo, a_hi), (b_lo, b_hi) = _range(fast[name]), _range(slow[name])
        span = max(b_hi - b_lo, 1e-6)
        # Same min/max per tensor up to float32 rounding (and the zero point's rounding).
        assert abs(a_lo - b_lo) <= 1e-4 * span + fast[name].scale and abs(a_hi - b_hi) <= 1e-4 * span + \
            fast[name].scale, name  # fmt: skip
        assert fast[name].scale == pytest.approx(slow[name].scale, rel=1e-4), name


def test_auto_uses_onnxruntime_and_falls_back_to_the_reference(monkeypatch) -> None:
    graph = prepare(small_cnn())
    batches = [{"x": rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}]
    info: dict = {}
    want = calibrate(graph, batches, progress=False, info=info)
    assert info["engine"] == "onnxruntime" and info["batches"] == 1
    _without(monkeypatch, "onnxruntime")
    info = {}
    got = calibrate(graph, batches, progress=False, info=info)
    assert info["engine"] == "reference" and "not installed" in info["reason"]
    assert set(got) == set(want)
    with pytest.raises(QuantizationError, match="onnxruntime"):
        calibrate(graph, batches, progress=False, engine="onnxruntime")
    with pytest.raises(QuantizationError, match="engine"):
        calibrate(graph, batches, progress=False, engine="tflite")


def test_progress_without_tqdm_logs_an_eta(monkeypatch, capsys) -> None:
    _without(monkeypatch, "tqdm")
    graph = prepare(small_cnn())
    batches = [{"x": rng(i).standard_normal((2, 3, 16, 16)).astype(np.float32)} for i in range(3)]
    calibrate(graph, batches, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert "1/3 batches" in lines[0] and "ETA" in lines[0] and "onnxruntime" in lines[0]
    assert "3/3 batches" in lines[-1]


def test_input_shapes_resize_the_calibration_data() -> None:
    assert parse_input_shape("image:1x3x320x320") == ("image", (1, 3, 320, 320))
    assert parse_input_shape("a:b:2x4") == ("a:b", (2, 4))
    for bad in ("image", "image:", "image:1x0", "image:axb", ":1x2"):
        with pytest.raises(QuantizationError, match="NAME:D0xD1"):
            parse_input_shape(bad)
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    from edge_runtime.graph import ValueInfo

    inputs = [ValueInfo("x", np.dtype(np.float32), ("N", 3, "H", "W"))]
    sized = AtInputShapes([{"x": x}], [("x", (1, 3, 8, 8)), ("x", (1, 3, 2, 6))], inputs)
    shapes = [feeds["x"].shape for feeds in sized]
    assert len(sized) == 2 and shapes == [(2, 3, 8, 8), (2, 3, 2, 6)]
    up = next(iter(sized))["x"]
    assert up.min() >= x.min() and up.max() <= x.max()  # interpolation stays within the data
    with pytest.raises(QuantizationError, match="fixed at 3"):
        AtInputShapes([], [("x", (1, 4, 8, 8))], inputs)
    with pytest.raises(QuantizationError, match="rank 4"):
        AtInputShapes([], [("x", (3, 8, 8))], inputs)
    with pytest.raises(QuantizationError, match="inputs are"):
        AtInputShapes([], [("y", (1, 3, 8, 8))], inputs)


def test_edge_quantize_input_shape_serves_several_sizes_from_one_package(tmp_path, capsys) -> None:
    from test_dynamic_shapes import _model  # a conv net with input [N, 3, H, W]

    import edge_runtime
    from edge_runtime.cli import main

    path = tmp_path / "detector.onnx"
    path.write_bytes(_model().SerializeToString())
    data = tmp_path / "images.npy"
    np.save(data, rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "detector.edgepkg"
    code = main(["quantize", str(path), "--calibration", str(data), "--out", str(out),
                 "--input-shape", "x:1x3x24x24", "--input-shape", "x:1x3x40x32"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "at input shapes x:1x3x24x24, x:1x3x40x32" in err and "on onnxruntime" in err
    with edge_runtime.load(out, backend="native", profile=None, threads=1) as model:
        assert model.inputs[0].shape[2:] != (32, 32)  # symbolic height and width
        for h, w in ((24, 24), (40, 32), (32, 32)):
            y = model.run({"x": rng(h).standard_normal((1, 3, h, w)).astype(np.float32)})["y"]
            assert y.shape[2:] == (-(-h // 4), -(-w // 4))
        assert model.info()["session"]["input_shapes_cached"] == 3
    code = main(
        ["quantize", str(path), "--calibration", str(data), "--out", str(out), "--input-shape", "y:1x2"]
    )
    assert code == 1
    assert "inputs are" in capsys.readouterr().err


@pytest.mark.parametrize("opset", [17, 18])
def test_parameters_held_as_attributes_go_back_to_inputs_for_onnxruntime(opset) -> None:
    """Pad, Split and reductions, whatever form the IR holds their parameters in (attributes
    or inputs), run on onnxruntime with the inputs the opset wants."""
    from graph_testing import make_model, value
    from onnx import helper

    n = helper.make_node
    i64 = lambda *v: np.array(v, np.int64)
    nodes = [
        n("Pad", ["x", "pads", "pad_value"], ["p"], name="pad", mode="constant"),
        n("Split", ["p", "split"], ["s1", "s2"], name="split", axis=1),
        n("ReduceSum", ["s1", "axes"], ["r1"], name="sum", keepdims=1),
        n("ReduceMax", ["s2", "axes"] if opset >= 18 else ["s2"], ["r2"], name="max", keepdims=1,
          **({} if opset >= 18 else {"axes": [2]})),
        n("Add", ["r1", "r2"], ["y"], name="add"),
    ]  # fmt: skip
    inits = {"pads": i64(0, 0, 1, 0, 0, 2), "pad_value": np.array(0.5, np.float32), "split": i64(2, 2),
             "axes": i64(2)}  # fmt: skip
    model = make_model(nodes, [value("x", ["N", 4, 5])], [value("y", None)], inits, opset=opset)
    graph = prepare(model)
    assert any(node.op_type == "Pad" for node in graph.nodes)
    batches = [{"x": rng(2).standard_normal((3, 4, 5)).astype(np.float32)}]
    info: dict = {}
    fast = calibrate(graph, batches, progress=False, engine="auto", info=info)
    assert info["engine"] == "onnxruntime", info["reason"]
    slow = calibrate(graph, batches, progress=False, engine="reference")
    for name in slow:
        assert fast[name].scale == pytest.approx(slow[name].scale, rel=1e-5), name
