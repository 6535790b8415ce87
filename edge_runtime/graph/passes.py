"""Graph rewrites that bring an imported ONNX graph to the form backends lower.

Each pass is a function ``pass_(graph) -> bool`` that edits the graph in place
and returns whether it changed anything; :func:`optimize` runs them on a copy
until none does. Passes never change what the graph computes (up to float
rounding): the tests run every rewrite against onnxruntime on the original model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from edge_runtime.errors import EdgeRuntimeError, GraphError
from edge_runtime.graph.ir import Graph, Node, ValueInfo
from edge_runtime.graph.reference import evaluate_node
from edge_runtime.graph.shapes import infer_shapes, pad_parameters, split_sizes

__all__ = [
    "DEFAULT_PASSES",
    "cancel_squeeze_unsqueeze",
    "canonical_softmax",
    "conv1d_to_conv2d",
    "drop_zero_initial_states",
    "einsum_to_matmul",
    "eliminate_dead_code",
    "fold_affine_into_conv",
    "fold_batch_norm",
    "fold_constants",
    "fuse_activation",
    "fuse_gelu",
    "fuse_hard_swish",
    "fuse_layer_norm",
    "fuse_magnitude",
    "fuse_matmul_add",
    "fuse_pad_into_conv",
    "infer_shapes",
    "inputs_to_attributes",
    "optimize",
    "reduce_mean_to_global_pool",
    "remove_identities",
    "split_to_slices",
    "sub_div_by_constant",
]

Pass = Callable[[Graph], bool]


# ---------------------------------------------------------------------------
# small helpers


def _sole_consumer(graph: Graph, name: str) -> Node | None:
    """The only node reading ``name``, when exactly one does and it is not a graph output."""
    if name in graph.output_names:
        return None
    consumers = graph.consumers(name)
    if len(consumers) != 1 or consumers[0].inputs.count(name) != 1:
        return None
    return consumers[0]


def _scalar(graph: Graph, name: str) -> float | None:
    """The value of a constant holding one element, else None."""
    value = graph.constant(name)
    if value is None or value.size != 1:
        return None
    return float(value.ravel()[0])


def _near(value: float | None, target: float, rel: float = 1e-3) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=rel)


def _other_input(node: Node, name: str) -> str:
    """The other input of a binary node, one of whose inputs is ``name``."""
    a, b = node.inputs[:2]
    return b if a == name else a


def _constant_operand(graph: Graph, node: Node) -> tuple[str, np.ndarray] | None:
    """(variable input, constant value) of a binary node with exactly one constant input."""
    a, b = node.inputs[:2]
    if graph.is_constant(b) and not graph.is_constant(a):
        return a, graph.initializers[b]
    if graph.is_constant(a) and not graph.is_constant(b):
        return b, graph.initializers[a]
    return None


def _fused_name(graph: Graph, anchor: Node, op_type: str) -> str:
    """A readable name for a fused node, next to the exporter's name of ``anchor``."""
    prefix = anchor.name.rsplit("/", 1)[0] + "/" if "/" in anchor.name else anchor.name + "_"
    return graph.unique_name(prefix + op_type)


def _is_float(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.floating)


# ---------------------------------------------------------------------------
# canonical form and constants


def inputs_to_attributes(graph: Graph) -> bool:
    """Move constant parameter inputs to attributes: Squeeze/Unsqueeze/ReduceMean ``axes``,
    Slice ``starts/ends/axes/steps``, Clip ``min/max``, Resize ``scales``/``sizes``.

    Opset 13 and 18 turned these attributes into inputs; backends read one form. Pad, Split
    and the other reductions keep the form their opset gives them (their readers use
    :func:`~edge_runtime.graph.shapes.pad_parameters`, ``split_sizes`` and ``reduce_axes``),
    so that a graph written back to ONNX (the QDQ export) stays valid at its opset.
    """
    changed = False
    for node in list(graph.nodes):
        params = node.inputs[1:]
        if not params or not all(name == "" or graph.is_constant(name) for name in params):
            continue
        values = [graph.constant(name) if name else None for name in params]
        op = node.op_type
        if op in ("Squeeze", "Unsqueeze", "ReduceMean") and values[0] is not None:
            node.attrs["axes"] = [int(a) for a in values[0].ravel()]
        elif op == "Slice":
            starts, ends = ([int(v) for v in values[i].ravel()] for i in (0, 1))
            axes = values[2] if len(values) > 2 and values[2] is not None else np.arange(len(starts))
            steps = values[3] if len(values) > 3 and values[3] is not None else np.ones(len(starts))
            node.attrs.update(
                starts=starts,
                ends=ends,
                axes=[int(a) for a in np.ravel(axes)],
                steps=[int(s) for s in np.ravel(steps)],
            )
        elif op == "Clip":
            for key, value in zip(("min", "max"), values):
                if value is not None:
                    node.attrs[key] = float(value.ravel()[0])
        elif op == "Resize":
            scales = values[1] if len(values) > 1 else None
            sizes = values[2] if len(values) > 2 else None
            if sizes is not None and sizes.size:
                node.attrs["sizes"] = [int(s) for s in sizes.ravel()]
            elif scales is not None and scales.size:
                node.attrs["scales"] = [float(s) for s in scales.ravel()]
            else:
                continue
        else:
            continue
        node.inputs = node.inputs[:1]
        changed = True
    return changed


# Ops whose 1-D int64 "shape values" can carry symbolic elements through folding.
_SHAPE_MOVERS = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Reshape", "Identity"}
_SHAPE_ARITHMETIC = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1),  # truncation, as ONNX
}


