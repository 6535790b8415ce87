"""edge_runtime.load and Model: sources, backend selection and its reasons, validation, threads, self-test."""

from __future__ import annotations

import dataclasses
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from model_helpers import (
    CLASSES,
    IN_FEATURES,
    cnn_onnx,
    mlp_layers,
    mlp_onnx,
    mlp_package,
    mlp_reference,
    requires_tflite,
    spec,
    two_input_onnx,
    write_model_package,
)

import edge_runtime
from device_profiles import BackendPreference, get_profile
from edge_runtime import backends
from edge_runtime.backends import Artifact, Backend, OpenOptions, Session
from edge_runtime.backends.tflite_writer import write_mlp_tflite
from edge_runtime.errors import (
    BackendUnavailableError,
    IntegrityError,
    ModelInputError,
    PackageError,
    PackageFormatError,
    SelfTestError,
    SignatureError,
    UnsupportedOperatorError,
)
from edge_runtime.graph import import_onnx, optimize
from edge_runtime.package import TrustStore
from edge_runtime.plan import calibrate
from edge_runtime.quantize import export_qdq

FLOAT_ATOL = 1e-5  # float32 engines vs the float64 reference on values of size ~1
PI4 = "raspberrypi-4b"


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, IN_FEATURES)).astype(np.float32)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp_onnx(mlp_layers()))
    return path


@pytest.fixture
def tflite_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.tflite"
    path.write_bytes(write_mlp_tflite(mlp_layers()))
    return path


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return mlp_package(tmp_path / "mlp.edgepkg").path


# --- sources ---


def test_load_bare_onnx_file(onnx_file: Path):
    with edge_runtime.load(onnx_file, profile=PI4) as model:
        assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("input", "float32", ("batch", 8))]
        x = _x(3)
        np.testing.assert_allclose(model.run(x)["output"], mlp_reference(mlp_layers(), x), atol=FLOAT_ATOL)
        info = model.info()
    assert info["name"] == "mlp" and info["version"] is None
    assert info["source"]["kind"] == "onnx" and len(info["source"]["sha256"]) == 64
    assert info["backend"] == "onnxruntime"
    json.dumps(info)  # JSON-able, for the agent and `edge run --json`


@requires_tflite
def test_load_bare_tflite_file_falls_back_outside_profile_order(tflite_file: Path):
    with edge_runtime.load(tflite_file, profile=PI4, threads=1) as model:
        x = _x(4)
        np.testing.assert_allclose(model.run(x)["output"], mlp_reference(mlp_layers(), x), atol=FLOAT_ATOL)
        info = model.info()
    assert info["backend"] == "tflite"
    assert info["reason"].endswith(
        "using tflite on mlp.tflite (tflite), a fallback outside the profile's order"
    )
    skipped = {s["backend"]: s["reason"] for s in info["skipped"]}
    assert "it runs native-plan, onnx; the model holds mlp.tflite" in skipped["native"]
    assert skipped["onnxruntime[CPUExecutionProvider]"] == (
        "it runs onnx-qdq, onnx; the model holds mlp.tflite (tflite)"
    )


def test_load_package_reports_identity_and_specs(package: Path):
    with edge_runtime.load(package, profile=PI4) as model:
        info = model.info()
        assert model.name == "tiny-mlp" and model.version == "1.0.0"
        assert model.manifest is not None and model.has_selftest
        assert model.outputs[0].shape == ("batch", CLASSES)
    assert info["source"]["kind"] == "package" and info["source"]["signer"] is None
    assert info["artifact"] == {"path": "model.onnx", "kind": "onnx"}
    assert info["profile"] == PI4 and info["kernel_isa"] == "neon" and info["threads"] == 4
    assert info["session"]["providers"] == ["CPUExecutionProvider"]


