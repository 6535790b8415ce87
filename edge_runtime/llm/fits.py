"""What fits on a device: a language model's weights and KV cache against a device profile's memory,
and the decode rate its memory bandwidth allows.

For a model (its :class:`~edge_runtime.llm.LlamaConfig`) and a profile
(:mod:`device_profiles`)::

    usable     = memory - max(RESERVED_MIN_MIB, RESERVED_FRACTION x memory)   (the OS, the server, buffers)
    weights    = what this runtime holds: int8 matrices with a float32 scale per output row (int4
                 packages are widened to int8 at load), the embedding table and, tied or not, the
                 packed output projection; float32 norms and biases
    KV cache   = context x kv_bytes_per_token (2 x layers x kv_heads x head_dim x itemsize)
    fits       = weights + KV cache <= usable
    ceiling    = bandwidth / weight bytes read per decoded token (every matrix once): an upper
                 bound on decode tokens/s at batch 1 (reading the KV cache adds
                 kv_bytes_per_token x the position to each token's traffic)

The bandwidth figures are the boards' **spec peak DRAM bandwidth, not measured
on the boards**; a CPU decode reaches only a fraction of the peak, so read the
ceiling as "never faster than".
:func:`check_fits` is what ``edge llm convert --profile`` and
``llm.load(..., profile=)`` call: it raises :class:`ContextMemoryError` before
anything is allocated, naming the context that would fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_runtime.llm.config import LlamaConfig
from edge_runtime.llm.errors import ContextMemoryError

__all__ = [
    "REFERENCE_MODELS",
    "RESERVED_FRACTION",
    "RESERVED_MIN_MIB",
    "Fit",
    "check_fits",
    "fit",
    "model_config",
    "runtime_weight_bytes",
]

RESERVED_FRACTION = 0.2
RESERVED_MIN_MIB = 384
_MIB = 1 << 20


def _ref(name: str, d: int, f: int, layers: int, heads: int, kv: int, vocab: int, tie: bool, ctx: int) -> Any:
    return LlamaConfig(
        arch="llama",
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=f,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=d // heads,
        max_context=ctx,
        tie_embeddings=tie,
        name=name,
    )


# Shapes of small published decoders (their Hugging Face config.json), smallest first: what
# `edge llm fits` lists when no model is given.
REFERENCE_MODELS: tuple[LlamaConfig, ...] = (
    _ref("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, True, 8192),
    _ref("SmolLM2-360M", 960, 2560, 32, 15, 5, 49152, True, 8192),
    _ref("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True, 32768),
    _ref("TinyLlama-1.1B", 2048, 5632, 22, 32, 4, 32000, False, 2048),
    _ref("Llama-3.2-1B", 2048, 8192, 16, 32, 8, 128256, True, 131072),
    _ref("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True, 32768),
    _ref("SmolLM2-1.7B", 2048, 8192, 24, 32, 32, 49152, True, 8192),
    _ref("Llama-3.2-3B", 3072, 8192, 28, 24, 8, 128256, True, 131072),
)


def _matrix_bytes(rows: int, cols: int) -> int:
    return rows * cols + 4 * rows  # int8 weights and a float32 scale per output row


def runtime_weight_bytes(config: LlamaConfig) -> tuple[int, int]:
    """``(bytes held in memory, bytes read per decoded token)`` of the weights on this runtime."""
    c = config
    d, f = c.hidden_size, c.intermediate_size
    layer = (
        _matrix_bytes(c.q_dim + 2 * c.kv_dim, d)  # q, k, v
        + _matrix_bytes(d, c.q_dim)  # o
        + _matrix_bytes(2 * f, d)  # gate, up
        + _matrix_bytes(d, f)  # down
        + 4 * 2 * d  # norms
        + (4 * (c.q_dim + 2 * c.kv_dim) if c.attention_bias else 0)
    )
    head = _matrix_bytes(c.vocab_size, d)  # the packed output projection
    # The embedding table a token's row is read from: when tied, the packed output projection itself.
    embed = 0 if c.tie_embeddings else _matrix_bytes(c.vocab_size, d)
    held = c.num_layers * layer + head + embed + 4 * d
    read = c.num_layers * layer + head + d + 4 * d  # one embedding row per token
    return held, read


@dataclass(frozen=True)
class Fit:
    """One model against one profile (see the module's doc)."""

    profile: str
    model: str
    memory_bytes: int
    usable_bytes: int
    bandwidth_gbs: float  # spec peak, not measured; 0: unknown
    weight_bytes: int
    kv_bytes_per_token: int
    context: int  # what was asked
    needed_bytes: int  # weights + KV cache of ``context``
    max_context: int  # the largest context that fits (capped at the model's); 0: the weights do not fit
    decode_ceiling_tok_s: float | None  # at batch 1, weights only; None: bandwidth unknown

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.usable_bytes

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"fits": self.fits}


