"""Reference models of the runtime, its tests and its benchmarks, with their ONNX export.

Four models, each a plain ``torch.nn.Module`` built from ``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm2d``, ``nn.LayerNorm``, ``nn.Embedding`` and activation *modules*:

==================  =============================================  ===========  ==============
name                what                                           parameters   input
==================  =============================================  ===========  ==============
``digits_cnn``      :class:`DigitsCNN`, 3 conv+BN+ReLU, Linear      25,978       [batch,1,8,8]
``mobilenet_v2``    :class:`MobileNetV2`, width 1.0 (Sandler 2018)  3,504,872    [batch,3,224,224]
``resnet18``        :class:`ResNet18`, BasicBlocks (He 2016)        11,689,512   [batch,3,224,224]
``minilm_encoder``  :class:`MiniLMEncoder`, 6x384 BERT encoder      22,565,376   2x [batch,128]
==================  =============================================  ===========  ==============

Why they are written the way they are:

* Every convolution and matrix product is an ``nn.Conv2d`` or ``nn.Linear`` and every
  activation its own module, so that quantization-aware training and 2:4 sparsity can be
  applied later by walking ``model.modules()`` (and ``torch.ao`` fusion finds conv, bn and
  act by name). 2:4 sparsity runs along the reduction dimension (``Cin/groups * kh * kw``
  for a conv, ``in_features`` for a Linear), so it fits the layers where that is a multiple
  of 4: not the depthwise 3x3 convolutions (9) or a first conv on 1 or 3 channels.
* Initialization is seeded with a local ``torch.Generator``: the weights depend on the seed
  only, not on the global RNG state, and the same seed gives the same weights on any
  machine. Batch-norm running statistics and affine parameters, and layer-norm affine
  parameters, get non-trivial seeded values: an exporter or runtime pass that folds them
  wrongly then changes the outputs.
* Shapes stay static except the batch: reshapes use ``-1`` for the batch and constants
  for the rest, so the exported graphs carry no shape arithmetic on the batch dim.

:func:`export_onnx` writes a model with the TorchScript exporter (``dynamo=False``; the
dynamo exporter needs onnxscript, which is not a dependency) at opset 17, with a dynamic
dim named ``"batch"`` and batch norm kept as ``BatchNormalization`` nodes (folding is the
runtime's job). :func:`compare_with_onnxruntime` checks an export against torch.
:func:`fit_classifier` is the plain training loop used for the digits model.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cloud_trainer.data import Split
from cloud_trainer.errors import ExportError, ExportMismatchError, UnknownModelError
from edge_runtime.package import TensorSpec

__all__ = [
    "BATCH_DIM",
    "DEFAULT_SEED",
    "MODELS",
    "ONNX_OPSET",
    "DigitsCNN",
    "FitResult",
    "MiniLMEncoder",
    "MobileNetV2",
    "ReferenceModel",
    "ResNet18",
    "TensorSpec",
    "accuracy",
    "build_model",
    "compare_with_onnxruntime",
    "count_parameters",
    "export_onnx",
    "fit_classifier",
    "init_parameters",
]

DEFAULT_SEED = 0
ONNX_OPSET = 17
# The name of the dynamic batch dimension in every spec and every exported graph.
BATCH_DIM = "batch"


# --------------------------------------------------------------------------- specs and base


class ReferenceModel(nn.Module):
    """What every reference model tells its exporter: its name, inputs, outputs and sample inputs."""

    #: The model's name in the zoo (``edge_runtime.zoo``) and its cache file stem.
    name: str = ""

    @property
    @abstractmethod
    def input_specs(self) -> tuple[TensorSpec, ...]:
        """Inputs in the order ``forward`` takes them."""

    @property
    @abstractmethod
    def output_specs(self) -> tuple[TensorSpec, ...]:
        """Outputs in the order ``forward`` returns them."""

    @abstractmethod
    def example_inputs(self, batch: int, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, ...]:
        """Seeded inputs of the right shape, dtype and value range, for export and checks."""


def init_parameters(module: nn.Module, seed: int) -> None:
    """Seeded, deterministic initialization of every conv, linear, norm and embedding in ``module``.

    Convolutions: Kaiming normal (fan out, as torchvision). Linears: normal with std 0.02
    and a small non-zero bias, so that bias handling is exercised. Batch norm: weight in
    [0.5, 1.5], bias and running mean N(0, 0.1), running variance in [0.5, 2.0]. Layer norm:
    weight in [0.8, 1.2], bias N(0, 0.05). Embeddings: N(0, 0.02) (BERT).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.01, generator=generator)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.02, generator=generator)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.02, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)
                m.running_mean.normal_(0.0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.8, 1.2, generator=generator)
                m.bias.normal_(0.0, 0.05, generator=generator)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 0.02, generator=generator)


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters (not buffers such as batch-norm statistics)."""
    return sum(p.numel() for p in model.parameters())


def _image_specs(
    channels: int, size: int, num_classes: int
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    inputs = (TensorSpec("input", "float32", (BATCH_DIM, channels, size, size)),)
    outputs = (TensorSpec("logits", "float32", (BATCH_DIM, num_classes)),)
    return inputs, outputs


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation, named ``conv``, ``bn``, ``act``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            bn=nn.BatchNorm2d(out_channels),
        )
        if activation is not None:
            layers["act"] = activation()
        super().__init__(layers)


# --------------------------------------------------------------------------- DigitsCNN


class DigitsCNN(ReferenceModel):
    """A small CNN for scikit-learn's 8x8 digits: the one reference model with trained weights.

    Input ``[batch, 1, 8, 8]`` float32 in [0, 1] (pixel / 16); output ``[batch, 10]`` logits.
    Layout: conv 1->16, conv 16->32, max-pool to 4x4, conv 32->64, max-pool to 2x2 (each
    conv 3x3 + BN + ReLU), flatten, Linear 256 -> 10. Flatten + Linear rather than global
    pooling, because at 8x8 where a stroke is matters.
    """

    name = "digits_cnn"

    def __init__(self, num_classes: int = 10, seed: int = DEFAULT_SEED) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            OrderedDict(
                block1=ConvBNAct(1, 16),
                block2=ConvBNAct(16, 32),
                pool1=nn.MaxPool2d(2),
                block3=ConvBNAct(32, 64),
                pool2=nn.MaxPool2d(2),
            )
        )
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(64 * 2 * 2, num_classes)
        init_parameters(self, seed)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return _image_specs(1, 8, self.num_classes)[0]

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return _image_specs(1, 8, self.num_classes)[1]

    def example_inputs(self, batch: int, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return (torch.rand(batch, 1, 8, 8, generator=generator),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without going below 90% of it (as in the paper's code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear project; residual if shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation=nn.ReLU6))
        layers.append(ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, activation=nn.ReLU6))
        layers.append(ConvBNAct(hidden, out_channels, 1, activation=None))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.use_residual else out


class MobileNetV2(ReferenceModel):
    """MobileNetV2 (Sandler et al. 2018), width 1.0: the torchvision layout, 3,504,872 parameters at 1000 classes.

    Stem conv 3x3/2 to 32 channels, 17 inverted residual blocks (expansion t, channels c,
    repeats n, first stride s per stage: (1,16,1,1), (6,24,2,2), (6,32,3,2), (6,64,4,2),
    (6,96,3,1), (6,160,3,2), (6,320,1,1)), conv 1x1 to 1280, global average pool, dropout,
    Linear. ``image_size`` only sets the exported input shape: the network takes any size
    of at least 32.
    """

    name = "mobilenet_v2"
    STAGES = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        image_size: int = 224,
        dropout: float = 0.2,
        seed: int = DEFAULT_SEED,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        channels = _make_divisible(32 * width_mult)
        last_channels = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(3, channels, 3, stride=2, activation=nn.ReLU6)]
        for expand, out, repeats, stride in self.STAGES:
            out = _make_divisible(out * width_mult)
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        layers.append(ConvBNAct(channels, last_channels, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        init_parameters(self, seed)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return _image_specs(3, self.image_size, self.num_classes)[0]

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return _image_specs(3, self.image_size, self.num_classes)[1]

    def example_inputs(self, batch: int, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, 3, self.image_size, self.image_size, generator=generator),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --------------------------------------------------------------------------- ResNet18


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a ReLU between, added to the input (through a 1x1 conv+BN when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvBNAct(in_channels, out_channels, 1, stride=stride, activation=None)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet18(ReferenceModel):
    """ResNet-18 (He et al. 2016): the torchvision layout, 11,689,512 parameters at 1000 classes.

    Stem conv 7x7/2 to 64 + BN + ReLU + max-pool 3x3/2; four stages of two
    :class:`BasicBlock` (64, 128, 256, 512 channels; stages 2-4 start with stride 2);
    global average pool; Linear. ``image_size`` only sets the exported input shape.
    """

    name = "resnet18"

    def __init__(self, num_classes: int = 1000, image_size: int = 224, seed: int = DEFAULT_SEED) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[nn.Module] = []
        channels = 64
        for i, out in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(channels, out, stride), BasicBlock(out, out)))
            channels = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(512, num_classes)
        init_parameters(self, seed)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return _image_specs(3, self.image_size, self.num_classes)[0]

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return _image_specs(3, self.image_size, self.num_classes)[1]

    def example_inputs(self, batch: int, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, 3, self.image_size, self.image_size, generator=generator),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


# --------------------------------------------------------------------------- MiniLMEncoder

# Added to the attention scores of padded positions (BERT's value): large enough that
# softmax gives them ~0 weight, small enough to stay finite through int8 calibration.
MASK_BIAS = -10000.0


class SelfAttention(nn.Module):
    """Multi-head self-attention from four ``nn.Linear`` (query, key, value, output), written out so each is visible."""

    def __init__(self, hidden: int, heads: int, seq_len: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of the {heads} heads")
        self.heads = heads
        self.head_dim = hidden // heads
        self.seq_len = seq_len
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # [batch, seq, hidden] -> [batch, heads, seq, head_dim]; -1 keeps the batch free in the graph.
        return x.reshape(-1, self.seq_len, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + mask_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        context = context.transpose(1, 2).reshape(-1, self.seq_len, self.heads * self.head_dim)
        return self.output(context)


class EncoderLayer(nn.Module):
    """A post-norm BERT layer: x = LN(x + attention(x)); x = LN(x + W2 GELU(W1 x))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, seq_len: int, eps: float) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden, heads, seq_len)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()  # Exact (erf) GELU, as BERT and MiniLM.
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, mask_bias))
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


