"""``edge to-tflite --int8``: a native INT8 plan written as a fully quantized .tflite
(edge_runtime.backends.tflite_int8), run on LiteRT against the native backend.

Tolerance: the int32 accumulators are the same, but TFLite requantizes with its own rule
(XNNPACK: float32 scale, round half to even; ours: 31-bit multiplier, one 64-bit product,
half up), so an output code may differ by one. Every model here is held to at most one
quantization step of its output (``ONE_STEP``) on every element, but se_block (``TOLERANCE``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from native_models import calibrated, make_model, prepare, rng, small_cnn, small_transformer, value
from onnx import helper

from edge_runtime import numerics
from edge_runtime.backends.tflite_int8 import load_plan, plan_to_tflite_int8
from edge_runtime.errors import UnsupportedOperatorError
from edge_runtime.plan import NativeSession, lower

pytest.importorskip("edge_runtime.kernels")
litert = pytest.importorskip("ai_edge_litert.interpreter")

ONE_STEP = 1.0 + 1e-5  # in units of the output's scale: float rounding of the dequantized values
# se_block: a one-step difference of the broadcast Mul's output goes through Elu, whose table
# maps neighbouring codes up to two codes apart there (the table itself is exact: a GATHER).
TOLERANCE = {"se_block": 2 * ONE_STEP}


def _w(r: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (r.standard_normal(shape) * scale).astype(np.float32)


def _conv(stride: int = 1, pads: int = 1, clip: bool = True) -> onnx.ModelProto:
    r = rng(2)
    init = {"w": _w(r, 8, 3, 3, 3), "b": _w(r, 8, scale=0.1),
            "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[pads] * 4, strides=[stride] * 2)]
    if clip:
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"]))
    return make_model(nodes, [value("x", ["batch", 3, 12, 12])], [value("y", None)], init, name="conv")


def _depthwise(stride: int) -> onnx.ModelProto:
    r = rng(3)
    init = {"wd": _w(r, 8, 1, 3, 3), "bd": _w(r, 8, scale=0.1)}
    nodes = [
        helper.make_node("Conv", ["x", "wd", "bd"], ["d"], group=8, pads=[1, 1, 1, 1], strides=[stride] * 2),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    return make_model(nodes, [value("x", ["batch", 8, 10, 10])], [value("y", None)], init, name="dw")


def _fc() -> onnx.ModelProto:
    r = rng(4)
    init = {"w1": _w(r, 32, 20), "b1": _w(r, 32, scale=0.1), "w2": _w(r, 5, 32), "b2": _w(r, 5, scale=0.1)}
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1),
    ]
    return make_model(nodes, [value("x", ["batch", 20])], [value("y", None)], init, name="fc")


def _add_pools() -> onnx.ModelProto:
    """A residual add with a ReLU after it, a padded max pool (not SAME: a PADV2 of -128), an
    average pool that counts its padding (a PAD of the zero point), one that does not (SAME),
    global average pool."""
    r = rng(5)
    init = {"wp": _w(r, 8, 8, 1, 1), "bp": _w(r, 8, scale=0.1)}
    nodes = [
        helper.make_node("Conv", ["x", "wp", "bp"], ["p"]),
        helper.make_node("Add", ["p", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["sr"]),
        helper.make_node("MaxPool", ["sr"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node(
            "AveragePool", ["m"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1
        ),
        helper.make_node("AveragePool", ["a"], ["a2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["a2"], ["a3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),  # SAME
        helper.make_node("GlobalAveragePool", ["a3"], ["y"]),
    ]
    return make_model(nodes, [value("x", ["batch", 8, 12, 12])], [value("y", None)], init, name="pools")


def _concat_luts() -> onnx.ModelProto:
    """Concat of branches with different parameters (requantization tables -> QUANTIZE), a
    sigmoid (LOGISTIC into its fixed parameters, then QUANTIZE) and a hard-swish (MUL, ADD, MUL)."""
    r = rng(6)
    init = {"w1": _w(r, 4, 6, 1, 1), "w2": _w(r, 4, 6, 1, 1, scale=1.0)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Conv", ["x", "w2"], ["b"]),
        helper.make_node("Sigmoid", ["a"], ["sa"]),
        helper.make_node("HardSwish", ["b"], ["hb"]),
        helper.make_node("Concat", ["sa", "hb"], ["y"], axis=1),
    ]
    return make_model(nodes, [value("x", ["batch", 6, 8, 8])], [value("y", None)], init, name="concat")


def _se_block() -> onnx.ModelProto:
    """A depthwise conv strided (2, 1) (the plan: stride 1, then a Slice: one strided conv here),
    a squeeze-and-excite gate (global pool, 1x1 conv, HardSigmoid: MUL + ADD) multiplied into the
    map by a broadcast Mul (a float step: TFLite's int8 MUL broadcasts), Elu (no TFLite operator:
    the exact table as a GATHER), global pool, Gemm, Softmax (into TFLite's fixed output, QUANTIZE)."""
    r = rng(8)
    init = {"wd": _w(r, 8, 1, 3, 3), "ws": _w(r, 8, 8, 1, 1), "bs": _w(r, 8, scale=0.1), "wf": _w(r, 4, 8)}
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "wd"], ["d"], group=8, pads=[1, 1, 1, 1], strides=[2, 1]),
        n("GlobalAveragePool", ["d"], ["g"]),
        n("Conv", ["g", "ws", "bs"], ["h"]),
        n("HardSigmoid", ["h"], ["hs"]),
        n("Mul", ["d", "hs"], ["m"]),
        n("Elu", ["m"], ["e"]),
        n("GlobalAveragePool", ["e"], ["p"]),
        n("Flatten", ["p"], ["f"]),
        n("Gemm", ["f", "wf"], ["l"], transB=1),
        n("Softmax", ["l"], ["y"], axis=-1),
    ]
    return make_model(nodes, [value("x", ["batch", 8, 10, 10])], [value("y", None)], init, name="se")


