"""The plan runs in C: a warm call is one C call per segment of native steps.

- a warm call of a fully native plan (an image CNN, with its numpy-im2col stem) is exactly one
  C call (edge_plan_run), with the bits of the step-by-step Python path;
- a plan with a step that stays in Python (a Concat here) runs C segments around it, same bits;
  an encoder layer (attention included) is one segment;
- a plan of symbolic input size runs compiled at alternating sizes (its packed headers follow);
- batch slicing runs its prefix as a C program per slice shape, same bits;
- a failing op inside the C program raises the typed error of its step, as the Python path does;
- two Python threads run two inferences in C at the same time (the GIL is released for the
  whole run and one session serves several callers), with the bits of sequential calls.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from onnx import helper

from edge_runtime.errors import KernelArgumentError, PackedFormatError, ShapeError
from edge_runtime.kernels._ffi import ffi, lib
from edge_runtime.plan import NativeSession, lower
from edge_runtime.plan import executor as executor_module
from tests.plan.native_models import calibrated, make_model, prepare, rng, small_cnn, small_transformer, value


def _plan(model, shape):
    graph = prepare(model)
    feeds = [{"x": rng(i).standard_normal((2, *shape)).astype(np.float32)} for i in range(3)]
    return lower(graph, calibrated(graph, feeds))


def _x(shape, batch, seed):
    return {"x": rng(seed).standard_normal((batch, *shape)).astype(np.float32)}


class _CountingLib:
    """The executor's ``lib`` with every C function call counted by name."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        value = getattr(lib, name)
        if not callable(value):
            return value

        def counted(*args):
            self.calls.append(name)
            return value(*args)

        return counted


def _python_path(plan, threads=1):
    """A session whose every call steps through the plan in Python (the first-call path)."""
    return NativeSession(plan, threads=threads, cache_dir=False)


