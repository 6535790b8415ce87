"""``edge run`` and ``edge bench`` through main(argv): exit codes, printed summaries, written files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_helpers import (
    IN_FEATURES,
    mlp_layers,
    mlp_onnx,
    mlp_package,
    mlp_reference,
    requires_tflite,
    two_input_onnx,
)

from edge_runtime.backends.tflite_writer import write_mlp_tflite
from edge_runtime.benchmark import random_inputs
from edge_runtime.cli import main
from edge_runtime.errors import ModelInputError
from edge_runtime.package import TensorSpec

FLOAT_ATOL = 1e-5
PI4 = ["--profile", "raspberrypi-4b"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp_onnx(mlp_layers()))
    return path


@pytest.fixture
def x_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((3, IN_FEATURES)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path, x


# --- edge run ---


def test_run_prints_summary_and_writes_outputs(tmp_path: Path, model: Path, x_file, capsys):
    path, x = x_file
    out_dir = tmp_path / "out"
    rc = main(["run", str(model), "--input", f"input={path}", "--out", str(out_dir), "--threads", "1", *PI4])
    assert rc == 0
    text = capsys.readouterr().out
    assert "backend: onnxruntime (profile raspberrypi-4b prefers native" in text
    assert "output           float32  [3, 4]  min" in text
    written = np.load(out_dir / "output.npy")
    np.testing.assert_allclose(written, mlp_reference(mlp_layers(), x), atol=FLOAT_ATOL)


@requires_tflite
def test_run_single_input_shorthand_and_json(tmp_path: Path, x_file, capsys):
    path, x = x_file
    tfl = tmp_path / "mlp.tflite"
    tfl.write_bytes(write_mlp_tflite(mlp_layers()))
    assert main(["run", str(tfl), "-i", str(path), "--backend", "tflite", "--json", *PI4]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["info"]["backend"] == "tflite"
    assert doc["outputs"]["output"]["shape"] == [3, 4] and doc["outputs"]["output"]["file"] is None
    ref = mlp_reference(mlp_layers(), x)
    assert doc["outputs"]["output"]["max"] == pytest.approx(ref.max(), abs=FLOAT_ATOL)


def test_run_package(tmp_path: Path, x_file, capsys):
    pkg = mlp_package(tmp_path / "mlp.edgepkg").path
    assert main(["run", str(pkg), "--input", f"input={x_file[0]}", *PI4]) == 0
    assert "model:   tiny-mlp 1.0.0 (package, sha256" in capsys.readouterr().out


def test_run_wrong_input_exits_1_with_expected_spec(tmp_path: Path, model: Path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 8, 8), np.int64))
    assert main(["run", str(model), "--input", f"input={bad}", *PI4]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edge run: error: input 'input': expected float32 [batch, 8], got int64 [2, 8, 8]")


def test_run_unknown_name_missing_input_and_bad_file(tmp_path: Path, model: Path, x_file, capsys):
    assert main(["run", str(model), "--input", f"image={x_file[0]}", *PI4]) == 1
    assert "unknown input(s) 'image'" in capsys.readouterr().err
    assert main(["run", str(model), *PI4]) == 1
    assert "missing input(s) 'input' (float32 [batch, 8])" in capsys.readouterr().err
    junk = tmp_path / "junk.npy"
    junk.write_text("not numpy")
    assert main(["run", str(model), "--input", f"input={junk}", *PI4]) == 1
    assert f"{junk} is not a .npy array" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "absent.onnx"), *PI4]) == 1
    assert "No such file" in capsys.readouterr().err


def test_run_shorthand_on_multi_input_model_exits_1(tmp_path: Path, x_file, capsys):
    two = tmp_path / "two.onnx"
    two.write_bytes(two_input_onnx())
    assert main(["run", str(two), "--input", str(x_file[0]), *PI4]) == 1
    assert "the model has inputs a, b, ids: name each one" in capsys.readouterr().err


def test_run_native_backend_exits_1(model: Path, x_file, capsys):
    assert main(["run", str(model), "--input", f"input={x_file[0]}", "--backend", "native", *PI4]) == 1
    assert "needs a package made by `edge quantize`" in capsys.readouterr().err


# --- edge bench ---


def test_bench_json(model: Path, capsys):
    rc = main(["bench", str(model), "--iterations", "7", "--warmup", "2", "--batch", "3", "--json", *PI4])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["iterations"] == 7 and result["batch"] == 3 and result["backend"] == "onnxruntime"
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result["throughput"] > 0 and result["peak_rss_mib"] > 10
    assert result["cold_start_ms"] == pytest.approx(result["load_ms"] + result["first_run_ms"])
    assert result["session"]["providers"] == ["CPUExecutionProvider"]


@requires_tflite
def test_bench_text_with_seconds(tmp_path: Path, capsys):
    pkg = mlp_package(tmp_path / "mlp.edgepkg").path
    assert main(["bench", str(pkg), "--seconds", "0.05", "--backend", "tflite", "--threads", "1", *PI4]) == 0
    text = capsys.readouterr().out
    for label in (
        "model:       tiny-mlp 1.0.0 on tflite (threads 1, batch 1)",
        "cold start:",
        "p99",
        "samples/s",
    ):
        assert label in text
    assert "peak RSS:" in text


def test_bench_usage_and_failures(model: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(model), "--iterations", "3", "--seconds", "1"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(model), "--batch", "0"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["bench", str(model), "--backend", "native", *PI4]) == 1
    assert "edge bench: error: " in capsys.readouterr().err


def test_random_inputs_follow_specs():
    specs = (
        TensorSpec("image", "float32", ("batch", 3, "height", 4)),
        TensorSpec("ids", "int64", ("batch",)),
        TensorSpec("mask", "bool", ("batch",)),
        TensorSpec("pixels", "uint8", (2,)),
    )
    arrays = random_inputs(specs, batch=5, dims={"height": 6}, seed=1)
    assert arrays["image"].shape == (5, 3, 6, 4) and arrays["image"].dtype == np.float32
    assert arrays["ids"].dtype == np.int64 and 0 <= arrays["ids"].min() and arrays["ids"].max() < 100
    assert arrays["mask"].dtype == np.bool_ and arrays["pixels"].dtype == np.uint8
    again = random_inputs(specs, batch=5, dims={"height": 6}, seed=1)
    np.testing.assert_array_equal(arrays["image"], again["image"])  # seeded
    with pytest.raises(ModelInputError, match="dynamic dimension 'height' at axis 2; give its size"):
        random_inputs(specs[:1], batch=1)


def test_bench_dynamic_dims(tmp_path: Path, capsys):
    two = tmp_path / "two.onnx"
    two.write_bytes(two_input_onnx())
    assert main(["bench", str(two), "-n", "2", "--batch", "2", "--json", *PI4]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"] == 2
    assert main(["bench", str(two), "--dim", "batch", *PI4]) == 1
    assert "--dim batch: expected NAME=N" in capsys.readouterr().err


def test_edge_run_in_a_real_process(tmp_path: Path, model: Path, x_file):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "edge_runtime.cli", "run", str(model), "-i", str(x_file[0]), *PI4]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "output           float32  [3, 4]" in proc.stdout
