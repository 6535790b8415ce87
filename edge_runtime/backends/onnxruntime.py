"""The onnxruntime backend: float ONNX and QDQ INT8 ONNX (``onnx-qdq``) models.

Execution providers come from the device profile: a Jetson profile's first
entry asks for TensorRT then CUDA, and that entry applies only when
``onnxruntime.get_available_providers()`` lists one of them (the GPU build of
onnxruntime); CPUExecutionProvider is always appended as the fallback, so a
node TensorRT cannot take still runs. :meth:`OrtSession.describe` reports the
providers onnxruntime actually enabled.

Thread safety: ``InferenceSession.run`` is documented as safe to call from
several threads at once, so sessions are ``concurrent`` and take no lock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edge_runtime.backends._base import Artifact, Backend, OpenOptions, Session
from edge_runtime.errors import BackendUnavailableError, GraphError, ModelInputError, UnsupportedOperatorError
from edge_runtime.package import TensorSpec

if TYPE_CHECKING:
    import numpy as np

    from device_profiles import BackendPreference

__all__ = ["CPU_PROVIDER", "OnnxRuntimeBackend", "OrtSession", "ort_dtype"]

CPU_PROVIDER = "CPUExecutionProvider"
_TENSOR_TYPE_RE = re.compile(r"^tensor\((\w+)\)$")
# onnxruntime's element type names that differ from numpy's.
_ORT_DTYPES = {"float": "float32", "double": "float64"}


def ort_dtype(ort_type: str) -> str:
    """numpy dtype name for an onnxruntime type string (``"tensor(float)"`` -> ``"float32"``)."""
    match = _TENSOR_TYPE_RE.match(ort_type)
    if match is None:
        # Sequences and maps: carried by name so that validation refuses any array with a clear message.
        return ort_type
    return _ORT_DTYPES.get(match.group(1), match.group(1))


def _spec(arg: Any) -> TensorSpec:
    # Dimensions: an int, a dim_param name ("batch"), or None for an anonymous dynamic one.
    shape = tuple(d if isinstance(d, (int, str)) else "?" for d in arg.shape)
    return TensorSpec(name=arg.name, dtype=ort_dtype(arg.type), shape=shape)


class OrtSession(Session):
    """An ``onnxruntime.InferenceSession`` over one ONNX artifact."""

    concurrent = True

    def __init__(self, session: Any, artifact: Artifact, threads: int, requested: tuple[str, ...]) -> None:
        self._session = session
        self._artifact = artifact
        self._threads = threads
        self._requested = requested
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        session = self._session
        if session is None:
            raise ValueError("the onnxruntime session is closed")
        try:
            values = session.run(self._output_names, dict(feeds))
        except InvalidArgument as exc:
            # Validation catches names, dtypes and ranks; this is what only the graph knows
            # (e.g. two inputs whose sizes must agree).
            raise ModelInputError(f"onnxruntime refused the inputs: {exc}") from None
        return dict(zip(self._output_names, values))

    def describe(self) -> dict[str, Any]:
        import onnxruntime

        return {
            "engine": f"onnxruntime {onnxruntime.__version__}",
            "artifact_kind": self._artifact.kind,
            "providers_requested": list(self._requested),
            "providers": list(self._session.get_providers()) if self._session is not None else [],
            "intra_op_threads": self._threads,
            "graph_optimization": "all",
            "thread_safety": "concurrent run() calls (InferenceSession.run is thread-safe)",
        }

    def close(self) -> None:
        # Runs in flight keep their own reference; the session is freed when they return.
        self._session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    # QDQ first: where a package carries both, the INT8 graph is the one it was built to ship.
    kinds = ("onnx-qdq", "onnx")

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc}); pip install onnxruntime"
        return True, f"onnxruntime {onnxruntime.__version__}"

    def accepts(self, preference: BackendPreference) -> tuple[bool, str]:
        if not preference.providers:
            return True, ""
        import onnxruntime

        offered = onnxruntime.get_available_providers()
        if any(p in offered for p in preference.providers):
            return True, ""
        return False, (
            f"this onnxruntime offers none of {', '.join(preference.providers)} (it has {', '.join(offered)})"
        )

    def open(self, artifact: Artifact, options: OpenOptions) -> Session:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(why)
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        offered = set(ort.get_available_providers())
        requested = tuple(options.providers) or (CPU_PROVIDER,)
        providers = [p for p in requested if p in offered and p != CPU_PROVIDER] + [CPU_PROVIDER]

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        # One request runs one graph: parallelism within operators, not between them.
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
        try:
            session = ort.InferenceSession(artifact.data, sess_options=so, providers=providers)
        except ort_state.NotImplemented as exc:
            raise UnsupportedOperatorError(f"onnxruntime cannot run {artifact.path}: {exc}") from None
        except (ort_state.InvalidProtobuf, ort_state.InvalidGraph, ort_state.Fail) as exc:
            raise GraphError(f"onnxruntime cannot load {artifact.path}: {exc}") from None
        return OrtSession(session, artifact, options.threads, tuple(providers))
