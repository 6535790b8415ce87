"""The native backend's place in the registry: INT8 C kernels through cffi (DESIGN section 5).

It will lower an ONNX graph (or load a ``native-plan``) into a plan of fused
INT8 kernels and refuse, with UnsupportedOperatorError naming the operator
and node, any graph it cannot run, so that ``auto`` falls back to
onnxruntime. The graph lowering and plan executor are not written yet, so
this entry reports itself unavailable: ``auto`` skips it with that reason and
``backend="native"`` raises BackendUnavailableError. It never pretends to run
a model.
"""

from __future__ import annotations

from edge_runtime.backends._base import Artifact, Backend, OpenOptions, Session
from edge_runtime.errors import BackendUnavailableError

__all__ = ["NativeBackend"]

_NOT_YET = (
    "the native backend is not available yet: the kernels exist but the graph-to-plan compiler "
    "and plan executor are not implemented in this build; use backend='onnxruntime'"
)


class NativeBackend(Backend):
    name = "native"
    kinds = ("native-plan", "onnx-qdq", "onnx")

    def available(self) -> tuple[bool, str]:
        return False, _NOT_YET

    def open(self, artifact: Artifact, options: OpenOptions) -> Session:
        raise BackendUnavailableError(_NOT_YET)