def _run_python(session, feeds, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(executor_module, "_PROGRAMS", False)
        return session.run(feeds)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_warm_call_of_a_native_plan_is_one_c_call_with_the_same_bits(monkeypatch, threads) -> None:
    plan = _plan(small_cnn(), (3, 16, 16))
    assert any(s.op == "conv" and s.attrs["input_hwc"][2] == 3 for s in plan.steps)  # the numpy-im2col stem
    session, reference = NativeSession(plan, threads=threads, cache_dir=False), _python_path(plan, threads)
    for batch in (1, 3):
        session.run(_x((3, 16, 16), batch, seed=0))  # binds this shape (in Python) and compiles it
        counting = _CountingLib()
        monkeypatch.setattr(executor_module, "lib", counting)
        for seed in (1, 2):
            feeds = _x((3, 16, 16), batch, seed)
            counting.calls.clear()
            got = session.run(feeds)["logits"]
            assert counting.calls == ["edge_plan_run"]
            monkeypatch.setattr(executor_module, "lib", lib)
            np.testing.assert_array_equal(got, _run_python(reference, feeds, monkeypatch)["logits"])
            monkeypatch.setattr(executor_module, "lib", counting)
        monkeypatch.setattr(executor_module, "lib", lib)
        program = session.describe()["program"]
        assert program["c_segments"] == 1 and program["python_steps"] == 0
        assert program["c_ops"] >= len(plan.steps)  # the stem is two ops (im2col, GEMM)


def _concat_model():
    """Two convolutions joined by a Concat (a step that stays in Python), then a third."""
    r = rng(4)
    init = {
        "wa": (r.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32),
        "wb": (r.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32),
        "wc": (r.standard_normal((6, 8, 1, 1)) * 0.3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("Conv", ["ab", "wc"], ["c"]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    return make_model(nodes, [value("x", ["batch", 4, 6, 6])], [value("y", None)], init, name="concat")


def test_python_steps_split_the_program_into_segments_with_the_same_bits(monkeypatch) -> None:
    plan = _plan(_concat_model(), (4, 6, 6))
    assert "concat" in [s.op for s in plan.steps]
    session, reference = NativeSession(plan, cache_dir=False), _python_path(plan)
    for seed, batch in enumerate((1, 2, 1, 2, 2)):
        feeds = _x((4, 6, 6), batch, seed)
        np.testing.assert_array_equal(
            session.run(feeds)["y"], _run_python(reference, feeds, monkeypatch)["y"]
        )
    assert session.describe()["program"]["c_segments"] == 2
    assert session.describe()["program"]["python_steps"] == 1


def test_an_encoder_layer_with_attention_is_one_segment_with_the_same_bits(monkeypatch) -> None:
    plan = _plan(small_transformer(), (6, 16))
    assert "attention" in [s.op for s in plan.steps]
    session, reference = NativeSession(plan, cache_dir=False), _python_path(plan)
    for seed in range(4):
        feeds = _x((6, 16), 2, seed)
        np.testing.assert_array_equal(
            session.run(feeds)["y"], _run_python(reference, feeds, monkeypatch)["y"]
        )
    assert session.describe()["program"] == {
        "steps": len(plan.steps), "c_segments": 1, "c_ops": session.describe()["program"]["c_ops"],
        "python_steps": 0,
    }  # fmt: skip


def test_batch_slices_run_compiled_with_the_same_bits(monkeypatch) -> None:
    monkeypatch.setattr(executor_module, "_CHUNK_BYTES", 16 * 16 * 8 * 5 // 2)  # slices of 2 samples
    plan = _plan(small_cnn(), (3, 16, 16))
    session, reference = NativeSession(plan, cache_dir=False), _python_path(plan)
    assert session.describe()["batch_slices"]["samples"] == 2
    for seed, batch in enumerate((5, 5, 4, 5, 1, 5)):
        feeds = _x((3, 16, 16), batch, seed)
        np.testing.assert_array_equal(
            session.run(feeds)["logits"], _run_python(reference, feeds, monkeypatch)["logits"]
        )


def test_a_failing_op_in_the_program_raises_its_steps_typed_error(monkeypatch) -> None:
    plan = _plan(small_cnn(), (3, 16, 16))
    index = next(i for i, s in enumerate(plan.steps) if s.op == "conv" and s.attrs["depthwise"])
    errors = []
    for programs in (True, False):
        monkeypatch.setattr(executor_module, "_PROGRAMS", programs)
        session = NativeSession(plan, cache_dir=False)
        feeds = _x((3, 16, 16), 1, seed=0)
        session.run(feeds)
        session.run(feeds)  # compiled (when programs are on)
        session._packed[index][:8] = 0  # the packed weights' magic: the kernel refuses them
        with pytest.raises(PackedFormatError) as info:
            session.run(feeds)
        errors.append(str(info.value))
    assert plan.steps[index].node in errors[0]
    assert errors[0] == errors[1]


def _concurrent_runs(session, feeds_list):
    """Runs session.run(feeds) for each feeds in its own thread; (results, errors)."""
    results: list = [None] * len(feeds_list)
    errors: list = [None] * len(feeds_list)

    def call(i: int) -> None:
        try:
            results[i] = session.run(feeds_list[i])["logits"]
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(feeds_list))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


@pytest.fixture
def rendezvous():
    """edge_plan_rendezvous(parties, timeout_ms), turned off afterwards."""
    yield lib.edge_plan_rendezvous
    lib.edge_plan_rendezvous(0, 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_two_threads_run_two_inferences_in_c_at_once(rendezvous, threads) -> None:
    """Every edge_plan_run waits on entry until both runs have arrived: if the GIL were held
    during a run, or the session ran its calls one at a time, the first would time out."""
    plan = _plan(small_cnn(), (3, 16, 16))
    session = NativeSession(plan, threads=threads, cache_dir=False)
    feeds = [_x((3, 16, 16), 1, seed=s) for s in (1, 2)]
    session.warm_up(feeds[0], callers=2)  # two buffer sets, each with its C program
    sequential = [session.run(f)["logits"] for f in feeds]
    lib.edge_plan_runs_peak_reset()
    rendezvous(2, 60_000)
    results, errors = _concurrent_runs(session, feeds)
    assert errors == [None, None]
    assert lib.edge_plan_runs_peak() >= 2
    for got, want in zip(results, sequential):
        np.testing.assert_array_equal(got, want)


def test_the_rendezvous_fails_when_calls_take_turns(rendezvous) -> None:
    """The check above can fail: with the calls serialised, the first run waits alone."""
    plan = _plan(small_cnn(), (3, 16, 16))
    session = NativeSession(plan, cache_dir=False)
    feeds = [_x((3, 16, 16), 1, seed=s) for s in (1, 2)]
    session.warm_up(feeds[0], callers=2)
    session._serial = threading.Lock()  # what a plan with dynamic_hw convolutions does
    rendezvous(2, 300)
    _, errors = _concurrent_runs(session, feeds)
    failed = [e for e in errors if e is not None]
    assert len(failed) == 1 and isinstance(failed[0], KernelArgumentError)
    assert "rendezvous" in str(failed[0])


def test_more_callers_than_buffer_sets_wait_for_one(monkeypatch) -> None:
    monkeypatch.setattr(executor_module, "_MAX_ARENAS", 1)
    plan = _plan(small_cnn(), (3, 16, 16))
    session = NativeSession(plan, cache_dir=False)
    feeds = [_x((3, 16, 16), 1, seed=s) for s in range(4)]
    want = [session.run(f)["logits"] for f in feeds]
    results, errors = _concurrent_runs(session, feeds)
    assert errors == [None] * 4
    for got, expected in zip(results, want):
        np.testing.assert_array_equal(got, expected)
    (arenas,) = session._buffers.values()
    assert arenas.count == 1


def test_a_plan_of_symbolic_input_size_runs_compiled_at_alternating_sizes(monkeypatch) -> None:
    """Each size's program first writes its geometry into the shared packed headers."""
    from tests.plan.test_dynamic_shapes import _images, _model

    graph = prepare(_model())
    sizes = [(32, 32), (48, 40), (33, 31)]
    params = calibrated(graph, [{"x": _images((2, 3, h, w), i)} for i, (h, w) in enumerate(sizes)])
    plan = lower(graph, params)
    assert any(s.attrs.get("dynamic_hw") for s in plan.steps)
    session, reference = NativeSession(plan, cache_dir=False), _python_path(plan)
    for seed, (h, w) in enumerate(sizes * 3):
        feeds = {"x": _images((1, 3, h, w), seed)}
        np.testing.assert_array_equal(
            session.run(feeds)["y"], _run_python(reference, feeds, monkeypatch)["y"]
        )
    assert session.describe()["program"]["c_segments"] == 1


def test_a_python_output_of_another_shape_is_bound_afresh_not_read_by_the_old_program() -> None:
    """A C segment checks the shape of every tensor it reads from Python: a different one goes
    back to the Python path, which binds (here: refuses, with the step's typed error)."""
    plan = _plan(_concat_model(), (4, 6, 6))
    session = NativeSession(plan, cache_dir=False)
    feeds = _x((4, 6, 6), 1, seed=0)
    want = session.run(feeds)["y"]
    np.testing.assert_array_equal(session.run(feeds)["y"], want)  # compiled
    index = next(i for i, s in enumerate(plan.steps) if s.op == "concat")
    concat = session._prepared[index]
    dst = plan.steps[index].outputs[0]

    def cropped(env, slot):
        concat(env, slot)
        env[dst] = np.ascontiguousarray(env[dst][:, :5, :5, :])

    session._prepared[index] = cropped
    with pytest.raises(ShapeError):
        session.run(feeds)
    session._prepared[index] = concat
    np.testing.assert_array_equal(session.run(feeds)["y"], want)
    assert session.describe()["program"]["c_segments"] == 2


def _run_op(kind: str, fields: dict) -> None:

    code, member = executor_module._OP_KINDS[kind]
    ops = ffi.new("edge_plan_op[]", 1)
    ops[0].kind = getattr(lib, code)
    setattr(ops[0].args, member, fields)
    failed = ffi.new("size_t *")
    assert lib.edge_plan_run(ops, 1, ffi.NULL, failed) == 0


@pytest.mark.parametrize(
    ("shape", "perm", "dtype"),
    [
        ((2, 3, 5, 7), (0, 2, 3, 1), np.uint8),  # NCHW -> NHWC, 3 planes (the interleave path)
        ((1, 4, 6, 3), (0, 2, 3, 1), np.int8),
        ((2, 17, 4, 4), (0, 2, 3, 1), np.uint8),  # 17 planes: the general loops
        ((2, 6, 2, 8), (0, 2, 1, 3), np.uint8),  # attention heads
        ((2, 6, 2, 8), (0, 2, 3, 1), np.int8),
        ((3, 5, 7), (2, 0, 1), np.float32),
        ((2, 3, 4, 5), (0, 3, 1, 2), np.float32),  # NHWC -> NCHW
        ((4,), (0,), np.int32),
    ],
)
def test_the_permutation_op_is_numpys_transpose(shape, perm, dtype) -> None:
    x = (rng(7).standard_normal(shape) * 50).astype(dtype)
    y = np.empty(tuple(shape[p] for p in perm), dtype)
    kind, fields = executor_module._permute_op(x, perm, y)
    _run_op(kind, fields)
    np.testing.assert_array_equal(y, x.transpose(perm))


@pytest.mark.parametrize(
    ("kernel", "stride", "pads", "channels"),
    [((3, 3), (2, 2), (1, 1, 1, 1), 3), ((7, 7), (2, 2), (3, 3, 3, 3), 3), ((5, 5), (1, 1), (2, 1, 2, 1), 1),
     ((1, 3), (1, 2), (0, 1, 0, 1), 4), ((3, 3), (1, 1), (0, 0, 0, 0), 2)],
)  # fmt: skip
def test_the_im2col_op_is_the_numpy_stem_path(kernel, stride, pads, channels) -> None:
    batch, h, w, zp = 2, 11, 9, 7
    (kh, kw), (sh, sw), (top, left, bottom, right) = kernel, stride, pads
    x = rng(3).integers(0, 256, (batch, h, w, channels)).astype(np.uint8)
    out_h, out_w = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    padded = np.full((batch, h + top + bottom, w + left + right, channels), zp, np.uint8)
    a = np.zeros((batch * out_h * out_w, kh * kw * channels), np.uint8)
    _run_op("im2col", {
        "batch": batch, "in_h": h, "in_w": w, "channels": channels, "padded_h": padded.shape[1],
        "padded_w": padded.shape[2], "pad_top": top, "pad_left": left, "out_h": out_h, "out_w": out_w,
        "kernel_h": kh, "kernel_w": kw, "stride_h": sh, "stride_w": sw, "x": executor_module._address(x),
        "padded": executor_module._address(padded), "a": executor_module._address(a),
    })  # fmt: skip
    want = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=zp)
    rows = [
        want[n, oy * sh : oy * sh + kh, ox * sw : ox * sw + kw, :].reshape(-1)
        for n in range(batch) for oy in range(out_h) for ox in range(out_w)
    ]  # fmt: skip
    np.testing.assert_array_equal(a, np.stack(rows))


def test_close_waits_for_the_calls_in_flight(rendezvous) -> None:
    """Two calls wait inside C for a third party; close() from another thread may only return
    once both have finished (it frees the buffers and the pool they use)."""
    plan = _plan(small_cnn(), (3, 16, 16))
    session = NativeSession(plan, cache_dir=False)
    feeds = [_x((3, 16, 16), 1, seed=s) for s in (1, 2)]
    session.warm_up(feeds[0], callers=2)
    want = [session.run(f)["logits"] for f in feeds]
    rendezvous(3, 60_000)
    results: list = [None, None]
    seen_at_close: list = []

    def call(i: int) -> None:
        results[i] = session.run(feeds[i])["logits"]

    callers = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in callers:
        t.start()
    inside = threading.Event()
    for _ in range(60_000):  # both inside C, waiting for the third party (a minute at most)
        if lib.edge_plan_runs_active() >= 2:
            inside.set()
            break
        inside.wait(0.001)
    assert inside.is_set()

    def close() -> None:
        session.close()
        seen_at_close.extend(r is not None for r in results)

    closer = threading.Thread(target=close)
    closer.start()
    assert lib.edge_plan_run(ffi.NULL, 0, ffi.NULL, ffi.NULL) == 0  # the third party
    for t in [*callers, closer]:
        t.join()
    assert seen_at_close == [True, True]
    for got, expected in zip(results, want):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(KernelArgumentError, match="closed"):
        session.run(feeds[0])


def test_blas_stays_on_one_thread_until_the_last_overlapping_call_ends() -> None:
    blas = executor_module._BlasThreads.get()
    if blas is None:
        pytest.skip("threadpoolctl or a BLAS library is not available")
    before = [c.get_num_threads() for c in blas._controllers]
    blas.hold()
    blas.hold()
    blas.drop()
    assert [c.get_num_threads() for c in blas._controllers] == [1] * len(before)
    blas.drop()
    assert [c.get_num_threads() for c in blas._controllers] == before


@pytest.mark.parametrize("mask", ["input", "constant", None])
@pytest.mark.parametrize("padding", [True, False])
def test_attention_runs_in_the_program_with_the_bits_of_the_python_path(monkeypatch, mask, padding) -> None:
    """The mask (a quantized input here, dequantized by the program; or a constant) is always
    added in C, where the Python path skips a mask of zeros: the same bits either way."""
    from tests.plan.test_attention import _attention_model, _feeds

    graph = prepare(_attention_model(mask=mask))
    plan = lower(graph, calibrated(graph, [_feeds(graph, seed=4)]))
    assert "attention" in [s.op for s in plan.steps]
    session, reference = NativeSession(plan, cache_dir=False), _python_path(plan)
    for seed in range(3):
        feeds = _feeds(graph, seed=seed, padding=padding)
        np.testing.assert_array_equal(
            session.run(feeds)["y"], _run_python(reference, feeds, monkeypatch)["y"]
        )
    assert session.describe()["program"]["python_steps"] == 0


def test_a_reshape_of_a_python_output_joins_the_segment_as_a_view(monkeypatch) -> None:
    """Embedding rows (a gather, in Python) reshaped, then a convolution: the reshape is made
    per call at the segment's start, and the convolution reads it in the same C call."""
    r = rng(6)
    init = {
        "table": (r.standard_normal((50, 16)) * 0.5).astype(np.float32),
        "shape": np.array([-1, 4, 4, 1], np.int64),
        "w": (r.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("Reshape", ["rows", "shape"], ["img"]),
        helper.make_node("Transpose", ["img"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    model = make_model(nodes, [value("ids", ["batch"], np.int64)], [value("y", None)], init, name="embed")
    graph = prepare(model)
    calib = [{"ids": rng(i).integers(0, 50, 3).astype(np.int64)} for i in range(3)]
    plan = lower(graph, calibrated(graph, calib))
    ops = [s.op for s in plan.steps]
    assert "embed" in ops and "move" in ops
    session, reference = NativeSession(plan, cache_dir=False), _python_path(plan)
    for seed in range(4):
        feeds = {"ids": rng(10 + seed).integers(0, 50, 2).astype(np.int64)}
        np.testing.assert_array_equal(
            session.run(feeds)["y"], _run_python(reference, feeds, monkeypatch)["y"]
        )
    program = session.describe()["program"]
    assert (program["c_segments"], program["python_steps"]) == (1, 1), (ops, program)  # the gather alone
