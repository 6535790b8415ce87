"""Helpers for the package, store and CLI tests: a small valid manifest and its artifacts.

A plain module rather than conftest.py, which other test files in this folder share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.package import PackageInfo, make_selftest, write_package


def base_manifest(**overrides: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "name": "mnist-cnn",
        "version": "1.2.0",
        "created": "2024-05-01T12:00:00Z",
        "inputs": [
            {
                "name": "image",
                "dtype": "float32",
                "shape": ["batch", 1, 28, 28],
                "preprocessing": {"layout": "NCHW", "mean": [0.1307], "std": [0.3081]},
            }
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}],
        "artifacts": [
            {"path": "model.onnx", "kind": "onnx"},
            {"path": "plan/model.plan", "kind": "native-plan"},
            {"path": "selftest.npz", "kind": "selftest"},
        ],
        "quantization": {"weights": "int8-per-channel", "scales": [0.5, 0.25]},
        "sparsity": {"pattern": "2:4", "layers": ["fc1"]},
        "requirements": {"min_runtime_version": "0.1", "isas": ["avx2", "neon"], "profiles": []},
        "selftest": {"artifact": "selftest.npz", "atol": 0.01, "rtol": 0.0},
        "metrics": {"float_accuracy": 0.991, "int8_accuracy": 0.989, "data": "mnist-test"},
        "provenance": {"git_revision": "abc123", "trainer": {"epochs": 3}},
    }
    manifest.update(overrides)
    return manifest


def base_artifacts(tmp_path: Path) -> dict[str, bytes | Path]:
    plan = tmp_path / "model.plan"
    plan.write_bytes(bytes(range(256)) * 64)
    selftest = make_selftest(
        {"image": np.zeros((1, 1, 28, 28), np.float32)}, {"logits": np.arange(10, dtype=np.float32)[None]}
    )
    return {"model.onnx": b"\x08\x07fake-onnx-bytes" * 10, "plan/model.plan": plan, "selftest.npz": selftest}


def write_valid(
    out: Path,
    work: Path,
    signing_key: Ed25519PrivateKey | None = None,
    compress: bool = True,
    **manifest_overrides: Any,
) -> PackageInfo:
    """Write a valid package to ``out``; artifacts are staged in ``work``."""
    return write_package(
        out, base_manifest(**manifest_overrides), base_artifacts(work), signing_key, compress=compress
    )
