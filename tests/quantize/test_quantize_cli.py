"""`edge quantize` end to end: a verified, signed package whose self-test passes on the native plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from quantize_models import digits, digits_cnn_bytes, save, tiny_mlp_seq

from edge_runtime import cli
from edge_runtime.errors import DatasetError, SignatureError
from edge_runtime.kernels import is_2_4
from edge_runtime.numerics import QuantParams
from edge_runtime.package import TrustStore, generate_keypair, load_selftest, open_package
from edge_runtime.plan import NativeSession, QuantizedPlan
from edge_runtime.quantize import QuantizeOptions, quantize_model
from edge_runtime.quantize.assemble import SELFTEST_FLOAT_ATOL, SELFTEST_STEPS, selftest_tolerance

ARTIFACT_KINDS = {"onnx", "native-plan", "onnx-qdq", "selftest"}


def edge(*argv: str) -> int:
    """Run the `edge` command line in-process; returns its exit code."""
    return cli.main(list(argv))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quantize")
    x, y = digits()
    np.savez(d / "cal.npz", x=x[:160])
    np.savez(d / "eval.npz", x=x[1200:1500], labels=y[1200:1500])
    np.save(d / "seq.npy", np.random.default_rng(0).normal(size=(24, 6, 16)).astype(np.float32))
    np.save(d / "wrong.npy", np.zeros((4, 8, 8), np.float32))
    key, pub = generate_keypair(d / "signer")
    _, other_pub = generate_keypair(d / "other")
    return {
        "dir": d,
        "cnn": save(digits_cnn_bytes(), d / "digits_cnn.onnx"),
        "mlp": save(tiny_mlp_seq(), d / "mlp.onnx"),
        "key": key,
        "pub": pub,
        "other_pub": other_pub,
    }


def _selftest_on_native_and_qdq(pkg) -> None:
    inputs, expected = load_selftest(pkg.read_artifact("selftest"))
    atol = pkg.manifest.selftest.atol
    assert 0 < atol < 1.0
    # the tolerance is the plan's own output quantization steps, never onnxruntime's error
    activations = pkg.manifest.quantization["activations"]
    assert atol == selftest_tolerance({k: QuantParams.from_dict(v) for k, v in activations.items()}, expected)
    plan = QuantizedPlan.from_bytes(pkg.read_artifact("native-plan"))
    native = NativeSession(plan, cache_dir=False).run(inputs)
    for name, value in expected.items():
        np.testing.assert_allclose(native[name], value, atol=atol, rtol=0)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(pkg.read_artifact("onnx-qdq"), providers=["CPUExecutionProvider"])
    for name, value in expected.items():
        np.testing.assert_allclose(session.run([name], inputs)[0], value, atol=atol, rtol=0)


def test_signed_package_verifies_and_self_tests(files, capsys) -> None:
    out = files["dir"] / "digits.edgepkg"
    argv = ["quantize", str(files["cnn"]), "--calibration", str(files["dir"] / "cal.npz"), "--out", str(out),
            "--eval", str(files["dir"] / "eval.npz"), "--sign", str(files["key"]), "--name", "digits",
            "--version", "2.1.0", "--batch-size", "16", "--quiet"]  # fmt: skip
    assert edge(*argv) == 0
    printed = capsys.readouterr().out
    assert "top-1 accuracy (logits)" in printed and "signed by" in printed

    with open_package(out, trust_store=TrustStore.load(files["pub"])) as pkg:
        pkg.verify()
        m = pkg.manifest
        assert {a.kind for a in m.artifacts} == ARTIFACT_KINDS
        assert (m.name, m.version) == ("digits", "2.1.0")
        assert m.inputs[0].shape == ("batch", 1, 8, 8) and m.outputs[0].shape == ("batch", 10)
        q = m.quantization
        assert q["method"] == "minmax" and q["weights"]["granularity"] == "per-channel"
        assert set(q["activations"]) >= {"x", "logits"} and q["activations"]["x"]["dtype"] == "uint8"
        metrics = m.metrics
        assert metrics["samples"] == 300 and "eval.npz" in metrics["data"]
        assert metrics["float_accuracy"] > 0.85
        assert metrics["int8_accuracy"] >= metrics["float_accuracy"] - 0.02
        assert metrics["outputs"]["logits"]["top1_agreement"] >= 0.97
        assert metrics["outputs"]["logits"]["cosine_similarity"] > 0.995
        prov = m.provenance
        import hashlib

        assert prov["source_model"]["sha256"] == hashlib.sha256(files["cnn"].read_bytes()).hexdigest()
        assert prov["tool"] == "edge quantize" and prov["command"].startswith("edge")
        assert m.requirements.min_runtime_version is not None
        assert pkg.read_artifact("onnx") == files["cnn"].read_bytes()  # no pruning: the model as given
        onnx.checker.check_model(onnx.load_from_string(pkg.read_artifact("onnx-qdq")))
        _selftest_on_native_and_qdq(pkg)

    with pytest.raises(SignatureError):
        open_package(out, trust_store=TrustStore.load(files["other_pub"]))


def test_sparsity_2_4_marks_layers_and_prunes_weights(files) -> None:
    out = files["dir"] / "sparse.edgepkg"
    argv = ["quantize", str(files["cnn"]), "--calibration", str(files["dir"] / "cal.npz"), "--out", str(out),
            "--sparsity", "2:4", "--quiet", "--json"]  # fmt: skip
    assert edge(*argv) == 0
    with open_package(out) as pkg:
        m = pkg.manifest
        assert m.sparsity is not None and m.sparsity.pattern == "2:4"
        assert set(m.sparsity.layers) == {"/conv2/Conv", "/fc/Gemm"}  # conv1 has K = 9 < 16: dense
        weights = {
            t.name: numpy_helper.to_array(t)
            for t in onnx.load_from_string(pkg.read_artifact("onnx")).graph.initializer
        }
        conv2 = weights["conv2.weight"]  # OIHW; the kernels reduce over (kh, kw, cin)
        assert is_2_4(conv2.transpose(0, 2, 3, 1).reshape(16, -1))
        assert not is_2_4(weights["conv1.weight"].transpose(0, 2, 3, 1).reshape(8, -1))
        fc = weights["fc.weight"]  # [10, 16*4*4] read from an NHWC map: 2:4 in (h, w, c) order
        assert is_2_4(fc.reshape(10, 16, 4, 4).transpose(0, 2, 3, 1).reshape(10, -1))
        plan = QuantizedPlan.from_bytes(pkg.read_artifact("native-plan"))
        (gemm,) = [s for s in plan.steps if s.op == "gemm"]
        assert gemm.attrs["sparse"] and is_2_4(gemm.arrays["weights"])
        assert m.quantization["sparse_kernel_layers"] == ["/conv2/Conv", "/fc/Gemm"]
        assert [s.kernel for s in plan.steps if s.op == "conv"] == ["conv2d", "conv2d24"]
        # the plan runs the pruned float model: INT8 stays close to it
        assert m.metrics["outputs"]["logits"]["cosine_similarity"] > 0.995
        _selftest_on_native_and_qdq(pkg)


def test_dynamic_dims_are_named(files) -> None:
    out = files["dir"] / "mlp.edgepkg"
    assert edge("quantize", str(files["mlp"]), "--calibration", str(files["dir"] / "seq.npy"),
                "--out", str(out), "--quiet") == 0  # fmt: skip
    with open_package(out) as pkg:
        assert pkg.manifest.inputs[0].shape == ("batch", "seq", 16)
        assert pkg.manifest.outputs[0].shape == ("batch", "seq", 16)
        assert "top1_agreement" not in pkg.manifest.metrics["outputs"]["y"]
        _selftest_on_native_and_qdq(pkg)

    # dims the exporter left unnamed get names
    model = tiny_mlp_seq()
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.shape.CopyFrom(
            helper.make_tensor_type_proto(1, [None, None, 16]).tensor_type.shape
        )
    path = save(model, files["dir"] / "anon.onnx")
    result = quantize_model(path, files["dir"] / "anon.edgepkg",
                            QuantizeOptions(calibration=files["dir"] / "seq.npy", progress=False))  # fmt: skip
    manifest = result.package.manifest
    assert manifest.inputs[0].shape == ("batch", "x_1", 16)
    assert manifest.outputs[0].shape == ("batch", "y_1", 16)


def test_image_folder_records_preprocessing(files) -> None:
    image = pytest.importorskip("PIL.Image")
    folder = files["dir"] / "images"
    folder.mkdir(exist_ok=True)
    x, _ = digits()
    for i in range(12):
        image.fromarray((x[i, 0] * 255).astype(np.uint8)).resize((16, 16)).save(folder / f"{i:02}.png")
    out = files["dir"] / "img.edgepkg"
    assert edge("quantize", str(files["cnn"]), "--calibration", str(folder), "--out", str(out),
                "--mean", "0.1", "--std", "0.5", "--quiet") == 0  # fmt: skip
    with open_package(out) as pkg:
        pre = pkg.manifest.inputs[0].preprocessing
        assert (pre.layout, pre.mean, pre.std) == ("NCHW", (0.1,), (0.5,))
        assert "12 images" in pkg.manifest.metrics["data"]


def test_bad_calibration_data_is_a_typed_error(files, capsys) -> None:
    out = files["dir"] / "never.edgepkg"
    code = edge("quantize", str(files["cnn"]), "--calibration", str(files["dir"] / "wrong.npy"),
                "--out", str(out), "--quiet")  # fmt: skip
    assert code == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "float32 [batch, 1, 8, 8]" in err and "(N, 1, 8, 8)" in err
    with pytest.raises(DatasetError, match=r"got shape \(4, 8, 8\)"):
        quantize_model(
            files["cnn"], out, QuantizeOptions(calibration=files["dir"] / "wrong.npy", progress=False)
        )
    with pytest.raises(DatasetError, match="dtype int64.*expects float32"):
        quantize_model(
            files["cnn"], out, QuantizeOptions(calibration=np.zeros((2, 1, 8, 8), np.int64), progress=False)
        )


def test_json_metrics_on_stdout(files, capsys) -> None:
    out = files["dir"] / "json.edgepkg"
    assert edge("quantize", str(files["mlp"]), "--calibration", str(files["dir"] / "seq.npy"), "--out", str(out),
                "--method", "percentile", "--quiet", "--json", "--max-samples", "8") == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["samples"] == 8 and metrics["outputs"]["y"]["cosine_similarity"] > 0.99


def test_static_batch_of_one(files) -> None:
    from quantize_models import tiny_cnn

    path = save(tiny_cnn(batch=1), files["dir"] / "static.onnx")
    x, y = digits()
    options = QuantizeOptions(
        calibration=x[:20], eval_data=x[1200:1230], labels=y[1200:1230], batch_size=8, progress=False
    )
    result = quantize_model(path, files["dir"] / "static.edgepkg", options)
    assert result.package.manifest.inputs[0].shape == (1, 1, 8, 8)
    assert result.metrics["samples"] == 30 and "int8_accuracy" in result.metrics
    assert result.package.manifest.provenance["command"].endswith("(Python API)")
    with open_package(result.package.path) as pkg:
        inputs, _ = load_selftest(pkg.read_artifact("selftest"))
        assert inputs["x"].shape == (1, 1, 8, 8)
        _selftest_on_native_and_qdq(pkg)


@pytest.mark.parametrize("builder", ["mobilenet_block", "residual_block", "encoder_layer"])
def test_exporter_style_models(files, builder: str) -> None:
    """The node patterns torch.onnx.export produces (BN, ReLU6 as Clip, depthwise convs, shape
    arithmetic feeding Reshape, attention, decomposed GELU and layer norm) quantize end to end."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "graph"))
    import exporter_models

    model = getattr(exporter_models, builder)()
    path = save(model, files["dir"] / f"{builder}.onnx")
    dims = [d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).normal(size=[12, *dims[1:]]).astype(np.float32)
    options = QuantizeOptions(calibration=x, sparsity="2:4", batch_size=4, progress=False)
    result = quantize_model(path, files["dir"] / f"{builder}.edgepkg", options)
    assert result.sparse_layers
    assert isinstance(result.package.manifest.inputs[0].shape[0], str)  # the batch stays dynamic
    for stats in result.metrics["outputs"].values():
        assert stats["cosine_similarity"] > 0.99
    with open_package(result.package.path) as pkg:
        _selftest_on_native_and_qdq(pkg)