def test_unknown_file_kind_is_refused(tmp_path: Path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x01\x02\x03\x04 not a model")
    with pytest.raises(PackageFormatError, match="neither an .edgepkg nor an .onnx or .tflite"):
        edge_runtime.load(path)


# --- backend selection ---


def test_auto_on_pi4_explains_native_skip(package: Path):
    with edge_runtime.load(package, profile=PI4) as model:
        reason = model.info()["reason"]
    assert reason.startswith("profile raspberrypi-4b prefers native > onnxruntime[CPUExecutionProvider]; ")
    assert "native skipped: native backend refused: the package carries no activation quantization" in reason
    assert reason.endswith("using onnxruntime on model.onnx (onnx) asking for CPUExecutionProvider")


def test_auto_on_jetson_skips_gpu_entry_without_gpu_providers(package: Path):
    with edge_runtime.load(package, profile="jetson-nano") as model:
        info = model.info()
    assert [s["backend"] for s in info["skipped"]] == [
        "onnxruntime[TensorrtExecutionProvider, CUDAExecutionProvider]",
        "native",
    ]
    assert "offers none of TensorrtExecutionProvider" in info["skipped"][0]["reason"]
    assert info["backend"] == "onnxruntime" and info["session"]["providers"] == ["CPUExecutionProvider"]


def test_auto_prefers_qdq_artifact_and_artifact_argument_overrides(tmp_path: Path):
    layers = mlp_layers()
    float_model = mlp_onnx(layers)
    graph = optimize(import_onnx(float_model))  # the QDQ model as `edge quantize` writes it
    qdq = export_qdq(graph, calibrate(graph, [{"input": _x(16, s)} for s in range(4)], progress=False))
    pkg = write_model_package(
        tmp_path / "q.edgepkg",
        {"model.onnx": ("onnx", float_model), "model.qdq.onnx": ("onnx-qdq", qdq.SerializeToString())},
        [spec("input", ["batch", IN_FEATURES])],
        [spec("output", ["batch", CLASSES])],
    ).path
    x = _x(8, seed=3)
    with edge_runtime.load(pkg, profile=PI4) as q, edge_runtime.load(pkg, profile=PI4, artifact="onnx") as f:
        assert q.info()["artifact"]["kind"] == "onnx-qdq"
        assert f.info()["artifact"]["kind"] == "onnx"
        ref = f.run(x)["output"]
        np.testing.assert_allclose(ref, mlp_reference(layers, x), atol=FLOAT_ATOL)
        step = (ref.max() - ref.min()) / 255
        assert np.abs(q.run(x)["output"] - ref).max() <= 3 * step


@requires_tflite
def test_explicit_tflite_backend_on_package(package: Path):
    x = _x(3)
    with edge_runtime.load(package, backend="tflite", profile=PI4) as model:
        assert model.backend == "tflite"
        assert model.info()["reason"].startswith("backend tflite requested; using tflite on model.tflite")
        np.testing.assert_allclose(model.run(x)["output"], mlp_reference(mlp_layers(), x), atol=FLOAT_ATOL)


def test_native_backend_requested_without_quantization_parameters(package: Path):
    # A float-only package: the native backend needs `edge quantize`'s parameters and says so.
    with pytest.raises(BackendUnavailableError, match="run `edge quantize` on it"):
        edge_runtime.load(package, backend="native", profile=PI4)


def test_unknown_backend_is_refused(package: Path):
    with pytest.raises(
        BackendUnavailableError, match="unknown backend 'gpu'; known: auto, native, onnxruntime"
    ):
        edge_runtime.load(package, backend="gpu")


def test_explicit_backend_without_matching_artifact(tmp_path: Path):
    pkg = mlp_package(tmp_path / "tflite-only.edgepkg", kinds=("tflite",)).path
    with pytest.raises(
        BackendUnavailableError,
        match=r"backend 'onnxruntime' cannot run this model: it runs onnx-qdq, onnx; the model holds model.tflite",
    ):
        edge_runtime.load(pkg, backend="onnxruntime")


def test_auto_with_nothing_runnable_lists_every_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
):
    # Without the native backend nothing here runs a native plan: every skip is listed.
    registry = dict(backends.BACKENDS)  # restored in its order (auto selection and test_backends read it)
    request.addfinalizer(lambda: (backends.BACKENDS.clear(), backends.BACKENDS.update(registry)))
    monkeypatch.delitem(backends.BACKENDS, "native")
    pkg = mlp_package(tmp_path / "plan-only.edgepkg", kinds=("native-plan",), selftest_atol=None).path
    with pytest.raises(BackendUnavailableError, match="no backend can run this model") as exc:
        edge_runtime.load(pkg, profile=PI4)
    message = str(exc.value)
    assert "onnxruntime" in message and "the model holds model.plan (native-plan)" in message


