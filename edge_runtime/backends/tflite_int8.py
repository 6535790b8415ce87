"""Write a fully quantized ``.tflite`` from a native INT8 plan: the same model, bit for bit
in its weights, biases, scales and zero points.

``edge to-tflite --int8 MODEL.edgepkg`` walks the plan's steps (:class:`QuantizedPlan`)
and writes one TFLite operator (or a short fixed sequence) per step, so that LiteRT's
interpreter, and its XNNPACK delegate's qs8 kernels, run exactly our quantization:

- every activation is int8 per tensor. A uint8 plan buffer with zero point ``z`` becomes
  int8 with zero point ``z - 128``: each code moves by 128, the real values do not;
- weights are our int8 values, per output channel (``quantized_dimension`` 0 for
  CONV_2D ``[O, H, W, I]`` and FULLY_CONNECTED ``[N, K]``, 3 for DEPTHWISE_CONV_2D
  ``[1, H, W, C]``), zero points 0; biases are our int32 values with scale
  ``input_scale * weight_scale[c]``, zero point 0;
- the plan keeps each layer's requantization as (multiplier, shift), not its weight
  scales: ``weight_scale[c] = multiplier[c] * 2^-shift[c] * output_scale / input_scale``,
  rounded to float32. The multiplier holds 31 bits of the float32 scale's 24, so this
  recovers the scale the lowering used exactly; the writer checks it by recomputing the
  multipliers and shifts (:func:`edge_runtime.numerics.requant`) and comparing them;
- the output clamp of a conv / GEMM (and a clamp step after an add or mul) becomes the
  fused RELU / RELU6 when its bounds are the ones TFLite derives for them, else a
  MAXIMUM / MINIMUM with int8 constants (exact: same parameters in and out).

Step by step: quantize -> QUANTIZE (+ TRANSPOSE to NHWC), conv -> CONV_2D or
DEPTHWISE_CONV_2D (``groups == in_c == out_c``; padding SAME or VALID when the plan's pads
are TFLite's, else a PAD with the zero point first), gemm -> FULLY_CONNECTED, add / mul ->
ADD / MUL, clamp -> RELU / RELU6 / MAXIMUM + MINIMUM, maxpool -> MAX_POOL_2D (other pads: a
PADV2 of -128), avgpool -> AVERAGE_POOL_2D (+ QUANTIZE when the output's parameters differ),
global_avgpool -> MEAN over H and W, concat -> CONCATENATION, lut -> LOGISTIC / TANH
(into TFLite's fixed output parameters, then a QUANTIZE to ours), GELU, QUANTIZE for a
table that only requantizes (checked against the table), MUL + ADD for a hard-sigmoid,
MUL + ADD + MUL for a hard-swish (XNNPACK has no int8 HARD_SWISH: with it, the delegate's
graph would split at every use), and for any other table (a composed function, Elu, ...)
the exact lookup as GATHER(table, CAST(x) + 128), which runs on TFLite's builtin kernels
outside the XNNPACK delegate; softmax -> SOFTMAX (+ QUANTIZE from its fixed output parameters); a float Add /
Sub / Mul of two activations (a broadcast the int8 kernels do not take) -> ADD / SUB / MUL,
and of an activation and a float constant -> the same with the constant quantized per tensor
(the one rounding the plan does not do: it computes such steps in float32), a float PRelu
with per-channel slopes -> PRELU, its slopes quantized likewise; a stride-1 conv
followed by the Slice that keeps every other row (how the plan runs a conv strided (2, 1)) ->
one strided conv; transpose and Transpose moves -> TRANSPOSE, Reshape / Flatten / Squeeze /
Unsqueeze moves -> RESHAPE, a nearest Resize by whole factors -> RESIZE_NEAREST_NEIGHBOR,
DepthToSpace (DCR) -> DEPTH_TO_SPACE on the NHWC bytes, dequantize -> (TRANSPOSE +)
DEQUANTIZE.

The model keeps the plan's interface: float32 inputs and outputs with their names and
logical (NCHW) layout, and a dynamic batch dimension. Steps with no TFLite int8
equivalent (a float [subgraph] partition, attention, layer norm, other float steps,
embeddings, other data movements, grouped convolutions, symbolic height or width) raise
:class:`UnsupportedOperatorError` naming the step, its node and what to do; so does a step
carrying an attribute or array this writer does not know (a fusion a newer lowering adds).

XNNPACK (LiteRT's default delegate) takes every operator of MobileNetV2, ResNet-18 and the
PaddleOCR classifier so written but the classifier's final SOFTMAX; it leaves int8 SOFTMAX,
CAST, GATHER and RESIZE_NEAREST_NEIGHBOR to TFLite's builtin kernels, splitting its graph
around them (the PaddleOCR detector, with 24 GATHERs of composed tables and 6 resizes, runs
as 30 XNNPACK partitions).

Agreement with the native backend: the integer accumulators are the same; TFLite's
requantization (a 31-bit doubling multiplier, or XNNPACK's float32 scale with round half
to even) rounds differently from ours (one 64-bit product, half up), so a layer's output
code may differ by one; tests hold single layers to one output step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import numerics
from edge_runtime.backends.tflite_convert import _same_pads, _schema
from edge_runtime.errors import PackageFormatError, QuantizationError, UnsupportedOperatorError
from edge_runtime.numerics import QuantParams
from edge_runtime.plan.quantized_plan import QuantizedPlan, Step

__all__ = ["load_plan", "plan_to_tflite_int8"]

_INT8, _INT32, _FLOAT32 = 9, 2, 0  # TensorType
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
# Steps TFLite's int8 operators cannot express, and what to do instead.
_REFUSED = {
    "subgraph": "a partition of float nodes (run on onnxruntime by the native backend)",
    "attention": "the fused attention step",
    "layernorm": "a float layer normalization step",
    "matmul": "a float product of two activations",
    "embed": "an embedding lookup",
}
_ADVICE = (
    "the int8 .tflite covers convolutional networks whose every node runs on the native int8 "
    "kernels; convert the float model instead (edge to-tflite MODEL.onnx) or run this package "
    "on the native backend"
)
# Operator versions the TFLite converter writes for int8 kernels (the interpreter accepts any
# registered version; XNNPACK's delegate reads the tensors, not the version).
_VERSIONS = {
    "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4, "ADD": 2, "MUL": 2, "MAX_POOL_2D": 2,
    "AVERAGE_POOL_2D": 2, "MEAN": 2, "CONCATENATION": 2, "QUANTIZE": 2, "DEQUANTIZE": 2, "TRANSPOSE": 2,
    "LOGISTIC": 2, "TANH": 2, "PAD": 2, "PADV2": 2, "RELU": 2, "RELU6": 2, "MAXIMUM": 2, "MINIMUM": 2,
    "RESHAPE": 1, "HARD_SWISH": 1, "GELU": 2, "SOFTMAX": 2, "SUB": 2, "STRIDED_SLICE": 2, "GATHER": 2,
    "CAST": 1, "RESIZE_NEAREST_NEIGHBOR": 3, "DEPTH_TO_SPACE": 2, "PRELU": 1,
}  # fmt: skip
# The attributes and arrays each step may carry, as edge_runtime.plan.lower writes them. A step
# with anything else (a fusion a newer lowering adds) is refused rather than written without it.
_POOL = {"kernel", "stride", "padding", "dilation", "dynamic_hw", "auto_pad", "pads", "ceil_mode"}
_UNARY = {"x_scale", "x_zero_point", "y_scale", "y_zero_point"}
_REQUANT = {"zero_point", "out_min", "out_max", "out_dtype"}
_WEIGHTS = {"weights", "bias", "multiplier", "shift"}
_KNOWN: dict[str, tuple[set[str], set[str]]] = {
    "quantize": ({"scale", "zero_point", "dtype", "perm"}, set()),
    "dequantize": ({"scale", "zero_point", "dtype", "perm"}, set()),
    "conv": ({"input_hwc", "stride", "padding", "dilation", "groups", "depthwise", "sparse", "x_zero_point",
              "dynamic_hw", "auto_pad", "pads", "ceil_mode"} | _REQUANT, _WEIGHTS),
    "gemm": ({"a_zero_point", "sparse"} | _REQUANT, _WEIGHTS),
    "add": ({"a_scale", "a_zero_point", "b_scale", "b_zero_point", "y_scale", "y_zero_point", "constant_first"},
            {"constant"}),
    "lut": ({"kind"}, {"table"}),
    "lut_channels": ({"kind", "axis", "constant_first"} | _UNARY, {"tables", "slope", "constant"}),
    "clamp": ({"lo", "hi"}, set()),
    "maxpool": (_POOL, set()),
    "avgpool": (_POOL | _UNARY | {"count_include_pad"}, set()),
    "global_avgpool": (_UNARY, set()),
    "concat": ({"axis"}, set()),
    "transpose": ({"perm"}, set()),
    "move": ({"node_op", "node_attrs"}, {"input1", "input2", "input3", "input4"}),
    "float": ({"node_op", "node_attrs", "in_params", "out_params"}, {"input0", "input1"}),
    "softmax": ({"node_op", "node_attrs", "in_params", "out_params"}, set()),
}  # fmt: skip
_KNOWN["mul"] = _KNOWN["add"]
# TFLite's int8 LOGISTIC and TANH only produce these output parameters.
_FIXED_OUTPUT = {"sigmoid": ("LOGISTIC", 1.0 / 256.0, -128), "tanh": ("TANH", 1.0 / 128.0, 0)}


def load_plan(path: str | Path) -> QuantizedPlan:
    """The INT8 plan of ``path``: a package's ``native-plan`` artifact (a package holding only
    the float ONNX model and its quantization is lowered as the native backend would), or a
    serialized plan file. Integrity is checked as the package is read; the signature is not
    (``edge verify --trust`` does that)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return QuantizedPlan.from_bytes(data)
    except PackageFormatError as exc:
        if "not a native plan" not in str(exc):
            raise
    from edge_runtime.package import open_package

    with open_package(path) as pkg:
        kinds = {a.kind for a in pkg.manifest.artifacts}
        if "native-plan" in kinds:
            return QuantizedPlan.from_bytes(pkg.read_artifact("native-plan"))
        if "onnx" not in kinds or not pkg.manifest.quantization:
            raise PackageFormatError(
                f"{path}: the package has no native-plan artifact and no float ONNX model with "
                "quantization parameters; make it with edge quantize"
            )
        from edge_runtime.backends.native import activation_params_from_manifest
        from edge_runtime.graph import import_onnx, optimize
        from edge_runtime.plan.lower import lower

        graph = optimize(import_onnx(pkg.read_artifact("onnx")))
        activations = activation_params_from_manifest(pkg.manifest.quantization)
        return lower(graph, activations, weight_bits=pkg.manifest.quantization.get("weight_bits", 8))