def test_callable_calibration_with_progress(files, capsys) -> None:
    script = files["dir"] / "seq_data.py"
    script.write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    rng = np.random.default_rng(0)\n"
        "    for _ in range(3):\n"
        "        yield {'x': rng.normal(size=(4, 6, 16)).astype(np.float32)}\n"
    )
    out = files["dir"] / "callable.edgepkg"
    assert edge("quantize", str(files["mlp"]), "--calibration", f"{script}:batches", "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "calibrating" in captured.err and "wrote" in captured.err  # progress on stderr
    assert "float vs INT8" in captured.out
    with open_package(out) as pkg:
        assert pkg.manifest.metrics["samples"] == 12
        assert "seq_data.py:batches" in pkg.manifest.provenance["command"]


def test_selftest_tolerance_is_a_few_output_steps_or_the_float_tolerance() -> None:
    logits, probs = QuantParams(0.05, 128, "uint8"), QuantParams(1 / 255, 0, "uint8")
    assert selftest_tolerance({"logits": logits}, ["logits"]) == np.float32(SELFTEST_STEPS * 0.05)
    assert selftest_tolerance({"logits": logits, "probs": probs}, ["probs"]) == np.float32(
        SELFTEST_STEPS / 255
    )
    assert selftest_tolerance({"logits": logits}, ["logits", "hidden"]) == np.float32(SELFTEST_STEPS * 0.05)
    assert selftest_tolerance({}, ["hidden"]) == np.float32(SELFTEST_FLOAT_ATOL)  # a float output
