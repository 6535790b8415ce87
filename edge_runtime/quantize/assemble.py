"""The assembly of a quantized model package: one function for ``edge quantize`` and the trainer's export.

:func:`assemble_package` takes an optimized graph and its activation parameters
(calibrated by ``edge quantize``, or QAT's ranges in ``edge train export``) and:

1. lowers it to the native INT8 plan (``native-plan``); the plan unifies the
   parameters of the tensors that must share them (layout ops), and those
   effective parameters are what the manifest and the QDQ model carry;
2. exports the QDQ ONNX model (``onnx-qdq``) for onnxruntime users;
3. asks the caller to describe the package (its ``describe`` hook): checks of the
   plan, metrics measured on the native plan, name, version, method, provenance;
4. makes the self-test vectors: the caller's inputs and the native plan's outputs,
   with a tolerance from the plan's own output quantization (:func:`selftest_tolerance`);
5. writes the manifest: the caller's fields and what every quantized package carries
   (tensors, artifacts, the quantization spec, requirements, the self-test);
6. writes the package, signed when a key is given (artifacts stored uncompressed).

Part of the device runtime: it imports nothing from ``cloud_trainer``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime._version import __version__
from edge_runtime.errors import BackendUnavailableError, GraphError
from edge_runtime.graph import Graph, ValueInfo
from edge_runtime.graph.importer import anonymous_dim_name
from edge_runtime.numerics import QuantParams
from edge_runtime.package import PackageInfo, load_private_key, make_selftest, write_package
from edge_runtime.quantize.qdq import export_qdq

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "ARTIFACT_PATHS",
    "SELFTEST_FLOAT_ATOL",
    "SELFTEST_STEPS",
    "AssembledPackage",
    "Lowered",
    "PackageFields",
    "assemble_package",
    "native_backend",
    "selftest_tolerance",
    "write_quantized_package",
]

# Paths of the artifacts inside the package, by kind.
ARTIFACT_PATHS = {
    "onnx": "model.onnx",
    "native-plan": "model.plan",
    "onnx-qdq": "model.qdq.onnx",
    "selftest": "selftest.npz",
}
# Self-test tolerance of a quantized output: this many of its quantization steps (its scale).
# The native plan reproduces its outputs bit for bit on every ISA; onnxruntime on the QDQ
# model differs by requantization rounding (at most one step: tests/quantize/test_qdq_export.py).
SELFTEST_STEPS = 2.0
# Self-test tolerance of a float output (one the plan does not quantize): float32 steps that
# sum in another order (softmax, layer norm, attention) stay far below it for values up to ~1e3.
SELFTEST_FLOAT_ATOL = 1e-3

_DIM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass
class Lowered:
    """What steps 1-2 made, handed to the caller's ``describe`` hook."""

    graph: Graph
    plan: Any  # edge_runtime.plan.QuantizedPlan
    activations: dict[str, QuantParams]  # the effective parameters (the plan's where it unified them)
    session: Any  # edge_runtime.plan.NativeSession on the plan
    qdq_bytes: bytes

    @property
    def sparse_kernel_layers(self) -> list[str]:
        """The layers the plan runs on the 2:4 sparse kernels."""
        return sorted(set(self.plan.sparse_layers()))


@dataclass
class PackageFields:
    """The caller's part of the manifest (step 3)."""

    name: str
    version: str
    method: str  # how the activation parameters were found: "minmax", "qat", ...
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    quantization: dict[str, Any] = field(default_factory=dict)  # extra fields of "quantization"
    sparse_layers: Sequence[str] = ()  # layers pruned (or trained) 2:4
    preprocessing: dict[str, Any] | None = None  # of every input


@dataclass
class AssembledPackage:
    """What :func:`assemble_package` wrote."""

    package: PackageInfo
    manifest: dict[str, Any]
    lowered: Lowered
    expected: dict[str, np.ndarray]  # the native plan's outputs on the self-test inputs
    selftest_atol: float