def plan_to_tflite_int8(plan: QuantizedPlan) -> bytes:
    """The ``.tflite`` bytes of ``plan`` (see the module docstring)."""
    return _Writer(plan).run()


def _int8(qp: QuantParams) -> tuple[float, int]:
    """(scale, int8 zero point) of a plan activation: uint8 codes move down by 128."""
    return float(qp.scale), int(qp.zero_point) - (128 if qp.dtype == "uint8" else 0)


class _Writer:
    def __init__(self, plan: QuantizedPlan) -> None:
        self.s = _schema()
        self.plan = plan
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [self.s.BufferT()]  # buffer 0: the empty one, by convention
        self.operators: list[Any] = []
        self.opcodes: dict[int, int] = {}
        self.index: dict[str, int] = {}  # plan buffer -> TFLite tensor
        self.shape: dict[str, tuple[int, ...]] = {}  # plan buffer -> its stored shape at batch 1
        self.qp: dict[str, tuple[float, int]] = {}  # plan buffer -> int8 (scale, zero point)
        self.dynamic_batch = False
        self.step: Step | None = None
        self.position = 0
        readers: dict[str, int] = {}
        for step in plan.steps:
            for name in step.inputs:
                readers[name] = readers.get(name, 0) + 1
        self.readers = readers
        self.fused: set[int] = set()  # clamp steps folded into the step before them
        self.nhwc_source: dict[str, str] = {}  # an NCHW buffer -> the NHWC buffer transposed into it

    # -- errors and flatbuffer pieces ---------------------------------------------

    def refuse(self, why: str) -> UnsupportedOperatorError:
        step = self.step
        where = f"plan step {self.position} ({step.op} of node {step.node!r})" if step else "the plan"
        return UnsupportedOperatorError(f"int8 .tflite: {where}: {why}; {_ADVICE}")

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: int = _INT8,
        qp: tuple[float, int] | None = None,
        data: np.ndarray | None = None,
        per_channel: tuple[np.ndarray, int] | None = None,
        batched: bool = True,
    ) -> int:
        s = self.s
        t = s.TensorT()
        t.shape = [int(d) for d in shape]
        if batched and self.dynamic_batch and len(shape) >= 1:
            t.shapeSignature = [-1, *t.shape[1:]]
        t.type, t.name, t.buffer = dtype, name, 0
        if qp is not None or per_channel is not None:
            q = s.QuantizationParametersT()
            if per_channel is not None:
                scales, axis = per_channel
                q.scale = [float(v) for v in scales]
                q.zeroPoint = [0] * len(scales)
                q.quantizedDimension = axis
            else:
                q.scale, q.zeroPoint = [float(qp[0])], [int(qp[1])]
            t.quantization = q
        if data is not None:
            buffer = s.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const_i32(self, name: str, values: list[int] | np.ndarray) -> int:
        array = np.asarray(values, np.int32)
        return self.tensor(name, array.shape, _INT32, data=array, batched=False)

    def activation(self, buffer: str, shape: tuple[int, ...], qp: tuple[float, int]) -> int:
        """A new int8 tensor for plan buffer ``buffer``."""
        self.index[buffer], self.shape[buffer], self.qp[buffer] = self.tensor(buffer, shape, qp=qp), shape, qp
        return self.index[buffer]

    def temp(self, name: str, shape: tuple[int, ...], qp: tuple[float, int]) -> int:
        return self.tensor(f"{self.step.node}/{name}" if self.step else name, shape, qp=qp)

    def op(self, name: str, inputs: list[int], outputs: list[int], options: Any = None) -> None:
        s = self.s
        code = getattr(s.BuiltinOperator, name)
        if code not in self.opcodes:
            self.opcodes[code] = len(self.opcodes)
        op = s.OperatorT()
        op.opcodeIndex = self.opcodes[code]
        op.inputs, op.outputs = list(inputs), list(outputs)
        if options is not None:
            kind = type(options).__name__[:-1]  # Conv2DOptionsT -> Conv2DOptions
            op.builtinOptionsType, op.builtinOptions = getattr(s.BuiltinOptions, kind), options
        self.operators.append(op)

    def src(self, buffer: str) -> int:
        if buffer not in self.index:
            raise self.refuse(f"reads buffer {buffer!r}, which is not an int8 activation")
        return self.index[buffer]

    def params(self, buffer: str) -> QuantParams:
        qp = self.plan.params.get(buffer)
        if qp is None:
            raise self.refuse(f"buffer {buffer!r} is not quantized")
        return qp

    # -- driver ------------------------------------------------------------------

    def run(self) -> bytes:
        import flatbuffers

        s, plan = self.s, self.plan
        inputs = []
        for io_ in plan.inputs:
            if io_.dtype != "float32":
                raise UnsupportedOperatorError(
                    f"int8 .tflite: input {io_.name!r} is {io_.dtype}; only float32 inputs are converted"
                )
            shape = list(io_.shape or [])
            if not shape or any(not isinstance(d, int) for d in shape[1:]):
                raise UnsupportedOperatorError(
                    f"int8 .tflite: input {io_.name!r} needs a static shape after the batch, got {shape}"
                )
            if not isinstance(shape[0], int) or shape[0] <= 0:
                self.dynamic_batch = True
                shape[0] = 1
            index = self.tensor(io_.name, tuple(shape), _FLOAT32)
            self.index[io_.buffer], self.shape[io_.buffer] = index, tuple(shape)
            inputs.append(index)
        for position, step in enumerate(plan.steps):
            self.step, self.position = step, position
            if position in self.fused:
                continue
            handler = getattr(self, f"_step_{step.op}", None)
            if handler is None:
                what = _REFUSED.get(step.op, f"the {step.op!r} step")
                raise self.refuse(f"{what} has no TFLite int8 equivalent")
            attrs, arrays = _KNOWN[step.op]
            unknown = sorted((set(step.attrs) - attrs) | (set(step.arrays) - arrays))
            if unknown:
                raise self.refuse(
                    f"it carries {', '.join(unknown)}, which this writer does not know (a newer plan); "
                    "upgrade edge_runtime"
                )
            handler(step)
        self.step = None
        outputs = []
        for io_ in plan.outputs:
            if io_.buffer not in self.index or io_.dtype != "float32":
                raise UnsupportedOperatorError(
                    f"int8 .tflite: output {io_.name!r} is {io_.dtype}, not a dequantized float32 tensor"
                )
            outputs.append(self.index[io_.buffer])

        subgraph = s.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs = inputs, outputs
        subgraph.name = plan.name or "main"
        model = s.ModelT()
        model.version = 3
        model.description = "edge_runtime.backends.tflite_int8 (from a native INT8 plan)"
        model.buffers = self.buffers
        model.subgraphs = [subgraph]
        names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
        codes = []
        for code in sorted(self.opcodes, key=self.opcodes.get):
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode = code, min(code, 127)
            oc.version = _VERSIONS.get(names[code], 1)
            codes.append(oc)
        model.operatorCodes = codes
        builder = flatbuffers.Builder(1 << 20)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    # -- entry and exit -------------------------------------------------------------

    def _step_quantize(self, step: Step) -> None:
        (src,), (dst,) = step.inputs, step.outputs
        if self.shape.get(src) is None:
            raise self.refuse(f"quantizes {src!r}, which is not a float input")
        qp = _int8(self.params(dst))
        shape = self.shape[src]
        perm = step.attrs.get("perm")
        if not perm:
            self.op("QUANTIZE", [self.index[src]], [self.activation(dst, shape, qp)])
            return
        staged = self.temp("quantized", shape, qp)
        self.op("QUANTIZE", [self.index[src]], [staged])
        self._transpose(staged, shape, perm, dst, qp)

    def _transpose(self, x: int, shape: tuple[int, ...], perm: list[int], dst: str, qp) -> None:
        out = tuple(shape[p] for p in perm)
        perm_t = self.const_i32(f"{dst}/perm", list(perm))
        self.op("TRANSPOSE", [x, perm_t], [self.activation(dst, out, qp)], self.s.TransposeOptionsT())

    def _step_transpose(self, step: Step) -> None:
        (src,), (dst,) = step.inputs, step.outputs
        perm = list(step.attrs["perm"])
        if perm[0] != 0:
            raise self.refuse("a transpose that moves the batch axis")
        if perm == [0, 3, 1, 2]:
            self.nhwc_source[dst] = src
            readers = [s for s in self.plan.steps if dst in s.inputs]
            if readers and all(s.op == "move" and s.attrs.get("node_op") == "DepthToSpace" for s in readers):
                # DepthToSpace reads the NHWC buffer itself: no transpose to write
                n, h, w, c = self.shape[src]
                self.shape[dst], self.qp[dst] = (n, c, h, w), self.qp[src]
                return
        self._transpose(self.src(src), self.shape[src], perm, dst, self.qp[src])

    def _step_dequantize(self, step: Step) -> None:
        (src,), (dst,) = step.inputs, step.outputs
        x, shape = self.src(src), self.shape[src]
        perm = step.attrs.get("perm")
        if perm:
            staged = f"{dst}@int8"
            self._transpose(x, shape, list(perm), staged, self.qp[src])
            x, shape = self.index[staged], self.shape[staged]
        name = next((io_.name for io_ in self.plan.outputs if io_.buffer == dst), dst)
        out = self.tensor(name, shape, _FLOAT32)
        self.index[dst], self.shape[dst] = out, shape
        self.op("DEQUANTIZE", [x], [out])

    # -- convolution and GEMM ---------------------------------------------------------

    def _weight_scales(self, step: Step, in_qp: QuantParams, out_qp: QuantParams) -> np.ndarray:
        """Float32 weight scales recovered from the requantization (see the module docstring)."""
        mult = np.asarray(step.arrays["multiplier"], np.int64).astype(np.float64)
        shift = np.asarray(step.arrays["shift"], np.int64)
        real = mult * np.exp2(-shift.astype(np.float64))
        scales = (real * np.float64(np.float32(out_qp.scale)) / np.float64(np.float32(in_qp.scale))).astype(
            np.float32
        )
        check = numerics.requant(in_qp.scale, scales, out_qp, None)
        if not (np.array_equal(check.multiplier, step.arrays["multiplier"]) and np.array_equal(
            check.shift, step.arrays["shift"])):  # fmt: skip
            raise QuantizationError(
                f"int8 .tflite: plan step {self.position} (node {step.node!r}): the weight scales recovered "
                "from its requantization do not reproduce it; the plan is inconsistent"
            )
        return scales

    def _activation_of(self, out_qp: QuantParams, lo: int, hi: int) -> int | None:
        """TFLite's fused activation whose int8 clamp is [lo, hi] (plan codes), else None."""
        s = self.s
        zp, qmin, qmax = out_qp.zero_point, out_qp.qmin, out_qp.qmax
        relu6 = min(qmax, zp + math.floor(6.0 / out_qp.scale + 0.5))  # TFLite: round half away
        if lo <= qmin and hi >= qmax:
            return s.ActivationFunctionType.NONE
        if lo == max(qmin, zp) and hi == qmax:
            return s.ActivationFunctionType.RELU
        if lo == max(qmin, zp) and hi == relu6:
            return s.ActivationFunctionType.RELU6
        return None

    def _clamped(self, dst: str, out_qp: QuantParams, lo: int, hi: int, emit) -> None:
        """Run ``emit(activation, output tensor)``: with the clamp [lo, hi] fused when TFLite has
        that activation, else into a staging tensor followed by MAXIMUM / MINIMUM."""
        act = self._activation_of(out_qp, lo, hi)
        qp = _int8(out_qp)
        shape = self._out_shape
        if act is not None:
            emit(act, self.activation(dst, shape, qp))
            return
        staged = self.temp("unclamped", shape, qp)
        emit(self.s.ActivationFunctionType.NONE, staged)
        self._min_max(staged, shape, qp, out_qp, lo, hi, dst)

    def _min_max(self, x: int, shape, qp, out_qp: QuantParams, lo: int, hi: int, dst: str) -> None:
        shift = 128 if out_qp.dtype == "uint8" else 0
        current = x
        bounds = [("MAXIMUM", lo, out_qp.qmin), ("MINIMUM", hi, out_qp.qmax)]
        needed = [(op, v) for op, v, limit in bounds if v != limit]
        for i, (op, value) in enumerate(needed):
            const = self.tensor(f"{dst}/{op.lower()}", (1,), qp=qp, data=np.array([value - shift], np.int8),
                                batched=False)  # fmt: skip
            out = (
                self.activation(dst, shape, qp) if i == len(needed) - 1 else self.temp(op.lower(), shape, qp)
            )
            self.op(op, [current, const], [out], self.s.MaximumMinimumOptionsT())
            current = out
        if not needed:
            self.index[dst], self.shape[dst], self.qp[dst] = x, shape, qp

    def _padded(self, x: int, shape, pads, kernel, strides, dilations, value: int | None, name: str,
                same: bool = True):  # fmt: skip
        """(input tensor, TFLite padding) for the plan's [top, left, bottom, right] pads: SAME when
        they are TFLite's SAME pads (and ``same``: SAME leaves the padded cells out), VALID when
        there are none, else a PAD (or PADV2) with ``value`` (int8 code) before a VALID op."""
        s = self.s
        _, h, w, c = shape
        if not any(pads):
            return x, s.Padding.VALID
        same_h = _same_pads(h, kernel[0], strides[0], dilations[0])
        same_w = _same_pads(w, kernel[1], strides[1], dilations[1])
        if same and (pads[0], pads[2]) == same_h and (pads[1], pads[3]) == same_w:
            return x, s.Padding.SAME
        if value is None:
            raise self.refuse(f"padding {pads} is neither TFLite's SAME nor VALID")
        paddings = self.const_i32(
            f"{name}/paddings", [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]
        )
        qp = self.qp[self.step.inputs[0]]
        out = self.temp("padded", (shape[0], h + pads[0] + pads[2], w + pads[1] + pads[3], c), qp)
        if value == qp[1]:
            self.op("PAD", [x, paddings], [out], s.PadOptionsT())
        else:
            v = self.tensor(f"{name}/pad_value", (1,), qp=qp, data=np.array([value], np.int8), batched=False)
            self.op("PADV2", [x, paddings, v], [out], s.PadV2OptionsT())
        return out, s.Padding.VALID

    def _step_conv(self, step: Step) -> None:
        s, a = self.s, step.attrs
        (src,), (dst,) = step.inputs, step.outputs
        if a.get("dynamic_hw"):
            raise self.refuse(
                "a convolution over a symbolic height or width (export the model with a fixed size)"
            )
        x, shape = self.src(src), self.shape[src]
        in_qp, out_qp = self.params(src), self.params(dst)
        # [O, I / groups, kh, kw]; 2:4-sparse weights are ordinary int8 weights to TFLite
        weights = np.asarray(step.arrays["weights"], np.int8)
        out_c, per_group, kh, kw = weights.shape
        n, h, w, c = shape
        groups = int(a["groups"])
        depthwise = groups > 1 and groups == c == out_c and per_group == 1
        if groups != 1 and not depthwise:
            raise self.refuse(f"a grouped convolution (groups {groups}) that is not depthwise")
        stride, dilation, pads = list(a["stride"]), list(a["dilation"]), [int(p) for p in a["padding"]]
        subsample = self._subsample(dst)
        if subsample is not None:  # a (2, 1)-strided conv the plan runs at stride 1, then slices
            position, stride = subsample
            self.fused.add(position)
            dst = self.plan.steps[position].outputs[0]
        scales = self._weight_scales(step, in_qp, out_qp)
        x, padding = self._padded(x, shape, pads, (kh, kw), stride, dilation, _int8(in_qp)[1], dst)
        oh = (h + pads[0] + pads[2] - ((kh - 1) * dilation[0] + 1)) // stride[0] + 1
        ow = (w + pads[1] + pads[3] - ((kw - 1) * dilation[1] + 1)) // stride[1] + 1
        self._out_shape = (n, oh, ow, out_c)
        if depthwise:
            filt = np.ascontiguousarray(weights.transpose(1, 2, 3, 0))  # [1, kh, kw, C]
            options, code, axis = s.DepthwiseConv2DOptionsT(), "DEPTHWISE_CONV_2D", 3
            options.depthMultiplier = 1
        else:
            filt = np.ascontiguousarray(weights.transpose(0, 2, 3, 1))  # [O, kh, kw, I]
            options, code, axis = s.Conv2DOptionsT(), "CONV_2D", 0
        options.padding, options.strideH, options.strideW = padding, stride[0], stride[1]
        options.dilationHFactor, options.dilationWFactor = dilation[0], dilation[1]
        w_t = self.tensor(
            f"{step.node}/weights", filt.shape, data=filt, per_channel=(scales, axis), batched=False
        )
        b_t = self._bias(step, in_qp, scales)

        def emit(act: int, out: int) -> None:
            options.fusedActivationFunction = act
            self.op(code, [x, w_t, b_t], [out], options)

        self._clamped(dst, out_qp, int(a["out_min"]), int(a["out_max"]), emit)

    def _subsample(self, buffer: str) -> tuple[int, list[int]] | None:
        """(position, [step_h, step_w]) of the Slice step that keeps every step_h-th row and
        step_w-th column of ``buffer`` and is its only reader (the lowering's form of a conv
        strided unevenly), else None. A stride-1 conv sliced so is the strided conv exactly."""
        if self.readers.get(buffer) != 1 or buffer in {io_.buffer for io_ in self.plan.outputs}:
            return None
        for position in range(self.position + 1, len(self.plan.steps)):
            step = self.plan.steps[position]
            if buffer not in step.inputs:
                continue
            a = step.attrs.get("node_attrs", {})
            if step.op == "move" and step.attrs.get("node_op") == "Slice" and step.inputs == [buffer] \
                    and list(a.get("axes", [])) == [1, 2] and list(a.get("starts", [])) == [0, 0] \
                    and all(e >= 2**31 for e in a.get("ends", [])) and len(a.get("steps", [])) == 2:  # fmt: skip
                return position, [int(v) for v in a["steps"]]
            return None
        return None

    def _bias(self, step: Step, in_qp: QuantParams, scales: np.ndarray) -> int:
        bias = np.ascontiguousarray(step.arrays["bias"], np.int32)
        bias_scales = numerics.bias_scales(in_qp.scale, scales)
        return self.tensor(f"{step.node}/bias", bias.shape, _INT32, data=bias, per_channel=(bias_scales, 0),
                           batched=False)  # fmt: skip

    def _step_gemm(self, step: Step) -> None:
        s, a = self.s, step.attrs
        (src,), (dst,) = step.inputs, step.outputs
        if a.get("out_dtype") not in ("uint8", "int8"):
            raise self.refuse(f"a GEMM with {a.get('out_dtype')} output")
        x, shape = self.src(src), self.shape[src]
        in_qp, out_qp = self.params(src), self.params(dst)
        weights = np.ascontiguousarray(step.arrays["weights"], np.int8)  # [N, K]
        if shape[-1] != weights.shape[1]:
            raise self.refuse(f"input shape {shape} does not end in the weights' K = {weights.shape[1]}")
        scales = self._weight_scales(step, in_qp, out_qp)
        w_t = self.tensor(
            f"{step.node}/weights", weights.shape, data=weights, per_channel=(scales, 0), batched=False
        )
        b_t = self._bias(step, in_qp, scales)
        self._out_shape = (*shape[:-1], weights.shape[0])
        options = s.FullyConnectedOptionsT()
        options.keepNumDims = len(shape) > 2

        def emit(act: int, out: int) -> None:
            options.fusedActivationFunction = act
            self.op("FULLY_CONNECTED", [x, w_t, b_t], [out], options)

        self._clamped(dst, out_qp, int(a["out_min"]), int(a["out_max"]), emit)

    # -- element-wise ------------------------------------------------------------------

    def _fusable_clamp(self, dst: str) -> Step | None:
        """The clamp step right after this one that is the only reader of ``dst``, if any."""
        nxt = self.position + 1
        steps = self.plan.steps
        returned = {io_.buffer for io_ in self.plan.outputs}
        if nxt < len(steps) and steps[nxt].op == "clamp" and steps[nxt].inputs == [dst] \
                and self.readers.get(dst) == 1 and dst not in returned:  # fmt: skip
            return steps[nxt]
        return None

    def _step_add(self, step: Step) -> None:
        self._binary(step, "ADD", self.s.AddOptionsT())

    def _step_mul(self, step: Step) -> None:
        self._binary(step, "MUL", self.s.MulOptionsT())

    def _binary(self, step: Step, code: str, options: Any) -> None:
        a = step.attrs
        (dst,) = step.outputs
        dtype = self.params(step.inputs[0]).dtype
        qa = QuantParams(float(a["a_scale"]), int(a["a_zero_point"]), dtype)
        qb = QuantParams(float(a["b_scale"]), int(a["b_zero_point"]), dtype)
        out_qp = self.params(dst)
        const = step.arrays.get("constant")
        if const is None:
            xa, xb = self.src(step.inputs[0]), self.src(step.inputs[1])
            sa, sb = self.shape[step.inputs[0]], self.shape[step.inputs[1]]
        else:
            codes = (np.asarray(const).astype(np.int16) - (128 if dtype == "uint8" else 0)).astype(np.int8)
            first = bool(a.get("constant_first"))
            c_t = self.tensor(f"{step.node}/constant", codes.shape, qp=_int8(qa if first else qb), data=codes,
                              batched=False)  # fmt: skip
            v, sv = self.src(step.inputs[0]), self.shape[step.inputs[0]]
            (xa, sa), (xb, sb) = ((c_t, codes.shape), (v, sv)) if first else ((v, sv), (c_t, codes.shape))
        self._out_shape = tuple(np.broadcast_shapes(tuple(sa), tuple(sb)))
        clamp = self._fusable_clamp(dst)
        lo, hi = out_qp.qmin, out_qp.qmax
        if clamp is not None and self._activation_of(out_qp, int(clamp.attrs["lo"]), int(clamp.attrs["hi"])) \
                is not None:  # fmt: skip
            lo, hi = int(clamp.attrs["lo"]), int(clamp.attrs["hi"])
            self.fused.add(self.position + 1)
            final = clamp.outputs[0]
        else:
            final = dst

        def emit(act: int, out: int) -> None:
            options.fusedActivationFunction = act
            self.op(code, [xa, xb], [out], options)

        self._clamped(final, out_qp, lo, hi, emit)
        if final != dst:
            self.index[dst], self.shape[dst], self.qp[dst] = (
                self.index[final],
                self.shape[final],
                self.qp[final],
            )

    def _step_clamp(self, step: Step) -> None:
        (src,), (dst,) = step.inputs, step.outputs
        qp = self.params(src)
        lo, hi = int(step.attrs["lo"]), int(step.attrs["hi"])
        x, shape, q8 = self.src(src), self.shape[src], self.qp[src]
        act = self._activation_of(qp, lo, hi)
        s = self.s
        if act == s.ActivationFunctionType.RELU:
            self.op("RELU", [x], [self.activation(dst, shape, q8)])
        elif act == s.ActivationFunctionType.RELU6:
            self.op("RELU6", [x], [self.activation(dst, shape, q8)])
        else:
            self._min_max(x, shape, q8, qp, lo, hi, dst)

    def _step_lut(self, step: Step) -> None:
        (src,), (dst,) = step.inputs, step.outputs
        in_qp, out_qp = self.params(src), self.params(dst)
        x, shape = self.src(src), self.shape[src]
        kind = step.attrs.get("kind")
        target = _int8(out_qp)
        if kind in _FIXED_OUTPUT:
            code, scale, zp = _FIXED_OUTPUT[kind]
            if target == (scale, zp):
                self.op(code, [x], [self.activation(dst, shape, target)])
                return
            staged = self.temp(kind, shape, (scale, zp))
            self.op(code, [x], [staged])
            self.op("QUANTIZE", [staged], [self.activation(dst, shape, target)])
            return
        if kind == "hardswish":
            self._hardswish(x, shape, in_qp, out_qp, dst)
            return
        if kind == "gelu":
            self.op("GELU", [x], [self.activation(dst, shape, target)], self.s.GeluOptionsT())
            return
        table = np.asarray(step.arrays["table"]).view(np.uint8)
        if kind == "hardsigmoid" and self._hardsigmoid(x, shape, in_qp, out_qp, table, dst):
            return
        if kind is None and out_qp.dtype == in_qp.dtype:
            # A requantization table (inserted before a concat): TFLite's int8 -> int8 QUANTIZE.
            codes = np.arange(in_qp.qmin, in_qp.qmax + 1).astype(in_qp.numpy_dtype)
            requant = numerics.quantize(numerics.dequantize(codes, in_qp), out_qp)
            if in_qp.dtype == "int8":
                requant = np.concatenate([requant[128:], requant[:128]])
            if np.array_equal(requant.view(np.uint8), table):
                self.op("QUANTIZE", [x], [self.activation(dst, shape, target)])
                return
        self._gather_table(x, shape, in_qp, out_qp, table, dst)

    def _hardsigmoid(self, x: int, shape, in_qp: QuantParams, out_qp: QuantParams, table, dst: str) -> bool:
        """The hard-sigmoid table of one of the usual (alpha, beta) (ONNX's default 0.2, 0.5;
        PyTorch's and Paddle's 1/6, 0.5) as :meth:`_hardsigmoid_ops`; False for other tables."""
        from edge_runtime.kernels import lut_table

        for alpha, beta in ((0.2, 0.5), (1.0 / 6.0, 0.5)):
            candidate = lut_table("hardsigmoid", in_qp.numpy_dtype, in_qp.scale, in_qp.zero_point,
                                  out_qp.scale, out_qp.zero_point, alpha=alpha, beta=beta)  # fmt: skip
            if np.array_equal(np.asarray(candidate).view(np.uint8), table):
                self._hardsigmoid_ops(x, shape, in_qp, alpha, beta, out_qp, dst)
                return True
        return False

    def _hardsigmoid_ops(
        self, x: int, shape, in_qp: QuantParams, alpha: float, beta: float, out_qp: QuantParams, dst: str
    ) -> None:
        """``clamp(alpha * x + beta, 0, 1)`` into buffer ``dst``: MUL by alpha into the input's own
        codes (scale ``alpha * s_x``: the codes do not change) and ADD of beta with the clamp fused,
        operators XNNPACK runs (it has no int8 HARD_SWISH, and TFLite no hard-sigmoid)."""
        s_x, z_x = _int8(in_qp)
        scaled = self.temp(f"{dst}/alpha_x", shape, (s_x * alpha, z_x))
        c_alpha = self.tensor(f"{dst}/alpha", (1,), qp=(alpha / 127.0, 0), data=np.array([127], np.int8),
                              batched=False)  # fmt: skip
        self.op("MUL", [x, c_alpha], [scaled], self.s.MulOptionsT())
        c_beta = self.tensor(f"{dst}/beta", (1,), qp=(beta / 127.0, 0), data=np.array([127], np.int8),
                             batched=False)  # fmt: skip
        self._out_shape = tuple(shape)
        one = out_qp.zero_point + math.floor(1.0 / out_qp.scale + 0.5)
        lo, hi = max(out_qp.qmin, out_qp.zero_point), min(out_qp.qmax, one)

        def emit(act: int, out: int) -> None:
            options = self.s.AddOptionsT()
            options.fusedActivationFunction = act
            self.op("ADD", [scaled, c_beta], [out], options)

        self._clamped(dst, out_qp, lo, hi, emit)

    def _hardswish(self, x: int, shape, in_qp: QuantParams, out_qp: QuantParams, dst: str) -> None:
        """``x * hardsigmoid(x)`` (1/6, 1/2): the gate as :meth:`_hardsigmoid_ops` into [0, 1] at
        scale 1/255, then MUL by x; all on XNNPACK. One more rounding than the table (the gate's,
        at most half a step of 1/255 of |x|: half an output step), against TFLite's HARD_SWISH
        kernel, which XNNPACK leaves to the interpreter, splitting its graph at every use."""
        gate = f"{dst}@gate"
        self._hardsigmoid_ops(x, shape, in_qp, 1.0 / 6.0, 0.5, QuantParams(1.0 / 255.0, 0, "uint8"), gate)
        self.op(
            "MUL", [x, self.index[gate]], [self.activation(dst, shape, _int8(out_qp))], self.s.MulOptionsT()
        )

    def _gather_table(self, x: int, shape, in_qp: QuantParams, out_qp: QuantParams, table, dst: str) -> None:
        """A table with no TFLite operator (hard-sigmoid, a composed function): the exact lookup as
        GATHER(table, CAST(x) + 128). Bit-exact, but CAST and GATHER run on TFLite's builtin
        kernels, outside the XNNPACK delegate (which splits around them)."""
        # The plan's table is indexed by the input byte; TFLite's int8 code c reads entry c + 128.
        index = np.arange(256)
        byte = index if in_qp.dtype == "uint8" else (index - 128) & 0xFF
        out = table[byte].astype(np.int16) - (128 if out_qp.dtype == "uint8" else 0)
        if out_qp.dtype == "int8":
            out = table[byte].view(np.int8).astype(np.int16)
        values = self.tensor(
            f"{dst}/table", (256,), qp=_int8(out_qp), data=out.astype(np.int8), batched=False
        )
        wide = self.tensor(f"{dst}/codes", shape, _INT32)
        self.op("CAST", [x], [wide])
        offset = self.const_i32(f"{dst}/offset", [128])
        indices = self.tensor(f"{dst}/indices", shape, _INT32)
        self.op("ADD", [wide, offset], [indices], self.s.AddOptionsT())
        options = self.s.GatherOptionsT()
        options.axis = 0
        self.op("GATHER", [values, indices], [self.activation(dst, shape, _int8(out_qp))], options)

    def _step_lut_channels(self, step: Step) -> None:
        """Per-channel tables: a PRelu (PRELU) or an Add, Sub or Mul of a per-channel float
        constant (ADD, SUB, MUL), the slopes or the constant quantized per tensor to int8 over
        their own range, as for the float steps these tables replace."""
        kind = step.attrs.get("kind")
        ops = {"prelu": "PRELU", "add": "ADD", "sub": "SUB", "mul": "MUL"}
        array = step.arrays.get("slope" if kind == "prelu" else "constant")
        if kind not in ops or array is None:
            raise self.refuse(f"per-channel tables of kind {kind!r} have no TFLite equivalent")
        (src,), (dst,) = step.inputs, step.outputs
        const = np.asarray(array, np.float32)
        qp = numerics.activation_params(float(const.min()), float(const.max()), "int8")
        codes = numerics.quantize(const, qp)
        c_t = self.tensor(f"{dst}/{kind}", codes.shape, qp=_int8(qp), data=codes, batched=False)
        x, shape = self.src(src), tuple(self.shape[src])
        target = _int8(self.params(dst))
        if kind == "prelu":
            self.op("PRELU", [x, c_t], [self.activation(dst, shape, target)])
            return
        tensors = [c_t, x] if step.attrs.get("constant_first") else [x, c_t]
        out = tuple(np.broadcast_shapes(shape, codes.shape))
        options = getattr(self.s, f"{kind.capitalize()}OptionsT")()
        self.op(ops[kind], tensors, [self.activation(dst, out, target)], options)

    def _step_float(self, step: Step) -> None:
        """Add, Sub, Mul and PRelu that the lowering ran in float: of two activations (a broadcast the
        int8 kernels do not take, e.g. an SE block's [N, H, W, C] x [N, 1, 1, C]), TFLite's int8
        ADD / SUB / MUL broadcast them in the storage layout both share; of an activation and a
        float constant (a batch norm no convolution absorbed), the constant is quantized per tensor
        to int8 over its own range, the one place where the .tflite rounds what the plan keeps in
        float32 (half a step of the constant's range)."""
        op = step.attrs.get("node_op")
        params = step.attrs.get("in_params") or []
        quantized = [name for name, p in zip(step.inputs, params) if name and p is not None]
        if op not in ("Add", "Sub", "Mul", "PRelu") or len(step.inputs) != 2 or not quantized \
                or (op == "PRelu" and step.inputs[0] not in quantized):  # fmt: skip
            raise self.refuse(
                f"a float {op} step (dequantize, compute in float32, requantize) has no TFLite int8 equivalent"
            )
        (dst,) = step.outputs
        tensors, shapes = [], []
        for i, (name, p) in enumerate(zip(step.inputs, params)):
            if name and p is not None:
                tensors.append(self.src(name))
                shapes.append(tuple(self.shape[name]))
                continue
            const = step.arrays.get(f"input{i}")
            if name or const is None or const.dtype != np.float32:
                raise self.refuse(
                    f"a float {op} step reading {name or 'a constant'!r}, which is not a float constant"
                )
            qp = numerics.activation_params(float(const.min()), float(const.max()), "int8")
            codes = numerics.quantize(const, qp)
            tensors.append(
                self.tensor(f"{dst}/input{i}", codes.shape, qp=_int8(qp), data=codes, batched=False)
            )
            shapes.append(tuple(codes.shape))
        out = tuple(np.broadcast_shapes(*shapes))
        target = _int8(QuantParams.from_dict(step.attrs["out_params"]))
        if op == "PRelu":  # per-channel slopes: PRELU with the slopes as an int8 tensor
            self.op("PRELU", tensors, [self.activation(dst, out, target)])
            return
        options = getattr(self.s, f"{op}OptionsT")()
        self.op(op.upper(), tensors, [self.activation(dst, out, target)], options)

    def _step_softmax(self, step: Step) -> None:
        """SOFTMAX over the last axis, into TFLite's fixed int8 output (scale 1/256, zero point
        -128), then a QUANTIZE to the plan's parameters."""
        (src,), (dst,) = step.inputs, step.outputs
        x, shape = self.src(src), self.shape[src]
        axis = int(step.attrs.get("node_attrs", {}).get("axis", -1))
        if axis % len(shape) != len(shape) - 1:
            raise self.refuse(
                f"a softmax over axis {axis} of a {len(shape)}-D tensor (TFLite: the last axis)"
            )
        options = self.s.SoftmaxOptionsT()
        options.beta = 1.0
        target = _int8(QuantParams.from_dict(step.attrs["out_params"]))
        fixed = (1.0 / 256.0, -128)
        if target == fixed:
            self.op("SOFTMAX", [x], [self.activation(dst, shape, target)], options)
            return
        staged = self.temp("softmax", shape, fixed)
        self.op("SOFTMAX", [x], [staged], options)
        self.op("QUANTIZE", [staged], [self.activation(dst, shape, target)])

    # -- pooling -----------------------------------------------------------------------

    def _pool_geometry(self, step: Step) -> tuple[int, tuple[int, ...], list[int], list[int], list[int]]:
        a = step.attrs
        if a.get("dynamic_hw"):
            raise self.refuse("a pool over a symbolic height or width")
        if any(d != 1 for d in a.get("dilation", [1, 1])):
            raise self.refuse("a dilated pool")
        (src,) = step.inputs
        return (
            self.src(src),
            self.shape[src],
            list(a["kernel"]),
            list(a["stride"]),
            [int(p) for p in a["padding"]],
        )

    def _pool_options(self, padding: int, kernel, stride) -> Any:
        options = self.s.Pool2DOptionsT()
        options.padding, options.strideH, options.strideW = padding, stride[0], stride[1]
        options.filterHeight, options.filterWidth = kernel
        return options

    @staticmethod
    def _pooled(shape, kernel, stride, pads) -> tuple[int, ...]:
        n, h, w, c = shape
        return (n, (h + pads[0] + pads[2] - kernel[0]) // stride[0] + 1,
                (w + pads[1] + pads[3] - kernel[1]) // stride[1] + 1, c)  # fmt: skip

    def _step_maxpool(self, step: Step) -> None:
        x, shape, kernel, stride, pads = self._pool_geometry(step)
        (dst,) = step.outputs
        qp = self.qp[step.inputs[0]]
        x, padding = self._padded(x, shape, pads, kernel, stride, [1, 1], -128, dst)
        out = self.activation(dst, self._pooled(shape, kernel, stride, pads), qp)
        self.op("MAX_POOL_2D", [x], [out], self._pool_options(padding, kernel, stride))

    def _step_avgpool(self, step: Step) -> None:
        a = step.attrs
        x, shape, kernel, stride, pads = self._pool_geometry(step)
        (src,), (dst,) = step.inputs, step.outputs
        in_q, out_qp = self.qp[src], self.params(dst)
        if any(pads) and not a.get("count_include_pad"):
            s = self.s
            padding = self._padded(x, shape, pads, kernel, stride, [1, 1], None, dst)[1]
            if padding != s.Padding.SAME:
                raise self.refuse("an average pool that excludes padding other than SAME")
        else:
            # counted padding: real zeros, the zero point, averaged in (SAME would leave them out)
            x, padding = self._padded(x, shape, pads, kernel, stride, [1, 1], in_q[1], dst, same=False)
        out_shape = self._pooled(shape, kernel, stride, pads)
        options = self._pool_options(padding, kernel, stride)
        target = _int8(out_qp)
        if target == in_q:  # TFLite's int8 average pool keeps its input's parameters
            self.op("AVERAGE_POOL_2D", [x], [self.activation(dst, out_shape, target)], options)
            return
        staged = self.temp("pooled", out_shape, in_q)
        self.op("AVERAGE_POOL_2D", [x], [staged], options)
        self.op("QUANTIZE", [staged], [self.activation(dst, out_shape, target)])

    def _step_global_avgpool(self, step: Step) -> None:
        (src,), (dst,) = step.inputs, step.outputs
        x, (n, _, _, c) = self.src(src), self.shape[src]
        axes = self.const_i32(f"{dst}/axes", [1, 2])
        options = self.s.ReducerOptionsT()
        options.keepDims = True
        self.op("MEAN", [x, axes], [self.activation(dst, (n, 1, 1, c), _int8(self.params(dst)))], options)

    # -- data movement ------------------------------------------------------------------

    def _step_concat(self, step: Step) -> None:
        (dst,) = step.outputs
        xs = [self.src(b) for b in step.inputs]
        shapes = [self.shape[b] for b in step.inputs]
        axis = int(step.attrs["axis"]) % len(shapes[0])
        if axis == 0:
            raise self.refuse("a concatenation along the batch axis")
        out = list(shapes[0])
        out[axis] = sum(sh[axis] for sh in shapes)
        options = self.s.ConcatenationOptionsT()
        options.axis = axis
        self.op("CONCATENATION", xs, [self.activation(dst, tuple(out), _int8(self.params(dst)))], options)

    def _depth_to_space(self, step: Step, src: str, dst: str) -> None:
        """DepthToSpace (DCR) of an NCHW buffer: DEPTH_TO_SPACE on its NHWC form (the buffer a
        transpose step made it from, else a TRANSPOSE), then a TRANSPOSE back to NCHW."""
        a = step.attrs["node_attrs"]
        block = int(a.get("blocksize", 0))
        if src not in self.shape:
            raise self.refuse(f"reads buffer {src!r}, which is not an int8 activation")
        shape, qp = self.shape[src], self.qp[src]
        if a.get("mode", "DCR") != "DCR" or len(shape) != 4 or block < 1 or shape[1] % (block * block):
            raise self.refuse(
                f"a DepthToSpace ({a.get('mode', 'DCR')}, block {block}) of a {list(shape)} tensor"
            )
        nhwc = self.nhwc_source.get(src)
        if nhwc is None:  # (src is then an NCHW tensor of the .tflite)
            nhwc = f"{src}@nhwc"
            self._transpose(self.index[src], shape, [0, 2, 3, 1], nhwc, qp)
        n, c, h, w = shape
        spread = f"{dst}@nhwc"
        options = self.s.DepthToSpaceOptionsT()
        options.blockSize = block
        out = (n, h * block, w * block, c // (block * block))
        self.op("DEPTH_TO_SPACE", [self.index[nhwc]], [self.activation(spread, out, qp)], options)
        self._transpose(self.index[spread], out, [0, 3, 1, 2], dst, qp)

    def _resize_nearest(self, step: Step, x: int, shape, qp, dst: str) -> None:
        """A nearest Resize of NHWC storage by whole factors on H and W: RESIZE_NEAREST_NEIGHBOR
        (no half-pixel centres, no corner alignment: input index floor(out / factor), what ONNX's
        asymmetric / floor and half_pixel / round_prefer_floor pick at whole factors)."""
        from edge_runtime.graph import Node
        from edge_runtime.graph.reference import evaluate_node

        a = step.attrs["node_attrs"]
        modes = (
            a.get("coordinate_transformation_mode", "half_pixel"),
            a.get("nearest_mode", "round_prefer_floor"),
        )
        if a.get("mode", "nearest") != "nearest" or modes not in (
            ("asymmetric", "floor"),
            ("half_pixel", "round_prefer_floor"),
        ):
            raise self.refuse(f"a {a.get('mode', 'nearest')} Resize with {modes[0]} / {modes[1]} coordinates")
        node = Node("Resize", step.node, [step.inputs[0]], list(step.outputs), dict(a))
        (y,) = evaluate_node(node, [np.zeros(shape, np.int8)])
        out = tuple(int(d) for d in y.shape)
        n, h, w, c = shape if len(shape) == 4 else (0, 0, 0, 0)
        if len(out) != 4 or out[0] != n or out[3] != c or out[1] % max(h, 1) or out[2] % max(w, 1):
            raise self.refuse(
                f"a Resize from {list(shape)} to {list(out)}: only whole factors on NHWC H and W"
            )
        if modes[0] == "asymmetric" and modes[1] == "round_prefer_floor" and (out[1] > h or out[2] > w):
            raise self.refuse(
                "an asymmetric Resize rounding to nearest (TFLite's nearest resize takes the floor)"
            )
        size = self.const_i32(f"{dst}/size", [out[1], out[2]])
        self.op("RESIZE_NEAREST_NEIGHBOR", [x, size], [self.activation(dst, out, qp)],
                self.s.ResizeNearestNeighborOptionsT())  # fmt: skip

    def _step_move(self, step: Step) -> None:
        op = step.attrs.get("node_op")
        (dst,) = step.outputs
        src = step.inputs[0]
        if op == "DepthToSpace":
            self._depth_to_space(step, src, dst)
            return
        x, shape, qp = self.src(src), self.shape[src], self.qp[src]
        if op == "Transpose":
            perm = step.attrs["node_attrs"].get("perm") or list(range(len(shape)))[::-1]
            if perm[0] != 0:
                raise self.refuse("a Transpose that moves the batch axis")
            self._transpose(x, shape, list(perm), dst, qp)
            return
        if op == "Resize" and not any(step.inputs[1:]):
            self._resize_nearest(step, x, shape, qp, dst)
            return
        if op not in _RESHAPES or any(step.inputs[1:]):
            raise self.refuse(f"a {op} data movement, which is not converted")
        from edge_runtime.graph import Node
        from edge_runtime.graph.reference import evaluate_node

        node = Node(op, step.node, list(step.inputs), list(step.outputs), dict(step.attrs["node_attrs"]))
        constants = [step.arrays.get(f"input{i}") for i in range(1, len(step.inputs))]
        (y,) = evaluate_node(node, [np.zeros(shape, np.int8), *constants])
        out = tuple(int(d) for d in y.shape)
        if not out or out[0] != shape[0]:
            raise self.refuse(
                f"a {op} from {list(shape)} to {list(out)} that does not keep the batch axis first"
            )
        new_shape = [-1 if self.dynamic_batch else out[0], *out[1:]]
        options = self.s.ReshapeOptionsT()
        options.newShape = new_shape
        self.op(
            "RESHAPE",
            [x, self.const_i32(f"{dst}/shape", new_shape)],
            [self.activation(dst, out, qp)],
            options,
        )