class MiniLMEncoder(ReferenceModel):
    """A BERT-style encoder of MiniLM-L6-H384 size: 22,565,376 parameters with the 30,522-token BERT vocabulary.

    Inputs ``input_ids`` and ``attention_mask``, both int64 ``[batch, 128]`` (mask 1 for a
    real token, 0 for padding; no other values). Output ``last_hidden_state`` float32
    ``[batch, 128, 384]``: the last layer's hidden states, not a pooled embedding. Why: a
    masked mean needs a ReduceSum over the mask that the native backend lacks, and pooling
    is a choice (mean, CLS) the caller can make on the output in numpy.

    Embeddings: token + position (512 positions, the first ``seq_len`` used) + segment
    (2 segments; every token is segment 0, as for single-sentence input), then LayerNorm.
    Six post-norm layers (:class:`EncoderLayer`) of hidden 384, 12 heads, FFN 1536, exact
    GELU, LayerNorm eps 1e-12. No pooler, no dropout.

    The padding mask becomes an additive score bias by looking up the int64 mask in a
    two-entry table ([-10000, 0]), which exports as a ``Gather``: no ``Cast`` or ``Where``
    on a graph input, which the native backend would refuse.
    """

    name = "minilm_encoder"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden: int = 384,
        layers: int = 6,
        heads: int = 12,
        intermediate: int = 1536,
        seq_len: int = 128,
        max_positions: int = 512,
        segments: int = 2,
        layer_norm_eps: float = 1e-12,
        seed: int = DEFAULT_SEED,
    ) -> None:
        super().__init__()
        if seq_len > max_positions:
            raise ValueError(f"seq_len {seq_len} is longer than the {max_positions} position embeddings")
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.seq_len = seq_len
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.segment_embeddings = nn.Embedding(segments, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.layers = nn.ModuleList(
            EncoderLayer(hidden, heads, intermediate, seq_len, layer_norm_eps) for _ in range(layers)
        )
        self.register_buffer("mask_bias_table", torch.tensor([MASK_BIAS, 0.0]), persistent=False)
        init_parameters(self, seed)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("input_ids", "int64", (BATCH_DIM, self.seq_len)),
            TensorSpec("attention_mask", "int64", (BATCH_DIM, self.seq_len)),
        )

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("last_hidden_state", "float32", (BATCH_DIM, self.seq_len, self.hidden)),)

    def example_inputs(self, batch: int, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, ...]:
        """Random token ids; sequence ``i`` has its last ``(17 * i) % seq_len`` positions padded (mask 0)."""
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, self.vocab_size, (batch, self.seq_len), generator=generator)
        lengths = torch.tensor([self.seq_len - (17 * i) % self.seq_len for i in range(batch)])
        attention_mask = (torch.arange(self.seq_len)[None, :] < lengths[:, None]).to(torch.int64)
        return input_ids, attention_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings.weight[: self.seq_len]
            + self.segment_embeddings.weight[0]
        )
        x = self.embedding_norm(x)
        mask_bias = self.mask_bias_table[attention_mask][:, None, None, :]  # [batch, 1, 1, seq]
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


