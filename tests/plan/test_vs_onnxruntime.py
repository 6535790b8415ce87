"""The plan against onnxruntime's own INT8 kernels on the same quantized model (QDQ).

The QDQ model carries exactly the plan's int8 weights (as `edge quantize` writes them:
uint8 codes w + 128 with zero point 128, which onnxruntime runs on its exact u8u8
kernels, also on x86 without VNNI), int32 bias and activation parameters, so the two
differ only in how the int32 accumulator is requantized (onnxruntime: a float
multiply; the plan: the fixed-point rule of the spec): at most one output code apart.
"""

from __future__ import annotations

import numpy as np
import pytest
from native_models import make_model, prepare, rng, value
from onnx import helper

from edge_runtime.numerics import quantize_bias, quantize_weights
from edge_runtime.plan import NativeSession, calibrate, lower
from edge_runtime.quantize.qdq import qdq_weight_codes

ort = pytest.importorskip("onnxruntime")


def _qdq_conv(w: np.ndarray, b: np.ndarray, xq, yq, relu: bool):
    wq = quantize_weights(w, axis=0)
    codes, zero_point = qdq_weight_codes(wq.values)
    bq = quantize_bias(b, xq.scale, wq.scales)
    f = lambda v: np.array(v, np.float32)
    init = {
        "xs": f(xq.scale), "xz": np.array(xq.zero_point, np.uint8), "ys": f(yq.scale),
        "yz": np.array(yq.zero_point, np.uint8), "wq": codes, "ws": wq.scales,
        "wz": np.full(len(wq.scales), zero_point, np.uint8), "bq": bq,
        "bs": (np.float32(xq.scale) * wq.scales).astype(np.float32), "bz": np.zeros(len(bq), np.int32),
    }  # fmt: skip
    n = helper.make_node
    nodes = [
        n("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        n("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        n("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        n("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0),
        n("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1]),
    ]
    last = "c"
    if relu:
        nodes.append(n("Relu", ["c"], ["r"]))
        last = "r"
    nodes += [
        n("QuantizeLinear", [last, "ys", "yz"], ["yq"]),
        n("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    return make_model(nodes, [value("x", ["batch", 4, 8, 8])], [value("y", None)], init, opset=17, name="qdq")


@pytest.mark.parametrize("relu", [False, True])
def test_conv_matches_onnxruntime_int8(relu: bool) -> None:
    r = rng(2)
    w = (r.standard_normal((6, 4, 3, 3)) * 0.3).astype(np.float32)
    b = (r.standard_normal(6) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    else:
        nodes[0].output[0] = "y"
    model = make_model(nodes, [value("x", ["batch", 4, 8, 8])], [value("y", None)], {"w": w, "b": b})
    graph = prepare(model)
    feeds = {"x": (r.standard_normal((3, 4, 8, 8)) * 2).astype(np.float32)}
    params = calibrate(graph, [feeds], progress=False)
    plan = lower(graph, params)
    got = NativeSession(plan, cache_dir=False).run(feeds)["y"]

    yq = params["y"]
    qdq = _qdq_conv(w, b, params["x"], yq, relu)
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)[0]
    steps = np.abs(got - want) / yq.scale
    assert steps.max() <= 1.0 + 1e-3
    assert np.mean(steps > 0.5) < 0.02  # nearly every output code is identical
