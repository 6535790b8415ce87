"""The native backend (``backend="native"``): INT8 plans on the C kernels.

``open()`` reads the package's ``native-plan`` artifact when there is one;
otherwise it lowers the float ``onnx`` artifact with the activation parameters the
quantizer wrote into the manifest (``manifest.quantization``, see
:func:`activation_params_from_manifest`), and refuses a model without them. A graph
with operators the kernels lack is partitioned: those nodes run in float on
onnxruntime (or the reference executor), the rest natively, and ``describe()["partition"]``
says which nodes ran where and the share of MACs on the native kernels
(:mod:`edge_runtime.plan.partition`). Only a graph of which nothing runs natively raises
UnsupportedOperatorError naming the operator, so that ``auto`` falls back to
onnxruntime and says why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from edge_runtime.backends._base import Artifact, Backend, OpenOptions, Session
from edge_runtime.errors import (
    BackendUnavailableError,
    EdgeRuntimeError,
    PackageFormatError,
    UnsupportedOperatorError,
)
from edge_runtime.numerics import QuantParams
from edge_runtime.plan.quantized_plan import PlanIO, QuantizedPlan

__all__ = ["NativeBackend", "NativeBackendSession", "activation_params_from_manifest"]


def activation_params_from_manifest(quantization: Mapping[str, Any]) -> dict[str, QuantParams]:
    """Activation parameters from ``manifest.quantization``.

    The expected form is ``{"activations": {tensor: {"scale", "zero_point", "dtype"}}, ...}``
    (other keys, such as the calibration method, are ignored). Raises
    BackendUnavailableError when there are none (``auto`` then falls back to
    another backend) and QuantizationError when a record is malformed.
    """
    records = quantization.get("activations") if isinstance(quantization, Mapping) else None
    if not isinstance(records, Mapping) or not records:
        raise BackendUnavailableError(
            "the package carries no activation quantization parameters (manifest.quantization.activations), "
            "so the native backend cannot lower its float ONNX model: run `edge quantize` on it, "
            "or use backend='onnxruntime'"
        )
    return {str(name): QuantParams.from_dict(record) for name, record in records.items()}


def _spec(io_: PlanIO):
    from edge_runtime.package import TensorSpec

    shape = tuple(d if isinstance(d, (int, str)) else "?" for d in (io_.shape or []))
    return TensorSpec(name=io_.name, dtype=io_.dtype, shape=shape)


@contextlib.contextmanager
def _plan_steps_checked(what: str) -> Iterator[None]:
    """Untyped errors of a plan artifact's steps as PackageFormatError.

    The reader checks a plan's structure; a step whose attributes are of the wrong kind or size
    shows only when the executor loads it or makes the buffer plan of an input shape. A signed
    package from ``edge quantize`` never holds one: this is damage or a forgery.
    """
    try:
        yield
    except EdgeRuntimeError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise PackageFormatError(
            f"a step of the native plan cannot {what} ({type(exc).__name__}: {exc}); the package is "
            "damaged or was not made by edge quantize"
        ) from exc


class NativeBackendSession(Session):
    """A :class:`~edge_runtime.plan.NativeSession` behind the backend interface.

    Concurrent: callers from several threads run at once, each on a buffer set of its
    own (see :class:`~edge_runtime.plan.NativeSession`); the plan runs in C with the GIL
    released.
    """

    concurrent = True

    def __init__(
        self, plan: QuantizedPlan, threads: int, lowered: bool, model_sha256: str | None = None
    ) -> None:
        from edge_runtime.plan.executor import NativeSession

        # The session owns the plan: it may drop the unpacked weights once packed and
        # stop referencing the artifact's bytes (see NativeSession's release_weights).
        self._session = NativeSession(plan, threads=threads, model_sha256=model_sha256, release_weights=True)
        self._lowered = lowered
        self.inputs = tuple(_spec(io_) for io_ in plan.inputs)
        self.outputs = tuple(_spec(io_) for io_ in plan.outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._lowered:
            return self._session.run(feeds)
        with _plan_steps_checked("run"):  # buffer plans for a new input shape are made here
            return self._session.run(feeds)

    def describe(self) -> dict[str, Any]:
        info = self._session.describe()
        info["plan"] = "lowered at load from the float ONNX" if self._lowered else "native-plan artifact"
        info["thread_safety"] = "concurrent run() calls (a buffer set per caller, up to 4 per input shape)"
        return info

    def partition(self) -> dict[str, Any]:
        """Which graph nodes run where and the share of MACs on native kernels."""
        return self._session.partition()

    def close(self) -> None:
        self._session.close()


class NativeBackend(Backend):
    name = "native"
    kinds = ("native-plan", "onnx")

    def available(self) -> tuple[bool, str]:
        try:
            from edge_runtime import kernels
            from edge_runtime.plan import executor  # noqa: F401 - what open() runs plans with
        except ImportError as exc:  # NativeBuildError derives from ImportError
            return False, f"the native kernels are not built: {exc}"
        return True, f"INT8 C kernels on {kernels.get_isa()}"

    def open(self, artifact: Artifact, options: OpenOptions) -> Session:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(why)
        if artifact.kind == "native-plan":
            plan = QuantizedPlan.from_bytes(artifact.data)
            # The manifest's sha256 of the artifact (checked as it was read) identifies the
            # plan in the packed-weight cache without re-serializing it.
            sha256 = None
            if options.manifest is not None:
                try:
                    sha256 = options.manifest.artifact(artifact.path).sha256
                except KeyError:  # not listed (a hand-made manifest): the plan is hashed instead
                    sha256 = None
            with _plan_steps_checked("load"):
                return NativeBackendSession(plan, options.threads, lowered=False, model_sha256=sha256)
        if artifact.kind != "onnx":
            raise BackendUnavailableError(
                f"the native backend runs native-plan and onnx artifacts, not {artifact.kind}"
            )
        from edge_runtime.graph import check_supported, import_onnx, optimize
        from edge_runtime.plan.lower import lower

        if options.manifest is None:
            raise BackendUnavailableError(
                f"{artifact.path} is a bare float ONNX model without quantization parameters: the native "
                "backend needs a package made by `edge quantize`; use backend='onnxruntime'"
            )
        graph = optimize(import_onnx(artifact.data))
        try:
            check_supported(graph)
        except UnsupportedOperatorError:
            pass  # the lowering partitions: what the kernels lack runs in float (or it refuses)
        activations = activation_params_from_manifest(options.manifest.quantization)
        sparse = options.manifest.sparsity
        layers = set(sparse.layers) if sparse is not None else set()
        # The declared weight width (8 when absent: manifests before it); lower() refuses others.
        weight_bits = options.manifest.quantization.get("weight_bits", 8)
        plan = lower(graph, activations, sparsity=layers, weight_bits=weight_bits)
        return NativeBackendSession(plan, options.threads, lowered=True)
