"""Per-channel steps that once ran in float: an SE block's gate multiply ([N, C, H, W] x
[N, C, 1, 1], the int8 mul's row broadcast in NHWC storage) and PRelu with one slope per channel
(one 256-entry table per channel, lut_channels). Both against numpy oracles built from the
plan's own quantization parameters: bit-exact, on the compiled C program and the Python path."""

from __future__ import annotations

import numpy as np
import pytest
from native_models import calibrated, make_model, prepare, rng, value
from onnx import helper

from edge_runtime import numerics
from edge_runtime.graph import reference
from edge_runtime.kernels._ffi import ffi, lib
from edge_runtime.numerics import QuantParams
from edge_runtime.plan import NativeSession, lower


def _plan(model, feeds: list[dict[str, np.ndarray]]):
    graph = prepare(model)
    return graph, lower(graph, calibrated(graph, feeds))


def _entry(plan, name: str) -> QuantParams:
    """The parameters the plan quantizes graph input ``name`` with."""
    (step,) = [s for s in plan.steps if s.op == "quantize" and s.inputs == [f"in:{name}"]]
    return plan.params[step.outputs[0]]


def _exit(plan) -> QuantParams:
    (step,) = [s for s in plan.steps if s.op == "dequantize"]
    return plan.params[step.inputs[0]]


