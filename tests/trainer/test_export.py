"""QAT training -> export -> the native backend agrees with the QAT model; signing; push."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")

from cloud_trainer.data import load_digits_splits
from cloud_trainer.errors import PushError
from cloud_trainer.export import export_package, load_checkpoint
from cloud_trainer.lightning import DigitsDataModule, ImageClassifier
from cloud_trainer.push import push_package
from cloud_trainer.qat import QuantizationAwareTraining
from cloud_trainer.sparsity import TwoFourSparsity

AGREEMENT = 0.995  # the issue's bar: native INT8 vs the QAT model's own evaluation, top-1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pl.seed_everything(0)
    epochs = 8
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            QuantizationAwareTraining(start_epoch=1, freeze_bn_epoch=5, freeze_observers_epoch=6),
            TwoFourSparsity(start_epoch=3),
        ],
    )
    trainer.fit(ImageClassifier(max_epochs=epochs), DigitsDataModule())
    path = tmp_path_factory.mktemp("ckpt") / "digits.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def signed_package(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    from edge_runtime.package import generate_keypair

    tmp = tmp_path_factory.mktemp("pkg")
    key, pub = generate_keypair(tmp / "signer")
    result = export_package(checkpoint, tmp / "digits.edgepkg", signing_key=key, progress=False)
    return result.path, pub, result


def test_native_backend_agrees_with_the_qat_model(checkpoint: Path, signed_package: tuple) -> None:
    import edge_runtime
    from edge_runtime.package import TrustStore

    path, pub, result = signed_package
    test = load_digits_splits().test
    model = edge_runtime.load(path, backend="native", trust_store=TrustStore.load(pub))
    native = np.concatenate(
        [model.run({"input": test.x[i : i + 50]})["logits"] for i in range(0, len(test), 50)]
    )

    module, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        qat = module.model(torch.from_numpy(test.x)).numpy()
    agreement = float((native.argmax(1) == qat.argmax(1)).mean())
    assert agreement >= AGREEMENT
    assert result.metrics["native_vs_qat_top1_agreement"] == pytest.approx(agreement)
    assert result.metrics["int8"]["top1"] >= result.metrics["float"]["top1"] - 0.01
    assert result.calibrated == []  # every parameter came from QAT
    assert result.sparse_layers == ["/features/block2/conv/Conv", "/features/block3/conv/Conv"]


def test_7_bit_qat_checkpoint_exports_a_7_bit_package(checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint whose QAT modules train 7-bit weights exports a package declaring them, and the
    native backend runs exactly what the QAT model computes. (The 8-bit checkpoint's weights, set to
    7 bits: the fake quantization is the deployed arithmetic whatever the weights' history.)"""
    import edge_runtime
    from cloud_trainer.qat import qat_weight_bits
    from edge_runtime.package import open_package

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    keys = [k for k in ckpt["state_dict"] if k.endswith(".weight_bits")]
    assert keys
    for k in keys:
        ckpt["state_dict"][k] = torch.tensor(7)
    seven = tmp_path / "seven.ckpt"
    torch.save(ckpt, seven)
    result = export_package(seven, tmp_path / "seven.edgepkg", progress=False)
    with open_package(result.path) as pkg:
        assert pkg.manifest.weight_bits == 7
        assert pkg.manifest.quantization["weights"]["range"] == [-63, 63]

    module, _ = load_checkpoint(seven)
    assert qat_weight_bits(module.model) == 7
    test = load_digits_splits().test
    model = edge_runtime.load(result.path, backend="native")
    native = np.concatenate(
        [model.run({"input": test.x[i : i + 50]})["logits"] for i in range(0, len(test), 50)]
    )
    with torch.no_grad():
        qat = module.model(torch.from_numpy(test.x)).numpy()
    assert float((native.argmax(1) == qat.argmax(1)).mean()) >= AGREEMENT

    # A checkpoint written before 7-bit weights (no weight_bits buffers) loads as 8-bit.
    for k in keys:
        del ckpt["state_dict"][k]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert qat_weight_bits(load_checkpoint(old)[0].model) == 8


def test_package_is_signed_and_carries_what_the_issue_lists(signed_package: tuple) -> None:
    from edge_runtime.package import TrustStore, open_package

    path, pub, _ = signed_package
    with open_package(path, trust_store=TrustStore.load(pub)) as pkg:
        manifest = pkg.manifest
    raw = manifest.to_dict() if hasattr(manifest, "to_dict") else dict(manifest)
    kinds = {a["kind"] for a in raw["artifacts"]}
    assert {"onnx", "native-plan", "onnx-qdq", "selftest"} <= kinds
    assert raw["quantization"]["method"] == "qat"
    assert raw["sparsity"]["pattern"] == "2:4"
    assert raw["provenance"]["tool"] == "edge train export"
    assert raw["provenance"]["checkpoint"]["global_step"] > 0
    # the self-test tolerance: two of the plan's output quantization steps, as `edge quantize`'s
    assert raw["selftest"]["atol"] == pytest.approx(2 * raw["quantization"]["activations"]["logits"]["scale"])


class _Fleet(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/api/v1/packages":
            self.send_response(404)
            self.end_headers()
            return
        _Fleet.received.append(body)
        payload = json.dumps({"sha256": "x", "size": len(body)}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def test_push_uploads_the_package_bytes(signed_package: tuple) -> None:
    path = signed_package[0]
    server = http.server.HTTPServer(("127.0.0.1", 0), _Fleet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        record = push_package(path, url)
        assert record["size"] == path.stat().st_size
        assert _Fleet.received[-1] == path.read_bytes()
        with pytest.raises(PushError, match="404"):
            push_package(path, url + "/wrong")
    finally:
        server.shutdown()
    with pytest.raises(PushError, match="cannot reach"):
        push_package(path, f"http://127.0.0.1:{server.server_port}", timeout=2)
