"""The package's weight formats: per-channel int8, groupwise int4, float16.

In the weights archive (``llm/weights.npz``) a matrix ``W`` ``[out, in]`` is stored as

- ``int8``: ``W.q8`` int8 in [-127, 127] and ``W.s`` float32 per output channel
  (the spec of ``docs/numerics.md``: symmetric, per output channel);
- ``int4``: ``W.q4`` uint8, two 4-bit values per byte (low nibble first, value + 8,
  range [-7, 7]) and ``W.s4`` float16 scales per group of ``group_size`` inputs;
  at load they are expanded to per-channel int8 for the int8 GEMM, so int4
  halves the package and the download, not the memory of a running model;
- ``f16``: ``W.f16`` float16 (a float reference path, for tests and checks).

Vectors (norms, biases, RoPE frequencies) are float32 under their own name.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.llm.errors import ModelSourceError, UnsupportedModelError

__all__ = [
    "WEIGHT_FORMATS",
    "decode_matrix",
    "dequantize_int4",
    "encode_weights",
    "quantize_int4",
    "quantize_int8",
]

WEIGHT_FORMATS = ("int8", "int4", "f16")
DEFAULT_GROUP = 32


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: ``w ~ q * scale[:, None]``, q in [-127, 127]."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.max(np.abs(w), axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_int4(w: np.ndarray, group: int = DEFAULT_GROUP) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric groupwise int4 (values in [-7, 7]) packed two per byte, and float16 group scales."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    if k % group or k % 2:
        raise UnsupportedModelError(f"int4 needs inputs ({k}) to be a multiple of the group size {group}")
    g = w.reshape(n, k // group, group)
    amax = np.max(np.abs(g), axis=2)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float16)
    q = np.clip(np.rint(g / scale.astype(np.float32)[:, :, None]), -7, 7).astype(np.int8).reshape(n, k)
    u = (q + 8).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8), scale


def dequantize_int4(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    n, half = packed.shape
    groups = scale.shape[1]
    q = np.empty((n, half * 2), dtype=np.int8)
    q[:, 0::2] = (packed & 0x0F).astype(np.int8) - 8
    q[:, 1::2] = (packed >> 4).astype(np.int8) - 8
    return (q.reshape(n, groups, -1) * scale.astype(np.float32)[:, :, None]).reshape(n, half * 2)


def _is_matrix(name: str) -> bool:
    return name in ("embed", "lm_head") or name.rsplit(".", 1)[-1] in (
        "q",
        "k",
        "v",
        "o",
        "gate",
        "up",
        "down",
    )


def encode_weights(
    weights: dict[str, np.ndarray], fmt: str, group: int = DEFAULT_GROUP
) -> dict[str, np.ndarray]:
    """The weights archive's arrays for ``fmt`` (int8, int4 or f16).

    The embedding table stays int8 per row under int4 (it is read row by row and,
    when tied, is the output layer); a matrix whose inputs are not a multiple of
    the group stays int8 too.
    """
    if fmt not in WEIGHT_FORMATS:
        raise UnsupportedModelError(
            f"weights {fmt!r} are not supported; use one of {', '.join(WEIGHT_FORMATS)}"
        )
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if not _is_matrix(name):
            out[name] = np.asarray(w, dtype=np.float32)
        elif fmt == "f16":
            out[name + ".f16"] = np.asarray(w, dtype=np.float16)
        elif fmt == "int4" and name != "embed" and w.shape[1] % group == 0:
            out[name + ".q4"], out[name + ".s4"] = quantize_int4(w, group)
        else:
            out[name + ".q8"], out[name + ".s"] = quantize_int8(w)
    return out


def decode_matrix(
    store: dict[str, np.ndarray], name: str, as_float: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(int8 weights, float32 scales)`` of matrix ``name``, or ``(float32 weights, None)`` when ``as_float``
    or the matrix is stored as float16."""
    for q_name, s_name in ((".q4", ".s4"), (".q8", ".s")):
        if name + q_name in store and name + s_name not in store:
            raise ModelSourceError(
                f"the weights archive has {name}{q_name} without its scales {name}{s_name}"
            )
    if name + ".f16" in store:
        w = store[name + ".f16"].astype(np.float32)
        return (w, None) if as_float else quantize_int8(w)
    if name + ".q4" in store:
        w = dequantize_int4(store[name + ".q4"], store[name + ".s4"])
        return (w, None) if as_float else quantize_int8(w)
    if name + ".q8" in store:
        q, s = store[name + ".q8"], store[name + ".s"].astype(np.float32)
        if q.dtype != np.int8 or q.ndim != 2 or s.shape != (q.shape[0],):
            raise ModelSourceError(f"weights of {name} are malformed ({q.dtype} {q.shape}, scales {s.shape})")
        return (q.astype(np.float32) * s[:, None], None) if as_float else (q, s)
    raise ModelSourceError(f"the weights archive has no matrix {name}")