def native_backend():
    """``edge_runtime.plan``, or BackendUnavailableError saying why it cannot be used."""
    try:
        from edge_runtime import plan as native
    except ImportError as exc:
        raise BackendUnavailableError(
            f"quantized packages need the native backend (edge_runtime.plan), which cannot be imported: {exc}"
        ) from exc
    missing = [name for name in ("calibrate", "lower", "NativeSession") if not hasattr(native, name)]
    if missing:
        raise BackendUnavailableError(
            f"quantized packages need edge_runtime.plan.{', '.join(missing)}, which this build lacks"
        )
    return native


def assemble_package(
    out: str | os.PathLike[str],
    graph: Graph,
    activations: Mapping[str, QuantParams],
    *,
    float_bytes: bytes,
    selftest_inputs: Mapping[str, np.ndarray],
    describe: Callable[[Lowered], PackageFields],
    signing_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
    threads: int = 1,
    weight_bits: int = 8,
) -> AssembledPackage:
    """Write the package ``out`` of ``graph`` quantized with ``activations`` (see the module docstring).

    ``float_bytes`` is the float ONNX artifact; ``selftest_inputs`` the self-test
    inputs; ``describe`` is called once, after lowering and the QDQ export, and may
    raise to refuse the plan. ``weight_bits`` 7 quantizes every weight to [-63, 63]
    (x86 without VNNI then multiplies them with ``vpmaddubsw``, bit-identical on every
    ISA; docs/numerics.md) and the manifest declares it (``quantization.weight_bits``).
    Raises QuantizationError for parameters the integer kernels cannot represent,
    BackendUnavailableError without the native backend.
    """
    native = native_backend()
    # 1. Lower; the plan's parameters are the effective ones (shared by layout ops).
    plan = native.lower(graph, activations, weight_bits=weight_bits)
    effective = {name: plan.params.get(name) or qp for name, qp in activations.items()}
    session = native.NativeSession(plan, threads=threads, cache_dir=False)
    # 2. The QDQ model for onnxruntime.
    qdq_bytes = export_qdq(graph, effective, weight_bits=weight_bits).SerializeToString()
    lowered = Lowered(graph, plan, effective, session, qdq_bytes)
    # 3. The caller's checks, metrics and fields.
    fields = describe(lowered)
    # 4. Self-test vectors and their tolerance.
    inputs = {name: np.ascontiguousarray(value) for name, value in selftest_inputs.items()}
    expected = session.run(inputs)
    atol = selftest_tolerance(effective, expected)
    # 5. The manifest.
    manifest = _manifest(lowered, fields, expected, atol, weight_bits)
    # 6. The package.
    info = write_quantized_package(
        out,
        manifest,
        float_bytes=float_bytes,
        plan_bytes=plan.to_bytes(),
        qdq_bytes=qdq_bytes,
        selftest_inputs=inputs,
        expected=expected,
        signing_key=signing_key,
    )
    return AssembledPackage(info, manifest, lowered, expected, atol)


def selftest_tolerance(activations: Mapping[str, QuantParams], outputs: Iterable[str]) -> float:
    """One atol for every output of a package's self-test, from the native plan's own output
    quantization: :data:`SELFTEST_STEPS` quantization steps (the scale of the output's
    parameters) for a quantized output, :data:`SELFTEST_FLOAT_ATOL` for a float one.

    Never from another engine's error: a tolerance measured against onnxruntime would
    grow with whatever that engine gets wrong (its u8s8 kernels saturate on x86 without
    VNNI) until the self-test passes anything."""
    atol = 0.0
    for name in outputs:
        qp = activations.get(name)
        atol = max(atol, SELFTEST_STEPS * qp.scale if qp is not None else SELFTEST_FLOAT_ATOL)
    return float(np.float32(atol))