def test_corrupt_native_plan_is_an_error_not_a_fallback(tmp_path: Path):
    pkg = mlp_package(tmp_path / "plan-only.edgepkg", kinds=("native-plan",), selftest_atol=None).path
    with pytest.raises(PackageFormatError, match="not a native plan"):
        edge_runtime.load(pkg, profile=PI4)


class _RefusingBackend(Backend):
    """Test double: a backend that refuses every graph for an operator it lacks."""

    name = "refusing"
    kinds = ("onnx",)

    def available(self) -> tuple[bool, str]:
        return True, "test double"

    def open(self, artifact: Artifact, options: OpenOptions) -> Session:
        raise UnsupportedOperatorError("unsupported operator NonMaxSuppression at node 'nms_1'")


def test_auto_falls_back_when_a_backend_refuses_an_operator(package: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(backends.BACKENDS, "refusing", _RefusingBackend())
    profile = dataclasses.replace(
        get_profile(PI4), backends=(BackendPreference("refusing"), BackendPreference("onnxruntime"))
    )
    with edge_runtime.load(package, profile=profile) as model:
        reason = model.info()["reason"]
    assert (
        "refusing skipped: refusing backend refused: unsupported operator NonMaxSuppression at node 'nms_1'; "
        "using onnxruntime on model.onnx (onnx)"
    ) in reason
    # Asked for by name, the refusal is the error.
    with pytest.raises(UnsupportedOperatorError, match="NonMaxSuppression"):
        edge_runtime.load(package, backend="refusing", profile=profile)


def test_no_profile_uses_registry_order(onnx_file: Path):
    with edge_runtime.load(onnx_file, profile=None, threads=1) as model:
        info = model.info()
    assert info["profile"] is None and info["threads"] == 1
    assert info["reason"].startswith("no device profile; trying backends in registry order")


def test_threads_must_be_positive(onnx_file: Path):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        edge_runtime.load(onnx_file, threads=0)


# --- input validation ---


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    path.write_bytes(cnn_onnx())
    with edge_runtime.load(path, profile=PI4, threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    path.write_bytes(two_input_onnx())
    with edge_runtime.load(path, profile=PI4, threads=1) as model:
        yield model


def test_cnn_accepts_any_batch(cnn):
    for batch in (1, 3):
        out = cnn.run({"x": np.zeros((batch, 1, 8, 8), np.float32)})
        assert out["logits"].shape == (batch, 10)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (
            np.zeros((2, 8, 8), np.int64),
            "input 'x': expected float32 [batch, 1, 8, 8], got int64 [2, 8, 8] (dtype int64 instead of float32",
        ),
        (
            np.zeros((2, 8, 8), np.float32),
            "input 'x': expected float32 [batch, 1, 8, 8], got float32 [2, 8, 8] (rank 3 instead of 4)",
        ),
        (
            np.zeros((2, 1, 8, 9), np.float32),
            "input 'x': expected float32 [batch, 1, 8, 8], got float32 [2, 1, 8, 9] (dimension 3 is 9, must be 8)",
        ),
        (np.zeros((1, 1, 8, 8), np.float64), "got float64 [1, 1, 8, 8] (dtype float64 instead of float32"),
        ([[[[0.0] * 8] * 8]], "got float64 [1, 1, 8, 8]"),  # lists are arrays too, and no silent cast
    ],
)
def test_wrong_dtype_rank_or_size(cnn, array, message: str):
    with pytest.raises(ModelInputError) as exc:
        cnn.run({"x": array})
    assert message in str(exc.value)


def test_unknown_and_missing_names(cnn, two_inputs):
    with pytest.raises(
        ModelInputError, match=r"unknown input\(s\) 'image'; the model's inputs are x \(float32"
    ):
        cnn.run({"image": np.zeros((1, 1, 8, 8), np.float32)})
    a = np.zeros((2, 4), np.float32)
    with pytest.raises(ModelInputError, match=r"missing input\(s\) 'ids' \(int64 \[batch\]\)"):
        two_inputs.run({"a": a, "b": a})


