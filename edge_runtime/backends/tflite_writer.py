"""Write small float32 TFLite models straight into the TFLite flatbuffer format.

Tests, demos and examples need a real ``.tflite`` file, and TensorFlow's
converter is a dependency far heavier than the runtime it would test. A
multilayer perceptron needs only a few tables of the schema, written here
with the ``flatbuffers`` library (already required by onnxruntime and LiteRT).

What it writes, and its limits, on purpose:

- one subgraph: ``input [batch, features]`` -> FULLY_CONNECTED (+ bias, with
  a fused NONE / RELU / RELU6 activation) per layer -> optional SOFTMAX
  (beta 1) -> ``output [batch, classes]``;
- float32 only: no quantization parameters, no sparsity, no metadata or
  signature defs;
- the batch dimension is dynamic (``shape_signature`` -1), so an interpreter
  can ``resize_tensor_input`` it;
- weights use TFLite's FULLY_CONNECTED layout ``[out, in]``; the equivalent
  ONNX node is ``Gemm(x, W, b, transB=1)``.

Slot numbers are field positions in TensorFlow's
``tensorflow/lite/schema/schema.fbs`` (schema version 3). That schema only
ever appends fields, so they are stable across TFLite releases.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import flatbuffers
import numpy as np

__all__ = ["ACTIVATIONS", "Dense", "write_mlp_tflite"]

_FILE_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3
_FLOAT32 = 0  # TensorType.FLOAT32
_FULLY_CONNECTED, _SOFTMAX = 9, 25  # BuiltinOperator
_FULLY_CONNECTED_OPTIONS, _SOFTMAX_OPTIONS = 8, 9  # BuiltinOptions union tags
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127  # deprecated_builtin_code is an int8
_NO_TENSOR = -1  # an optional operator input that is absent
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 3}  # ActivationFunctionType

# Field slots per table, as numbered in schema.fbs.
_MODEL_VERSION, _MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_DESCRIPTION, _MODEL_BUFFERS = range(5)
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS, _SUBGRAPH_NAME = range(5)
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_BUFFER, _TENSOR_NAME = 0, 1, 2, 3
_TENSOR_SHAPE_SIGNATURE = 7
_BUFFER_DATA = 0
_OPERATOR_OPCODE_INDEX, _OPERATOR_INPUTS, _OPERATOR_OUTPUTS = 0, 1, 2
_OPERATOR_OPTIONS_TYPE, _OPERATOR_OPTIONS = 3, 4
_OPCODE_DEPRECATED_BUILTIN, _OPCODE_VERSION, _OPCODE_BUILTIN = 0, 2, 3
_FC_ACTIVATION = 0
_SOFTMAX_BETA = 0


@dataclass(frozen=True)
class Dense:
    """One FULLY_CONNECTED layer: ``y = activation(x @ weights.T + bias)``."""

    weights: np.ndarray  # [out, in], float32
    bias: np.ndarray  # [out], float32
    activation: str = "none"  # a key of ACTIVATIONS

    def __post_init__(self) -> None:
        if self.weights.ndim != 2 or self.bias.shape != (self.weights.shape[0],):
            raise ValueError(
                f"Dense needs weights [out, in] and bias [out], got {list(self.weights.shape)} "
                f"and {list(self.bias.shape)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dynamic_batch: bool
    buffer: int  # 0: the empty buffer, for activations


class _Writer:
    """Builds one model; flatbuffers are written children first, so every helper returns an offset."""

    def __init__(self) -> None:
        self.b = flatbuffers.Builder(4096)

    def int32_vector(self, values: Sequence[int]) -> int:
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependInt32(int(v))
        return self.b.EndVector()

    def offset_vector(self, offsets: Sequence[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def bytes_vector(self, data: bytes) -> int:
        # 16-byte aligned so the interpreter can read float weights in place. Written as one
        # slice (what Builder.CreateByteVector does) rather than byte by byte.
        b = self.b
        b.StartVector(1, len(data), 16)
        b.head -= len(data)
        b.Bytes[b.head : b.head + len(data)] = data
        return b.EndVector()

    def buffer(self, data: bytes) -> int:
        vec = self.bytes_vector(data) if data else None
        self.b.StartObject(_BUFFER_DATA + 1)
        if vec is not None:
            self.b.PrependUOffsetTRelativeSlot(_BUFFER_DATA, vec, 0)
        return self.b.EndObject()

    def tensor(self, t: _Tensor) -> int:
        name = self.b.CreateString(t.name)
        shape = self.int32_vector(t.shape)
        signature = self.int32_vector((-1, *t.shape[1:])) if t.dynamic_batch else None
        self.b.StartObject(_TENSOR_SHAPE_SIGNATURE + 1)
        self.b.PrependUOffsetTRelativeSlot(_TENSOR_SHAPE, shape, 0)
        self.b.PrependInt8Slot(_TENSOR_TYPE, _FLOAT32, -1)  # default differs: always written
        self.b.PrependUint32Slot(_TENSOR_BUFFER, t.buffer, 0)
        self.b.PrependUOffsetTRelativeSlot(_TENSOR_NAME, name, 0)
        if signature is not None:
            self.b.PrependUOffsetTRelativeSlot(_TENSOR_SHAPE_SIGNATURE, signature, 0)
        return self.b.EndObject()

    def operator_code(self, builtin: int) -> int:
        self.b.StartObject(_OPCODE_BUILTIN + 1)
        self.b.PrependInt8Slot(_OPCODE_DEPRECATED_BUILTIN, min(builtin, _PLACEHOLDER_FOR_GREATER_OP_CODES), 0)
        self.b.PrependInt32Slot(_OPCODE_VERSION, 1, 0)
        self.b.PrependInt32Slot(_OPCODE_BUILTIN, builtin, 0)
        return self.b.EndObject()

    def fully_connected_options(self, activation: str) -> int:
        self.b.StartObject(_FC_ACTIVATION + 1)
        self.b.PrependInt8Slot(_FC_ACTIVATION, ACTIVATIONS[activation], 0)
        return self.b.EndObject()

    def softmax_options(self) -> int:
        self.b.StartObject(_SOFTMAX_BETA + 1)
        self.b.PrependFloat32Slot(_SOFTMAX_BETA, 1.0, 0.0)
        return self.b.EndObject()

    def operator(
        self, opcode_index: int, inputs: Sequence[int], outputs: Sequence[int], options: tuple[int, int]
    ) -> int:
        ins, outs = self.int32_vector(inputs), self.int32_vector(outputs)
        options_type, options_table = options
        self.b.StartObject(_OPERATOR_OPTIONS + 1)
        self.b.PrependUint32Slot(_OPERATOR_OPCODE_INDEX, opcode_index, 0)
        self.b.PrependUOffsetTRelativeSlot(_OPERATOR_INPUTS, ins, 0)
        self.b.PrependUOffsetTRelativeSlot(_OPERATOR_OUTPUTS, outs, 0)
        self.b.PrependUint8Slot(_OPERATOR_OPTIONS_TYPE, options_type, 0)
        self.b.PrependUOffsetTRelativeSlot(_OPERATOR_OPTIONS, options_table, 0)
        return self.b.EndObject()


def write_mlp_tflite(
    layers: Sequence[Dense],
    *,
    input_name: str = "input",
    output_name: str = "output",
    softmax: bool = False,
    description: str = "edge_runtime tflite_writer",
) -> bytes:
    """The bytes of a ``.tflite`` model running ``layers`` in order, then SOFTMAX if asked.

    Input ``input_name`` is float32 ``[batch, layers[0].in]``; output
    ``output_name`` is float32 ``[batch, layers[-1].out]``; ``batch`` is
    dynamic (allocated as 1).
    """
    if not layers:
        raise ValueError("write_mlp_tflite needs at least one Dense layer")
    for i, (prev, layer) in enumerate(itertools.pairwise(layers), start=1):
        if layer.weights.shape[1] != prev.weights.shape[0]:
            raise ValueError(
                f"layer {i} takes {layer.weights.shape[1]} features, layer {i - 1} gives {prev.weights.shape[0]}"
            )

    # Plan tensors and buffers first; buffer 0 is the empty buffer, by TFLite convention.
    buffers: list[bytes] = [b""]
    tensors: list[_Tensor] = [_Tensor(input_name, (1, layers[0].weights.shape[1]), True, 0)]
    ops: list[tuple[int, list[int], list[int], str | None]] = []  # (opcode, inputs, outputs, activation)
    current = 0
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1 and not softmax
        out_name = output_name if last else f"dense_{i}"
        for suffix, array in (("weights", layer.weights), ("bias", layer.bias)):
            buffers.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
            tensors.append(_Tensor(f"dense_{i}/{suffix}", tuple(array.shape), False, len(buffers) - 1))
        tensors.append(_Tensor(out_name, (1, layer.weights.shape[0]), True, 0))
        weights, bias, out = len(tensors) - 3, len(tensors) - 2, len(tensors) - 1
        ops.append((0, [current, weights, bias], [out], layer.activation))
        current = out
    if softmax:
        tensors.append(_Tensor(output_name, (1, layers[-1].weights.shape[0]), True, 0))
        ops.append((1, [current], [len(tensors) - 1], None))

    w = _Writer()
    buffer_offsets = [w.buffer(data) for data in buffers]
    tensor_offsets = [w.tensor(t) for t in tensors]
    op_offsets = []
    for opcode, ins, outs, activation in ops:
        if activation is not None:
            options = (_FULLY_CONNECTED_OPTIONS, w.fully_connected_options(activation))
        else:
            options = (_SOFTMAX_OPTIONS, w.softmax_options())
        op_offsets.append(w.operator(opcode, ins, outs, options))
    opcodes = [w.operator_code(_FULLY_CONNECTED)] + ([w.operator_code(_SOFTMAX)] if softmax else [])

    b = w.b
    tensors_vec, ops_vec = w.offset_vector(tensor_offsets), w.offset_vector(op_offsets)
    inputs_vec, outputs_vec = w.int32_vector([0]), w.int32_vector([len(tensors) - 1])
    subgraph_name = b.CreateString("main")
    b.StartObject(_SUBGRAPH_NAME + 1)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH_TENSORS, tensors_vec, 0)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH_INPUTS, inputs_vec, 0)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH_OUTPUTS, outputs_vec, 0)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH_OPERATORS, ops_vec, 0)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH_NAME, subgraph_name, 0)
    subgraph = b.EndObject()

    opcodes_vec = w.offset_vector(opcodes)
    subgraphs_vec = w.offset_vector([subgraph])
    buffers_vec = w.offset_vector(buffer_offsets)
    desc = b.CreateString(description)
    b.StartObject(_MODEL_BUFFERS + 1)
    b.PrependUint32Slot(_MODEL_VERSION, _SCHEMA_VERSION, 0)
    b.PrependUOffsetTRelativeSlot(_MODEL_OPERATOR_CODES, opcodes_vec, 0)
    b.PrependUOffsetTRelativeSlot(_MODEL_SUBGRAPHS, subgraphs_vec, 0)
    b.PrependUOffsetTRelativeSlot(_MODEL_DESCRIPTION, desc, 0)
    b.PrependUOffsetTRelativeSlot(_MODEL_BUFFERS, buffers_vec, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=_FILE_IDENTIFIER)
    return bytes(b.Output())