def fold_constants(graph: Graph) -> bool:
    """Evaluate every node whose inputs are all constant, and resolve shape arithmetic.

    ``Shape`` of a tensor with static dims becomes a constant. With symbolic
    dims (a dynamic batch) the shape is tracked element by element, the unknown
    elements named by their symbol, through Gather/Unsqueeze/Concat/Slice/Cast
    and integer arithmetic; a ``Reshape`` whose target is such a value gets a
    constant target using 0 (copy the input dim) and -1 (infer one dim). This
    is what turns the exporters' ``Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape`` chains into plain Reshapes.
    """
    changed = False
    partial: dict[str, np.ndarray] = {}  # tensor -> object array of int | str (symbol) | None (unknown)
    for node in list(graph.nodes):
        inputs = [name for name in node.inputs if name]
        if node.inputs and all(graph.is_constant(name) for name in inputs):
            try:
                results = evaluate_node(
                    node, [graph.constant(name) if name else None for name in node.inputs]
                )
            except EdgeRuntimeError:
                continue  # unsupported here or invalid: the backend reports it with context
            for name, value in zip(node.outputs, results):
                if name:
                    graph.initializers[name] = np.asarray(value)
                    graph.value_info.pop(name, None)
            graph.remove_node(node)
            changed = True
            continue
        value = _partial_value(graph, node, partial)
        if value is not None:
            if all(_is_int(v) for v in value.ravel()):
                graph.initializers[node.outputs[0]] = value.astype(np.int64)
                graph.remove_node(node)
                changed = True
            else:
                partial[node.outputs[0]] = value
        elif node.op_type == "Reshape" and node.input(1) in partial:
            target = _reshape_target(graph, node, partial[node.input(1)])
            if target is not None:
                node.inputs[1] = graph.add_constant(target, node.name + "/shape")
                changed = True
    return changed


def _partial_value(graph: Graph, node: Node, partial: dict[str, np.ndarray]) -> np.ndarray | None:
    """The element-wise known value of a shape-computing node, or None."""
    op = node.op_type
    if op == "Shape":
        shape = graph.shape(node.inputs[0])
        if shape is None:
            return None
        dims = [d if isinstance(d, (int, str)) else f"{node.inputs[0]}:{i}" for i, d in enumerate(shape)]
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        return np.array(dims[start:end], dtype=object)
    names = [name for name in node.inputs if name]
    if not any(name in partial for name in names):
        return None
    if not all(name in partial or graph.is_constant(name) for name in names):
        return None
    values = [partial[name] if name in partial else graph.constant(name).astype(object) for name in names]
    if op == "Cast" and np.issubdtype(np.dtype(node.attrs["to"]), np.integer):
        return values[0]
    if op in _SHAPE_ARITHMETIC and len(values) == 2:
        a, b = np.broadcast_arrays(*values)
        fn = _SHAPE_ARITHMETIC[op]
        out = [
            fn(int(x), int(y)) if _is_int(x) and _is_int(y) else None for x, y in zip(a.ravel(), b.ravel())
        ]
        return np.array(out, dtype=object).reshape(a.shape)
    if op in _SHAPE_MOVERS:
        args = [partial.get(name, graph.constant(name)) if name else None for name in node.inputs]
        if op in ("Gather", "Slice", "Squeeze", "Unsqueeze", "Reshape") and any(
            name in partial for name in node.inputs[1:]
        ):
            return None  # indices or parameters that are not constant
        try:
            return np.asarray(evaluate_node(node, args)[0], dtype=object)
        except (EdgeRuntimeError, ValueError, TypeError):
            return None
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _reshape_target(graph: Graph, node: Node, target: np.ndarray) -> np.ndarray | None:
    """A constant Reshape target for a partially known one: 0 where the input's dim is the
    same symbol at the same position, -1 for at most one remaining unknown."""
    if node.attrs.get("allowzero", 0) or target.ndim != 1:
        return None
    data_shape = graph.shape(node.inputs[0]) or ()
    data_dims = [
        d if isinstance(d, (int, str)) else f"{node.inputs[0]}:{i}" for i, d in enumerate(data_shape)
    ]
    resolved: list[int] = []
    for k, element in enumerate(target):
        if _is_int(element):
            resolved.append(int(element))
        elif isinstance(element, str) and k < len(data_dims) and data_dims[k] == element:
            resolved.append(0)
        else:
            resolved.append(-1)
    if resolved.count(-1) > 1:
        return None  # two unknown dims: the target stays dynamic
    return np.array(resolved, dtype=np.int64)