def _flatten_consts() -> onnx.ModelProto:
    """Add and Mul of per-channel constants (int8 constants with their own parameters), a Relu
    after the Mul (fused into it), and a Gemm reading the flatten of a 3x3 map (the NHWC bytes,
    its weight columns permuted to (h, w, c) by the lowering)."""
    r = rng(9)
    init = {"w": _w(r, 4, 3, 3, 3), "shift": _w(r, 1, 4, 1, 1), "gain": (1 + 0.3 * r.random((1, 4, 1, 1))).astype(
        np.float32), "wf": _w(r, 5, 36)}  # fmt: skip
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        n("Add", ["c", "shift"], ["a"]),
        n("Mul", ["a", "gain"], ["m"]),
        n("Relu", ["m"], ["r"]),
        n("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Flatten", ["p"], ["f"]),
        n("Gemm", ["f", "wf"], ["y"], transB=1),
    ]
    return make_model(nodes, [value("x", ["batch", 3, 6, 6])], [value("y", None)], init, name="flat")


def _decoder() -> onnx.ModelProto:
    """A nearest 2x Resize (RESIZE_NEAREST_NEIGHBOR), a 2x2 stride-2 ConvTranspose (the plan's
    GEMM into k*k*M channels, a transpose and a DepthToSpace: DEPTH_TO_SPACE on the NHWC bytes)
    and a per-channel constant Add in float on its NCHW output (ADD of a constant quantized per
    tensor: the one rounding the plan does not do)."""
    r = rng(10)
    init = {"w": _w(r, 4, 4, 1, 1), "wt": _w(r, 4, 3, 2, 2), "bias": _w(r, 1, 3, 1, 1),
            "scales": np.array([1, 1, 2, 2], np.float32)}  # fmt: skip
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"]),
        n(
            "Resize",
            ["c", "", "scales"],
            ["u"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        n("ConvTranspose", ["u", "wt"], ["t"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Add", ["t", "bias"], ["y"]),
    ]
    return make_model(nodes, [value("x", ["batch", 4, 5, 5])], [value("y", None)], init, name="decoder")


def _prelu() -> onnx.ModelProto:
    """A PRelu with per-channel slopes (a float step: PRELU with the slopes as an int8 tensor)."""
    r = rng(12)
    init = {"w": _w(r, 4, 3, 3, 3), "slope": (0.1 + 0.2 * r.random((4, 1, 1))).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c", "slope"], ["p"]),
        helper.make_node("GlobalAveragePool", ["p"], ["y"]),
    ]
    return make_model(nodes, [value("x", ["batch", 3, 6, 6])], [value("y", None)], init, name="prelu")


MODELS = {
    "conv_relu6": (_conv, (3, 12, 12)),
    "conv_s2_pad": (lambda: _conv(stride=2, clip=False), (3, 12, 12)),
    "depthwise_s1": (lambda: _depthwise(1), (8, 10, 10)),
    "depthwise_s2": (lambda: _depthwise(2), (8, 10, 10)),
    "fc": (_fc, (20,)),
    "add_pools": (_add_pools, (8, 12, 12)),
    "concat_luts": (_concat_luts, (6, 8, 8)),
    "se_block": (_se_block, (8, 10, 10)),
    "flatten_consts": (_flatten_consts, (3, 6, 6)),
    "decoder": (_decoder, (4, 5, 5)),
    "prelu": (_prelu, (3, 6, 6)),
    "small_cnn": (small_cnn, (3, 16, 16)),
}


def _plan(build, shape: tuple[int, ...], dtype: str = "uint8", weight_bits: int = 8):
    graph = prepare(build())
    r = rng(11)
    batches = [{"x": r.standard_normal((8, *shape)).astype(np.float32)} for _ in range(2)]
    return graph, lower(
        graph, calibrated(graph, batches, dtype=dtype), partition=False, weight_bits=weight_bits
    )


def _litert(data: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = litert.Interpreter(model_content=data, num_threads=1)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _output_scale(plan) -> float:
    (out,) = plan.outputs
    producer = next(s for s in plan.steps if out.buffer in s.outputs)
    return plan.params[producer.inputs[0]].scale


@pytest.mark.parametrize("name", list(MODELS))
def test_litert_runs_the_plan_within_one_output_step(name: str) -> None:
    build, shape = MODELS[name]
    _, plan = _plan(build, shape)
    data = plan_to_tflite_int8(plan)
    session = NativeSession(plan, threads=1, cache_dir=False)
    step = _output_scale(plan)
    r = rng(21)
    for batch in (1, 3):  # the batch dimension stays dynamic
        x = r.standard_normal((batch, *shape)).astype(np.float32)
        ours = session.run({"x": x})[plan.outputs[0].name]
        got = _litert(data, x)
        assert got.shape == ours.shape
        worst = float(np.max(np.abs(got - ours))) / step
        assert worst <= TOLERANCE.get(name, ONE_STEP), (
            f"{name}: LiteRT is {worst:.2f} steps off the native plan"
        )
    session.close()


@pytest.mark.parametrize(("dtype", "weight_bits"), [("int8", 8), ("uint8", 7)])
def test_int8_activations_and_7_bit_weights_convert_too(dtype: str, weight_bits: int) -> None:
    _, plan = _plan(small_cnn, (3, 16, 16), dtype=dtype, weight_bits=weight_bits)
    assert {qp.dtype for qp in plan.params.values() if qp is not None} == {dtype}
    x = rng(22).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ours = NativeSession(plan, threads=1, cache_dir=False).run({"x": x})["logits"]
    got = _litert(plan_to_tflite_int8(plan), x)
    assert np.max(np.abs(got - ours)) / _output_scale(plan) <= ONE_STEP


def test_file_carries_the_plans_weights_scales_and_zero_points() -> None:
    graph, plan = _plan(small_cnn, (3, 16, 16))
    interpreter = litert.Interpreter(model_content=plan_to_tflite_int8(plan), num_threads=1)
    interpreter.allocate_tensors()
    # int8 tensors by name (the float input and output may share their names with int8 buffers)
    details = {d["name"]: d for d in interpreter.get_tensor_details() if d["dtype"] != np.float32}
    checked = 0
    for buffer, qp in plan.params.items():
        if qp is None or buffer not in details:
            continue
        d = details[buffer]
        assert d["dtype"] == np.int8, buffer
        scales, zero_points = (
            d["quantization_parameters"]["scales"],
            d["quantization_parameters"]["zero_points"],
        )
        assert scales.tolist() == [np.float32(qp.scale)], buffer
        assert zero_points.tolist() == [qp.zero_point - (128 if qp.dtype == "uint8" else 0)], buffer
        checked += 1
    assert checked >= 8
    for step in plan.steps:
        if step.op not in ("conv", "gemm"):
            continue
        w = details[f"{step.node}/weights"]
        b = details[f"{step.node}/bias"]
        float_w = graph.constant(next(n for n in graph.nodes if n.name == step.node).inputs[1])
        expected = numerics.quantize_weights(float_w.astype(np.float32), axis=0).scales
        q = w["quantization_parameters"]
        np.testing.assert_array_equal(q["scales"], expected)  # the lowering's own scales, exactly
        assert not q["zero_points"].any()
        stored = interpreter.get_tensor(w["index"])
        values = step.arrays["weights"]
        if step.attrs.get("depthwise"):
            assert q["quantized_dimension"] == 3
            np.testing.assert_array_equal(stored, values.transpose(1, 2, 3, 0))
        elif step.op == "conv":
            assert q["quantized_dimension"] == 0
            np.testing.assert_array_equal(stored, values.transpose(0, 2, 3, 1))
        else:
            np.testing.assert_array_equal(stored, values)
        in_scale = plan.params[step.inputs[0]].scale
        np.testing.assert_allclose(b["quantization_parameters"]["scales"], np.float32(in_scale) * expected,
                                   rtol=1e-6)  # fmt: skip
        np.testing.assert_array_equal(interpreter.get_tensor(b["index"]), step.arrays["bias"])


def test_a_step_tflite_cannot_express_is_refused_by_name() -> None:
    graph = prepare(small_transformer())
    r = rng(3)
    batches = [{"x": r.standard_normal((2, 6, 16)).astype(np.float32)} for _ in range(2)]
    plan = lower(graph, calibrated(graph, batches))
    with pytest.raises(
        UnsupportedOperatorError, match=r"plan step \d+ \(\w+ of node '[^']+'\).*edge to-tflite MODEL.onnx"
    ):
        plan_to_tflite_int8(plan)


def test_a_step_with_an_attribute_the_writer_does_not_know_is_refused() -> None:
    _, plan = _plan(_conv, (3, 12, 12))
    conv = next(s for s in plan.steps if s.op == "conv")
    conv.attrs["residual"] = "x"  # e.g. a fusion a newer lowering adds: never written without it
    with pytest.raises(UnsupportedOperatorError, match=r"conv of node .* carries residual"):
        plan_to_tflite_int8(plan)


def test_a_requantization_no_weight_scale_reproduces_is_refused() -> None:
    from edge_runtime.errors import QuantizationError

    _, plan = _plan(_conv, (3, 12, 12))
    conv = next(s for s in plan.steps if s.op == "conv")
    conv.arrays["multiplier"] = conv.arrays["multiplier"] + 1  # off the float32 weight scales' grid
    with pytest.raises(QuantizationError, match="do not reproduce it"):
        plan_to_tflite_int8(plan)


def _operators(data: bytes) -> list[str]:
    """The builtin operator names of a .tflite, in order, read with LiteRT's schema bindings."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[c.builtinCode] for c in model.operatorCodes]
    return [codes[op.opcodeIndex] for op in model.subgraphs[0].operators]


def test_tables_run_on_xnnpack_operators_or_as_an_exact_gather() -> None:
    _, plan = _plan(_se_block, (8, 10, 10))
    ops = _operators(plan_to_tflite_int8(plan))
    # the strided depthwise conv is one op (no slice), HardSigmoid is MUL + ADD, Elu a GATHER
    assert "STRIDED_SLICE" not in ops and ops.count("DEPTHWISE_CONV_2D") == 1
    assert ops.count("GATHER") == 1 and "CAST" in ops and "SOFTMAX" in ops
    subsample = [s for s in plan.steps if s.op == "move" and s.attrs["node_op"] == "Slice"]
    assert len(subsample) == 1
    # hard-swish: x * hard-sigmoid(x) on MUL / ADD (XNNPACK has no int8 HARD_SWISH)
    _, plan = _plan(_concat_luts, (6, 8, 8))
    ops = _operators(plan_to_tflite_int8(plan))
    assert "HARD_SWISH" not in ops and ops.count("MUL") == 2 and "LOGISTIC" in ops


def test_cli_writes_the_int8_tflite_of_a_package(tmp_path: Path, capsys) -> None:
    import edge_runtime
    from edge_runtime.cli import main
    from edge_runtime.quantize import QuantizeOptions, quantize_model

    source = tmp_path / "cnn.onnx"
    source.write_bytes(small_cnn().SerializeToString())
    calibration = rng(7).standard_normal((16, 3, 16, 16)).astype(np.float32)
    package = tmp_path / "cnn.edgepkg"
    quantize_model(
        source, package, QuantizeOptions(calibration=calibration, progress=False, selftest_samples=1)
    )
    out = tmp_path / "cnn.int8.tflite"
    assert main(["to-tflite", "--int8", str(package), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    plan = load_plan(package)
    x = calibration[:2]
    with (
        edge_runtime.load(out, backend="tflite", threads=1, profile=None) as lite,
        edge_runtime.load(package, backend="native", threads=1, profile=None) as native,
    ):
        got = next(iter(lite.run({"x": x}).values()))
        ours = next(iter(native.run({"x": x}).values()))
    assert np.max(np.abs(got - ours)) / _output_scale(plan) <= ONE_STEP
    # A float ONNX model is no quantized package: one line, exit 1.
    assert main(["to-tflite", "--int8", str(source), "--out", str(tmp_path / "x.tflite")]) == 1
    assert "edge to-tflite: error:" in capsys.readouterr().err
