"""A small model with the operators real vision/audio models use, as torch's TorchScript-based
exporter writes it at opsets 11 and 17 (dynamic batch and width): imported, optimized and run
by the reference like onnxruntime runs it, and lowered to a native plan that agrees."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from graph_testing import run_ort

from edge_runtime.graph import check_supported, import_onnx, optimize, reference

torch = pytest.importorskip("torch")


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, stride=(2, 1), padding=1, groups=8)
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.lstm = torch.nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(12, 5)
        self.prelu = torch.nn.PReLU(8)

    def forward(self, x):
        y = torch.nn.functional.hardswish(self.bn(self.c1(x)))
        y = self.prelu(torch.nn.functional.silu(self.dw(y)))
        y = torch.nn.functional.pad(y, (1, 1, 0, 0), mode="reflect")
        y = self.up(y) + torch.nn.functional.leaky_relu(self.up(y), 0.1)
        seq = y.mean(2).permute(0, 2, 1)
        out, _ = self.lstm(seq)
        logits = self.fc(out)
        return torch.softmax(logits, dim=-1), torch.log_softmax(logits, dim=2)


def _export(opset: int) -> bytes:
    torch.manual_seed(0)
    model = _Model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(2, 3, 16, 20),), buffer, opset_version=opset, dynamo=False,
            input_names=["x"], output_names=["p", "lp"], dynamic_axes={"x": {0: "batch", 3: "width"}},
        )  # fmt: skip
    return buffer.getvalue()


@pytest.mark.parametrize("opset", [11, 17])
def test_torch_export_imports_and_matches_onnxruntime(opset: int) -> None:
    import onnx

    data = _export(opset)
    graph = optimize(import_onnx(data))
    check_supported(graph)
    ops = set(graph.op_types())
    assert {"HardSwish", "Sigmoid", "LSTM", "PRelu", "Pad", "LeakyRelu"} <= ops
    assert "Shape" not in ops and "ConstantOfShape" not in ops  # the LSTM's zero state went away
    model = onnx.load_from_string(data)
    for shape in ((2, 3, 16, 20), (1, 3, 16, 28)):
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        want = run_ort(model, {"x": x})
        got = reference.run(graph, {"x": x})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-4)


def test_torch_export_runs_natively() -> None:
    native = pytest.importorskip("edge_runtime.plan")
    pytest.importorskip("edge_runtime.kernels")
    import onnx

    data = _export(11)
    graph = optimize(import_onnx(data))
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((1, 3, 16, 20)).astype(np.float32)} for _ in range(8)]
    session = native.NativeSession(native.lower(graph, native.calibrate(graph, calibration, progress=False)))
    x = rng.standard_normal((1, 3, 16, 20)).astype(np.float32)
    want = run_ort(onnx.load_from_string(data), {"x": x})["p"]
    got = session.run({"x": x})["p"]
    assert got.shape == want.shape
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.8
    assert np.abs(got - want).max() < 0.1


@pytest.mark.parametrize("opset", [11, 17])
def test_edge_quantize_of_the_torch_export_loads_on_both_backends(opset: int, tmp_path) -> None:
    """The package's QDQ model (written from the optimized graph at its opset) must stay valid
    ONNX: SiLU stays Sigmoid * x, Pad and Split keep their opset's input form."""
    pytest.importorskip("edge_runtime.kernels")
    import edge_runtime
    from edge_runtime.quantize import QuantizeOptions, quantize_model

    source = tmp_path / "model.onnx"
    source.write_bytes(_export(opset))
    calibration = np.random.default_rng(0).standard_normal((8, 3, 16, 20)).astype(np.float32)
    out = tmp_path / "model.edgepkg"
    quantize_model(source, out, QuantizeOptions(calibration=calibration, progress=False, selftest_samples=1))
    x = calibration[:1]
    with (
        edge_runtime.load(out, backend="onnxruntime", profile=None) as qdq,
        edge_runtime.load(out, backend="native", profile=None) as native,
    ):
        a, b = qdq.run({"x": x})["p"], native.run({"x": x})["p"]
    assert a.shape == b.shape and a.shape[0] == 1 and a.shape[-1] == 5
    assert np.abs(a - b).max() < 0.1