def _runs(plan, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The output of the first (Python) call and of a warm (compiled C program) call."""
    session = NativeSession(plan, threads=2, cache_dir=False)
    try:
        return [session.run(feeds)["y"] for _ in range(3)]
    finally:
        session.close()


def _se_gate() -> tuple:
    x = value("x", ["batch", 6, 5, 7])
    g = value("g", ["batch", 6, 1, 1])
    model = make_model(
        [helper.make_node("Mul", ["x", "g"], ["y"])], [x, g], [value("y", None)], {}, name="se"
    )
    r = rng(4)
    feeds = [{"x": r.standard_normal((1, 6, 5, 7)).astype(np.float32),
              "g": r.random((1, 6, 1, 1)).astype(np.float32)} for _ in range(4)]  # fmt: skip
    return model, feeds


def _mul_oracle(a, b, qa: QuantParams, qb: QuantParams, qy: QuantParams) -> np.ndarray:
    """edge/ops.h's mul formula in int64 with the C init's parameters."""
    params = ffi.new("edge_q8_mul_params *")
    status = lib.edge_q8_mul_params_init(
        qa.scale, qa.zero_point, qb.scale, qb.zero_point, qy.scale, qy.zero_point, qy.qmin, qy.qmax, params
    )
    assert status == 0
    acc = (a.astype(np.int64) - qa.zero_point) * (b.astype(np.int64) - qb.zero_point) * params.multiplier
    y = (acc + (np.int64(1) << (params.shift - 1))) >> params.shift
    return (np.clip(y, qy.qmin - qy.zero_point, qy.qmax - qy.zero_point) + qy.zero_point).astype(
        qy.numpy_dtype
    )


def test_squeeze_excite_gate_runs_on_the_int8_mul_bit_exact() -> None:
    model, feeds = _se_gate()
    _, plan = _plan(model, feeds)
    ops = [s.op for s in plan.steps]
    assert "float" not in ops and ops.count("mul") == 1, ops
    (mul,) = [s for s in plan.steps if s.op == "mul"]
    assert "constant" not in mul.arrays and len(mul.inputs) == 2
    qx, qg, qy = _entry(plan, "x"), _entry(plan, "g"), _exit(plan)
    f = feeds[0]
    want = _mul_oracle(numerics.quantize(f["x"], qx), numerics.quantize(f["g"], qg), qx, qg, qy)
    for got in _runs(plan, f):
        np.testing.assert_array_equal(got, numerics.dequantize(want, qy))


def test_a_gate_per_sample_at_batch_3_runs_on_the_int8_mul_once_per_sample() -> None:
    """Each sample has its own gate ([3, 1, 1, C] over [3, H, W, C]): the kernel's row broadcast
    once per sample, in the C program, with the same bits as the formula per sample."""
    model, feeds = _se_gate()
    _, plan = _plan(model, feeds)
    qx, qg, qy = _entry(plan, "x"), _entry(plan, "g"), _exit(plan)
    f = {k: np.concatenate([feeds[1][k], feeds[2][k], feeds[3][k]]) for k in ("x", "g")}
    want = numerics.dequantize(
        _mul_oracle(numerics.quantize(f["x"], qx), numerics.quantize(f["g"], qg), qx, qg, qy), qy
    )
    session = NativeSession(plan, threads=2, cache_dir=False)
    for _ in range(3):
        np.testing.assert_array_equal(session.run(f)["y"], want)
    assert session.describe()["program"]["python_steps"] == 0
    session.close()


def _prelu(shape: tuple[int, ...], slope: np.ndarray):
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    model = make_model(
        [node], [value("x", ["batch", *shape[1:]])], [value("y", None)], {"slope": slope}, name="prelu"
    )
    r = rng(len(shape))
    feeds = [{"x": r.standard_normal(shape).astype(np.float32)} for _ in range(3)]
    return model, feeds


@pytest.mark.parametrize(
    "shape, slope_shape",
    [((1, 5, 6, 7), (5, 1, 1)), ((2, 5, 6, 7), (1, 5, 1, 1)), ((3, 9), (9,)), ((1, 3, 4, 4), (1, 1))],
    ids=["nchw", "nchw-4d-slope-batch2", "matrix", "one-slope"],
)
def test_prelu_per_channel_is_a_table_per_channel_bit_exact(shape, slope_shape) -> None:
    """The native output equals numpy's dequantize -> PRelu in float32 -> quantize on the
    plan's parameters, the rule the float step applied (so nothing changes but the speed)."""
    slope = (rng(7).standard_normal(slope_shape) * 0.3).astype(np.float32)
    model, feeds = _prelu(shape, slope)
    graph, plan = _plan(model, feeds)
    ops = [s.op for s in plan.steps]
    assert "float" not in ops and "transpose" not in ops, ops
    assert ("lut" if slope.size == 1 else "lut_channels") in ops
    qx, qy = _entry(plan, "x"), _exit(plan)
    x = numerics.dequantize(numerics.quantize(feeds[0]["x"], qx), qx)
    node = graph.nodes[0]
    want = numerics.dequantize(numerics.quantize(reference.OPS["PRelu"](node, [x, slope])[0], qy), qy)
    for got in _runs(plan, feeds[0]):
        np.testing.assert_array_equal(got, want)


def test_prelu_slopes_along_another_axis_stay_a_float_step() -> None:
    slope = (rng(8).standard_normal((1, 1, 7)) * 0.3).astype(np.float32)  # one slope per column
    model, feeds = _prelu((1, 5, 6, 7), slope)
    graph, plan = _plan(model, feeds)
    assert [s.op for s in plan.steps if s.op in ("float", "lut_channels")] == ["float"]
    qx, qy = _entry(plan, "x"), _exit(plan)
    x = numerics.dequantize(numerics.quantize(feeds[0]["x"], qx), qx)
    want = numerics.dequantize(
        numerics.quantize(reference.OPS["PRelu"](graph.nodes[0], [x, slope])[0], qy), qy
    )
    np.testing.assert_array_equal(_runs(plan, feeds[0])[-1], want)


def test_a_bad_table_array_is_a_typed_error_at_load() -> None:
    from dataclasses import replace

    from edge_runtime.errors import KernelArgumentError

    model, feeds = _prelu((1, 5, 6, 7), (rng(7).standard_normal((5, 1, 1)) * 0.3).astype(np.float32))
    _, plan = _plan(model, feeds)
    steps = [
        replace(s, arrays={**s.arrays, "tables": s.arrays["tables"][:, :128]})
        if s.op == "lut_channels"
        else s
        for s in plan.steps
    ]
    with pytest.raises(KernelArgumentError, match=r"\(channels, 256\)"):
        NativeSession(replace(plan, steps=steps), cache_dir=False).run(feeds[0])


def test_a_2_by_1_strided_convolution_subsamples_inside_the_c_program(monkeypatch) -> None:
    """PaddleOCR's depthwise convolutions with strides (2, 1) run at stride 1 and keep every
    second row (a Slice move): that slice is a strided copy in the C program (no Python step),
    with the bits of the Python path."""
    from edge_runtime.plan import executor as executor_module

    r = rng(9)
    init = {"w": (r.standard_normal((6, 1, 3, 3)) * 0.3).astype(np.float32)}
    node = helper.make_node("Conv", ["x", "w"], ["c"], group=6, pads=[1, 1, 1, 1], strides=[2, 1])
    relu = helper.make_node("Relu", ["c"], ["y"])
    model = make_model([node, relu], [value("x", ["batch", 6, 9, 8])], [value("y", None)], init, name="s21")
    feeds = [{"x": r.standard_normal((1, 6, 9, 8)).astype(np.float32)} for _ in range(3)]
    _, plan = _plan(model, feeds)
    assert [s.attrs.get("node_op") for s in plan.steps if s.op == "move"] == ["Slice"]
    session = NativeSession(plan, cache_dir=False)
    warm = [session.run(feeds[0])["y"] for _ in range(3)][-1]
    assert session.describe()["program"]["python_steps"] == 0
    with monkeypatch.context() as m:
        m.setattr(executor_module, "_PROGRAMS", False)
        python = NativeSession(plan, cache_dir=False).run(feeds[0])["y"]
    assert warm.shape == (1, 6, 5, 8)
    np.testing.assert_array_equal(warm, python)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_classifier_softmax_runs_inside_the_c_program_with_the_python_bits(monkeypatch, threads) -> None:
    """Gemm -> Softmax (a classifier's output): dequantize, softmax and quantize as three ops of
    the one C call, the kernels the Python path calls, so the same bits."""
    from edge_runtime.plan import executor as executor_module

    r = rng(10)
    init = {"w": (r.standard_normal((5, 12)) * 0.3).astype(np.float32)}
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    model = make_model(nodes, [value("x", ["batch", 12])], [value("y", None)], init, name="cls")
    feeds = [{"x": r.standard_normal((3, 12)).astype(np.float32)} for _ in range(3)]
    _, plan = _plan(model, feeds)
    assert "softmax" in [s.op for s in plan.steps]
    session = NativeSession(plan, threads=threads, cache_dir=False)
    warm = [session.run(f)["y"] for f in feeds + feeds][-3:]
    assert session.describe()["program"]["python_steps"] == 0
    with monkeypatch.context() as m:
        m.setattr(executor_module, "_PROGRAMS", False)
        python = NativeSession(plan, cache_dir=False)
        for f, got in zip(feeds, warm):
            np.testing.assert_array_equal(got, python.run(f)["y"])
    np.testing.assert_allclose(warm[0].sum(axis=-1), 1.0, atol=0.05)


def test_a_softmax_over_another_axis_stays_a_python_step() -> None:
    r = rng(11)
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    model = make_model([node], [value("x", ["batch", 4, 3])], [value("y", None)], {}, name="sm1")
    feeds = [{"x": r.standard_normal((2, 4, 3)).astype(np.float32)} for _ in range(2)]
    _, plan = _plan(model, feeds)
    session = NativeSession(plan, cache_dir=False)
    got = [session.run(feeds[0])["y"] for _ in range(3)][-1]
    assert session.describe()["program"]["python_steps"] == 1
    qx, qy = _entry(plan, "x"), _exit(plan)
    x = numerics.dequantize(numerics.quantize(feeds[0]["x"], qx), qx)
    want = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert np.max(np.abs(got - want)) <= qy.scale


def _d2s(mode: str):
    return [helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)], {}