def remove_identities(graph: Graph) -> bool:
    """Drop Identity, Dropout whose mask output is unused (inference is the identity) and
    Cast to the dtype its input already has."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1]:
            if graph.uses(node.outputs[1]):
                continue
            node.outputs = node.outputs[:1]
        if node.op_type == "Cast" and node.inputs[0]:
            info = graph.info(node.inputs[0])
            if info is None or info.dtype is None or np.dtype(info.dtype).name != node.attrs.get("to"):
                continue
            changed |= graph.bypass(node, node.inputs[0])  # a Cast to the dtype it already has
        if node.op_type in ("Identity", "Dropout") and node.inputs[0]:
            changed |= graph.bypass(node, node.inputs[0])
    return changed


def eliminate_dead_code(graph: Graph) -> bool:
    """Remove nodes and constants that no graph output depends on."""
    return graph.remove_dead_code()


# ---------------------------------------------------------------------------
# algebraic rewrites


def fold_batch_norm(graph: Graph) -> bool:
    """Fold inference BatchNormalization into the preceding Conv or Gemm weights and bias.

    With no such producer (or one whose output others also read) it becomes a
    per-channel Mul and Add, which needs the input's rank.
    """
    changed = False
    for bn in list(graph.nodes):
        if bn.op_type != "BatchNormalization" or bn.attrs.get("training_mode", 0):
            continue
        params = [graph.constant(name) for name in bn.inputs[1:5]]
        if any(p is None for p in params):
            continue
        scale, bias, mean, var = (p.astype(np.float64) for p in params)
        k = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        shift = bias - mean * k
        x, y = bn.inputs[0], bn.outputs[0]
        producer = graph.producer(x)
        if producer is not None and _sole_consumer(graph, x) is bn and "activation" not in producer.attrs:
            if producer.op_type == "Conv" and _fold_into_conv(graph, producer, k, shift):
                producer.outputs = [y]
                graph.remove_node(bn)
                changed = True
                continue
            if producer.op_type == "Gemm" and _fold_into_gemm(graph, producer, k, shift):
                producer.outputs = [y]
                graph.remove_node(bn)
                changed = True
                continue
        rank = graph.rank(x)
        if rank is None or rank < 2:
            continue
        shape = (-1,) + (1,) * (rank - 2)
        dtype = params[0].dtype
        k_name = graph.add_constant(k.astype(dtype).reshape(shape), bn.name + "/scale")
        s_name = graph.add_constant(shift.astype(dtype).reshape(shape), bn.name + "/shift")
        mid = graph.unique_name(bn.name + "/scaled")
        graph.replace_node(
            bn,
            [
                Node("Mul", graph.unique_name(bn.name + "/Mul"), [x, k_name], [mid]),
                Node("Add", graph.unique_name(bn.name + "/Add"), [mid, s_name], [y]),
            ],
        )
        changed = True
    return changed


def _fold_into_conv(graph: Graph, conv: Node, k: np.ndarray, shift: np.ndarray) -> bool:
    w = graph.constant(conv.inputs[1])
    b = graph.constant(conv.input(2)) if conv.input(2) else np.zeros(k.shape)
    if w is None or b is None or w.shape[0] != k.shape[0]:
        return False
    w2 = (w.astype(np.float64) * k.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    b2 = (b.astype(np.float64) * k + shift).astype(w.dtype)
    conv.inputs = [
        conv.inputs[0],
        graph.add_constant(w2, conv.name + "/W_bn"),
        graph.add_constant(b2, conv.name + "/B_bn"),
    ]
    return True


def _fold_into_gemm(graph: Graph, gemm: Node, k: np.ndarray, shift: np.ndarray) -> bool:
    b = graph.constant(gemm.inputs[1])
    c = graph.constant(gemm.input(2)) if gemm.input(2) else np.zeros(k.shape)
    a_rank = graph.rank(gemm.inputs[0])
    if b is None or c is None or b.ndim != 2 or (a_rank is not None and a_rank != 2):
        return False  # BatchNormalization's channel axis is N only for a 2-D output
    trans_b = bool(gemm.attrs.get("transB", 0))
    if b.shape[0 if trans_b else 1] != k.shape[0]:
        return False
    b2 = b.astype(np.float64) * (k[:, None] if trans_b else k[None, :])
    c2 = float(gemm.attrs.get("beta", 1.0)) * c.astype(np.float64) * k + shift
    gemm.inputs = [
        gemm.inputs[0],
        graph.add_constant(b2.astype(b.dtype), gemm.name + "/B_bn"),
        graph.add_constant(c2.astype(b.dtype), gemm.name + "/C_bn"),
    ]
    gemm.attrs["beta"] = 1.0
    return True


def sub_div_by_constant(graph: Graph) -> bool:
    """``x / c`` becomes ``x * (1/c)`` and ``x - c`` becomes ``x + (-c)`` for float constants c:
    the integer kernels have Mul and Add."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type not in ("Div", "Sub") or graph.is_constant(node.inputs[0]):
            continue
        c = graph.constant(node.inputs[1])
        if c is None or not _is_float(c):
            continue
        if node.op_type == "Div":
            if np.any(c == 0):
                continue
            node.op_type, value = "Mul", (1.0 / c.astype(np.float64)).astype(c.dtype)
        else:
            node.op_type, value = "Add", -c
        node.inputs[1] = graph.add_constant(
            value, node.inputs[1] + ("/reciprocal" if node.op_type == "Mul" else "/negated")
        )
        changed = True
    return changed