MODELS: dict[str, type[ReferenceModel]] = {
    cls.name: cls for cls in (DigitsCNN, MobileNetV2, ResNet18, MiniLMEncoder)
}


def build_model(name: str, seed: int = DEFAULT_SEED, **kwargs: Any) -> ReferenceModel:
    """A reference model by its zoo name (``digits_cnn``, ``mobilenet_v2``, ``resnet18``, ``minilm_encoder``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; the reference models are {', '.join(MODELS)}"
        ) from None
    return cls(seed=seed, **kwargs)


# --------------------------------------------------------------------------- ONNX export and checks


def export_onnx(model: ReferenceModel, path: str | os.PathLike[str], *, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` (in eval mode) as ONNX to ``path`` and check it with ``onnx.checker``; returns the path.

    The TorchScript exporter (``dynamo=False``) is used: it runs offline with torch alone,
    and its graphs are the patterns the runtime's importer is written against. Batch norm
    is kept (``TrainingMode.PRESERVE`` on an eval model) rather than folded into the convs,
    so that the file is the model as trained and folding stays the runtime's job. Every
    ``"batch"`` dim of the specs is dynamic. The file is written next to ``path`` and
    renamed into place, so a cache never holds half a model.
    """
    import onnx  # Deferred: the export path is the only user.

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    specs = (*model.input_specs, *model.output_specs)
    dynamic_axes = {
        spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
        for spec in specs
    }
    was_training = model.training
    model.eval()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            # PRESERVE warns that constant folding may fold training-mode ops; the model is in eval.
            warnings.filterwarnings("ignore", message=".*constant folding.*", category=UserWarning)
            torch.onnx.export(
                model,
                model.example_inputs(2),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[spec.name for spec in model.input_specs],
                output_names=[spec.name for spec in model.output_specs],
                dynamic_axes=dynamic_axes,
                training=torch.onnx.TrainingMode.PRESERVE,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        _declare_shapes(proto.graph.input, model.input_specs)
        _declare_shapes(proto.graph.output, model.output_specs)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"exporting {model.name or type(model).__name__} to {path} failed: {exc}") from exc
    finally:
        model.train(was_training)
    return path


