"""7-bit weights ([-63, 63]): numerics, lowering, the manifest's declaration, `edge quantize --weight-bits`.

The kernels' side (the AVX2 vpmaddubsw kernel, bit-exact with every ISA) is tested
in tests/kernels/test_gemm.py and native/tests/test_q8_gemm.c.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from quantize_models import digits, digits_cnn_bytes, save, tiny_mlp_seq

from edge_runtime import cli, numerics
from edge_runtime.backends.native import activation_params_from_manifest
from edge_runtime.errors import PackageFormatError, QuantizationError
from edge_runtime.graph import import_onnx, optimize
from edge_runtime.kernels import supported_isas, use_isa
from edge_runtime.package import load_selftest, open_package
from edge_runtime.package._manifest import Manifest
from edge_runtime.plan import NativeSession, QuantizedPlan
from edge_runtime.plan.lower import lower
from edge_runtime.quantize import pipeline
from edge_runtime.quantize.qdq import quantized_weights


def test_quantize_weights_7_bits_is_symmetric_per_channel_in_63() -> None:
    w = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32)
    w[2] = 0.0  # a channel of zeros keeps the floor scale
    q7 = numerics.quantize_weights(w, axis=0, bits=7)
    assert q7.values.dtype == np.int8
    assert np.abs(q7.values).max() == 63
    np.testing.assert_array_equal(np.abs(q7.values).max(axis=1)[[0, 1, 3, 4, 5]], 63)
    expected = np.maximum(np.abs(w).max(axis=1) / np.float32(63), np.float32(numerics.MIN_WEIGHT_SCALE))
    np.testing.assert_array_equal(q7.scales, expected.astype(np.float32))
    np.testing.assert_array_equal(q7.values, np.rint(w / q7.scales[:, None]).astype(np.int8))
    # half a 7-bit step at most
    assert np.all(np.abs(q7.dequantize() - w) <= q7.scales[:, None] / 2 * (1 + 1e-6))
    q8 = numerics.quantize_weights(w, axis=0)
    assert np.abs(q8.values).max() == 127 and q8.values.shape == q7.values.shape
    assert numerics.weight_qmax(7) == 63 and numerics.weight_qmax() == numerics.WEIGHT_QMAX == 127
    with pytest.raises(QuantizationError, match="8 or 7"):
        numerics.quantize_weights(w, bits=6)


def _manifest(**quantization) -> dict:
    return {
        "schema_version": 1,
        "name": "m",
        "version": "1.0.0",
        "created": "2026-01-01T00:00:00Z",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2]}],
        "artifacts": [{"path": "model.onnx", "kind": "onnx", "sha256": "0" * 64, "size": 1}],
        "quantization": quantization,
    }


def test_manifest_declares_weight_bits_older_ones_are_8() -> None:
    assert Manifest.from_dict(_manifest()).weight_bits == 8
    assert Manifest.from_dict(_manifest(weight_bits=7)).weight_bits == 7
    assert Manifest.from_dict(_manifest(weight_bits=8)).weight_bits == 8
    for bad in (6, 9, True, "7", 7.0, None, 10**60):
        with pytest.raises(PackageFormatError, match="weight_bits"):
            Manifest.from_dict(_manifest(weight_bits=bad))


def test_default_weight_bits_follows_the_profile() -> None:
    assert pipeline.default_weight_bits(SimpleNamespace(name="generic-x86_64", kernel_isa="avx2"))[0] == 7
    for isa in ("avx512vnni", "neon", "neondot", "scalar"):
        bits, why = pipeline.default_weight_bits(SimpleNamespace(name="p", kernel_isa=isa))
        assert bits == 8 and isa in why


def test_default_weight_bits_for_named_target_profiles() -> None:
    from device_profiles import PROFILES

    # The generic x86-64 profile's VNNI is known only on the device: 7 bits are exact everywhere.
    assert pipeline.default_weight_bits(PROFILES["generic-x86_64"])[0] == 7
    for name in ("raspberrypi-4b", "raspberrypi-5", "jetson-orin-nano", "generic-arm64"):
        assert pipeline.default_weight_bits(PROFILES[name])[0] == 8


def test_quantize_profile_option_picks_the_default(files, capsys) -> None:
    out = files["dir"] / "profile.edgepkg"
    argv = ["quantize", str(files["mlp"]), "--calibration", str(files["dir"] / "seq.npy"), "--out", str(out),
            "--quiet", "--json"]  # fmt: skip
    assert cli.main([*argv, "--profile", "generic-x86_64"]) == 0
    assert "weight bits: 7 (default: profile generic-x86_64 may lack VNNI" in capsys.readouterr().err
    with open_package(out) as pkg:
        assert pkg.manifest.weight_bits == 7
    assert cli.main([*argv, "--profile", "raspberrypi-4b"]) == 0
    with open_package(out) as pkg:
        assert pkg.manifest.weight_bits == 8
    assert cli.main([*argv, "--profile", "no-such-board"]) == 1
    assert "unknown device profile 'no-such-board'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weight_bits")
    x, _ = digits()
    np.savez(d / "cal.npz", x=x[:96])
    np.save(d / "seq.npy", np.random.default_rng(0).normal(size=(16, 6, 16)).astype(np.float32))
    return {
        "dir": d,
        "cnn": save(digits_cnn_bytes(), d / "cnn.onnx"),
        "mlp": save(tiny_mlp_seq(), d / "mlp.onnx"),
    }


def _weights(plan: QuantizedPlan) -> list[np.ndarray]:
    return [s.arrays["weights"] for s in plan.steps if s.op in ("gemm", "conv")]


@pytest.mark.parametrize("model,data", [("cnn", "cal.npz"), ("mlp", "seq.npy")])
def test_quantize_weight_bits_7_package(files, capsys, model: str, data: str) -> None:
    out = files["dir"] / f"{model}7.edgepkg"
    argv = ["quantize", str(files[model]), "--calibration", str(files["dir"] / data), "--out", str(out),
            "--weight-bits", "7", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "weight bits: 7 (--weight-bits)" in capsys.readouterr().out
    with open_package(out) as pkg:
        q = pkg.manifest.quantization
        assert pkg.manifest.weight_bits == 7 and q["weight_bits"] == 7
        assert q["weights"]["range"] == [-63, 63]
        assert "--weight-bits 7" in pkg.manifest.provenance["command"]
        plan = QuantizedPlan.from_bytes(pkg.read_artifact("native-plan"))
        weights = _weights(plan)
        assert weights and all(np.abs(w).max() <= 63 for w in weights)
        assert max(np.abs(w).max() for w in weights) == 63
        # the QDQ model carries the same 7-bit weights
        graph = optimize(import_onnx(pkg.read_artifact("onnx")))
        assert all(np.abs(wq.values).max() <= 63 for wq in quantized_weights(graph, 7).values())
        # lowering the float model at load (the native backend without the plan artifact) reads
        # the declared width from the manifest and makes the same weights
        activations = activation_params_from_manifest(q)
        again = lower(graph, activations, weight_bits=pkg.manifest.weight_bits)
        for ours, packaged in zip(_weights(again), weights, strict=True):
            np.testing.assert_array_equal(ours, packaged)
        with pytest.raises(QuantizationError, match="8 or 7"):
            lower(graph, activations, weight_bits=6)
        # the self-test passes, and every ISA gives the same bytes (AVX2: the 7-bit kernel)
        inputs, expected = load_selftest(pkg.read_artifact("selftest"))
        outputs = []
        for isa in supported_isas():
            with use_isa(isa):
                outputs.append(NativeSession(plan, cache_dir=False).run(inputs))
        for name, value in expected.items():
            np.testing.assert_allclose(outputs[0][name], value, atol=pkg.manifest.selftest.atol, rtol=0)
            for other in outputs[1:]:
                np.testing.assert_array_equal(other[name], outputs[0][name])


def test_quantize_default_weight_bits_says_which(files, capsys, monkeypatch) -> None:
    out = files["dir"] / "default.edgepkg"
    argv = ["quantize", str(files["mlp"]), "--calibration", str(files["dir"] / "seq.npy"), "--out", str(out),
            "--quiet", "--json"]  # fmt: skip
    monkeypatch.setattr(
        pipeline,
        "default_weight_bits",
        lambda profile=None: (7, "profile generic-x86_64 is x86 without VNNI"),
    )
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays JSON only
    assert "weight bits: 7 (default: profile generic-x86_64 is x86 without VNNI)" in captured.err
    with open_package(out) as pkg:
        assert pkg.manifest.weight_bits == 7
    monkeypatch.setattr(
        pipeline, "default_weight_bits", lambda profile=None: (8, "profile p has kernel ISA neon")
    )
    assert cli.main(argv) == 0
    assert "weight bits: 8 (default: profile p has kernel ISA neon)" in capsys.readouterr().err
    with open_package(out) as pkg:
        assert pkg.manifest.weight_bits == 8
        assert pkg.manifest.quantization["weights"]["range"] == [-127, 127]