def test_single_array_needs_single_input_model(two_inputs):
    with pytest.raises(ModelInputError, match=r"the model has 3 inputs \(a, b, ids\); pass a dict"):
        two_inputs.run(np.zeros((2, 4), np.float32))


def test_named_dimension_must_agree_across_inputs(two_inputs):
    a, ids = np.ones((2, 4), np.float32), np.arange(2)
    out = two_inputs.run({"a": a, "b": a, "ids": ids})
    np.testing.assert_array_equal(out["sum"], 2 * a)
    np.testing.assert_array_equal(out["ids_out"], ids)
    with pytest.raises(ModelInputError, match="input 'b': .*\\(batch is 3 here but 2 in input 'a'\\)"):
        two_inputs.run({"a": a, "b": np.ones((3, 4), np.float32), "ids": ids})


def test_non_contiguous_input_is_accepted(cnn):
    x = np.zeros((2, 1, 8, 16), np.float32)[..., ::2]
    assert not x.flags.c_contiguous
    assert cnn.run({"x": x})["logits"].shape == (2, 10)


# --- concurrency ---


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("tflite", marks=requires_tflite)])
def test_concurrent_callers_get_serial_results(package: Path, backend: str):
    inputs = [_x(1 + i % 4, seed=i) for i in range(32)]
    with edge_runtime.load(package, backend=backend, profile=PI4, threads=1) as model:
        serial = [model.run(x)["output"] for x in inputs]
        results: list[np.ndarray | None] = [None] * len(inputs)
        barrier = threading.Barrier(4)

        def worker(k: int) -> None:
            barrier.wait()
            for i in range(k, len(inputs), 4):
                results[i] = model.run(inputs[i])["output"]

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, (got, want) in enumerate(zip(results, serial)):
        assert got is not None, f"run {i} produced nothing"
        np.testing.assert_array_equal(got, want)


# --- self-test ---


def test_selftest_passes(package: Path):
    with edge_runtime.load(package, profile=PI4) as model:
        result = model.selftest(raise_on_failure=True)
    assert result.passed and result.atol == 1e-4
    assert [c.name for c in result.checks] == ["output"] and result.checks[0].mismatched == 0
    assert "self-test passed" in result.summary()


def test_selftest_failure_is_reported_and_raised_when_asked(tmp_path: Path):
    x = _x(2, seed=7)
    wrong = mlp_reference(mlp_layers(), x).astype(np.float32) + 0.5
    pkg = write_model_package(
        tmp_path / "bad-vectors.edgepkg",
        {"model.onnx": ("onnx", mlp_onnx(mlp_layers()))},
        [spec("input", ["batch", IN_FEATURES])],
        [spec("output", ["batch", CLASSES])],
        selftest=({"input": x}, {"output": wrong}, 1e-3),
    ).path
    with edge_runtime.load(pkg, profile=PI4) as model:
        result = model.selftest()
        assert not result.passed
        check = result.checks[0]
        assert check.mismatched == check.size == 2 * CLASSES
        assert check.max_abs_error == pytest.approx(0.5, abs=1e-4)
        with pytest.raises(SelfTestError, match="self-test FAILED .*output: max \\|error\\| 0.5"):
            model.selftest(raise_on_failure=True)


def test_selftest_without_vectors_raises(onnx_file: Path):
    with edge_runtime.load(onnx_file, profile=PI4) as model:
        assert not model.has_selftest
        with pytest.raises(SelfTestError, match="carries no self-test vectors"):
            model.selftest()


def test_selftest_vectors_that_do_not_fit(tmp_path: Path):
    pkg = write_model_package(
        tmp_path / "misfit.edgepkg",
        {"model.onnx": ("onnx", mlp_onnx(mlp_layers()))},
        [spec("input", ["batch", IN_FEATURES])],
        [spec("output", ["batch", CLASSES])],
        selftest=({"input": np.zeros((1, 3), np.float32)}, {"output": np.zeros((1, 4), np.float32)}, 0.1),
    ).path
    model = edge_runtime.load(pkg, profile=PI4)
    with model, pytest.raises(SelfTestError, match="do not fit .*dimension 1 is 3, must be 8"):
        model.selftest()


