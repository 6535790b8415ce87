"""The native decode step: one token of one sequence in one C call (``edge_llm_decode``).

A decode step in numpy is some 400 small operations (30 layers of norms, RoPE,
attention, SwiGLU between the GEMVs); their dispatch, not the weights, was most
of the time of a token. ``native/include/edge/decoder.h`` defines the step; it
computes what :meth:`edge_runtime.llm.model.LLM.forward` computes for one token,
with the same per-call int8 activation quantization and the same GEMM, so
the two agree to float rounding (tests/llm/test_native_decode.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.llm.config import LlamaConfig

__all__ = ["NativeDecoder"]


class NativeDecoder:
    """The C view of a loaded int8 model (pointers into its arrays, which it keeps alive)."""

    def __init__(
        self,
        config: LlamaConfig,
        layers: list[Any],
        lm_head: Any,
        norm: np.ndarray,
        cos: np.ndarray,
        sin: np.ndarray,
        parallel_min_macs: int,
        activation_digits: int,
    ) -> None:
        from edge_runtime.kernels._ffi import aligned_empty, ffi, lib

        self._ffi, self._lib = ffi, lib
        self._keep: list[Any] = []
        c = config
        d = ffi.new("edge_llm_decoder *")
        d.layers, d.dim, d.hidden = c.num_layers, c.hidden_size, c.intermediate_size
        d.heads, d.kv_heads, d.head_dim, d.vocab = c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
        self.cos = np.ascontiguousarray(cos, dtype=np.float32)
        self.sin = np.ascontiguousarray(sin, dtype=np.float32)
        d.context = self.cos.shape[0]
        d.rms_eps = float(c.rms_eps)
        d.rope_cos, d.rope_sin = self._ptr(self.cos, "float *"), self._ptr(self.sin, "float *")
        arr = ffi.new("edge_llm_layer[]", len(layers))
        for i, layer in enumerate(layers):
            arr[i].attn_norm = self._ptr(layer.attn_norm, "float *")
            arr[i].ffn_norm = self._ptr(layer.ffn_norm, "float *")
            self._linear(arr[i].qkv, layer.qkv)
            self._linear(arr[i].o, layer.o)
            self._linear(arr[i].gate_up, layer.gate_up)
            self._linear(arr[i].down, layer.down)
        d.layer = arr
        d.norm = self._ptr(norm, "float *")
        self._linear(d.lm_head, lm_head)
        d.parallel_min_macs = int(parallel_min_macs)
        d.activation_digits = int(activation_digits)
        self._layers, self._d = arr, d
        size = lib.edge_llm_decode_workspace_size(d)
        self._workspace = aligned_empty(size)
        self._workspace_ptr = ffi.from_buffer(self._workspace)
        self._size = size
        self.x = np.empty(c.hidden_size, dtype=np.float32)
        self._x_ptr = ffi.cast("float *", self.x.ctypes.data)

    def _ptr(self, array: np.ndarray, ctype: str) -> Any:
        a = np.ascontiguousarray(array, dtype=np.float32 if ctype == "float *" else array.dtype)
        self._keep.append(a)
        return self._ffi.cast(ctype, a.ctypes.data)

    def _linear(self, dst: Any, linear: Any) -> None:
        dst.n, dst.k = linear.n, linear.k
        dst.packed = self._ffi.cast("void *", linear.packed.buffer.ctypes.data)
        self._keep.append(linear.packed.buffer)
        dst.scale = self._ptr(linear.scale, "float *")
        dst.bias = self._ffi.NULL if linear.bias is None else self._ptr(linear.bias, "float *")

    def step(
        self, embedding: np.ndarray, position: int, k_cache: np.ndarray, v_cache: np.ndarray, pool: Any
    ) -> np.ndarray:
        """Logits ``[vocab]`` of one token whose embedding is ``embedding``; its K/V go to the caches at ``position``."""
        from edge_runtime.kernels._ffi import check

        ffi = self._ffi
        self.x[:] = embedding
        logits = np.empty(self._d.vocab, dtype=np.float32)
        check(
            self._lib.edge_llm_decode(
                self._d,
                self._x_ptr,
                int(position),
                ffi.cast("float *", k_cache.ctypes.data),
                ffi.cast("float *", v_cache.ctypes.data),
                int(k_cache.shape[2]),
                ffi.cast("float *", logits.ctypes.data),
                self._workspace_ptr,
                self._size,
                pool.handle if pool is not None else ffi.NULL,
            ),
            "edge_llm_decode",
        )
        return logits
