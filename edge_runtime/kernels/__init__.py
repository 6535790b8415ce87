"""Python API of the native INT8 kernels.

Thin wrappers that check shapes and dtypes, pack weights once, and raise the
typed errors of :mod:`edge_runtime.errors`. Calls release the GIL.
"""

from edge_runtime.kernels.conv import (
    Conv2dParams,
    PackedConv2d,
    conv2d,
    conv2d_workspace_size,
    dwconv2d,
    pack_conv2d,
    pack_conv2d24,
    pack_dwconv2d,
)
from edge_runtime.kernels.core import (
    ISA_NAMES,
    Requant,
    ThreadPool,
    detect_isa,
    get_isa,
    requant_from_scale,
    set_isa,
    supported_isas,
    use_isa,
)
from edge_runtime.kernels.gemm import PackedGemm, gemm, pack_gemm
from edge_runtime.kernels.ops import (
    add,
    attention,
    attention_workspace_size,
    avgpool2d,
    dequantize,
    global_avgpool,
    layernorm,
    lut,
    lut_channels,
    lut_table,
    maxpool2d,
    mul,
    quantize,
    softmax,
)
from edge_runtime.kernels.sparse import PackedGemm24, gemm24, is_2_4, pack_gemm24, prune_2_4

__all__ = [
    "ISA_NAMES",
    "Conv2dParams",
    "PackedConv2d",
    "PackedGemm",
    "PackedGemm24",
    "Requant",
    "ThreadPool",
    "add",
    "attention",
    "attention_workspace_size",
    "avgpool2d",
    "conv2d",
    "conv2d_workspace_size",
    "dequantize",
    "detect_isa",
    "dwconv2d",
    "gemm",
    "gemm24",
    "get_isa",
    "global_avgpool",
    "is_2_4",
    "layernorm",
    "lut",
    "lut_channels",
    "lut_table",
    "maxpool2d",
    "mul",
    "pack_conv2d",
    "pack_conv2d24",
    "pack_dwconv2d",
    "pack_gemm",
    "pack_gemm24",
    "prune_2_4",
    "quantize",
    "requant_from_scale",
    "set_isa",
    "softmax",
    "supported_isas",
    "use_isa",
]
