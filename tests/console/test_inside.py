"""The console's view inside a package (GET /api/v1/packages/{sha}/inside), without a browser:
a real `edge quantize`d CNN with 2:4 sparsity, layer by layer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quantize"))

from quantize_models import digits, digits_cnn_bytes, save

from edge_runtime.cli import main
from fleet.console.views import package_inside


class _Store:
    def __init__(self, path: Path) -> None:
        self.file = path

    def get(self, ref: str) -> dict[str, Any]:
        return {"sha256": ref, "name": "cnn", "version": "1.0.0", "size": 1, "signer": None, "added": 0.0}

    def path(self, sha256: str) -> Path:
        return self.file


class _Manager:
    def __init__(self, path: Path) -> None:
        self.packages = _Store(path)


def test_layers_of_a_quantized_sparse_cnn(tmp_path: Path) -> None:
    x, _ = digits()
    np.savez(tmp_path / "cal.npz", x=x[:160])
    cnn = save(digits_cnn_bytes(), tmp_path / "cnn.onnx")
    out = tmp_path / "cnn.edgepkg"
    argv = ["quantize", str(cnn), "--calibration", str(tmp_path / "cal.npz"), "--out", str(out), "--sparsity", "2:4",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    inside = package_inside(_Manager(out), "c" * 64)
    layers = {layer["name"]: layer for layer in inside["layers"]}
    assert inside["layer_source"] == "onnx"
    assert layers["/conv2/Conv"]["numerics"] == "INT8" and layers["/conv2/Conv"]["sparse_2_4"]
    assert layers["/fc/Gemm"]["numerics"] == "INT8" and layers["/fc/Gemm"]["sparse_2_4"]
    assert layers["/conv1/Conv"]["numerics"] == "INT8" and not layers["/conv1/Conv"]["sparse_2_4"]
    assert layers["/bn/BN"]["numerics"] == "fused"  # folded into conv1 by the lowering
    assert layers["/conv2/Conv"]["macs"] == 18432
    assert layers["/conv1/Conv"]["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert inside["partition"]["native_mac_share"] == 1.0
    assert inside["selftest"]["ran"] and inside["selftest"]["passed"]
    assert "outputs" in inside["accuracy"]  # edge quantize's float-vs-INT8 report
    assert inside["manifest"]["provenance"]["tool"] == "edge quantize"  # shown under "Provenance"
    assert inside["claimed_signer"] is None
