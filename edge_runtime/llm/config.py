"""The decoder architecture one LLM package describes (the Llama family).

Llama 2/3.x, SmolLM2, TinyLlama, Mistral (without sliding window) and
Qwen2/2.5 share one block: RMSNorm, grouped-query attention with rotary
position embeddings (the "rotate half" form of Hugging Face), optional q/k/v
bias (Qwen2), SwiGLU feed-forward, optionally tied input/output embeddings.
Weights are kept in Hugging Face's layout: GGUF's llama q/k rows, which
llama.cpp's converter permutes for its interleaved RoPE, are permuted back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edge_runtime.llm.errors import ModelSourceError, UnsupportedModelError

__all__ = ["ARCHITECTURES", "LlamaConfig", "rope_inv_freq"]

# The architectures this runtime runs (the names GGUF's general.architecture uses).
ARCHITECTURES = ("llama", "qwen2")

_MAX_DIM = 1 << 16  # K of the int8 GEMM is at most 65536
_MAX_LAYERS = 512
_MAX_VOCAB = 1 << 20


@dataclass(frozen=True)
class LlamaConfig:
    """Shapes and constants of a Llama-family decoder."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_context: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    add_bos: bool = False
    name: str = "model"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {self.arch!r} is not supported; supported: {', '.join(ARCHITECTURES)} "
                "(Llama 2/3.x, SmolLM2, TinyLlama, Mistral, Qwen2/2.5)"
            )
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_context",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelSourceError(f"model config {key} must be a positive integer, got {value!r}")
        if self.num_layers > _MAX_LAYERS or self.vocab_size > _MAX_VOCAB:
            raise UnsupportedModelError(
                f"{self.num_layers} layers and a vocabulary of {self.vocab_size} are over this runtime's limits"
            )
        if max(self.hidden_size, self.intermediate_size, self.num_heads * self.head_dim) > _MAX_DIM:
            raise UnsupportedModelError(
                f"a dimension of {self.name} is over {_MAX_DIM}, the int8 GEMM's K limit"
            )
        if self.num_heads % self.num_kv_heads:
            raise ModelSourceError(
                f"{self.num_heads} attention heads are not a multiple of {self.num_kv_heads} KV heads"
            )
        if self.head_dim % 2:
            raise UnsupportedModelError(f"head dimension {self.head_dim} is odd; RoPE needs an even one")
        if not (math.isfinite(self.rms_eps) and self.rms_eps > 0):
            raise ModelSourceError(f"rms_eps must be a positive number, got {self.rms_eps!r}")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise ModelSourceError(f"rope_theta must be a positive number, got {self.rope_theta!r}")
        for i in (self.bos_token_id, *self.eos_token_ids):
            if i is not None and not 0 <= i < self.vocab_size:
                raise ModelSourceError(f"special token id {i} is outside the vocabulary of {self.vocab_size}")

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, itemsize: int) -> int:
        """Bytes of KV cache one token of context takes (keys and values, every layer)."""
        return 2 * self.num_layers * self.kv_dim * itemsize

    def parameter_count(self) -> int:
        d, f = self.hidden_size, self.intermediate_size
        per_layer = d * (self.q_dim + 2 * self.kv_dim) + self.q_dim * d + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + head + self.num_layers * per_layer + d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        if not isinstance(d, dict):
            raise ModelSourceError("the LLM config must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelSourceError(f"the LLM config has unknown field(s) {', '.join(unknown)}")
        try:
            args = dict(d)
            args["eos_token_ids"] = tuple(int(i) for i in d.get("eos_token_ids") or ())
            return cls(**args)
        except TypeError as exc:
            raise ModelSourceError(f"the LLM config is incomplete: {exc}") from None


def rope_inv_freq(config: LlamaConfig, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """The rotary inverse frequencies (head_dim / 2 of them), with the config's scaling applied.

    Scaling: ``linear`` (positions divided by ``factor``), ``llama3`` (Llama 3.1's
    wavelength-dependent smoothing), or GGUF's ``rope_freqs`` tensor (divisors,
    which is how llama.cpp carries Llama 3's scaling).
    """
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default", "none"):
        pass
    elif kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, smoothed, scaled)
    else:
        raise UnsupportedModelError(
            f"RoPE scaling {kind!r} is not supported (supported: linear, llama3, GGUF rope_freqs)"
        )
    if freq_factors is not None:
        factors = np.asarray(freq_factors, dtype=np.float64).reshape(-1)
        if factors.shape != inv.shape:
            raise ModelSourceError(f"rope_freqs has {factors.size} values, expected {inv.size}")
        inv = inv / factors
    return inv.astype(np.float32)