def write_quantized_package(
    out: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    *,
    float_bytes: bytes,
    plan_bytes: bytes,
    qdq_bytes: bytes,
    selftest_inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    signing_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
) -> PackageInfo:
    """Write the package of a quantized model: its artifacts at :data:`ARTIFACT_PATHS` and
    ``manifest``, signed when a key (or a key file) is given."""
    key = signing_key
    if key is not None and not hasattr(key, "sign"):
        key = load_private_key(key)
    artifacts = {
        ARTIFACT_PATHS["onnx"]: float_bytes,
        ARTIFACT_PATHS["native-plan"]: plan_bytes,
        ARTIFACT_PATHS["onnx-qdq"]: qdq_bytes,
        ARTIFACT_PATHS["selftest"]: make_selftest(selftest_inputs, expected),
    }
    # Stored, not deflated: weights hardly compress, and a stored artifact is read at load
    # without zlib (the native plan's arrays are then views of the bytes read).
    return write_package(out, manifest, artifacts, signing_key=key, compress=False)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# the manifest


def _manifest(
    lowered: Lowered,
    fields: PackageFields,
    expected: Mapping[str, np.ndarray],
    atol: float,
    weight_bits: int = 8,
) -> dict[str, Any]:
    qmax = (1 << (weight_bits - 1)) - 1
    graph = lowered.graph
    quantization: dict[str, Any] = {
        "spec": "edge_runtime.numerics",
        "method": fields.method,
        "activations": {k: qp.to_dict() for k, qp in lowered.activations.items()},
        **fields.quantization,
        "weight_bits": weight_bits,  # readers of manifests without it assume 8
        "weights": {
            "dtype": "int8",
            "symmetric": True,
            "granularity": "per-channel",
            "range": [-qmax, qmax],
        },
        "bias": {"dtype": "int32", "scale": "input_scale * weight_scale"},
    }
    if lowered.sparse_kernel_layers:
        quantization["sparse_kernel_layers"] = lowered.sparse_kernel_layers
    manifest: dict[str, Any] = {
        "name": fields.name,
        "version": fields.version,
        "inputs": [_tensor_spec(v, None, fields.preprocessing) for v in graph.inputs],
        "outputs": [_tensor_spec(v, expected.get(v.name), None) for v in graph.outputs],
        "artifacts": [{"path": path, "kind": kind} for kind, path in ARTIFACT_PATHS.items()],
        "quantization": quantization,
        "requirements": {"min_runtime_version": _numeric_version(__version__)},
        "selftest": {"artifact": ARTIFACT_PATHS["selftest"], "atol": atol, "rtol": 0.0},
        "metrics": fields.metrics,
        "provenance": fields.provenance,
    }
    if fields.sparse_layers:
        manifest["sparsity"] = {"pattern": "2:4", "layers": list(fields.sparse_layers)}
    return manifest


def _dim_name(dim: Any, tensor: str, axis: int) -> int | str:
    """A manifest dimension: a size, or a name (invented when the model has none usable)."""
    if isinstance(dim, int):
        return dim
    if isinstance(dim, str) and _DIM_RE.match(dim) and not dim.startswith("unk__"):
        return dim
    return anonymous_dim_name(tensor, axis)


def _tensor_spec(info: ValueInfo, observed: np.ndarray | None, preprocessing: dict | None) -> dict[str, Any]:
    shape: list[Any]
    if info.shape is not None:
        shape = list(info.shape)
    elif observed is not None:
        shape = list(observed.shape)
        shape[0] = None  # the batch of the self-test vectors is not the model's
    else:
        raise GraphError(f"tensor {info.name!r} has an unknown rank; re-export the model with output shapes")
    dtype = (
        info.dtype.name
        if info.dtype is not None
        else (observed.dtype.name if observed is not None else "float32")
    )
    spec: dict[str, Any] = {
        "name": info.name,
        "dtype": dtype,
        "shape": [_dim_name(d, info.name, i) for i, d in enumerate(shape)],
    }
    if preprocessing:
        spec["preprocessing"] = preprocessing
    return spec


def _numeric_version(version: str) -> str:
    match = re.match(r"^\d+(\.\d+){0,2}", version)
    return match.group(0) if match else "0"
