"""The backends on their own: registry, onnxruntime (float and QDQ), TFLite on a real file, the writer."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from model_helpers import (
    IN_FEATURES,
    cnn_onnx,
    mlp_layers,
    mlp_onnx,
    mlp_reference,
    requires_tflite,
)

from device_profiles import BackendPreference, get_profile
from edge_runtime.backends import BACKENDS, Artifact, OpenOptions, get_backend
from edge_runtime.backends import tflite as tflite_backend
from edge_runtime.backends.tflite_writer import Dense, write_mlp_tflite
from edge_runtime.errors import BackendUnavailableError, GraphError, ModelInputError
from edge_runtime.graph import import_onnx, optimize
from edge_runtime.plan import calibrate
from edge_runtime.quantize import export_qdq

# float32 through two engines that sum in different orders: a few ulps of values of size ~1.
FLOAT_ATOL = 1e-5
# QDQ INT8 (uint8 activations calibrated on the same distribution, per-channel int8 weights) vs float:
# measured in output quantization steps (output range / 255). Rounding in the hidden layer and the
# output adds up to about two steps; three leaves margin for other onnxruntime versions.
QDQ_STEPS = 3


def qdq_onnx(float_model: bytes, calibration: list[dict[str, np.ndarray]]) -> bytes:
    """The QDQ model `edge quantize` writes (int8 weights as uint8 codes + 128: exact without VNNI)."""
    graph = optimize(import_onnx(float_model))
    return export_qdq(graph, calibrate(graph, calibration, progress=False)).SerializeToString()


def _ort():
    return get_backend("onnxruntime")


def _open_ort(data: bytes, kind: str = "onnx", providers: tuple[str, ...] = (), threads: int = 1):
    return _ort().open(Artifact("model.onnx", kind, data), OpenOptions(threads=threads, providers=providers))


def _open_tflite(data: bytes, threads: int = 1):
    return get_backend("tflite").open(Artifact("model.tflite", "tflite", data), OpenOptions(threads=threads))


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, IN_FEATURES)).astype(np.float32)


# --- registry ---


def test_registry_lists_the_three_backends_in_order():
    assert list(BACKENDS) == ["native", "onnxruntime", "tflite"]
    assert BACKENDS["onnxruntime"].kinds == ("onnx-qdq", "onnx")


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tensorrt'; known: auto, native"):
        get_backend("tensorrt")


def test_native_backend_is_available_and_refuses_a_bare_float_model():
    native = get_backend("native")
    ok, why = native.available()
    assert ok and "INT8 C kernels" in why
    with pytest.raises(BackendUnavailableError, match="edge quantize"):
        native.open(Artifact("m.onnx", "onnx", mlp_onnx(mlp_layers())), OpenOptions(threads=1))


# --- onnxruntime ---


def test_onnxruntime_runs_float_model_with_dynamic_batch():
    layers = mlp_layers()
    session = _open_ort(mlp_onnx(layers), threads=2)
    assert [(s.name, s.dtype, s.shape) for s in session.inputs] == [("input", "float32", ("batch", 8))]
    assert [s.name for s in session.outputs] == ["output"]
    for batch in (1, 5):
        x = _x(batch)
        out = session.run({"input": x})["output"]
        assert out.shape == (batch, 4)
        np.testing.assert_allclose(out, mlp_reference(layers, x), atol=FLOAT_ATOL)
    desc = session.describe()
    assert desc["providers"] == ["CPUExecutionProvider"]
    assert desc["intra_op_threads"] == 2 and desc["graph_optimization"] == "all"


def test_onnxruntime_qdq_model_close_to_float():
    layers = mlp_layers()
    float_model = mlp_onnx(layers)
    calibration = [{"input": _x(16, seed)} for seed in range(8)]
    qdq = qdq_onnx(float_model, calibration)

    graph = onnx.load_from_string(qdq).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    assert any(i.data_type == onnx.TensorProto.UINT8 and i.dims for i in graph.initializer), (
        "weights not quantized"
    )

    x = _x(32, seed=100)
    ref = _open_ort(float_model).run({"input": x})["output"]
    got = _open_ort(qdq, kind="onnx-qdq").run({"input": x})["output"]
    step = (ref.max() - ref.min()) / 255
    err = np.abs(got - ref).max()
    assert err <= QDQ_STEPS * step, f"QDQ differs from float by {err / step:.2f} quantization steps"
    assert not np.array_equal(got, ref), "the QDQ model should not be bit-identical to float"
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_onnxruntime_jetson_entry_applies_only_with_gpu_providers(monkeypatch: pytest.MonkeyPatch):
    import onnxruntime

    gpu = get_profile("jetson-nano").backends[0]
    assert gpu.providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    ok, why = _ort().accepts(gpu)
    assert not ok and "offers none of TensorrtExecutionProvider, CUDAExecutionProvider" in why
    assert _ort().accepts(BackendPreference("onnxruntime", ("CPUExecutionProvider",)))[0]

    # A GPU build lists CUDA: the entry applies, CUDA is asked for first and CPU stays the fallback.
    real = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    assert _ort().accepts(gpu) == (True, "")
    session = _open_ort(cnn_onnx(), providers=gpu.providers)
    desc = session.describe()
    assert desc["providers_requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert desc["providers"][-1] == "CPUExecutionProvider"


def test_onnxruntime_refuses_garbage_with_graph_error():
    with pytest.raises(GraphError, match="onnxruntime cannot load model.onnx"):
        _open_ort(b"definitely not a protobuf")


def test_onnxruntime_run_error_is_model_input_error():
    # Validation upstream checks rank and dtype; a size only the graph knows surfaces as ModelInputError.
    session = _open_ort(cnn_onnx())
    with pytest.raises(ModelInputError, match="onnxruntime refused the inputs"):
        session.run({"x": np.zeros((1, 1, 9, 9), np.float32)})


def test_onnxruntime_session_is_concurrent_and_closes():
    session = _open_ort(mlp_onnx(mlp_layers()))
    assert session.concurrent
    session.close()
    with pytest.raises(ValueError, match="closed"):
        session.run({"input": _x(1)})


# --- TFLite, on a real .tflite file written by tflite_writer ---


@requires_tflite
@pytest.mark.parametrize("softmax", [False, True])
def test_tflite_matches_onnxruntime_on_the_same_weights(softmax: bool):
    layers = mlp_layers()
    tfl = _open_tflite(write_mlp_tflite(layers, softmax=softmax), threads=2)
    ort = _open_ort(mlp_onnx(layers, softmax=softmax))
    assert [(s.name, s.dtype, s.shape) for s in tfl.inputs] == [("input", "float32", ("?", 8))]
    for batch in (1, 5, 2):  # grow, then shrink: both resize paths
        x = _x(batch, seed=batch)
        got = tfl.run({"input": x})["output"]
        ref = ort.run({"input": x})["output"]
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, ref, atol=FLOAT_ATOL)
    desc = tfl.describe()
    assert desc["engine"] in tflite_backend.INTERPRETER_MODULES and desc["num_threads"] == 2


@requires_tflite
def test_tflite_session_serialises_concurrent_callers():
    layers = mlp_layers()
    session = _open_tflite(write_mlp_tflite(layers))
    assert not session.concurrent
    inputs = [_x(1 + i % 3, seed=i) for i in range(24)]
    expected = [mlp_reference(layers, x) for x in inputs]
    errors: list[str] = []

    def worker(offset: int) -> None:
        for i in range(offset, len(inputs), 4):
            out = session.run({"input": inputs[i]})["output"]
            if out.shape != expected[i].shape or not np.allclose(out, expected[i], atol=FLOAT_ATOL):
                errors.append(f"run {i} wrong")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@requires_tflite
def test_tflite_refuses_garbage_with_graph_error():
    with pytest.raises(GraphError, match="cannot load model.tflite"):
        _open_tflite(b"\x00" * 64)


def test_tflite_unavailable_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tflite_backend, "INTERPRETER_MODULES", ("no_such_litert.interpreter",))
    ok, why = get_backend("tflite").available()
    assert not ok and "pip install ai-edge-litert" in why
    with pytest.raises(BackendUnavailableError, match="no TFLite interpreter"):
        _open_tflite(write_mlp_tflite(mlp_layers()))


def test_tflite_writer_refuses_inconsistent_layers():
    w = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="bias"):
        Dense(w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="activation 'gelu'"):
        Dense(w, np.zeros(4, np.float32), "gelu")
    with pytest.raises(ValueError, match="layer 1 takes 8 features, layer 0 gives 4"):
        write_mlp_tflite([Dense(w, np.zeros(4, np.float32)), Dense(w, np.zeros(4, np.float32))])


def test_tflite_writer_output_is_a_tflite_flatbuffer():
    data = write_mlp_tflite(mlp_layers())
    assert data[4:8] == b"TFL3"
    assert write_mlp_tflite(mlp_layers()) == data  # deterministic