def _slice(starts: list[int], ends: list[int], axes: list[int], steps: list[int]):
    init = {"s": np.array(starts), "e": np.array(ends), "a": np.array(axes), "t": np.array(steps)}
    return [helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])], init


def _upsample(scales: list[float]):
    node = helper.make_node(
        "Resize", ["x", "", "s"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )  # fmt: skip
    return [node], {"s": np.array(scales, np.float32)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: _d2s("DCR"),
        lambda: _d2s("CRD"),
        lambda: _upsample([1, 1, 2, 2]),
        lambda: _upsample([1, 1, 4, 1]),
        lambda: _slice([2, 1], [5, 6], [1, 3], [1, 2]),  # from an offset (attention's q/k/v split)
        lambda: _slice([1], [3], [2], [1]),
    ],
    ids=[
        "depth-to-space-dcr",
        "depth-to-space-crd",
        "nearest-x2",
        "nearest-4x1",
        "slice-offset",
        "slice-rows",
    ],
)
def test_depth_to_space_and_nearest_upsampling_run_inside_the_c_program(monkeypatch, build) -> None:
    """A detector head's moves (ConvTranspose as GEMM + DepthToSpace, FPN nearest upsampling)
    and slices from any start are strided copies in the C program, with the Python path's bits."""
    from edge_runtime.plan import executor as executor_module

    nodes, init = build()
    model = make_model(nodes, [value("x", ["batch", 8, 5, 6])], [value("y", None)], init, name="mv")
    r = rng(12)
    feeds = [{"x": r.standard_normal((1, 8, 5, 6)).astype(np.float32)} for _ in range(2)]
    _, plan = _plan(model, feeds)
    assert [s.op for s in plan.steps].count("move") == 1
    session = NativeSession(plan, cache_dir=False)
    warm = [session.run(f)["y"] for f in feeds + feeds][-2:]
    assert session.describe()["program"]["python_steps"] == 0
    with monkeypatch.context() as m:
        m.setattr(executor_module, "_PROGRAMS", False)
        python = NativeSession(plan, cache_dir=False)
        for f, got in zip(feeds, warm):
            np.testing.assert_array_equal(got, python.run(f)["y"])
    # and the reference op on the plan's entry codes (a move keeps them)
    qx = _entry(plan, "x")
    x = numerics.dequantize(numerics.quantize(feeds[1]["x"], qx), qx)
    graph = prepare(model)
    node = graph.nodes[0]
    extra = [graph.constant(n) for n in node.inputs[1:]]
    np.testing.assert_array_equal(warm[1], reference.OPS[node.op_type](node, [x, *extra])[0])