def _declare_shapes(values: Sequence[Any], specs: Sequence[TensorSpec]) -> None:
    """Write the specs' shapes on the graph's inputs or outputs (``onnx.ValueInfoProto``).

    The exporter's shape inference can lose a static dim (the encoder's sequence length
    comes out as a made-up symbolic name); the graph's signature must say what the specs say.
    """
    by_name = {spec.name: spec for spec in specs}
    for value in values:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in spec.shape:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def compare_with_onnxruntime(
    model: ReferenceModel,
    path: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = (1, 2),
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = DEFAULT_SEED,
) -> float:
    """Run the ONNX file on onnxruntime and torch on the same seeded inputs; return the largest abs difference.

    Raises :class:`ExportMismatchError` when some output differs by more than
    ``atol + rtol * max|torch output|`` (the relative part lets large logits of untrained
    models through float32 reassociation noise), and :class:`ExportError` when
    onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("checking an export needs onnxruntime: pip install onnxruntime") from exc

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for batch in batch_sizes:
            inputs = model.example_inputs(batch, seed=seed + batch)
            with torch.no_grad():
                expected = model(*inputs)
            expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
            feeds = {spec.name: t.numpy() for spec, t in zip(model.input_specs, inputs, strict=True)}
            got = session.run([spec.name for spec in model.output_specs], feeds)
            for spec, want, have in zip(model.output_specs, expected_list, got, strict=True):
                want_np = want.numpy()
                if have.shape != want_np.shape:
                    raise ExportMismatchError(
                        f"{path}: output {spec.name} at batch {batch} has shape {have.shape}, torch {want_np.shape}"
                    )
                diff = float(np.max(np.abs(have - want_np)))
                bound = atol + rtol * float(np.max(np.abs(want_np)))
                if not diff <= bound:  # Also catches NaN.
                    raise ExportMismatchError(
                        f"{path}: output {spec.name} at batch {batch} differs from torch by {diff:.3g} "
                        f"(allowed {bound:.3g})"
                    )
                worst = max(worst, diff)
    finally:
        model.train(was_training)
    return worst


# --------------------------------------------------------------------------- training


@dataclass
class FitResult:
    """What :func:`fit_classifier` measured: per-epoch mean training loss and validation accuracy."""

    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def accuracy(model: nn.Module, data: Split, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (switched to eval mode) on ``data``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = torch.from_numpy(data.x[start : start + batch_size])
            y = torch.from_numpy(data.y[start : start + batch_size])
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(data)


def fit_classifier(
    model: nn.Module,
    train: Split,
    val: Split | None = None,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = DEFAULT_SEED,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train a classifier with Adam, cross entropy and a cosine learning-rate decay; deterministic for a seed.

    A plain loop, not Lightning: the reference models must build where only torch is
    installed. Batches are drawn from a seeded permutation each epoch, and the global RNG
    (used by dropout) is seeded inside a fork so the caller's RNG state is left as it was.
    The model is left in eval mode. ``log`` receives one line per epoch.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    x_all = torch.from_numpy(train.x)
    y_all = torch.from_numpy(train.y)
    generator = torch.Generator().manual_seed(seed)
    result = FitResult()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            total = 0.0
            for i in range(0, len(train), batch_size):
                index = order[i : i + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_all[index]), y_all[index])
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(index)
            result.train_loss.append(total / len(train))
            line = f"epoch {epoch + 1:3d}/{epochs}  loss {result.train_loss[-1]:.4f}"
            if val is not None:
                result.val_accuracy.append(accuracy(model, val))
                line += f"  val {result.val_accuracy[-1]:.4f}"
            if log is not None:
                log(line)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
