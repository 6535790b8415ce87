"""Convert float ONNX convolutional networks to float32 ``.tflite`` files.

No ONNX or PyTorch -> TFLite converter installs on the machines this project
targets (TensorFlow and ai-edge-torch are far heavier than the runtime, and pull
their own torch builds), yet a ``.tflite`` of the same model is what compares our
runtime with LiteRT's XNNPACK. This converter covers the operators the image
models of this project export, after :func:`edge_runtime.graph.optimize` (batch
norm folded into the convolutions, ReLU / ReLU6 fused into them):

- Conv -> CONV_2D, or DEPTHWISE_CONV_2D when groups == in_c == out_c, with the
  fused activation; ONNX pads that are not TFLite's SAME or VALID become a PAD
  before a VALID convolution;
- Gemm -> FULLY_CONNECTED; Add -> ADD; Relu / Clip(0, 6) -> RELU / RELU6;
- MaxPool / AveragePool (pads likewise, through PADV2 with -inf for max) ->
  MAX_POOL_2D / AVERAGE_POOL_2D; GlobalAveragePool -> MEAN over H and W;
- Flatten / Reshape to 2-D -> RESHAPE (a Gemm after the flatten of a map larger
  than 1x1 gets its weight columns permuted to the NHWC order).

The model keeps the ONNX interface: an NCHW float32 input (a TRANSPOSE to NHWC is
its first operator) with a dynamic batch dimension, and the ONNX output names.
Anything else raises :class:`UnsupportedOperatorError` naming the node. The
flatbuffer is written with the schema bindings that LiteRT ships
(``ai_edge_litert.schema_py_generated``); the MLP-only writer
(:mod:`edge_runtime.backends.tflite_writer`) needs nothing beyond ``flatbuffers``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import UnsupportedOperatorError
from edge_runtime.graph import Graph, Node, import_onnx, optimize

__all__ = ["convert_onnx_to_tflite"]

_ACTIVATIONS = {None: 0, "": 0, "relu": 1, "relu6": 3}  # ActivationFunctionType
_NEG_INF = float(np.finfo(np.float32).min)


def convert_onnx_to_tflite(model: bytes | str | Path) -> bytes:
    """The ``.tflite`` bytes of a float ONNX model (serialized bytes or a path); see the module doc."""
    data = Path(model).read_bytes() if isinstance(model, (str, Path)) else model
    return _Converter(optimize(import_onnx(data))).run()


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:  # pragma: no cover - ai-edge-litert is the tflite extra
        raise ImportError(
            "converting to .tflite needs ai-edge-litert: pip install 'edge-runtime[tflite]'"
        ) from exc
    return schema


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding (before, after) along one axis."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class _Converter:
    def __init__(self, graph: Graph) -> None:
        self.s = _schema()
        self.graph = graph
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [self.s.BufferT()]  # buffer 0: the empty one, by convention
        self.operators: list[Any] = []
        self.opcodes: dict[int, int] = {}
        self.index: dict[str, int] = {}  # ONNX tensor name -> TFLite tensor index
        self.nhwc: dict[str, tuple[int, int, int]] = {}  # 4-D maps: logical (C, H, W)
        self.flat_from: dict[str, tuple[int, int, int]] = {}  # flattened maps: (C, H, W)

    # -- flatbuffer pieces ---------------------------------------------------

    def _tensor(self, name: str, shape: list[int], data: np.ndarray | None = None, dtype: int = 0) -> int:
        t = self.s.TensorT()
        t.shape = [max(1, d) for d in shape]
        t.shapeSignature = list(shape)
        t.type = dtype
        t.name = name
        t.buffer = 0
        if data is not None:
            buffer = self.s.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def _const(self, name: str, value: np.ndarray) -> int:
        value = np.ascontiguousarray(value)
        dtype = {np.dtype(np.float32): 0, np.dtype(np.int32): 2}[value.dtype]
        return self._tensor(name, list(value.shape), value, dtype)

    def _op(
        self, code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options=None
    ) -> None:
        if code not in self.opcodes:
            self.opcodes[code] = len(self.opcodes)
        op = self.s.OperatorT()
        op.opcodeIndex = self.opcodes[code]
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.operators.append(op)

    def _map(self, name: str, chw: tuple[int, int, int]) -> int:
        """A new NHWC map tensor for ONNX tensor ``name`` of logical (C, H, W)."""
        c, h, w = chw
        self.nhwc[name] = chw
        self.index[name] = self._tensor(name, [-1, h, w, c])
        return self.index[name]

    # -- driver ------------------------------------------------------------

    def run(self) -> bytes:
        import flatbuffers

        s, g = self.s, self.graph
        if len(g.inputs) != 1:
            raise UnsupportedOperatorError(
                f"tflite conversion: one image input expected, got {len(g.inputs)}"
            )
        info = g.inputs[0]
        shape = info.shape
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise UnsupportedOperatorError(
                f"tflite conversion: input {info.name!r} must be NCHW with static C, H, W, got {shape}"
            )
        _, c, h, w = shape
        source = self._tensor(info.name, [-1, c, h, w])
        perm = self._const(f"{info.name}/perm", np.array([0, 2, 3, 1], np.int32))
        self._op(s.BuiltinOperator.TRANSPOSE, [source, perm], [self._map(f"{info.name}@nhwc", (c, h, w))],
                 s.BuiltinOptions.TransposeOptions, s.TransposeOptionsT())  # fmt: skip
        self.index[info.name] = self.index.pop(f"{info.name}@nhwc")
        self.nhwc[info.name] = self.nhwc.pop(f"{info.name}@nhwc")
        for node in g.nodes:
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None or node.domain not in ("", "ai.onnx"):
                raise UnsupportedOperatorError(f"{node}: no TFLite conversion for {node.op_type!r}")
            handler(node)
        outputs = []
        for out in g.outputs:
            if out.name in self.nhwc:
                raise UnsupportedOperatorError(f"tflite conversion: output {out.name!r} is a 4-D map")
            outputs.append(self.index[out.name])

        subgraph = s.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs = [source], outputs
        subgraph.name = g.name or "main"
        model = s.ModelT()
        model.version = 3
        model.description = "edge_runtime.backends.tflite_convert"
        model.buffers = self.buffers
        model.subgraphs = [subgraph]
        codes = []
        for code in sorted(self.opcodes, key=self.opcodes.get):
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            codes.append(oc)
        model.operatorCodes = codes
        builder = flatbuffers.Builder(1 << 20)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    # -- operators ------------------------------------------------------------

    def _input_map(self, node: Node) -> tuple[int, tuple[int, int, int]]:
        x = node.inputs[0]
        if x not in self.nhwc:
            raise UnsupportedOperatorError(f"{node}: expects a 4-D feature map input")
        return self.index[x], self.nhwc[x]

    def _padded(self, node: Node, x: int, chw, kernel, strides, dilations, pad_value: float | None):
        """(input tensor, TFLite padding) for ONNX pads: SAME or VALID when they match, else a PAD first."""
        s = self.s
        c, h, w = chw
        pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise UnsupportedOperatorError(f"{node}: auto_pad is not converted")
        if not any(pads):
            return x, s.Padding.VALID
        same_h = _same_pads(h, kernel[0], strides[0], dilations[0])
        same_w = _same_pads(w, kernel[1], strides[1], dilations[1])
        if (pads[0], pads[2]) == same_h and (pads[1], pads[3]) == same_w:
            return x, s.Padding.SAME
        paddings = self._const(f"{node.name}/paddings",
                               np.array([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], np.int32))  # fmt: skip
        out = self._tensor(f"{node.name}/padded", [-1, h + pads[0] + pads[2], w + pads[1] + pads[3], c])
        if pad_value is None:
            self._op(
                s.BuiltinOperator.PAD, [x, paddings], [out], s.BuiltinOptions.PadOptions, s.PadOptionsT()
            )
        else:
            value = self._const(f"{node.name}/pad_value", np.array([pad_value], np.float32))
            self._op(s.BuiltinOperator.PADV2, [x, paddings, value], [out],
                     s.BuiltinOptions.PadV2Options, s.PadV2OptionsT())  # fmt: skip
        return out, s.Padding.VALID

    def _out_chw(self, node: Node) -> tuple[int, int, int]:
        shape = self.graph.shape(node.outputs[0])
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise UnsupportedOperatorError(f"{node}: output shape unknown ({shape})")
        return shape[1], shape[2], shape[3]

    def _op_Conv(self, node: Node) -> None:
        s, g = self.s, self.graph
        x, chw = self._input_map(node)
        weights = g.constant(node.inputs[1])
        bias = g.constant(node.input(2)) if node.input(2) else None
        if weights is None or (node.input(2) and bias is None) or weights.ndim != 4:
            raise UnsupportedOperatorError(f"{node}: constant 2-D convolution weights expected")
        out_c, _, kh, kw = weights.shape
        group = int(node.attrs.get("group", 1))
        strides = list(node.attrs.get("strides", [1, 1]))
        dilations = list(node.attrs.get("dilations", [1, 1]))
        activation = _ACTIVATIONS.get(node.attrs.get("activation"))
        if activation is None:
            raise UnsupportedOperatorError(f"{node}: activation {node.attrs.get('activation')!r}")
        depthwise = group > 1 and group == chw[0] == out_c
        if group != 1 and not depthwise:
            raise UnsupportedOperatorError(f"{node}: grouped convolution (group {group}) is not converted")
        x, padding = self._padded(node, x, chw, (kh, kw), strides, dilations, None)
        w = weights.astype(np.float32)
        w = w.transpose(1, 2, 3, 0) if depthwise else w.transpose(0, 2, 3, 1)  # [1,kh,kw,C] / [O,kh,kw,I]
        b = np.zeros(out_c, np.float32) if bias is None else bias.astype(np.float32)
        inputs = [x, self._const(f"{node.name}/weights", w), self._const(f"{node.name}/bias", b)]
        out = self._map(node.outputs[0], self._out_chw(node))
        if depthwise:
            options = s.DepthwiseConv2DOptionsT()
            options.depthMultiplier = 1
            code, kind = s.BuiltinOperator.DEPTHWISE_CONV_2D, s.BuiltinOptions.DepthwiseConv2DOptions
        else:
            options = s.Conv2DOptionsT()
            code, kind = s.BuiltinOperator.CONV_2D, s.BuiltinOptions.Conv2DOptions
        options.padding, options.strideH, options.strideW = padding, strides[0], strides[1]
        options.dilationHFactor, options.dilationWFactor = dilations[0], dilations[1]
        options.fusedActivationFunction = activation
        self._op(code, inputs, [out], kind, options)

    def _pool(self, node: Node, code: int, pad_value: float) -> None:
        s = self.s
        x, chw = self._input_map(node)
        if node.attrs.get("ceil_mode", 0) or any(d != 1 for d in node.attrs.get("dilations", [1, 1])):
            raise UnsupportedOperatorError(f"{node}: ceil_mode and dilations are not converted")
        if code == s.BuiltinOperator.AVERAGE_POOL_2D and any(node.attrs.get("pads", [0])) \
                and not node.attrs.get("count_include_pad", 0):  # fmt: skip
            raise UnsupportedOperatorError(f"{node}: padded average pools that exclude the padding")
        kernel = list(node.attrs["kernel_shape"])
        strides = list(node.attrs.get("strides", [1, 1]))
        x, padding = self._padded(node, x, chw, kernel, strides, [1, 1], pad_value)
        options = s.Pool2DOptionsT()
        options.padding, options.strideH, options.strideW = padding, strides[0], strides[1]
        options.filterHeight, options.filterWidth = kernel
        self._op(code, [x], [self._map(node.outputs[0], self._out_chw(node))], s.BuiltinOptions.Pool2DOptions,
                 options)  # fmt: skip

    def _op_MaxPool(self, node: Node) -> None:
        self._pool(node, self.s.BuiltinOperator.MAX_POOL_2D, _NEG_INF)

    def _op_AveragePool(self, node: Node) -> None:
        self._pool(node, self.s.BuiltinOperator.AVERAGE_POOL_2D, 0.0)

    def _op_GlobalAveragePool(self, node: Node) -> None:
        s = self.s
        x, (c, _, _) = self._input_map(node)
        axes = self._const(f"{node.name}/axes", np.array([1, 2], np.int32))
        options = s.ReducerOptionsT()
        options.keepDims = True
        self._op(s.BuiltinOperator.MEAN, [x, axes], [self._map(node.outputs[0], (c, 1, 1))],
                 s.BuiltinOptions.ReducerOptions, options)  # fmt: skip

    def _activation(self, node: Node, code: int) -> None:
        x, chw = self._input_map(node)
        self._op(code, [x], [self._map(node.outputs[0], chw)])

    def _op_Relu(self, node: Node) -> None:
        self._activation(node, self.s.BuiltinOperator.RELU)

    def _op_Clip(self, node: Node) -> None:
        low, high = node.attrs.get("min"), node.attrs.get("max")
        if len(node.inputs) != 1 or low != 0.0 or high not in (6.0, None, math.inf):
            raise UnsupportedOperatorError(f"{node}: only Clip to [0, 6] or [0, inf) is converted")
        self._activation(node, self.s.BuiltinOperator.RELU6 if high == 6.0 else self.s.BuiltinOperator.RELU)

    def _op_Add(self, node: Node) -> None:
        s = self.s
        a, b = node.inputs
        if a not in self.nhwc or b not in self.nhwc or self.nhwc[a] != self.nhwc[b]:
            raise UnsupportedOperatorError(f"{node}: only the sum of two maps of one shape is converted")
        self._op(s.BuiltinOperator.ADD, [self.index[a], self.index[b]],
                 [self._map(node.outputs[0], self.nhwc[a])], s.BuiltinOptions.AddOptions, s.AddOptionsT())  # fmt: skip

    def _op_Flatten(self, node: Node) -> None:
        s = self.s
        x, (c, h, w) = self._input_map(node)
        if int(node.attrs.get("axis", 1)) != 1:
            raise UnsupportedOperatorError(f"{node}: only Flatten(axis=1) is converted")
        shape = self._const(f"{node.name}/shape", np.array([-1, c * h * w], np.int32))
        options = s.ReshapeOptionsT()
        options.newShape = [-1, c * h * w]
        out = node.outputs[0]
        self.index[out] = self._tensor(out, [-1, c * h * w])
        self.flat_from[out] = (c, h, w)
        self._op(
            s.BuiltinOperator.RESHAPE, [x, shape], [self.index[out]], s.BuiltinOptions.ReshapeOptions, options
        )

    def _op_Reshape(self, node: Node) -> None:
        out_shape = self.graph.shape(node.outputs[0])
        if out_shape is None or len(out_shape) != 2 or node.inputs[0] not in self.nhwc:
            raise UnsupportedOperatorError(f"{node}: only a Reshape of a map to 2-D (a flatten) is converted")
        self._op_Flatten(Node("Flatten", node.name, node.inputs[:1], node.outputs, {"axis": 1}))

    def _op_Gemm(self, node: Node) -> None:
        s, g = self.s, self.graph
        x = node.inputs[0]
        weights = g.constant(node.inputs[1])
        bias = g.constant(node.input(2)) if node.input(2) else None
        if x not in self.index or x in self.nhwc or weights is None or node.attrs.get("transA", 0):
            raise UnsupportedOperatorError(f"{node}: a 2-D input and constant weights are expected")
        w = weights.astype(np.float32) * np.float32(node.attrs.get("alpha", 1.0))
        w = w if node.attrs.get("transB", 0) else w.T  # FULLY_CONNECTED weights are [out, in]
        if x in self.flat_from:  # the flatten ran on NHWC: reorder the columns from (c, h, w) to (h, w, c)
            c, h, wd = self.flat_from[x]
            w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        out_n = w.shape[0]
        b = np.zeros(out_n, np.float32) if bias is None else np.broadcast_to(
            bias.astype(np.float32) * np.float32(node.attrs.get("beta", 1.0)), (out_n,))  # fmt: skip
        activation = _ACTIVATIONS.get(node.attrs.get("activation"))
        if activation is None:
            raise UnsupportedOperatorError(f"{node}: activation {node.attrs.get('activation')!r}")
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = activation
        out = node.outputs[0]
        self.index[out] = self._tensor(out, [-1, out_n])
        inputs = [self.index[x], self._const(f"{node.name}/weights", w), self._const(f"{node.name}/bias", b)]
        self._op(s.BuiltinOperator.FULLY_CONNECTED, inputs, [self.index[out]],
                 s.BuiltinOptions.FullyConnectedOptions, options)  # fmt: skip