def _usable(memory: int) -> int:
    return max(0, memory - max(RESERVED_MIN_MIB * _MIB, int(RESERVED_FRACTION * memory)))


def fit(
    config: LlamaConfig,
    profile: Any,
    context: int | None = None,
    kv_itemsize: int = 4,
    memory_mb: int | None = None,
) -> Fit:
    """How ``config`` fits ``profile`` (a :class:`device_profiles.Profile`) with ``context`` tokens
    (default: the model's); ``memory_mb`` overrides the profile's (a larger variant of the board)."""
    ctx = min(int(context or config.max_context), config.max_context)  # the runtime caps it there too
    memory = int(memory_mb if memory_mb is not None else profile.memory_mb) * _MIB
    usable = _usable(memory)
    held, read = runtime_weight_bytes(config)
    per_token = config.kv_bytes_per_token(kv_itemsize)
    spare = usable - held
    max_context = 0 if spare <= 0 else min(config.max_context, spare // per_token)
    bandwidth = float(getattr(profile, "memory_bandwidth_gbs", 0.0) or 0.0)
    ceiling = bandwidth * 1e9 / read if bandwidth > 0 else None
    return Fit(
        profile=profile.name,
        model=config.name,
        memory_bytes=memory,
        usable_bytes=usable,
        bandwidth_gbs=bandwidth,
        weight_bytes=held,
        kv_bytes_per_token=per_token,
        context=ctx,
        needed_bytes=held + per_token * ctx,
        max_context=int(max_context),
        decode_ceiling_tok_s=ceiling,
    )


def check_fits(config: LlamaConfig, profile: Any, context: int | None = None, kv_itemsize: int = 4) -> Fit:
    """The :class:`Fit`, or ContextMemoryError (before any allocation) when it does not fit."""
    f = fit(config, profile, context, kv_itemsize)
    if f.fits:
        return f
    where = (
        f"on {f.profile} ({f.memory_bytes // _MIB} MiB, {f.usable_bytes // _MIB} MiB usable after the "
        "system's reserve)"
    )
    if f.max_context == 0:
        raise ContextMemoryError(
            f"not enough memory for the model {where}: its weights take {f.weight_bytes / _MIB:.0f} MiB "
            "in memory (int8); choose a smaller model or a board with more memory"
        )
    raise ContextMemoryError(
        f"not enough memory for the context {where}: {f.context} tokens of KV cache need "
        f"{f.kv_bytes_per_token * f.context / _MIB:.0f} MiB beside {f.weight_bytes / _MIB:.0f} MiB of "
        f"weights; at most {f.max_context} tokens fit: use --context {f.max_context} or less"
    )


def model_config(source: Any) -> LlamaConfig:
    """The architecture of an LLM package (only its config artifact is read), a GGUF file or a
    Hugging Face directory, or of a :data:`REFERENCE_MODELS` name (case-insensitive)."""
    import json
    from pathlib import Path

    from edge_runtime.llm.errors import ModelSourceError
    from edge_runtime.llm.package import CONFIG_KIND, is_llm_package
    from edge_runtime.llm.sources import read_source

    for ref in REFERENCE_MODELS:
        if str(source).lower() == ref.name.lower():
            return ref
    path = Path(source)
    if not path.exists():
        known = ", ".join(r.name for r in REFERENCE_MODELS)
        raise FileNotFoundError(f"{path} does not exist (nor is it a reference model: {known})")
    if is_llm_package(path):
        if path.is_dir():
            from edge_runtime.package import parse_manifest_bytes

            manifest = parse_manifest_bytes((path / "manifest.json").read_bytes())
            entry = next(a for a in manifest.artifacts if a.kind == CONFIG_KIND)
            raw = (path / entry.path).read_bytes()
        else:
            from edge_runtime.package import open_package

            with open_package(path) as pkg:
                raw = pkg.read_artifact(CONFIG_KIND)
        try:
            return LlamaConfig.from_dict(json.loads(raw)["architecture"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelSourceError(f"{path}: llm/config.json is malformed ({exc})") from None
    return read_source(path).config