def _channel_constant_model(op: str, const_first: bool, shape: tuple[int, ...], const: np.ndarray):
    ins = ["c", "x"] if const_first else ["x", "c"]
    node = helper.make_node(op, ins, ["y"])
    return make_model([node], [value("x", ["batch", *shape[1:]])], [value("y", None)], {"c": const}, name=op)


@pytest.mark.parametrize(
    "op, const_first, shape, const_shape",
    [
        ("Add", False, (2, 6, 10), (6, 1)),  # an [N, C, L] map kept plain: channels on axis 1
        ("Mul", True, (1, 6, 10), (1, 6, 1)),
        ("Sub", True, (1, 6, 10), (6, 1)),
        ("Div", False, (1, 6, 10), (6, 1)),
        ("Sub", True, (1, 6, 4, 5), (6, 1, 1)),  # NHWC storage: channels last
    ],
)
def test_an_op_with_a_per_channel_constant_is_a_table_per_channel_bit_exact(
    op, const_first, shape, const_shape
) -> None:
    """The float step's bits (dequantize -> op in float32 -> quantize) from one lut_channels
    step, along the stored channel axis of the layout the map has."""
    r = rng(13)
    const = (r.random(const_shape) + 0.5).astype(np.float32)
    model = _channel_constant_model(op, const_first, shape, const)
    feeds = [{"x": r.standard_normal(shape).astype(np.float32)} for _ in range(3)]
    graph, plan = _plan(model, feeds)
    ops = [s.op for s in plan.steps]
    assert "float" not in ops and ops.count("lut_channels") == 1, ops
    qx, qy = _entry(plan, "x"), _exit(plan)
    x = numerics.dequantize(numerics.quantize(feeds[0]["x"], qx), qx)
    operands = [const, x] if const_first else [x, const]
    want = numerics.dequantize(numerics.quantize(reference.OPS[op](graph.nodes[0], operands)[0], qy), qy)
    for got in _runs(plan, feeds[0]):
        np.testing.assert_array_equal(got, want)


def test_per_channel_tables_are_written_to_int8_tflite_as_their_operators() -> None:
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert import schema_py_generated as schema

    from edge_runtime.backends.tflite_int8 import plan_to_tflite_int8

    r = rng(14)
    slope = (r.standard_normal((6, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["c", "x"], ["s"]),
        helper.make_node("PRelu", ["s", "slope"], ["y"]),
    ]
    init = {"c": (r.random((6, 1, 1)) + 0.5).astype(np.float32), "slope": slope}
    model = make_model(nodes, [value("x", ["batch", 6, 4, 5])], [value("y", None)], init, name="chan")
    feeds = [{"x": r.standard_normal((1, 6, 4, 5)).astype(np.float32)} for _ in range(2)]
    _, plan = _plan(model, feeds)
    assert [s.op for s in plan.steps].count("lut_channels") == 2, [s.op for s in plan.steps]
    data = plan_to_tflite_int8(plan)
    tfl = schema.ModelT.InitFromPackedBuf(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[c.builtinCode] for c in tfl.operatorCodes]
    written = [codes[o.opcodeIndex] for o in tfl.subgraphs[0].operators]
    assert "SUB" in written and "PRELU" in written, written
