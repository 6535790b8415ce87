"""The native backend: ONNX graph -> INT8 plan -> C kernels (DESIGN section 5).

- :func:`calibrate` turns sample inputs into per-tensor activation parameters;
- :func:`lower` turns an optimized graph and those parameters into a :class:`QuantizedPlan`
  (serializable: the package's ``native-plan`` artifact);
- :class:`NativeSession` packs the plan's weights for this CPU (cached on disk) and runs it.

Typical use::

    graph = optimize(import_onnx("model.onnx"))
    params = calibrate(graph, batches)
    session = NativeSession(lower(graph, params), threads=4)
    outputs = session.run({"input": x})
"""

from typing import Any

from edge_runtime.plan.calibrate import CALIBRATION_METHODS, calibrate, tensors_to_calibrate
from edge_runtime.plan.lower import lower
from edge_runtime.plan.quantized_plan import PLAN_FORMAT, PLAN_FORMAT_VERSION, PlanIO, QuantizedPlan, Step

_EXECUTOR_NAMES = ("NativeSession", "PackedCache", "default_cache_dir")


def __getattr__(name: str) -> Any:
    # The executor needs the compiled kernels; importing it lazily lets the backend
    # registry import this package (and report "unavailable") where they are not built.
    if name in _EXECUTOR_NAMES:
        from edge_runtime.plan import executor

        return getattr(executor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CALIBRATION_METHODS",
    "PLAN_FORMAT",
    "PLAN_FORMAT_VERSION",
    "NativeSession",
    "PackedCache",
    "PlanIO",
    "QuantizedPlan",
    "Step",
    "calibrate",
    "default_cache_dir",
    "lower",
    "tensors_to_calibrate",
]
