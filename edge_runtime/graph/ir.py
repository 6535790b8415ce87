"""A small graph IR: what the importer produces, the passes rewrite and backends lower.

Tensors are named by strings, as in ONNX. A tensor is either a graph input, a
constant (``Graph.initializers``, numpy arrays) or the output of exactly one
node. The empty string names an omitted optional input. Attributes are plain
Python values (int, float, str, lists of those, numpy arrays for tensors).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.errors import GraphError

__all__ = ["Dim", "Graph", "Node", "ValueInfo"]

# A dimension: a size, a symbolic name such as "batch", or None when unknown.
Dim = int | str | None


@dataclass
class ValueInfo:
    """Type of a tensor: numpy dtype and shape (``None`` when the rank is unknown)."""

    name: str
    dtype: np.dtype | None = None
    shape: tuple[Dim, ...] | None = None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass
class Node:
    """One operator application. ``attrs`` hold plain Python values."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""

    def input(self, index: int) -> str:
        """Name of input ``index``, or "" when it is omitted."""
        return self.inputs[index] if index < len(self.inputs) else ""

    def __str__(self) -> str:
        return f"{self.op_type} node {self.name!r}"


class Graph:
    """An ordered list of nodes with named inputs, outputs and constants."""

    def __init__(
        self,
        nodes: Iterable[Node] = (),
        inputs: Iterable[ValueInfo] = (),
        outputs: Iterable[ValueInfo] = (),
        initializers: dict[str, np.ndarray] | None = None,
        value_info: dict[str, ValueInfo] | None = None,
        name: str = "graph",
        opset: int = 17,
    ) -> None:
        self.nodes: list[Node] = list(nodes)
        self.inputs: list[ValueInfo] = list(inputs)
        self.outputs: list[ValueInfo] = list(outputs)
        self.initializers: dict[str, np.ndarray] = dict(initializers or {})
        # Shapes and dtypes of intermediate tensors known from shape inference.
        self.value_info: dict[str, ValueInfo] = dict(value_info or {})
        self.name = name
        self.opset = opset
        self._counter = itertools.count()

    # -- queries -----------------------------------------------------------

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, or None when ``name`` is not constant."""
        return self.initializers.get(name)

    def producer(self, name: str) -> Node | None:
        for node in self.nodes:
            if name in node.outputs:
                return node
        return None

    def consumers(self, name: str) -> list[Node]:
        return [node for node in self.nodes if name in node.inputs]

    def uses(self, name: str) -> int:
        """How many node inputs and graph outputs read ``name``."""
        count = sum(node.inputs.count(name) for node in self.nodes)
        return count + self.output_names.count(name)

    def info(self, name: str) -> ValueInfo | None:
        """Type of a tensor: a graph input or output, an intermediate or a constant."""
        for v in itertools.chain(self.inputs, self.outputs):
            if v.name == name:
                return v
        if name in self.value_info:
            return self.value_info[name]
        if name in self.initializers:
            value = self.initializers[name]
            return ValueInfo(name, value.dtype, tuple(value.shape))
        return None

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        info = self.info(name)
        return None if info is None else info.shape

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)

    def op_types(self) -> list[str]:
        return [node.op_type for node in self.nodes]

    # -- edits -------------------------------------------------------------

    def unique_name(self, hint: str) -> str:
        """A tensor or node name not used anywhere in the graph yet."""
        taken = self._all_names()
        if hint not in taken:
            return hint
        while True:
            candidate = f"{hint}_{next(self._counter)}"
            if candidate not in taken:
                return candidate

    def _all_names(self) -> set[str]:
        names = set(self.initializers) | set(self.value_info)
        names.update(self.input_names, self.output_names)
        for node in self.nodes:
            names.add(node.name)
            names.update(node.inputs)
            names.update(node.outputs)
        return names

    def add_constant(self, value: np.ndarray, hint: str) -> str:
        """Store ``value`` as a new constant and return its name."""
        name = self.unique_name(hint)
        self.initializers[name] = np.asarray(value)
        return name

    def remove_node(self, node: Node) -> None:
        self.nodes.remove(node)

    def replace_node(self, old: Node, new: Iterable[Node]) -> None:
        """Put ``new`` (in order) where ``old`` was."""
        index = self.nodes.index(old)
        self.nodes[index : index + 1] = list(new)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer of tensor ``old`` read ``new`` instead (graph outputs excluded)."""
        for node in self.nodes:
            node.inputs = [new if name == old else name for name in node.inputs]

    def bypass(self, node: Node, keep: str) -> bool:
        """Remove a node whose output equals its input ``keep``; rewire its consumers.

        When the output is a graph output its name must survive, so the
        producer of ``keep`` is renamed to it instead; that is impossible when
        ``keep`` is itself a graph input, output or constant, and then nothing
        changes and False is returned.
        """
        (out,) = [o for o in node.outputs if o]
        if out not in self.output_names:
            self.replace_uses(out, keep)
            self.remove_node(node)
            return True
        producer = self.producer(keep)
        if producer is None or keep in self.output_names or keep in self.input_names:
            return False
        self.remove_node(node)
        producer.outputs = [out if name == keep else name for name in producer.outputs]
        self.replace_uses(keep, out)
        if keep in self.value_info:
            self.value_info[out] = ValueInfo(out, self.value_info[keep].dtype, self.value_info[keep].shape)
        return True

    def remove_dead_code(self) -> bool:
        """Drop nodes whose outputs nobody reads and constants nobody uses."""
        changed = False
        live = set(self.output_names)
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(o in live for o in node.outputs if o):
                kept.append(node)
                live.update(name for name in node.inputs if name)
            else:
                changed = True
        self.nodes = kept[::-1]
        for name in list(self.initializers):
            if name not in live:
                del self.initializers[name]
                changed = True
        for name in list(self.value_info):
            if name not in live:
                del self.value_info[name]
        return changed

    def toposort(self) -> None:
        """Order nodes so that every tensor is produced before it is read (stable).

        Raises GraphError on a cycle or on a tensor that nothing produces.
        """
        available = set(self.input_names) | set(self.initializers) | {""}
        pending = list(self.nodes)
        ordered: list[Node] = []
        while pending:
            ready = [n for n in pending if all(i in available for i in n.inputs)]
            if not ready:
                node = pending[0]
                missing = [i for i in node.inputs if i not in available]
                raise GraphError(f"{node} reads {missing}, which no node, input or constant provides")
            for node in ready:
                available.update(node.outputs)
            ordered.extend(ready)
            ready_ids = {id(n) for n in ready}
            pending = [n for n in pending if id(n) not in ready_ids]
        self.nodes = ordered

    def validate(self) -> None:
        """Check single assignment and that every read tensor is defined before use."""
        defined = set(self.input_names) | set(self.initializers) | {""}
        for node in self.nodes:
            for name in node.inputs:
                if name not in defined:
                    raise GraphError(f"{node} reads {name!r} before anything defines it")
            for name in node.outputs:
                if name and name in defined:
                    raise GraphError(f"{node} redefines tensor {name!r}")
                defined.add(name)
        for name in self.output_names:
            if name not in defined:
                raise GraphError(f"graph output {name!r} is never produced")

    def copy(self) -> Graph:
        """A deep copy (constants included) that passes may edit freely."""
        return Graph(
            nodes=[copy.deepcopy(node) for node in self.nodes],
            inputs=[copy.copy(v) for v in self.inputs],
            outputs=[copy.copy(v) for v in self.outputs],
            initializers={name: value.copy() for name, value in self.initializers.items()},
            value_info={name: copy.copy(v) for name, v in self.value_info.items()},
            name=self.name,
            opset=self.opset,
        )

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs={self.input_names}, "
            f"outputs={self.output_names}, {len(self.initializers)} constants)"
        )
