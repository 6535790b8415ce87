"""ONNX convnets -> .tflite (edge_runtime.backends.tflite_convert), run on LiteRT against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from model_helpers import OPSET, cnn_onnx, requires_tflite
from onnx import TensorProto, helper, numpy_helper

import edge_runtime
from edge_runtime.backends.tflite_convert import convert_onnx_to_tflite
from edge_runtime.errors import UnsupportedOperatorError

pytestmark = requires_tflite

# float32 through two engines that sum in different orders (XNNPACK, MLAS): values of size ~1-10.
ATOL = 1e-4


def _block_net(seed: int = 0) -> bytes:
    """Every operator and padding case the converter handles: conv 3x3 stride 2 pads 1 on an even
    input (not SAME: a PAD first) + batch norm + Clip(0, 6); depthwise 3x3 (SAME) + Relu; pointwise
    1x1; a residual Add; max pool 3x3 stride 2 pads 1 (a PADV2 of -inf); average pool 2x2; global
    average pool; Flatten; Gemm with a ReLU."""
    r = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (r.standard_normal(shape) * scale).astype(np.float32)

    inits = {
        "w1": w(8, 3, 3, 3), "b1": w(8, scale=0.1), "bn_s": (1 + 0.1 * r.standard_normal(8)).astype(np.float32),
        "bn_b": w(8, scale=0.1), "bn_m": w(8, scale=0.1), "bn_v": (0.5 + r.random(8)).astype(np.float32),
        "wd": w(8, 1, 3, 3), "wp": w(8, 8, 1, 1), "bp": w(8, scale=0.1), "fc_w": w(5, 8), "fc_b": w(5),
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
    }  # fmt: skip
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1], name="stem"),
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
        n("Clip", ["bn", "lo", "hi"], ["r1"], name="relu6"),
        n("Conv", ["r1", "wd"], ["d1"], group=8, pads=[1, 1, 1, 1], name="dw"),
        n("Relu", ["d1"], ["r2"], name="relu"),
        n("Conv", ["r2", "wp", "bp"], ["p1"], name="pw"),
        n("Add", ["p1", "r1"], ["res"], name="residual"),
        n("MaxPool", ["res"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="maxpool"),
        n("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], name="avgpool"),
        n("GlobalAveragePool", ["ap"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["flat"], name="flatten"),
        n("Gemm", ["flat", "fc_w", "fc_b"], ["g"], transB=1, name="fc"),
        n("Relu", ["g"], ["y"], name="fc_relu"),
    ]
    graph = helper.make_graph(
        nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("build", [_block_net, cnn_onnx], ids=["blocks", "flatten_of_a_map"])
def test_converted_model_matches_onnxruntime_at_any_batch(build, tmp_path: Path) -> None:
    model = build()
    path = tmp_path / "model.tflite"
    path.write_bytes(convert_onnx_to_tflite(model))
    loaded = edge_runtime.load(path, backend="tflite", threads=1)
    (spec,) = loaded.inputs
    assert loaded.info()["backend"] == "tflite"
    for batch in (1, 3):  # the batch dimension stays dynamic
        shape = [batch, *spec.shape[1:]]
        x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32) * 2
        got = loaded.run(x)
        (name,) = got
        np.testing.assert_allclose(got[name], _ort(model, x), atol=ATOL, rtol=0)
    loaded.close()


def test_the_paddings_onnx_and_tflite_disagree_on_become_pad_operators() -> None:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(convert_onnx_to_tflite(_block_net()), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = [names[code.builtinCode] for code in model.operatorCodes]
    # The stem's pads (1, 1) on 32 px with stride 2 are not SAME's (0, 1): a PAD; the max pool's
    # likewise, padded with -inf (PADV2); the depthwise conv's pads are SAME's: no PAD.
    assert sorted(ops) == sorted([
        "TRANSPOSE", "PAD", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "PADV2", "MAX_POOL_2D",
        "AVERAGE_POOL_2D", "MEAN", "RESHAPE", "FULLY_CONNECTED",
    ])  # fmt: skip


def test_an_operator_without_conversion_is_named() -> None:
    node = helper.make_node("Sigmoid", ["x"], ["y"], name="gate")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 4, 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(UnsupportedOperatorError, match="gate.*Sigmoid"):
        convert_onnx_to_tflite(model.SerializeToString())


def test_edge_to_tflite_writes_a_file_edge_run_reads(tmp_path: Path, capsys) -> None:
    from edge_runtime.cli import main

    onnx_path, out = tmp_path / "cnn.onnx", tmp_path / "out" / "cnn.tflite"
    onnx_path.write_bytes(cnn_onnx())
    assert main(["to-tflite", str(onnx_path), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(tmp_path / "y")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y" / "logits.npy"), _ort(cnn_onnx(), x), atol=ATOL)
    # A model it cannot convert: exit 1 and the reason, no file.
    bad = tmp_path / "bad.onnx"
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"], name="gate")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 4, 4])],
    )  # fmt: skip
    bad.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()
    )
    assert main(["to-tflite", str(bad), "--out", str(tmp_path / "bad.tflite")]) == 1
    assert "gate" in capsys.readouterr().err and not (tmp_path / "bad.tflite").exists()
