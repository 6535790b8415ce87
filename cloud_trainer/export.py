"""Export a trained (QAT, 2:4) checkpoint to a model package, through ``edge_runtime``.

The steps (:func:`export_package`):

1. rebuild the LightningModule from the checkpoint, with its QAT modules and 2:4 masks;
2. write the float model (batch norm kept, QAT modules removed: :func:`cloud_trainer.qat.to_float`)
   as ONNX with :func:`cloud_trainer.models.export_onnx`; import and optimize it with
   ``edge_runtime.graph`` exactly as the device will (batch norm folded, activations fused);
3. **activation parameters from QAT**: each QAT observer's frozen range is the
   :class:`~edge_runtime.numerics.QuantParams` of the graph tensor its module produces (the
   node names of the TorchScript exporter are module scopes: ``/features/block1/conv/Conv``
   is module ``features.block1``). Tensors no QAT module covers (none for the digits CNN;
   residual adds of a MobileNetV2) are calibrated by ``edge_runtime.plan.calibrate`` on
   training samples, and reported;
4-8. the package, assembled as ``edge quantize`` assembles it
   (:func:`edge_runtime.quantize.assemble.assemble_package`): the native INT8 plan
   (2:4 layers are detected from the int8 weights, and the export fails if fewer layers
   than the masks say come out sparse), the QDQ ONNX model for onnxruntime users, metrics
   on the evaluation data (float, the QAT model's own (torch fake quantization) and the
   native plan's accuracy, and native-vs-QAT top-1 agreement), self-test vectors (a few
   evaluation inputs and the plan's outputs), signed when a key is given.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud_trainer.data import Split
from cloud_trainer.errors import CheckpointError, ExportError
from cloud_trainer.lightning import DigitsDataModule, EdgeModule, ImageClassifier, SyntheticImagesDataModule
from cloud_trainer.models import export_onnx
from cloud_trainer.qat import (
    INPUT_KEY,
    activation_params_by_module,
    is_prepared,
    prepare_qat,
    qat_weight_bits,
    to_float,
)
from edge_runtime.numerics import QuantParams
from edge_runtime.quantize.assemble import (  # as `edge quantize`
    ARTIFACT_PATHS,
    Lowered,
    PackageFields,
    assemble_package,
    native_backend,
)

__all__ = ["ARTIFACT_PATHS", "ExportResult", "export_package", "load_checkpoint", "map_activation_params"]

log = logging.getLogger(__name__)

SELFTEST_SAMPLES = 4


@dataclass
class ExportResult:
    """What :func:`export_package` wrote and measured."""

    path: Path
    sha256: str
    signer: str | None
    metrics: dict[str, Any]
    activations: dict[str, QuantParams]
    calibrated: list[str] = field(default_factory=list)  # tensors QAT did not cover
    sparse_layers: list[str] = field(default_factory=list)


def load_checkpoint(
    path: str | Path, module_class: type[EdgeModule] = ImageClassifier
) -> tuple[EdgeModule, dict]:
    """The LightningModule of a checkpoint (QAT modules restored) and the raw checkpoint dict."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    # LightningCLI records the class as "_class_path" (and "_instantiator") among the hyperparameters.
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    class_path = ckpt.get("hyper_parameters", {}).get("_class_path")
    if class_path and module_class is ImageClassifier:
        module_name, _, class_name = str(class_path).rpartition(".")
        module_class = getattr(importlib.import_module(module_name), class_name)
    module = module_class(**hparams)
    state = ckpt["state_dict"]
    if any(".qat_input." in k or k.startswith("model.qat_input") for k in state):
        prepare_qat(module.model)
    missing, unexpected = module.load_state_dict(state, strict=False)
    # Checkpoints written before 7-bit weights have no weight_bits buffers: they keep 8.
    missing = [k for k in missing if not k.endswith(".weight_bits")]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit {module_class.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    module.eval()
    return module, ckpt


def _sparse_masks(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    for key, state in ckpt.get("callbacks", {}).items():
        if str(key).startswith("TwoFourSparsity") and isinstance(state, dict):
            return dict(state.get("masks", {}))
    return {}


def map_activation_params(graph: Any, by_module: Mapping[str, QuantParams]) -> dict[str, QuantParams]:
    """QAT parameters by graph tensor: a module's parameters go to the last tensor produced by a
    node in its scope (``/features/block1/...`` for module ``features.block1``); the input's to the
    graph's first float input."""
    from edge_runtime.plan import tensors_to_calibrate

    names = tensors_to_calibrate(graph)
    result: dict[str, QuantParams] = {}
    if INPUT_KEY in by_module and graph.inputs:
        result[graph.inputs[0].name] = by_module[INPUT_KEY]
    for module_name, qp in by_module.items():
        if module_name == INPUT_KEY:
            continue
        scope = "/" + module_name.replace(".", "/") + "/"
        owned = [t for t in names if (p := graph.producer(t)) is not None and p.name.startswith(scope)]
        if not owned:
            raise ExportError(
                f"no tensor of the optimized graph comes from QAT module {module_name!r} (scope {scope})"
            )
        result[owned[-1]] = qp
    return result


def _check_sparse_layers(graph: Any, plan: Any, masks: Mapping[str, torch.Tensor]) -> list[str]:
    """Graph node names of the layers trained 2:4, checked: their folded weights are 2:4 in the
    kernels' order, and the plan runs them on the sparse kernels (gemm24, conv2d24).

    Depthwise convolutions are never masked (their reduction is one channel's taps).
    """
    from cloud_trainer.sparsity import is_2_4

    on_sparse_kernel = set(plan.sparse_layers())
    nodes = []
    for mask_name in sorted(masks):
        parts = mask_name.split(".")
        scopes = ["/" + "/".join(parts) + "/", "/" + "/".join(parts[:-1]) + "/"]  # QuantLinear adds ".linear"
        node = next(
            (
                n
                for scope in scopes
                for n in graph.nodes
                if n.op_type in ("Conv", "Gemm", "MatMul") and n.name.startswith(scope)
            ),
            None,
        )
        if node is None:
            raise ExportError(f"no Conv/Gemm node of the optimized graph comes from 2:4 layer {mask_name!r}")
        weight = graph.constant(node.inputs[1])
        if weight is None or not is_2_4(torch.from_numpy(np.ascontiguousarray(weight))):
            raise ExportError(
                f"layer {mask_name!r} (node {node.name}) was trained 2:4 but its exported weights are not 2:4"
            )
        if node.name not in on_sparse_kernel:
            raise ExportError(f"2:4 layer {node.name} does not run on the native sparse kernel")
        nodes.append(node.name)
    return nodes


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def _torch_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
        )


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _eval_data(module: EdgeModule, ckpt: Mapping[str, Any]) -> tuple[Split, Split]:
    """(calibration samples, evaluation split) for the built-in tasks, from the checkpoint's data settings."""
    name = getattr(module.hparams, "model_name", "digits_cnn")
    if name == "digits_cnn":
        dm = DigitsDataModule(
            **{k: v for k, v in ckpt.get("datamodule_hyper_parameters", {}).items() if k == "split_seed"}
        )
    else:
        args = module.hparams.get("model_args") or {}
        dm = SyntheticImagesDataModule(
            image_size=args.get("image_size", 64), num_classes=args.get("num_classes", 10)
        )
    dm.setup("fit")
    assert dm.train is not None and dm.test is not None
    return dm.train, dm.test


def export_package(
    checkpoint: str | Path,
    out: str | Path,
    *,
    signing_key: Any = None,
    name: str | None = None,
    version: str = "1.0.0",
    eval_data: Split | None = None,
    calibration_data: Split | None = None,
    threads: int = 1,
    progress: bool = True,
    module_class: type[EdgeModule] = ImageClassifier,
) -> ExportResult:
    """Write the package ``out`` from a training checkpoint (see the module docstring).

    ``eval_data``/``calibration_data`` default to the built-in task's test split and
    training split. ``signing_key`` is an Ed25519 private key or a path to one.
    """
    from edge_runtime.graph import check_supported, import_onnx, optimize

    native = native_backend()

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr)

    module, ckpt = load_checkpoint(checkpoint, module_class)
    if not is_prepared(module.model):
        raise ExportError(
            f"{checkpoint} was not trained with QuantizationAwareTraining: no QAT ranges to export"
        )
    qat_model = module.model
    float_model = to_float(qat_model).eval()
    if eval_data is None or calibration_data is None:
        train, test = _eval_data(module, ckpt)
        eval_data = eval_data or test
        calibration_data = calibration_data or train

    # 2. Float ONNX, optimized as the device does.
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(float_model, Path(tmp) / "model.onnx")  # type: ignore[arg-type]
        float_bytes = onnx_path.read_bytes()
    graph = optimize(import_onnx(float_bytes))
    check_supported(graph)
    input_name = graph.inputs[0].name

    # 3. Activation parameters: QAT first, calibration for what QAT does not cover.
    activations = map_activation_params(graph, activation_params_by_module(qat_model))
    missing = [t for t in native.tensors_to_calibrate(graph) if t not in activations]
    calibrated: list[str] = []
    if missing:
        batches = [
            {input_name: calibration_data.x[i : i + 64]}
            for i in range(0, min(len(calibration_data), 256), 64)
        ]
        found = native.calibrate(graph, batches, method="minmax", progress=False)
        for t in missing:
            if t in found:
                activations[t] = found[t]
        calibrated = [t for t in missing if t in found]
    sparse_layers: list[str] = []

    def describe(lowered: Lowered) -> PackageFields:
        # 4. The native plan: what layout ops did not override, the 2:4 layers on the sparse kernels.
        calibrated[:] = [t for t in calibrated if lowered.plan.params.get(t) == activations[t]]
        say(
            f"activation parameters: {len(activations) - len(missing)} from QAT, {len(calibrated)} calibrated"
        )
        sparse_layers[:] = _check_sparse_layers(graph, lowered.plan, _sparse_masks(ckpt))
        # 6. Metrics.
        metrics = _metrics(
            lowered.session, input_name, graph.outputs[0].name, qat_model, float_model, eval_data
        )
        metrics["sparsity"] = "2:4" if sparse_layers else None
        say(
            f"top-1: float {metrics['float']['top1']:.4f}, QAT {metrics['int8_qat']['top1']:.4f}, "
            f"native INT8 {metrics['int8']['top1']:.4f}; native/QAT agreement "
            f"{metrics['native_vs_qat_top1_agreement']:.4f}"
        )
        return PackageFields(
            name=name or getattr(module.model, "name", "") or "model",
            version=version,
            method="qat",
            metrics=metrics,
            provenance=_provenance(ckpt, Path(checkpoint)),
            quantization={"calibrated_tensors": calibrated},
            sparse_layers=sparse_layers,
        )

    done = assemble_package(
        out,
        graph,
        activations,
        float_bytes=float_bytes,
        selftest_inputs={input_name: eval_data.x[:SELFTEST_SAMPLES]},
        describe=describe,
        signing_key=signing_key,
        threads=threads,
        weight_bits=qat_weight_bits(qat_model),
    )
    info = done.package
    say(f"wrote {info.path}: {info.size} bytes, {'signed by ' + info.signer if info.signer else 'unsigned'}")
    return ExportResult(
        path=Path(info.path),
        sha256=info.sha256,
        signer=info.signer,
        metrics=done.manifest["metrics"],
        activations=done.lowered.activations,
        calibrated=calibrated,
        sparse_layers=sparse_layers,
    )