# --- packages the reader refuses, or that do not match their model ---


def test_tampered_package_is_refused_with_integrity_error(tmp_path: Path, package: Path):
    tampered = tmp_path / "tampered.edgepkg"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model.onnx":
                data = data[:-4] + bytes(4)  # same size, different bytes: only the sha256 can tell
            dst.writestr(item, data)
    with pytest.raises(IntegrityError, match="model.onnx does not match the manifest"):
        edge_runtime.load(tampered, profile=PI4)


def test_trust_store_requires_signature(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    trust = TrustStore([key.public_key()])
    unsigned = mlp_package(tmp_path / "unsigned.edgepkg").path
    with pytest.raises(SignatureError, match="not signed"):
        edge_runtime.load(unsigned, trust_store=trust, profile=PI4)
    signed = mlp_package(tmp_path / "signed.edgepkg", signing_key=key)
    with edge_runtime.load(signed.path, trust_store=trust, profile=PI4) as model:
        assert model.info()["source"]["signer"] == signed.signer
    other = TrustStore([Ed25519PrivateKey.generate().public_key()])
    with pytest.raises(SignatureError):
        edge_runtime.load(signed.path, trust_store=other, profile=PI4)


def test_trust_store_refuses_bare_files(onnx_file: Path):
    trust = TrustStore([Ed25519PrivateKey.generate().public_key()])
    with pytest.raises(SignatureError, match="bare onnx file, which cannot carry a signature"):
        edge_runtime.load(onnx_file, trust_store=trust)


def test_manifest_that_does_not_match_the_model_is_refused(tmp_path: Path):
    pkg = write_model_package(
        tmp_path / "renamed.edgepkg",
        {"model.onnx": ("onnx", mlp_onnx(mlp_layers()))},
        [spec("image", ["batch", IN_FEATURES])],
        [spec("output", ["batch", CLASSES])],
    ).path
    with pytest.raises(PackageFormatError, match="manifest input 'image' is not an input of model.onnx"):
        edge_runtime.load(pkg, profile=PI4)
    pkg = write_model_package(
        tmp_path / "retyped.edgepkg",
        {"model.onnx": ("onnx", mlp_onnx(mlp_layers()))},
        [spec("input", ["batch", IN_FEATURES], dtype="uint8")],
        [spec("output", ["batch", CLASSES])],
    ).path
    with pytest.raises(PackageFormatError, match=r"is uint8 \[batch, 8\], but model.onnx has float32"):
        edge_runtime.load(pkg, profile=PI4)


def test_package_for_a_newer_runtime_is_refused(tmp_path: Path):
    pkg = mlp_package(tmp_path / "new.edgepkg", requirements={"min_runtime_version": "99.0"}).path
    with pytest.raises(PackageError, match="needs runtime >= 99.0"):
        edge_runtime.load(pkg, profile=PI4)


def test_package_for_another_isa_loads_with_a_warning(tmp_path: Path):
    pkg = mlp_package(tmp_path / "x86.edgepkg", requirements={"isas": ["avx2"]}).path
    with edge_runtime.load(pkg, profile=PI4) as model:
        assert model.info()["warnings"] == ["built for ISA avx2, this device runs neon"]


# --- lifetime ---


def test_close_is_idempotent_and_run_after_close_fails(onnx_file: Path):
    model = edge_runtime.load(onnx_file, profile=PI4)
    assert "on onnxruntime" in repr(model)
    model.close()
    model.close()
    assert model.closed and "closed" in repr(model)
    with pytest.raises(ValueError, match="is closed"):
        model.run(_x(1))


def test_artifact_argument_must_name_an_artifact(package: Path):
    with pytest.raises(
        BackendUnavailableError, match="no artifact with path or kind 'onnx-qdq'; the model holds"
    ):
        edge_runtime.load(package, artifact="onnx-qdq", profile=PI4)
