"""``edge quantize``: any float ONNX model -> a signed INT8 model package.

The steps, in order (:func:`quantize_model`):

1. read the ONNX model; with ``sparsity="2:4"``, prune the Conv/Gemm/MatMul
   weights to 2:4 along their reduction dimension (:func:`prune_model_2_4`);
   the pruned float model is the package's ``onnx`` artifact;
2. import and optimize the graph (BN folding, fusions, folding of the
   exporters' shape arithmetic with a symbolic batch), check that the native
   backend can take every node;
3. calibrate the activations on the calibration data (progress bar);
4-8. :func:`edge_runtime.quantize.assemble.assemble_package`, shared with the
   trainer's export: lower to the native INT8 plan (``native-plan``), export the
   QDQ ONNX model (``onnx-qdq``), compare float and INT8 on the evaluation data
   (or the calibration data: the manifest's ``metrics``), make the self-test
   vectors (a few calibration inputs and the native plan's outputs, with a
   tolerance of a few of the plan's output quantization steps), write the package
   (signed when a key is given).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_runtime._version import __version__
from edge_runtime.errors import GraphError, QuantizationError, UnsupportedOperatorError
from edge_runtime.graph import Graph, check_supported, import_onnx, optimize, reference
from edge_runtime.numerics import QuantParams
from edge_runtime.package import PackageInfo, load_private_key
from edge_runtime.package._manifest import utc_now_iso
from edge_runtime.quantize.assemble import (
    ARTIFACT_PATHS,
    Lowered,
    PackageFields,
    assemble_package,
    native_backend,
)
from edge_runtime.quantize.data import Dataset, DataSource, ImageOptions, load_data, load_labels
from edge_runtime.quantize.report import AccuracyReport, evaluate, format_table

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "ARTIFACT_PATHS",
    "SPARSITY_PATTERNS",
    "QuantizeOptions",
    "QuantizeResult",
    "default_weight_bits",
    "prune_model_2_4",
    "quantize_model",
]

SPARSITY_PATTERNS = ("2:4",)
# Layers whose reduction is shorter than this stay dense: pruning a 3x3 single-channel stem
# costs accuracy and saves nothing (the native lowering uses the same threshold).
MIN_SPARSE_K = 16
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class QuantizeOptions:
    """What ``edge quantize`` does besides its model and output (each has a CLI flag)."""

    calibration: DataSource
    method: str = "minmax"
    sparsity: str | None = None
    eval_data: DataSource | None = None
    labels: np.ndarray | str | os.PathLike[str] | None = None
    batch_size: int = 8
    max_samples: int | None = None
    threads: int = 1
    name: str | None = None
    version: str = "1.0.0"
    signing_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None
    image_options: ImageOptions | None = None
    selftest_samples: int = 4
    progress: bool = True
    command: str | None = None  # the command line, recorded in the provenance
    # (input name, shape) pairs: calibrate at these representative sizes (--input-shape);
    # empty: at the calibration data's own shapes.
    input_shapes: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    # 8, or 7: weights in [-63, 63], which x86 without VNNI multiplies with vpmaddubsw
    # (--weight-bits; the CLI's default is default_weight_bits(); docs/numerics.md).
    weight_bits: int = 8


def default_weight_bits(profile: Any = None) -> tuple[int, str]:
    """(weight bits, why) for a target device profile (:mod:`device_profiles`; None: this
    machine's, detected): 7 on x86 without VNNI (kernel ISA ``avx2``), where 7-bit weights
    run through ``vpmaddubsw`` without saturation; else 8."""
    if profile is None:
        try:
            from device_profiles import detect_profile

            profile = detect_profile()
        except Exception as exc:  # noqa: BLE001 - any failure to detect: the exact default
            return 8, f"the device profile could not be detected ({exc})"
    isa = getattr(profile, "kernel_isa", None)
    name = getattr(profile, "name", "?")
    if isa == "avx2":
        return 7, f"profile {name} is x86 without VNNI (kernel ISA avx2)"
    if isa == "scalar" and getattr(profile, "cpu_core", None) == "x86-64":
        # The generic x86-64 table profile: whether the device has VNNI is known only there.
        return 7, f"profile {name} may lack VNNI (7-bit weights are exact on every x86 and faster without it)"
    return 8, f"profile {name} has kernel ISA {isa}"


@dataclass
class QuantizeResult:
    """What :func:`quantize_model` wrote and measured."""

    package: PackageInfo
    metrics: dict[str, Any]
    activations: dict[str, QuantParams]
    sparse_layers: list[str] = field(default_factory=list)
    selftest_atol: float = 0.0
    report_table: str = ""


def quantize_model(
    model: str | os.PathLike[str], out: str | os.PathLike[str], options: QuantizeOptions
) -> QuantizeResult:
    """Quantize the ONNX model at ``model`` and write the package ``out`` (see the module docstring).

    Raises GraphError / UnsupportedOperatorError for a model the native backend
    cannot take (naming the nodes), DatasetError for data that does not fit the
    model's inputs (saying what was expected), QuantizationError for parameters
    the integer kernels cannot represent, BackendUnavailableError when the
    native backend is not built.
    """
    native = native_backend()
    say = _Say(options.progress)
    source = Path(model)
    source_bytes = source.read_bytes()
    if options.sparsity not in (None, *SPARSITY_PATTERNS):
        raise QuantizationError(f"sparsity {options.sparsity!r}: supported patterns are {SPARSITY_PATTERNS}")
    key = options.signing_key  # loaded first: a bad key path fails before minutes of calibration
    if key is not None and not hasattr(key, "sign"):
        key = load_private_key(key)

    # 1-2. Prune (optional), import and optimize.
    float_bytes, pruned = source_bytes, []
    if options.sparsity == "2:4":
        proto = _load_onnx(source_bytes, source)
        proto, pruned = prune_model_2_4(proto)
        float_bytes = proto.SerializeToString()
        say(f"pruned {len(pruned)} layer(s) to 2:4")
    graph = optimize(import_onnx(float_bytes))
    try:
        check_supported(graph)
    except UnsupportedOperatorError as exc:
        # The native plan is partitioned: these nodes run in float (edge_runtime.plan.partition);
        # the lowering refuses the graph only when nothing would run natively.
        say(f"some nodes will run in float outside the native kernels: {exc}")
    sparse_layers = _sparse_layer_names(graph, pruned)

    # 3. Calibrate.
    calibration = _load(options.calibration, graph, options)
    say(f"calibrating on {calibration.description} ({options.method})")
    # A data set that does not know its size is passed as a plain iterator (len() would raise).
    batches = calibration if calibration.num_samples is not None else iter(calibration)
    if options.input_shapes:
        from edge_runtime.plan.calibrate import AtInputShapes

        batches = AtInputShapes(calibration, options.input_shapes, graph.inputs)
        say("at input shapes " + ", ".join(f"{n}:{'x'.join(map(str, s))}" for n, s in options.input_shapes))
    engine: dict[str, Any] = {}
    calibrated = native.calibrate(graph, batches, method=options.method, progress=options.progress, info=engine)
    say(f"calibrated {engine['batches']} batch(es) on {engine['engine']} in {engine['seconds']:.1f} s"
        + (f" ({engine['reason']})" if engine["engine"] != "onnxruntime" else ""))  # fmt: skip

    # 4-8. Lower, QDQ model, metrics (float vs INT8), self-test vectors, the package.
    count = calibration.batch_size if calibration.fixed_batch else options.selftest_samples
    report: list[AccuracyReport] = []

    def describe(lowered: Lowered) -> PackageFields:
        report.append(_evaluate(graph, float_bytes, lowered.session, calibration, options))
        return _fields(source, source_bytes, options, calibration, report[0], sparse_layers)

    # The pruned layers are not forced sparse: the plan picks the 2:4 kernel where the weights
    # are 2:4 in its own order, and never re-prunes (which would make it differ from the float model).
    done = assemble_package(
        out,
        graph,
        calibrated,
        float_bytes=float_bytes,
        selftest_inputs=calibration.first(count),
        describe=describe,
        signing_key=key,
        threads=options.threads,
        weight_bits=options.weight_bits,
    )
    info = done.package
    signed = f"signed by {info.signer}" if info.signer else "unsigned"
    say(f"wrote {info.path}: {info.size} bytes, {signed}, sha256 {info.sha256}")
    return QuantizeResult(
        package=info,
        metrics=done.manifest["metrics"],
        activations=done.lowered.activations,
        sparse_layers=sparse_layers,
        selftest_atol=done.selftest_atol,
        report_table=format_table(report[0]),
    )


# ---------------------------------------------------------------------------
# 2:4 pruning


def prune_model_2_4(
    model: onnx.ModelProto, min_k: int = MIN_SPARSE_K
) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """A copy of ``model`` whose Conv, Gemm and MatMul weights are 2:4 along the reduction dimension,
    and the (node name, weight name) pairs that were pruned.

    The reduction dimension, in the order the INT8 kernels walk it: K of a Gemm
    or MatMul (``[N, K]`` rows), and for a Conv the im2col order of one group,
    ``kernel_h x kernel_w x in_channels``. A Gemm reading a Flatten/Reshape of a
    4-D feature map is pruned in the map's NHWC order (``h x w x c``): the native
    plan keeps feature maps NHWC and permutes such a Gemm's weight columns, so
    that is the order in which its sparse kernel needs the groups of 4.
    Depthwise convolutions (one input channel per group), layers with K below
    ``min_k`` and weights shared by several nodes stay dense. Magnitude pruning:
    :func:`edge_runtime.kernels.sparse.prune_2_4`.
    """
    from edge_runtime.kernels.sparse import prune_2_4

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    maps = _flattened_maps(model)
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    pruned: list[tuple[str, str]] = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = inits.get(name)
        if tensor is None or readers.get(name, 0) != 1:
            continue
        w = numpy_helper.to_array(tensor)
        if not np.issubdtype(w.dtype, np.floating):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        rows = _reduction_rows(node.op_type, w, attrs, maps.get(node.input[0]))
        if rows is None:
            continue
        matrix, restore = rows
        if matrix.shape[1] < min_k:
            continue
        new = restore(prune_2_4(matrix)).astype(w.dtype)
        tensor.CopyFrom(numpy_helper.from_array(new, name))
        pruned.append((node.name or f"{node.op_type}_{i}", name))
    return model, pruned


def _flattened_maps(model: onnx.ModelProto) -> dict[str, tuple[int, int, int]]:
    """Tensors made by a Flatten/Reshape of a 4-D map [N, C, H, W] into [N, C*H*W]: name -> (C, H, W)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - without shapes, every layer is pruned in its logical order
        return {}
    shapes: dict[str, list[int]] = {}
    g = inferred.graph
    for v in [*g.input, *g.value_info, *g.output]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    maps = {}
    for node in g.node:  # topological order: a pass-through node sees its input's entry
        if node.op_type in ("Flatten", "Reshape") and node.input:
            shape = shapes.get(node.input[0], [])
            out = shapes.get(node.output[0], [])
            if len(shape) == 4 and min(shape[1:]) > 0 and len(out) == 2 and out[1] == int(np.prod(shape[1:])):
                maps[node.output[0]] = (shape[1], shape[2], shape[3])
        elif node.op_type in ("Identity", "Dropout") and node.input and node.input[0] in maps:
            maps[node.output[0]] = maps[node.input[0]]  # the optimizer removes these before lowering
    return maps


def _reduction_rows(op: str, w: np.ndarray, attrs: Mapping[str, Any], chw: tuple[int, int, int] | None):
    """(weights as [out, K] rows in the kernels' K order, a function mapping such rows back), or None."""
    if op == "Conv":
        if w.ndim != 4 or w.shape[1] == 1:
            return None  # depthwise or not 2-D
        m = w.shape[0]
        ohwi = w.transpose(0, 2, 3, 1)
        return ohwi.reshape(m, -1), lambda rows: rows.reshape(ohwi.shape).transpose(0, 3, 1, 2)
    if w.ndim != 2:
        return None
    transposed = not (op == "Gemm" and attrs.get("transB", 0))  # [K, N] weights: K is axis 0
    rows = w.T if transposed else w
    n, k = rows.shape
    if chw is not None and int(np.prod(chw)) == k:
        c, h, wd = chw
        nhwc = rows.reshape(n, c, h, wd).transpose(0, 2, 3, 1)

        def back(pruned: np.ndarray) -> np.ndarray:
            logical = pruned.reshape(n, h, wd, c).transpose(0, 3, 1, 2).reshape(n, k)
            return logical.T if transposed else logical

        return nhwc.reshape(n, k), back
    return rows, (lambda pruned: pruned.T) if transposed else (lambda pruned: pruned)


def _sparse_layer_names(graph: Graph, pruned: Sequence[tuple[str, str]]) -> list[str]:
    """Names of the optimized graph's layers that carry pruned weights (fusions may rename nodes)."""
    node_names = {n for n, _ in pruned}
    weight_names = {w for _, w in pruned}
    layers = []
    for node in graph.nodes:
        if node.op_type in ("Conv", "Gemm", "MatMul") and (
            node.name in node_names or node.input(1) in weight_names
        ):
            layers.append(node.name)
    return layers


# ---------------------------------------------------------------------------
# steps


class _Say:
    """Progress messages on stderr (stdout stays for results)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr)


def _load_onnx(data: bytes, where: Path) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError has no stable import path
        raise GraphError(f"{where} is not an ONNX model: {exc}") from None


def _float_runner(graph: Graph, float_bytes: bytes):
    """The float model: onnxruntime when installed (fast), else the numpy reference executor."""
    try:
        import onnxruntime as ort
    except ImportError:
        return lambda feeds: reference.run(graph, feeds)
    session = ort.InferenceSession(float_bytes, providers=["CPUExecutionProvider"])
    names = graph.output_names
    return lambda feeds: dict(zip(names, session.run(names, dict(feeds))))


def _load(source: DataSource, graph: Graph, options: QuantizeOptions) -> Dataset:
    """The calibration or evaluation data for ``graph``'s inputs, batched as the options say."""
    return load_data(
        source,
        graph.inputs,
        batch_size=options.batch_size,
        max_samples=options.max_samples,
        image_options=options.image_options,
    )


def _evaluate(
    graph: Graph, float_bytes: bytes, session: Any, calibration: Dataset, options: QuantizeOptions
) -> AccuracyReport:
    if options.eval_data is not None:
        data, kind = _load(options.eval_data, graph, options), "evaluation"
    else:
        data, kind = calibration, "calibration"
    labels = data.labels
    if options.labels is not None:
        labels = options.labels if isinstance(options.labels, np.ndarray) else load_labels(options.labels)
        if data.max_samples is not None:
            labels = labels[: data.max_samples]
    if labels is not None and data.fixed_batch:
        # A fixed batch dimension skips the samples that do not fill the last batch.
        labels = labels[: len(labels) // data.batch_size * data.batch_size]
    report = evaluate(
        _float_runner(graph, float_bytes),
        session.run,
        data,
        graph.output_names,
        data=f"{kind} data {data.description}",
        labels=labels,
        show_progress=options.progress,
    )
    return report


def _fields(
    source: Path,
    source_bytes: bytes,
    options: QuantizeOptions,
    calibration: Dataset,
    report: AccuracyReport,
    sparse_layers: Sequence[str],
) -> PackageFields:
    """The manifest fields of ``edge quantize`` (the rest is :func:`assemble_package`'s)."""
    image = calibration.image_options
    preprocessing = (
        {"layout": "NCHW", "mean": list(image.mean), "std": list(image.std)} if image is not None else None
    )
    return PackageFields(
        name=options.name or (_NAME_RE.sub("-", source.stem).strip("-._") or "model"),
        version=options.version,
        method=options.method,
        metrics=report.to_dict(),
        provenance={
            "tool": "edge quantize",
            "tool_version": __version__,
            "command": options.command or "edge_runtime.quantize.quantize_model (Python API)",
            "time": utc_now_iso(),
            "source_model": {"file": source.name, "sha256": hashlib.sha256(source_bytes).hexdigest()},
        },
        quantization={
            "calibration": {
                "data": calibration.description,
                "batch_size": calibration.batch_size,
                "max_samples": options.max_samples,
            },
        },
        sparse_layers=sparse_layers,
        preprocessing=preprocessing,
    )