def _metrics(
    session: Any,
    input_name: str,
    output_name: str,
    qat_model: torch.nn.Module,
    float_model: torch.nn.Module,
    eval_data: Split,
) -> dict[str, Any]:
    """Float, QAT (torch fake quantization) and native INT8 top-1 on ``eval_data``, and native/QAT agreement."""
    x, y = eval_data.x, eval_data.y
    native_logits = np.concatenate(
        [session.run({input_name: x[i : i + 64]})[output_name] for i in range(0, len(x), 64)]
    )
    qat_logits = _torch_logits(qat_model, x)
    float_logits = _torch_logits(float_model, x)
    return {
        "data": f"{len(y)} evaluation samples",
        "float": {"top1": _accuracy(float_logits, y)},
        "int8_qat": {"top1": _accuracy(qat_logits, y)},
        "int8": {"top1": _accuracy(native_logits, y)},
        "native_vs_qat_top1_agreement": float((native_logits.argmax(1) == qat_logits.argmax(1)).mean()),
    }


def _provenance(ckpt: Mapping[str, Any], checkpoint: Path) -> dict[str, Any]:
    return {
        "tool": "edge train export",
        "trainer_config": {k: _jsonable(v) for k, v in dict(ckpt.get("hyper_parameters", {})).items()},
        "checkpoint": {
            "file": checkpoint.name,
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        },
        "git_revision": _git_revision(),
        "lightning_version": ckpt.get("pytorch-lightning_version"),
        "torch_version": torch.__version__,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)