def reduce_mean_to_global_pool(graph: Graph) -> bool:
    """``ReduceMean`` over H and W of an NCHW tensor (torch's ``x.mean([2, 3])``) becomes
    GlobalAveragePool, followed by Flatten when keepdims=0."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type != "ReduceMean" or len(node.inputs) != 1 or graph.rank(node.inputs[0]) != 4:
            continue
        if sorted(a % 4 for a in node.attrs.get("axes", [])) != [2, 3]:
            continue
        if node.attrs.get("keepdims", 1):
            graph.replace_node(node, [Node("GlobalAveragePool", node.name, node.inputs, node.outputs)])
        else:
            pooled = graph.unique_name(node.outputs[0] + "/pooled")
            graph.replace_node(
                node,
                [
                    Node("GlobalAveragePool", node.name, node.inputs, [pooled]),
                    Node(
                        "Flatten",
                        graph.unique_name(node.name + "/Flatten"),
                        [pooled],
                        node.outputs,
                        {"axis": 1},
                    ),
                ],
            )
        changed = True
    return changed


# ---------------------------------------------------------------------------
# pattern fusions


def fuse_gelu(graph: Graph) -> bool:
    """The erf form of GELU, ``x * 0.5 * (1 + erf(x / sqrt(2)))``, becomes one Gelu node.

    Matched orderings (x/sqrt(2) may also be x * (1/sqrt(2))):
    ``(x * (1 + erf)) * 0.5`` (torch), ``x * ((1 + erf) * 0.5)`` and ``(x * 0.5) * (1 + erf)``.
    """
    changed = False
    for erf in list(graph.nodes):
        if erf.op_type != "Erf":
            continue
        scaled = graph.producer(erf.inputs[0])
        if scaled is None or scaled.op_type not in ("Mul", "Div"):
            continue
        operand = _constant_operand(graph, scaled)
        if operand is None or (scaled.op_type == "Div" and scaled.inputs[0] != operand[0]):
            continue
        x, c = operand
        divisor = math.sqrt(2.0) if scaled.op_type == "Div" else 1 / math.sqrt(2.0)
        if not (c.size == 1 and _near(float(c.ravel()[0]), divisor)):
            continue
        plus_one = _sole_consumer(graph, erf.outputs[0])
        if plus_one is None or plus_one.op_type != "Add":
            continue
        if not _near(_scalar(graph, _other_input(plus_one, erf.outputs[0])), 1.0):
            continue
        last = _gelu_product(graph, x, plus_one.outputs[0])
        if last is None:
            continue
        graph.replace_node(
            last,
            [Node("Gelu", _fused_name(graph, erf, "Gelu"), [x], list(last.outputs), {"approximate": "none"})],
        )
        changed = True
    if changed:
        graph.remove_dead_code()
    return changed


def _gelu_product(graph: Graph, x: str, one_plus_erf: str) -> Node | None:
    """The Mul computing ``x * 0.5 * one_plus_erf`` in one of the three orderings, or None."""
    mul1 = _sole_consumer(graph, one_plus_erf)
    if mul1 is None or mul1.op_type != "Mul":
        return None
    other = _other_input(mul1, one_plus_erf)
    if other == x or _near(_scalar(graph, other), 0.5, 1e-6):
        # (x * (1 + erf)) * 0.5  or  ((1 + erf) * 0.5) * x
        mul2 = _sole_consumer(graph, mul1.outputs[0])
        if mul2 is None or mul2.op_type != "Mul":
            return None
        rest = _other_input(mul2, mul1.outputs[0])
        ok = _near(_scalar(graph, rest), 0.5, 1e-6) if other == x else rest == x
        return mul2 if ok else None
    # (x * 0.5) * (1 + erf)
    half = graph.producer(other)
    operand = _constant_operand(graph, half) if half is not None and half.op_type == "Mul" else None
    if operand is None or operand[0] != x or operand[1].size != 1:
        return None
    return mul1 if _near(float(operand[1].ravel()[0]), 0.5, 1e-6) else None


def _trailing_axes(axes: Sequence[int], rank: int | None) -> int | None:
    """The first axis (negative) when ``axes`` are the last len(axes) axes, else None."""
    n = len(axes)
    if n == 0:
        return None
    if rank is None:
        if sorted(axes) == list(range(-n, 0)):
            return -n
        return None
    if sorted(a % rank for a in axes) == list(range(rank - n, rank)):
        return -n
    return None


def fuse_layer_norm(graph: Graph) -> bool:
    """The decomposed layer norm becomes one LayerNormalization node::

    mean = ReduceMean(x); d = x - mean; var = ReduceMean(d ** 2)   (or d * d)
    y = d / Sqrt(var + eps) [* gamma] [+ beta]
    """
    changed = False
    for mean in list(graph.nodes):
        if mean.op_type != "ReduceMean" or len(mean.inputs) != 1 or not mean.attrs.get("keepdims", 1):
            continue
        x = mean.inputs[0]
        axis = _trailing_axes(mean.attrs.get("axes", []), graph.rank(x))
        if axis is None:
            continue
        sub = _sole_consumer(graph, mean.outputs[0])
        if sub is None or sub.op_type != "Sub" or sub.inputs != [x, mean.outputs[0]]:
            continue
        d = sub.outputs[0]
        users = graph.consumers(d)
        square = next(
            (
                n
                for n in users
                if (n.op_type == "Pow" and n.inputs[0] == d and _scalar(graph, n.inputs[1]) == 2.0)
                or (n.op_type == "Mul" and n.inputs == [d, d])
            ),
            None,
        )
        div = next((n for n in users if n.op_type == "Div" and n.inputs[0] == d), None)
        if square is None or div is None or len(users) != 2 or d in graph.output_names:
            continue
        var = _sole_consumer(graph, square.outputs[0])
        if (
            var is None
            or var.op_type != "ReduceMean"
            or var.attrs.get("axes") != mean.attrs.get("axes")
            or not var.attrs.get("keepdims", 1)
        ):
            continue
        add_eps = _sole_consumer(graph, var.outputs[0])
        eps = _scalar(graph, _other_input(add_eps, var.outputs[0])) if add_eps is not None else None
        if add_eps is None or add_eps.op_type != "Add" or eps is None:
            continue
        sqrt = _sole_consumer(graph, add_eps.outputs[0])
        if sqrt is None or sqrt.op_type != "Sqrt" or div.inputs[1] != sqrt.outputs[0]:
            continue
        last, gamma, beta = div, None, None
        node = _sole_consumer(graph, last.outputs[0])
        if node is not None and node.op_type == "Mul" and _constant_operand(graph, node):
            last, gamma = node, _constant_operand(graph, node)[1]
            node = _sole_consumer(graph, last.outputs[0])
        if node is not None and node.op_type == "Add" and _constant_operand(graph, node):
            last, beta = node, _constant_operand(graph, node)[1]
        norm_shape = _normalized_shape(graph, x, -axis, gamma, beta)
        if norm_shape is None:
            continue
        dtype = next((v.dtype for v in (gamma, beta) if v is not None), np.dtype(np.float32))
        gamma = _as_normalized(np.ones(norm_shape, dtype) if gamma is None else gamma, norm_shape)
        beta = _as_normalized(np.zeros(norm_shape, dtype) if beta is None else beta, norm_shape)
        if gamma is None or beta is None:
            continue  # gamma or beta vary along axes that are not normalized
        name = _fused_name(graph, mean, "LayerNormalization")
        inputs = [x, graph.add_constant(gamma, name + "/scale"), graph.add_constant(beta, name + "/bias")]
        graph.replace_node(
            last,
            [Node("LayerNormalization", name, inputs, list(last.outputs), {"axis": axis, "epsilon": eps})],
        )
        changed = True
    if changed:
        graph.remove_dead_code()
    return changed


def _normalized_shape(
    graph: Graph, x: str, n: int, gamma: np.ndarray | None, beta: np.ndarray | None
) -> tuple[int, ...] | None:
    """The shape of the last ``n`` axes of x, from x's shape or else from gamma/beta."""
    shape = graph.shape(x)
    if shape is not None and all(isinstance(d, int) for d in shape[-n:]):
        return tuple(int(d) for d in shape[-n:])
    for value in (gamma, beta):
        if value is not None and value.ndim >= n and all(d > 1 for d in value.shape[-n:]):
            return tuple(value.shape[-n:])
    return None


