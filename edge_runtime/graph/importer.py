"""ONNX model -> :class:`~edge_runtime.graph.ir.Graph`.

The importer checks the model, runs ONNX shape inference, turns Constant nodes
and initializers into constants, normalizes opset differences (see
:func:`_normalize_node`) and refuses, in one error, every operator outside the
supported set. After :func:`~edge_runtime.graph.passes.optimize`,
:func:`check_supported` refuses what the rewrites could not bring into the
backend's form (a Div by a tensor, an Erf outside a GELU, shape arithmetic that
does not fold).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

# onnx is imported where a model is read, not with this module: a device that runs
# packaged native plans never imports it (about 40 ms here, far more on a Pi).

import numpy as np

from edge_runtime.errors import GraphError, UnsupportedOperatorError
from edge_runtime.graph.ir import Dim, Graph, Node, ValueInfo

__all__ = [
    "FOLDABLE_OPS",
    "PATTERN_OPS",
    "SUPPORTED_OPS",
    "SUPPORTED_OPSETS",
    "check_supported",
    "import_onnx",
]

# Operators a backend receives after optimize() ("Gelu", "LayerNormalization", "HardSwish" and
# "Swish" also come from their decomposed patterns).
SUPPORTED_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div",
    "Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Gelu", "Softmax",
    "LayerNormalization", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Resize", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice",
    "Gather", "Identity",
    # real models' operators (opsets 7-21): activations run as 256-entry tables where they are
    # element-wise, the rest as byte moves or float steps (edge_runtime.plan.lower)
    "PRelu", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Swish",
    "ThresholdedRelu", "Exp", "Log", "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos",
    "LogSoftmax", "Hardmax", "Pad", "Split", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum",
    "ReduceL2", "ArgMax", "ArgMin", "Expand", "Tile", "LSTM", "GRU", "Einsum", "GlobalMaxPool",
    "InstanceNormalization", "DepthToSpace", "SpaceToDepth", "Max", "Min", "Sqrt", "Pow",
})  # fmt: skip
# Shape arithmetic: accepted when it folds to constants.
FOLDABLE_OPS = frozenset({
    "Shape", "Cast", "Range", "ConstantOfShape", "Equal", "Where", "Constant", "Size", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Mod", "ReduceProd",
})  # fmt: skip
# Accepted only as part of a pattern that a pass rewrites (GELU, layer norm, mean pool) or removes.
PATTERN_OPS = frozenset({"Erf", "Dropout"})
# Operators of old opsets that the importer rewrites into the ones above.
LEGACY_OPS = frozenset({"Upsample"})
IMPORTABLE_OPS = SUPPORTED_OPS | FOLDABLE_OPS | PATTERN_OPS | LEGACY_OPS
# Opsets 7-10 are what older exporters (tf2onnx, keras2onnx, early torch) wrote; 22 and 23 only
# widened the types of these operators.
SUPPORTED_OPSETS = range(7, 24)

_ONNX_DOMAINS = ("", "ai.onnx")


def import_onnx(model: onnx.ModelProto | str | os.PathLike[str] | bytes) -> Graph:
    """Check, shape-infer and convert an ONNX model (a ModelProto, a path or serialized bytes).

    Raises GraphError for a model the ONNX checker refuses and
    UnsupportedOperatorError naming every unsupported operator and its nodes.
    """
    import onnx
    from onnx import shape_inference

    model = _load(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise GraphError(f"the model fails the ONNX checker: {exc}") from exc
    opset = _opset(model)
    _refuse_unsupported(model.graph)
    model = _name_anonymous_dims(model)
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; missing shapes only disable some rewrites
        inferred = model
    graph, problems = _convert(inferred.graph, opset)
    from edge_runtime.graph.passes import inputs_to_attributes  # the canonical form of parameters

    inputs_to_attributes(graph)
    problems += [f"{node} {reason}" for node in graph.nodes if (reason := _variant_reason(node))]
    if problems:
        raise UnsupportedOperatorError(
            f"unsupported operator variants in graph {graph.name!r}:\n  " + "\n  ".join(problems)
        )
    graph.toposort()
    graph.validate()
    return graph


def check_supported(graph: Graph) -> None:
    """Raise UnsupportedOperatorError listing every node a backend cannot take, with why.

    Meant for an optimized graph: what remains of the pattern and folding-only
    operators, Div by a tensor, and shape parameters computed at run time.
    """
    problems: list[str] = []
    for node in graph.nodes:
        reason = _unsupported_reason(graph, node)
        if reason:
            problems.append(f"{node.op_type} (node {node.name!r}): {reason}")
    if problems:
        raise UnsupportedOperatorError(
            f"graph {graph.name!r} has {len(problems)} node(s) the backend cannot run:\n  "
            + "\n  ".join(problems)
        )


def _unsupported_reason(graph: Graph, node: Node) -> str | None:
    op = node.op_type
    if node.domain not in _ONNX_DOMAINS or op not in IMPORTABLE_OPS:
        return "unsupported operator"
    if op in FOLDABLE_OPS:
        return "shape arithmetic that does not fold to a constant"
    if op in PATTERN_OPS:
        return f"supported only inside a GELU or layer-norm pattern, which this {op} is not part of"
    if op == "Pow" and (graph.is_constant(node.inputs[0]) or _scalar_value(graph, node.inputs[1]) is None):
        return "a power whose exponent is not one constant (x ** c runs as a table)"
    if op == "Div" and not graph.is_constant(node.inputs[1]):
        return "division by a tensor computed at run time (only division by constants is supported)"
    variant = _variant_reason(node)
    if variant:
        return variant
    if op == "Reshape" and not graph.is_constant(node.inputs[1]):
        return "a target shape computed at run time that did not fold to a constant"
    if op in ("Squeeze", "Unsqueeze", "Slice", "Clip", "Resize") and len(node.inputs) > 1:
        return "parameters computed at run time that did not fold to constants"
    return None


def _scalar_value(graph: Graph, name: str) -> float | None:
    value = graph.constant(name)
    return None if value is None or value.size != 1 else float(value.ravel()[0])


def _variant_reason(node: Node) -> str | None:
    """Why a node of a supported operator uses a variant (attributes) that is not, or None."""
    op, attrs = node.op_type, node.attrs
    if op == "Resize":
        from edge_runtime.graph.reference import RESIZE_COORDINATE_MODES, RESIZE_NEAREST_MODES

        mode = attrs.get("mode", "nearest")
        transform = attrs.get("coordinate_transformation_mode", "half_pixel")
        if mode not in ("nearest", "linear", "cubic"):
            return f"mode {mode!r} (nearest, linear and cubic are supported)"
        if transform not in RESIZE_COORDINATE_MODES:
            return f"coordinate_transformation_mode {transform!r} (supported: {', '.join(RESIZE_COORDINATE_MODES)})"
        if mode == "nearest" and attrs.get("nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST_MODES:
            return f"nearest_mode {attrs['nearest_mode']!r}"
        if attrs.get("antialias", 0) or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            return "antialias or keep_aspect_ratio_policy (export plain resizing)"
    if op == "MaxPool" and (len(node.outputs) > 1 and node.outputs[1] or attrs.get("storage_order", 0)):
        return "with an Indices output (not supported)"
    if op == "BatchNormalization" and attrs.get("training_mode", 0):
        return "in training mode (export the model in eval mode)"
    return None


# ---------------------------------------------------------------------------


def _load(model: onnx.ModelProto | str | os.PathLike[str] | bytes) -> onnx.ModelProto:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        return onnx.load(os.fspath(model))
    except (OSError, ValueError) as exc:
        raise GraphError(
            f"cannot read ONNX model {model if not isinstance(model, bytes) else '<bytes>'}: {exc}"
        ) from exc
    except Exception as exc:  # protobuf DecodeError and friends
        raise GraphError(f"not an ONNX model: {exc}") from exc


def _opset(model: onnx.ModelProto) -> int:
    versions = {imp.domain: imp.version for imp in model.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise GraphError("the model imports no version of the default ONNX operator set")
    if version not in SUPPORTED_OPSETS:
        raise UnsupportedOperatorError(
            f"ONNX opset {version}: supported opsets are {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}; "
            f"re-export the model with one of them (e.g. opset_version=17)"
        )
    return int(version)


def _name_anonymous_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs and outputs name every dynamic dimension.

    Exporters write a dynamic dimension as ``-1`` (paddle2onnx, old tf2onnx), ``?`` or
    nothing at all. ONNX shape inference takes ``-1`` for a size, and its data propagation
    then turns ``Shape -> Reshape`` chains into ranks it cannot follow (a classifier's last
    Softmax of rank None); an anonymous dim gets a fresh ``unk__N`` per use, so two tensors
    of one batch no longer match. Each gets a name (:func:`anonymous_dim_name`)."""

    def anonymous(dim: onnx.TensorShapeProto.Dimension) -> bool:
        if dim.HasField("dim_value"):
            return dim.dim_value < 0
        return not dim.dim_param or dim.dim_param == "?"

    values = [*model.graph.input, *model.graph.output]
    if not any(anonymous(d) for v in values for d in v.type.tensor_type.shape.dim):
        return model
    model = copy_model(model)
    initializers = {t.name for t in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if anonymous(dim):
                dim.Clear()
                dim.dim_param = anonymous_dim_name(value.name, i)
    return model


def anonymous_dim_name(tensor: str, axis: int) -> str:
    """The name a dynamic dimension gets when its model leaves it unnamed: ``batch`` for the first
    axis, else ``<tensor>_<axis>`` (what the package manifest records too)."""
    if axis == 0:
        return "batch"
    base = re.sub(r"[^A-Za-z0-9_]", "_", tensor).strip("_") or "dim"
    return f"{base}_{axis}"[:64] if base[0].isalpha() or base[0] == "_" else f"d_{base}_{axis}"[:64]


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def _refuse_unsupported(graph: onnx.GraphProto) -> None:
    by_op: dict[str, list[str]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        if node.domain not in _ONNX_DOMAINS or node.op_type not in IMPORTABLE_OPS:
            op = node.op_type if node.domain in _ONNX_DOMAINS else f"{node.domain}::{node.op_type}"
            by_op[op].append(repr(node.name or f"#{i}"))
    if by_op:
        listing = "; ".join(f"{op} (nodes {', '.join(names)})" for op, names in sorted(by_op.items()))
        raise UnsupportedOperatorError(
            f"unsupported operators in graph {graph.name!r}: {listing}. Supported: "
            f"{', '.join(sorted(SUPPORTED_OPS))}; shape arithmetic that folds to constants "
            f"({', '.join(sorted(FOLDABLE_OPS))}); {', '.join(sorted(PATTERN_OPS))} inside GELU and "
            f"layer-norm patterns. Use backend='onnxruntime' for this model."
        )


def _value_info(proto: onnx.ValueInfoProto) -> ValueInfo:
    from onnx import helper

    tensor = proto.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None
    shape: tuple[Dim, ...] | None = None
    if tensor.HasField("shape"):
        dims: list[Dim] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return ValueInfo(proto.name, None if dtype is None else np.dtype(dtype), shape)


def _attribute(attr: onnx.AttributeProto, where: str) -> Any:
    import onnx
    from onnx import helper, numpy_helper

    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise UnsupportedOperatorError(f"{where}: subgraph attribute {attr.name!r} (control flow)")
    if attr.type == onnx.AttributeProto.SPARSE_TENSOR:
        raise UnsupportedOperatorError(f"{where}: sparse tensor attribute {attr.name!r}")
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _constant_value(node: Node) -> np.ndarray:
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise UnsupportedOperatorError(f"{node}: Constant with {sorted(attrs)} (string and sparse constants)")


def _convert(proto: onnx.GraphProto, opset: int) -> tuple[Graph, list[str]]:
    """The IR graph, and the nodes whose opset-specific form the IR cannot express."""
    from onnx import numpy_helper

    initializers = {t.name: numpy_helper.to_array(t) for t in proto.initializer}
    inputs = [_value_info(v) for v in proto.input if v.name not in initializers]
    outputs = [_value_info(v) for v in proto.output]
    value_info = {v.name: _value_info(v) for v in proto.value_info}
    graph = Graph(
        inputs=inputs,
        outputs=outputs,
        initializers=initializers,
        value_info=value_info,
        name=proto.name or "graph",
        opset=opset,
    )
    problems: list[str] = []
    used_names: set[str] = set()
    for i, n in enumerate(proto.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in used_names:
            name = f"{name}_{i}"
        used_names.add(name)
        where = f"{n.op_type} node {name!r}"
        node = Node(
            n.op_type,
            name,
            list(n.input),
            list(n.output),
            {a.name: _attribute(a, where) for a in n.attribute},
            n.domain,
        )
        if node.op_type == "Constant":
            graph.initializers[node.outputs[0]] = _constant_value(node)
            continue
        problem = _normalize_node(graph, node, opset)
        if problem:
            problems.append(f"{node} {problem}")
        graph.nodes.append(node)
    return graph, problems


def _normalize_node(graph: Graph, node: Node, opset: int) -> str | None:
    """Give one node the opset-independent meaning the IR uses: explicit defaults,
    numpy dtypes instead of ONNX type codes, the operators of old opsets in their
    current form (Upsample and Resize-10 -> Resize with their coordinate rules),
    Softmax-family nodes of opset < 13 marked ``coerce_2d`` unless they normalize
    over the last axis only (the ``canonical_softmax`` pass resolves the rest once
    shapes are known). Returns why the node cannot be expressed, or None."""
    op, attrs = node.op_type, node.attrs
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        axis = int(attrs.get("axis", 1 if opset < 13 else -1))
        if opset < 13:
            # Before opset 13 these normalized over all axes from `axis` on (a 2-D coercion),
            # which equals the one-axis form only when `axis` is the last one.
            rank = graph.rank(node.inputs[0])
            if rank is not None and axis % rank == rank - 1:
                axis = -1
            else:
                attrs["coerce_2d"] = 1
        attrs["axis"] = axis
    elif op == "Cast":
        from onnx import helper

        attrs["to"] = np.dtype(helper.tensor_dtype_to_np_dtype(int(attrs["to"]))).name
    elif op == "LayerNormalization":
        attrs.setdefault("axis", -1)
        attrs.setdefault("epsilon", 1e-5)
    elif op == "Gelu":
        attrs.setdefault("approximate", "none")
    elif op == "ConstantOfShape" and "value" not in attrs:
        attrs["value"] = np.zeros(1, dtype=np.float32)
    elif op == "Dropout" and len(node.outputs) > 1 and not node.outputs[1]:
        node.outputs = node.outputs[:1]
    elif op == "Upsample" or (op == "Resize" and opset < 11):
        # Upsample (opsets 7-9) and Resize-10: output = floor(input * scale), source coordinate
        # i / scale (asymmetric), nearest takes its floor; scales an attribute (7-8) or input 1.
        mode = attrs.get("mode", "nearest")
        if mode == "bilinear":
            mode = "linear"
        scales = attrs.pop("scales", None)
        node.op_type = "Resize"
        node.inputs = [node.inputs[0], "", node.input(1)] if scales is None else [node.inputs[0]]
        if scales is not None:
            attrs["scales"] = [float(v) for v in scales]
        attrs.update(mode=mode, coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif op == "Resize":
        attrs.setdefault("coordinate_transformation_mode", "half_pixel")
        attrs.setdefault("nearest_mode", "round_prefer_floor")
    elif op == "Pad" and opset < 11:
        # Pad-2's attributes become Pad-11's inputs (the form the QDQ export writes back).
        pads = [int(p) for p in attrs.pop("pads", attrs.pop("paddings", []))]
        value = float(attrs.pop("value", 0.0))
        info = graph.info(node.inputs[0])
        dtype = info.dtype if info is not None and info.dtype is not None else np.dtype(np.float32)
        node.inputs = [
            node.inputs[0],
            graph.add_constant(np.array(pads, np.int64), f"{node.name}/pads"),
            graph.add_constant(np.array(value, dtype), f"{node.name}/value"),
        ]
    elif op == "BatchNormalization":
        attrs.pop("spatial", None)  # opsets 7-8: 1 is the only form exporters wrote
        attrs.pop("is_test", None)
    return None
