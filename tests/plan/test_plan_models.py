"""Whole models on the native plan: accuracy against float, dynamic batch, 2:4 layers,
serialization, the packed-weight cache, ISAs, concurrency and refusals."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from native_models import cosine, make_model, prepare, rng, small_cnn, small_transformer, value
from onnx import helper

from edge_runtime import kernels
from edge_runtime.errors import PackageFormatError, UnsupportedOperatorError
from edge_runtime.graph import reference
from edge_runtime.plan import NativeSession, QuantizedPlan, calibrate, lower

CNN_SHAPE = (3, 16, 16)
ENC_SHAPE = (6, 16)


def _x(shape, batch, seed):
    return {"x": rng(seed).standard_normal((batch, *shape)).astype(np.float32)}


@pytest.fixture(scope="module")
def cnn():
    graph = prepare(small_cnn())
    params = calibrate(graph, [_x(CNN_SHAPE, 8, s) for s in range(4)], progress=False)
    return graph, params, lower(graph, params)


@pytest.fixture(scope="module")
def encoder():
    graph = prepare(small_transformer())
    params = calibrate(graph, [_x(ENC_SHAPE, 8, s) for s in range(4)], progress=False)
    return graph, params, lower(graph, params)


def test_cnn_agrees_with_float(cnn) -> None:
    graph, _, plan = cnn
    hist = plan.op_histogram()
    assert hist["conv2d"] == 3 and hist["dwconv2d"] == 1 and hist["gemm"] == 1, hist
    assert "transpose" not in hist  # NHWC from the entry to the GEMM (its weights are permuted)
    feeds = _x(CNN_SHAPE, 32, seed=100)  # unseen data
    want = reference.run(graph, feeds)["logits"]
    got = NativeSession(plan, cache_dir=False).run(feeds)["logits"]
    assert cosine(got, want) > 0.999
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9


def test_encoder_agrees_with_float(encoder) -> None:
    graph, _, plan = encoder
    hist = plan.op_histogram()
    for kernel in ("layernorm", "attention", "lut", "gemm"):
        assert kernel in hist, hist
    feeds = _x(ENC_SHAPE, 4, seed=100)
    want = reference.run(graph, feeds)["y"]
    got = NativeSession(plan, cache_dir=False).run(feeds)["y"]
    assert cosine(got, want) > 0.995


@pytest.mark.parametrize("model", ["cnn", "encoder"])
def test_dynamic_batch_reuses_buffers(model, request) -> None:
    _graph, _, plan = request.getfixturevalue(model)
    shape = CNN_SHAPE if model == "cnn" else ENC_SHAPE
    session = NativeSession(plan, cache_dir=False)
    x3 = _x(shape, 3, seed=7)["x"]
    results = {}
    for batch in (1, 3, 1):
        out = session.run({"x": x3[:batch]})
        (value_,) = out.values()
        assert value_.shape[0] == batch
        results.setdefault(batch, []).append(value_)
    np.testing.assert_array_equal(results[1][0], results[1][1])  # reused buffers, same bits
    np.testing.assert_array_equal(results[3][0][:1], results[1][0])  # rows are independent
    assert len(session._buffers) == 2  # one buffer set per batch size


def test_serialization_round_trip_is_bit_identical(encoder) -> None:
    _, _, plan = encoder
    data = plan.to_bytes()
    assert data == plan.to_bytes()  # deterministic: the sha256 identifies the plan
    again = QuantizedPlan.from_bytes(data)
    assert again.to_bytes() == data
    feeds = _x(ENC_SHAPE, 2, seed=9)
    a = NativeSession(plan, cache_dir=False).run(feeds)["y"]
    b = NativeSession(again, cache_dir=False).run(feeds)["y"]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(PackageFormatError):
        QuantizedPlan.from_bytes(b"not a plan")


def _mlp(pruned: bool) -> onnx.ModelProto:
    r = rng(11)
    w1 = (r.standard_normal((32, 64)) * 0.2).astype(np.float32)  # Gemm weights (N, K), transB=1
    w2 = (r.standard_normal((32, 10)) * 0.2).astype(np.float32)  # MatMul weights (K, N)
    if pruned:
        w1 = kernels.prune_2_4(w1)
        w2 = np.ascontiguousarray(kernels.prune_2_4(w2.T).T)  # 2:4 along K
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["y"], name="fc2"),
    ]
    init = {"w1": w1, "b1": (r.standard_normal(32) * 0.1).astype(np.float32), "w2": w2}
    return make_model(nodes, [value("x", ["batch", 64])], [value("y", None)], init, name="mlp")


def test_2_4_layers_run_sparse_and_match_dense_bit_exactly() -> None:
    graph = prepare(_mlp(pruned=True))
    params = calibrate(graph, [{"x": rng(s).standard_normal((8, 64)).astype(np.float32)} for s in range(3)],
                       progress=False)  # fmt: skip
    sparse = NativeSession(lower(graph, params), cache_dir=False)
    dense = NativeSession(lower(graph, params, sparse_kernels=False), cache_dir=False)
    info = sparse.describe()
    assert sorted(info["sparse_layers"]) == ["fc1", "fc2"]
    assert info["ops"]["gemm24"] == 2 and "gemm" not in info["ops"]
    assert dense.describe()["sparse_layers"] == []
    feeds = {"x": rng(99).standard_normal((5, 64)).astype(np.float32)}
    np.testing.assert_array_equal(sparse.run(feeds)["y"], dense.run(feeds)["y"])


def test_sparsity_names_prune_a_dense_layer() -> None:
    graph = prepare(_mlp(pruned=False))
    params = calibrate(graph, [{"x": rng(0).standard_normal((8, 64)).astype(np.float32)}], progress=False)
    plan = lower(graph, params, sparsity={"fc1"})
    assert plan.sparse_layers() == ["fc1"]
    (step,) = [s for s in plan.steps if s.node == "fc1"]
    assert kernels.is_2_4(step.arrays["weights"])
    assert lower(graph, params).sparse_layers() == []  # random weights are not auto-detected


def test_packed_cache_hit_on_second_load(cnn, tmp_path) -> None:
    _, _, plan = cnn
    first = NativeSession(plan, cache_dir=tmp_path)
    assert first.describe()["packed_cache"] == "miss"
    assert len(list(tmp_path.glob("*.packed"))) == 1 and not list(tmp_path.glob(".packing-*"))
    second = NativeSession(plan, cache_dir=tmp_path)
    assert second.describe()["packed_cache"] == "hit"
    # Cached buffers are views of one 64-byte-aligned block (what the kernels require).
    assert all(b.ctypes.data % 64 == 0 for b in second._packed.values())
    feeds = _x(CNN_SHAPE, 2, seed=3)
    np.testing.assert_array_equal(first.run(feeds)["logits"], second.run(feeds)["logits"])
    (path,) = tmp_path.glob("*.packed")
    good = path.read_bytes()
    # A corrupt cache file (garbage, a flipped data byte, a truncated file) is ignored and rewritten.
    for bad in (b"garbage", good[:-1] + bytes([good[-1] ^ 1]), good[: len(good) // 2]):
        path.write_bytes(bad)
        assert NativeSession(plan, cache_dir=tmp_path).describe()["packed_cache"] == "miss"
        assert NativeSession(plan, cache_dir=tmp_path).describe()["packed_cache"] == "hit"


def test_packed_cache_keyed_by_the_given_model_sha256(cnn, tmp_path) -> None:
    _, _, plan = cnn
    assert NativeSession(plan, cache_dir=tmp_path, model_sha256="a" * 64).describe()["packed_cache"] == "miss"
    hit = NativeSession(plan, cache_dir=tmp_path, model_sha256="a" * 64).describe()
    assert hit["packed_cache"] == "hit" and hit["plan_sha256"] == "a" * 64
    assert NativeSession(plan, cache_dir=tmp_path, model_sha256="b" * 64).describe()["packed_cache"] == "miss"


def test_release_weights_keeps_the_bits_and_frees_the_artifact_bytes(cnn, tmp_path) -> None:
    import sys

    _, _, plan = cnn
    feeds = _x(CNN_SHAPE, 2, seed=5)
    expected = NativeSession(plan, cache_dir=False).run(feeds)["logits"]
    data = plan.to_bytes()
    owned = QuantizedPlan.from_bytes(data)
    weights = [s.arrays["weights"] for s in owned.steps if "weights" in s.arrays]
    assert weights and all(not w.flags.owndata and not w.flags.writeable for w in weights)  # views of data
    refs = sys.getrefcount(data)
    session = NativeSession(owned, cache_dir=tmp_path, release_weights=True)
    del weights
    assert sys.getrefcount(data) < refs  # nothing in the session refers to the artifact's bytes
    assert all(v.flags.owndata for s in owned.steps for v in s.arrays.values())
    np.testing.assert_array_equal(session.run(feeds)["logits"], expected)
    cached = NativeSession(QuantizedPlan.from_bytes(data), cache_dir=tmp_path, release_weights=True)
    assert cached.describe()["packed_cache"] == "hit"
    np.testing.assert_array_equal(cached.run(feeds)["logits"], expected)


def test_packed_cache_defaults_to_edge_cache_dir(cnn, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path))
    NativeSession(cnn[2])
    assert len(list((tmp_path / "packed").glob("*.packed"))) == 1


@pytest.mark.parametrize("model", ["cnn", "encoder"])
def test_every_isa_gives_identical_bits(model, request) -> None:
    _, _, plan = request.getfixturevalue(model)
    shape = CNN_SHAPE if model == "cnn" else ENC_SHAPE
    feeds = _x(shape, 3, seed=21)
    outputs = {}
    for isa in kernels.supported_isas():
        with kernels.use_isa(isa):
            session = NativeSession(plan, threads=2, cache_dir=False)
            assert session.describe()["isa"] == isa
            outputs[isa] = next(iter(session.run(feeds).values()))
    first = outputs["scalar"]
    for isa, out in outputs.items():
        np.testing.assert_array_equal(out, first, err_msg=isa)


def test_concurrent_callers_match_serial(cnn) -> None:
    _, _, plan = cnn
    session = NativeSession(plan, threads=2, cache_dir=False)
    inputs = [_x(CNN_SHAPE, 1 + i % 3, seed=i) for i in range(12)]
    serial = [session.run(f)["logits"] for f in inputs]
    results: list = [None] * len(inputs)

    def worker(i: int) -> None:
        for _ in range(3):
            results[i] = session.run(inputs[i])["logits"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for want, got in zip(serial, results):
        np.testing.assert_array_equal(got, want)


def test_unsupported_operator_is_named() -> None:
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="upsample_1")]
    model = make_model(nodes, [value("x", ["batch", 2, 4, 4])], [value("y", None)],
                       {"w": np.ones((2, 2, 2, 2), np.float32)})  # fmt: skip
    graph = prepare(model)
    params = calibrate(graph, [_x((2, 4, 4), 1, 0)], progress=False)
    with pytest.raises(UnsupportedOperatorError, match="ConvTranspose.*upsample_1|upsample_1.*ConvTranspose"):
        lower(graph, params)


def test_missing_parameters_name_the_tensor(cnn) -> None:
    graph, params, _ = cnn
    partial = {k: v for k, v in params.items() if k != "logits"}
    with pytest.raises(Exception, match="'logits'"):
        lower(graph, partial)