def _as_normalized(value: np.ndarray, norm_shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` as an array of the normalized shape, if it only broadcasts along it."""
    while value.ndim > len(norm_shape) and value.shape[0] == 1:
        value = value[0]
    try:
        return np.ascontiguousarray(np.broadcast_to(value, norm_shape))
    except ValueError:
        return None


def fuse_matmul_add(graph: Graph) -> bool:
    """``MatMul(A, B) + bias`` with a 2-D B and a constant bias vector becomes a Gemm.

    The IR's Gemm accepts an A with leading batch dims ([batch, seq, K]), unlike
    ONNX's; the output shape is the MatMul's.
    """
    changed = False
    for add in list(graph.nodes):
        if add.op_type != "Add":
            continue
        for index in (0, 1):
            matmul = graph.producer(add.inputs[index])
            bias = graph.constant(add.inputs[1 - index])
            if matmul is None or matmul.op_type != "MatMul" or bias is None:
                continue
            if _sole_consumer(graph, matmul.outputs[0]) is not add:
                continue
            a, b = matmul.inputs
            b_shape = graph.shape(b)
            a_rank = graph.rank(a) or graph.rank(matmul.outputs[0])
            if (
                b_shape is None
                or len(b_shape) != 2
                or not isinstance(b_shape[1], int)
                or not a_rank
                or a_rank < 2
            ):
                continue
            n = b_shape[1]
            if bias.size != n or bias.ndim < 1 or bias.shape[-1] != n:
                continue
            c = graph.add_constant(bias.reshape(n), add.name + "/bias")
            graph.replace_node(
                add,
                [
                    Node(
                        "Gemm",
                        _fused_name(graph, matmul, "Gemm"),
                        [a, b, c],
                        list(add.outputs),
                        {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
                    )
                ],
            )
            graph.remove_node(matmul)
            changed = True
            break
    return changed


def fuse_activation(graph: Graph) -> bool:
    """A Relu, or Clip to [0, 6] or [0, inf), right after a Conv or Gemm becomes its
    ``activation`` attribute ("relu", "relu6"): the kernels clamp while requantizing."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type not in ("Conv", "Gemm") or node.attrs.get("activation"):
            continue
        act = _sole_consumer(graph, node.outputs[0])
        if act is None:
            continue
        kind = None
        if act.op_type == "Relu":
            kind = "relu"
        elif act.op_type == "Clip" and len(act.inputs) == 1 and act.attrs.get("min") == 0.0:
            high = act.attrs.get("max")
            kind = "relu6" if high == 6.0 else "relu" if high is None or high == math.inf else None
        if kind is None:
            continue
        node.attrs["activation"] = kind
        node.outputs = list(act.outputs)
        graph.remove_node(act)
        changed = True
    return changed


# ---------------------------------------------------------------------------
# opset forms and the patterns of real exporters


_SOFTMAX_OPS = ("Softmax", "LogSoftmax", "Hardmax")


def canonical_softmax(graph: Graph) -> bool:
    """Softmax, LogSoftmax and Hardmax of opset < 13 that the importer marked ``coerce_2d``
    (normalizing over every axis from ``axis`` on) in the one-axis form once the input's
    shape is known: over the one axis of the tail whose size is not 1 (a classifier's
    [N, classes] or [N, classes, 1, 1]), else, with a static tail, between two Reshapes
    (``[0] * axis + [-1]`` and back). What stays marked runs as the reference defines it."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type not in _SOFTMAX_OPS or not node.attrs.get("coerce_2d"):
            continue
        shape = graph.shape(node.inputs[0])
        if shape is None or not shape:
            continue
        rank = len(shape)
        axis = int(node.attrs.get("axis", 1)) % rank
        tail = shape[axis:]
        others = [i for i, d in enumerate(tail) if d != 1]
        if len(others) <= 1:
            k = others[0] if others else len(tail) - 1
            node.attrs["axis"] = axis + k - rank
            del node.attrs["coerce_2d"]
            changed = True
            continue
        if not all(isinstance(d, int) for d in tail):
            continue
        flat = graph.unique_name(node.outputs[0] + "/flat")
        normalized = graph.unique_name(node.outputs[0] + "/rows")
        to_rows = graph.add_constant(np.array([0] * axis + [-1], np.int64), node.name + "/rows_shape")
        back = graph.add_constant(np.array([0] * axis + list(tail), np.int64), node.name + "/shape")
        attrs = {k: v for k, v in node.attrs.items() if k != "coerce_2d"}
        attrs["axis"] = -1
        graph.replace_node(
            node,
            [
                Node("Reshape", graph.unique_name(node.name + "/to_rows"), [node.inputs[0], to_rows], [flat]),
                Node(node.op_type, node.name, [flat], [normalized], attrs),
                Node(
                    "Reshape", graph.unique_name(node.name + "/back"), [normalized, back], list(node.outputs)
                ),
            ],
        )
        changed = True
    return changed


def _is_scalar_const(graph: Graph, name: str, value: float, rel: float = 1e-3) -> bool:
    return _near(_scalar(graph, name), value, rel)


def _clip_bounds(node: Node) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip in attribute form, or None."""
    if node.op_type != "Clip" or len(node.inputs) != 1:
        return None
    return node.attrs.get("min"), node.attrs.get("max")


def _hard_sigmoid_of(graph: Graph, name: str) -> str | None:
    """x when tensor ``name`` computes hard_sigmoid(x) = clip(x + 3, 0, 6) / 6 as exporters
    write it (Add -> Clip -> Mul by 1/6, or a HardSigmoid node with alpha 1/6, beta 0.5);
    the node producing ``name`` is the end of the pattern."""
    node = graph.producer(name)
    if node is None:
        return None
    if node.op_type == "HardSigmoid":
        if _near(float(node.attrs.get("alpha", 0.2)), 1 / 6) and _near(
            float(node.attrs.get("beta", 0.5)), 0.5
        ):
            return node.inputs[0]
        return None
    if node.op_type != "Mul":
        return None
    operand = _constant_operand(graph, node)
    if operand is None or operand[1].size != 1 or not _near(float(operand[1].ravel()[0]), 1 / 6):
        return None
    return _relu6_of_plus_3(graph, operand[0])


def _relu6_of_plus_3(graph: Graph, name: str) -> str | None:
    """x when ``name`` is Clip(x + 3, 0, 6) and each intermediate has one reader."""
    clip = graph.producer(name)
    if clip is None or _clip_bounds(clip) is None or _sole_consumer(graph, name) is None:
        return None
    lo, hi = _clip_bounds(clip)
    if lo != 0.0 or hi != 6.0:
        return None
    add = graph.producer(clip.inputs[0])
    if add is None or add.op_type != "Add" or _sole_consumer(graph, clip.inputs[0]) is not clip:
        return None
    operand = _constant_operand(graph, add)
    if operand is None or operand[1].size != 1 or not _near(float(operand[1].ravel()[0]), 3.0):
        return None
    return operand[0]


def fuse_hard_swish(graph: Graph) -> bool:
    """``x * hard_sigmoid(x)`` as paddle2onnx, tf2onnx and torch < opset 14 write it becomes one
    HardSwish node (a 256-entry table instead of Add, Clip, two Muls and their requantizations):
    ``x * Clip(x + 3, 0, 6) * (1/6)`` in either association, and ``x * HardSigmoid(x)``."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type != "Mul" or node not in graph.nodes:
            continue
        x = None
        a, b = node.inputs[:2]
        # x * hard_sigmoid(x)
        for mine, other in ((a, b), (b, a)):
            if _sole_consumer(graph, other) is node and _hard_sigmoid_of(graph, other) == mine:
                x = mine
                break
        # (x * Clip(x + 3, 0, 6)) * (1/6)
        if x is None:
            operand = _constant_operand(graph, node)
            inner = graph.producer(operand[0]) if operand is not None and operand[1].size == 1 else None
            if (
                inner is not None
                and inner.op_type == "Mul"
                and _near(float(operand[1].ravel()[0]), 1 / 6)
                and _sole_consumer(graph, inner.outputs[0]) is node
            ):
                p, q = inner.inputs[:2]
                for mine, other in ((p, q), (q, p)):
                    if _sole_consumer(graph, other) is inner and _relu6_of_plus_3(graph, other) == mine:
                        x = mine
                        break
        if x is None:
            continue
        graph.replace_node(
            node, [Node("HardSwish", _fused_name(graph, node, "HardSwish"), [x], list(node.outputs))]
        )
        changed = True
    if changed:
        graph.remove_dead_code()
    return changed


def split_to_slices(graph: Graph) -> bool:
    """Split with sizes known (its ``split``, or an equal split of a static dim) becomes one
    Slice per output: backends take single-output data movement."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type != "Split":
            continue
        shape = graph.shape(node.inputs[0])
        if shape is None:
            continue
        axis = int(node.attrs.get("axis", 0)) % len(shape)
        sizes = split_sizes(graph, node, shape[axis])
        if sizes is None:
            continue
        bounds = np.cumsum([0, *[int(v) for v in sizes]])
        slices = [
            Node(
                "Slice",
                graph.unique_name(f"{node.name}/Slice_{i}"),
                [node.inputs[0]],
                [out],
                {"starts": [int(bounds[i])], "ends": [int(bounds[i + 1])], "axes": [axis], "steps": [1]},
            )
            for i, out in enumerate(node.outputs)
            if out
        ]
        graph.replace_node(node, slices)
        changed = True
    return changed


def fuse_pad_into_conv(graph: Graph) -> bool:
    """A constant zero Pad of the spatial axes only, read by one Conv (explicit pads), becomes
    part of the Conv's pads."""
    changed = False
    for pad in list(graph.nodes):
        if pad.op_type != "Pad" or pad.attrs.get("mode", "constant") != "constant":
            continue
        params = pad_parameters(graph, pad)
        if params is None or params[1] != 0.0:
            continue
        pads = params[0]
        rank = len(pads) // 2
        conv = _sole_consumer(graph, pad.outputs[0])
        if (
            conv is None
            or conv.op_type != "Conv"
            or conv.inputs[0] != pad.outputs[0]
            or conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "")
            or rank < 3
            or any(pads[i] or pads[i + rank] for i in (0, 1))
            or any(p < 0 for p in pads)
        ):
            continue
        spatial = rank - 2
        old = list(conv.attrs.get("pads", [0] * (2 * spatial)))
        conv.attrs["pads"] = [old[i] + pads[2 + i] for i in range(spatial)] + [
            old[spatial + i] + pads[rank + 2 + i] for i in range(spatial)
        ]
        conv.inputs[0] = pad.inputs[0]
        graph.remove_node(pad)
        changed = True
    return changed


def conv1d_to_conv2d(graph: Graph) -> bool:
    """A 1-D Conv (audio front ends, STFTs written as convolutions) becomes a 2-D one of height 1
    between an Unsqueeze and a Squeeze of axis 2, so that backends need 2-D kernels only."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type != "Conv" or graph.rank(node.inputs[0]) != 3:
            continue
        w = graph.constant(node.inputs[1])
        if w is None or w.ndim != 3:
            continue
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        attrs = dict(node.attrs)
        attrs["kernel_shape"] = [1, int(attrs.get("kernel_shape", [w.shape[2]])[0])]
        attrs["strides"] = [1, int(attrs.get("strides", [1])[0])]
        attrs["dilations"] = [1, int(attrs.get("dilations", [1])[0])]
        if auto_pad in ("NOTSET", ""):
            pads = list(attrs.get("pads", [0, 0]))
            attrs["pads"] = [0, int(pads[0]), 0, int(pads[1])]
        x4 = graph.unique_name(node.inputs[0] + "/h1")
        y4 = graph.unique_name(node.outputs[0] + "/h1")
        w4 = graph.add_constant(w[:, :, None, :], node.inputs[1] + "/h1")
        shape = graph.shape(node.inputs[0])
        if shape is not None:
            graph.value_info[x4] = ValueInfo(x4, None, (shape[0], shape[1], 1, shape[2]))
        graph.replace_node(
            node,
            [
                Node(
                    "Unsqueeze",
                    graph.unique_name(node.name + "/Unsqueeze"),
                    [node.inputs[0]],
                    [x4],
                    {"axes": [2]},
                ),
                Node("Conv", node.name, [x4, w4, *node.inputs[2:]], [y4], attrs),
                Node(
                    "Squeeze",
                    graph.unique_name(node.name + "/Squeeze"),
                    [y4],
                    list(node.outputs),
                    {"axes": [2]},
                ),
            ],
        )
        changed = True
    return changed


def _bias_heavy(w: np.ndarray, b: np.ndarray) -> bool:
    """Whether some channel's bias is over 1000 times its largest weight (its int32 bias at
    scale input x weight would overflow for a typical input scale)."""
    peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    return bool(np.any(np.abs(b) > 1000.0 * peak))


def fold_affine_into_conv(graph: Graph) -> bool:
    """``Conv(x) * a + b`` with scalar constants a and b (a learnable affine block, as
    PP-LCNetV3 writes it after its convolutions; either one alone too) becomes the Conv with
    scaled weights and bias."""
    changed = False
    for conv in list(graph.nodes):
        if conv.op_type != "Conv" or conv.attrs.get("activation") or conv not in graph.nodes:
            continue
        w = graph.constant(conv.inputs[1])
        bias = graph.constant(conv.input(2)) if conv.input(2) else None
        if w is None or (conv.input(2) and bias is None) or not _is_float(w):
            continue
        scale, shift, chain = 1.0, 0.0, []
        node = _sole_consumer(graph, conv.outputs[0])
        if node is not None and node.op_type == "Mul":
            operand = _constant_operand(graph, node)
            if operand is not None and operand[1].size == 1:
                scale = float(operand[1].ravel()[0])
                chain.append(node)
                node = _sole_consumer(graph, node.outputs[0])
        if node is not None and node.op_type == "Add":
            operand = _constant_operand(graph, node)
            if operand is not None and operand[1].size == 1:
                shift = float(operand[1].ravel()[0])
                chain.append(node)
        if not chain:
            continue
        b = np.zeros(w.shape[0], np.float64) if bias is None else bias.astype(np.float64)
        w_new, b_new = w.astype(np.float64) * scale, b * scale + shift
        if _bias_heavy(w_new, b_new) and not _bias_heavy(w.astype(np.float64), b):
            continue  # an int8 conv could no longer hold the bias at the scaled weights' scale
        conv.inputs = [
            conv.inputs[0],
            graph.add_constant((w.astype(np.float64) * scale).astype(w.dtype), conv.name + "/W_affine"),
            graph.add_constant((b * scale + shift).astype(w.dtype), conv.name + "/B_affine"),
        ]
        out = chain[-1].outputs[0]
        for node in chain:
            graph.remove_node(node)
        conv.outputs = [out]
        changed = True
    if changed:
        graph.remove_dead_code()
    return changed


def _square_of(graph: Graph, name: str) -> str | None:
    """x when ``name`` is Pow(x, 2) or Mul(x, x), read only once."""
    node = graph.producer(name)
    if node is None or _sole_consumer(graph, name) is None:
        return None
    if node.op_type == "Pow" and _is_scalar_const(graph, node.inputs[1], 2.0, 1e-9):
        return node.inputs[0]
    if node.op_type == "Mul" and node.inputs[0] == node.inputs[1]:
        return node.inputs[0]
    return None


def fuse_magnitude(graph: Graph) -> bool:
    """``Sqrt(a ** 2 + b ** 2)`` (an STFT's magnitude from its real and imaginary parts, as audio
    front ends write it) becomes ``ReduceL2`` over a new leading axis of ``[a, b]``: the squares
    are never materialized, so an 8-bit backend does not quantize them (which loses every quiet
    frequency bin)."""
    changed = False
    for sqrt in list(graph.nodes):
        if sqrt.op_type != "Sqrt":
            continue
        add = graph.producer(sqrt.inputs[0])
        if add is None or add.op_type != "Add" or _sole_consumer(graph, sqrt.inputs[0]) is not sqrt:
            continue
        a, b = (_square_of(graph, name) for name in add.inputs[:2])
        sa, sb = graph.shape(a) if a else None, graph.shape(b) if b else None
        if a is None or b is None or sa is None or sa != sb:
            continue
        parts = []
        nodes = []
        for name in (a, b):
            out = graph.unique_name(name + "/lead")
            nodes.append(
                Node("Unsqueeze", graph.unique_name(name + "/Unsqueeze"), [name], [out], {"axes": [0]})
            )
            graph.value_info[out] = ValueInfo(out, None, (1, *sa))
            parts.append(out)
        stacked = graph.unique_name(sqrt.outputs[0] + "/parts")
        graph.value_info[stacked] = ValueInfo(stacked, None, (2, *sa))
        nodes.append(Node("Concat", graph.unique_name(sqrt.name + "/Concat"), parts, [stacked], {"axis": 0}))
        if graph.opset >= 18:  # axes an input from opset 18 on
            axes = graph.add_constant(np.array([0], np.int64), sqrt.name + "/axes")
            nodes.append(Node("ReduceL2", sqrt.name, [stacked, axes], list(sqrt.outputs), {"keepdims": 0}))
        else:
            nodes.append(
                Node("ReduceL2", sqrt.name, [stacked], list(sqrt.outputs), {"axes": [0], "keepdims": 0})
            )
        graph.replace_node(sqrt, nodes)
        graph.remove_node(add)
        changed = True
    if changed:
        graph.remove_dead_code()
    return changed


def drop_zero_initial_states(graph: Graph) -> bool:
    """An LSTM/GRU/RNN initial state made by ``ConstantOfShape(0)`` (torch's exporter builds
    ``zeros(directions, batch, hidden)`` from the input's shape) is omitted: an absent initial
    state is zero, and the shape arithmetic behind it then goes away."""
    changed = False
    for node in graph.nodes:
        if node.op_type not in ("LSTM", "GRU", "RNN"):
            continue
        for index in (5, 6):
            name = node.input(index)
            producer = graph.producer(name) if name else None
            if producer is None or producer.op_type != "ConstantOfShape":
                continue
            value = np.asarray(producer.attrs.get("value", np.zeros(1, np.float32)))
            if value.size == 1 and float(value.ravel()[0]) == 0.0:
                node.inputs[index] = ""
                changed = True
    if changed:
        graph.remove_dead_code()
    return changed


_ELEMENTWISE_UNARY = frozenset({
    "Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Swish", "Gelu",
    "Softplus", "Abs", "Neg", "Exp", "Sqrt", "Identity",
})  # fmt: skip


def cancel_squeeze_unsqueeze(graph: Graph) -> bool:
    """``Squeeze(axes) [-> an element-wise op] -> Unsqueeze(same axes)`` becomes the element-wise
    op on the unsqueezed tensor (or nothing): consecutive 1-D convs written as 2-D ones
    (``conv1d_to_conv2d``) no longer leave and re-enter 4-D around each activation."""
    changed = False
    for unsq in list(graph.nodes):
        if unsq.op_type != "Unsqueeze" or len(unsq.inputs) != 1 or unsq not in graph.nodes:
            continue
        middle = graph.producer(unsq.inputs[0])
        if middle is None or _sole_consumer(graph, unsq.inputs[0]) is not unsq:
            continue
        elementwise = None
        if middle.op_type in _ELEMENTWISE_UNARY and len([i for i in middle.inputs if i]) == 1:
            elementwise = middle
            middle = graph.producer(middle.inputs[0])
            if middle is None or _sole_consumer(graph, elementwise.inputs[0]) is not elementwise:
                continue
        sq = middle
        if sq.op_type != "Squeeze" or len(sq.inputs) != 1 or "axes" not in sq.attrs:
            continue
        rank = graph.rank(sq.inputs[0])
        if rank is None or "axes" not in unsq.attrs:
            continue
        if sorted(a % rank for a in sq.attrs["axes"]) != sorted(a % rank for a in unsq.attrs["axes"]):
            continue
        if elementwise is None:
            if not graph.bypass(unsq, sq.inputs[0]):
                continue
        else:
            elementwise.inputs[0] = sq.inputs[0]
            elementwise.outputs = list(unsq.outputs)
            graph.remove_node(unsq)
        changed = True
    if changed:
        graph.remove_dead_code()
    return changed


def einsum_to_matmul(graph: Graph) -> bool:
    """The two-operand Einsums exporters emit for batched products (``bij,bjk->bik``,
    ``bhid,bhjd->bhij``: the same leading letters in both operands and the output, one
    contracted letter) become MatMul, with a Transpose of the second operand when its
    contracted letter comes last."""
    changed = False
    for node in list(graph.nodes):
        if node.op_type != "Einsum" or len(node.inputs) != 2:
            continue
        equation = str(node.attrs.get("equation", "")).replace(" ", "")
        if "->" not in equation or "." in equation:
            continue
        lhs, out = equation.split("->")
        terms = lhs.split(",")
        if len(terms) != 2:
            continue
        a, b = terms
        if len(a) < 2 or len(a) != len(b) or len(out) != len(a) or len(set(a + b)) != len(a) + 1:
            continue
        batch, (i, k) = a[:-2], a[-2:]
        if b[:-2] != batch or out[:-2] != batch or k not in b or i in b:
            continue
        j = b[-1] if b[-2] == k else b[-2] if b[-1] == k else None
        if j is None or out[-2:] != i + j:
            continue
        second = node.inputs[1]
        new: list[Node] = []
        if b[-1] == k:  # ...jk: transpose the last two axes
            perm = list(range(len(b) - 2)) + [len(b) - 1, len(b) - 2]
            second = graph.unique_name(node.inputs[1] + "/T")
            new.append(
                Node(
                    "Transpose",
                    graph.unique_name(node.name + "/Transpose"),
                    [node.inputs[1]],
                    [second],
                    {"perm": perm},
                )
            )
        new.append(Node("MatMul", node.name, [node.inputs[0], second], list(node.outputs)))
        graph.replace_node(node, new)
        changed = True
    return changed


DEFAULT_PASSES: tuple[Pass, ...] = (
    inputs_to_attributes,
    infer_shapes,
    fold_constants,
    canonical_softmax,
    split_to_slices,
    einsum_to_matmul,
    drop_zero_initial_states,
    remove_identities,
    fold_batch_norm,
    fuse_layer_norm,
    sub_div_by_constant,
    fuse_gelu,
    fuse_hard_swish,
    fuse_pad_into_conv,
    fold_affine_into_conv,
    fuse_magnitude,
    conv1d_to_conv2d,
    cancel_squeeze_unsqueeze,
    reduce_mean_to_global_pool,
    fuse_matmul_add,
    fuse_activation,
    eliminate_dead_code,
)


def optimize(graph: Graph, passes: Sequence[Pass] = DEFAULT_PASSES, max_rounds: int = 20) -> Graph:
    """A rewritten copy of ``graph``: ``passes`` run in order, repeatedly, until none changes it."""
    graph = graph.copy()
    for _ in range(max_rounds):
        changed = False
        for pass_ in passes:
            changed |= bool(pass_(graph))
        if not changed:
            break
    else:
        raise GraphError(f"graph {graph.name!r} did not reach a fixed point in {max_rounds} rounds of passes")
    graph.validate()
    return graph
