"""Graph IR, ONNX importer, rewrite passes and the numpy reference executor.

Typical use by a backend::

    graph = optimize(import_onnx("model.onnx"))
    check_supported(graph)
    outputs = reference.run(graph, {"input": x})
"""

from edge_runtime.graph import reference
from edge_runtime.graph.importer import SUPPORTED_OPS, SUPPORTED_OPSETS, check_supported, import_onnx
from edge_runtime.graph.ir import Dim, Graph, Node, ValueInfo
from edge_runtime.graph.passes import optimize

__all__ = [
    "SUPPORTED_OPS",
    "SUPPORTED_OPSETS",
    "Dim",
    "Graph",
    "Node",
    "ValueInfo",
    "check_supported",
    "import_onnx",
    "optimize",
    "reference",
]
