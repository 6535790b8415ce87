"""Reading model sources: GGUF files and Hugging Face directories.

Both give a :class:`ModelSource`: the architecture (:class:`LlamaConfig`),
float32 weights under the runtime's names (below, Hugging Face's layout:
``[out_features, in_features]``), the tokenizer as ``tokenizers`` JSON and
the chat template. Quantized GGUF tensors are dequantized here
(``gguf.quants.dequantize``); conversion requantizes them to the package's
int8 or int4 format.

Weight names: ``embed`` ``[vocab, hidden]``, ``norm``, ``lm_head`` (absent
when tied), ``rope_freqs`` (optional divisors of the RoPE frequencies), and per
layer ``layers.{i}.`` + ``attn_norm``, ``q``, ``k``, ``v``, ``o``,
``q_bias``, ``k_bias``, ``v_bias`` (Qwen2), ``ffn_norm``, ``gate``, ``up``,
``down``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.llm.config import ARCHITECTURES, LlamaConfig, rope_inv_freq
from edge_runtime.llm.errors import ModelSourceError, UnsupportedModelError

__all__ = ["GGUF_TENSOR_TYPES", "ModelSource", "read_gguf", "read_hf_dir", "read_source"]

# GGUF tensor types dequantized at conversion (gguf.quants.dequantize).
GGUF_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")

_LAYER_GGUF = {
    "attn_norm.weight": "attn_norm",
    "attn_q.weight": "q",
    "attn_k.weight": "k",
    "attn_v.weight": "v",
    "attn_output.weight": "o",
    "attn_q.bias": "q_bias",
    "attn_k.bias": "k_bias",
    "attn_v.bias": "v_bias",
    "ffn_norm.weight": "ffn_norm",
    "ffn_gate.weight": "gate",
    "ffn_up.weight": "up",
    "ffn_down.weight": "down",
}
_TOP_GGUF = {
    "token_embd.weight": "embed",
    "output_norm.weight": "norm",
    "output.weight": "lm_head",
    "rope_freqs.weight": "rope_freqs",
}

_LAYER_HF = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "q",
    "self_attn.k_proj.weight": "k",
    "self_attn.v_proj.weight": "v",
    "self_attn.o_proj.weight": "o",
    "self_attn.q_proj.bias": "q_bias",
    "self_attn.k_proj.bias": "k_bias",
    "self_attn.v_proj.bias": "v_bias",
    "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "gate",
    "mlp.up_proj.weight": "up",
    "mlp.down_proj.weight": "down",
}
_TOP_HF = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm", "lm_head.weight": "lm_head"}
_HF_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


@dataclass
class ModelSource:
    """A model read from its source, before quantization."""

    config: LlamaConfig
    weights: dict[str, np.ndarray]
    tokenizer_json: str
    chat_template: str | None
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token as text
    provenance: dict[str, Any] = field(default_factory=dict)


def read_source(path: str | os.PathLike[str]) -> ModelSource:
    """A GGUF file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json)."""
    p = Path(path)
    if p.is_dir():
        return read_hf_dir(p)
    if not p.exists():
        raise ModelSourceError(f"{p} does not exist: give a .gguf file or a Hugging Face model directory")
    return read_gguf(p)


def check_weights(config: LlamaConfig, weights: dict[str, np.ndarray], where: str) -> None:
    """Every tensor the architecture needs is present with its shape; ModelSourceError otherwise."""
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    want: dict[str, tuple[int, ...]] = {"embed": (v, d), "norm": (d,)}
    if not config.tie_embeddings:
        want["lm_head"] = (v, d)
    for i in range(config.num_layers):
        p = f"layers.{i}."
        want.update(
            {
                p + "attn_norm": (d,),
                p + "ffn_norm": (d,),
                p + "q": (config.q_dim, d),
                p + "k": (config.kv_dim, d),
                p + "v": (config.kv_dim, d),
                p + "o": (d, config.q_dim),
                p + "gate": (f, d),
                p + "up": (f, d),
                p + "down": (d, f),
            }
        )
        if config.attention_bias:
            want.update(
                {
                    p + "q_bias": (config.q_dim,),
                    p + "k_bias": (config.kv_dim,),
                    p + "v_bias": (config.kv_dim,),
                }
            )
    for name, shape in want.items():
        if name not in weights:
            raise ModelSourceError(f"{where} has no tensor for {name}")
        if tuple(weights[name].shape) != shape:
            raise ModelSourceError(
                f"{where}: tensor {name} has shape {tuple(weights[name].shape)}, expected {shape}"
            )
        if not np.isfinite(weights[name]).all():
            raise ModelSourceError(f"{where}: tensor {name} holds NaN or infinite values")


# --- GGUF ---


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved RoPE) to Hugging Face's rotate-half order."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (what its converter writes); the inverse of :func:`_unpermute`."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception as exc:  # noqa: BLE001 - any malformed field is the file's fault
        raise ModelSourceError(f"GGUF field {key} cannot be read: {exc}") from None


def read_gguf(path: str | os.PathLike[str]) -> ModelSource:
    """Read a GGUF file (llama or qwen2 architecture); ModelSourceError for a bad file."""
    p = Path(path)
    try:
        import gguf
        from gguf import quants
    except ImportError as exc:  # pragma: no cover - the llm extra
        raise UnsupportedModelError(
            "reading GGUF needs the gguf package: pip install 'edge-runtime[llm]'"
        ) from exc
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelSourceError(f"{p} is not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        reader = gguf.GGUFReader(p, "r")
    except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, struct errors, IndexError...
        raise ModelSourceError(f"{p} is not a readable GGUF file (truncated or corrupt: {exc})") from None
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"{p}: GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    n_head = int(meta("attention.head_count", 0) or 0)
    n_kv = meta("attention.head_count_kv", n_head)
    if isinstance(n_kv, list):
        if len(set(n_kv)) != 1:
            raise UnsupportedModelError(f"{p}: a different number of KV heads per layer is not supported")
        n_kv = n_kv[0]
    hidden = int(meta("embedding_length", 0) or 0)
    if not n_head or not hidden:
        raise ModelSourceError(f"{p}: GGUF metadata lacks {arch}.attention.head_count or embedding_length")
    head_dim = int(meta("attention.key_length", hidden // n_head))

    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in GGUF_TENSOR_TYPES:
            raise UnsupportedModelError(
                f"{p}: tensor {t.name} has type {kind}; supported: {', '.join(GGUF_TENSOR_TYPES)}"
            )
        if t.name in _TOP_GGUF:
            name = _TOP_GGUF[t.name]
        elif t.name.startswith("blk."):
            _, index, rest = t.name.split(".", 2)
            if rest not in _LAYER_GGUF or not index.isdigit():
                raise UnsupportedModelError(f"{p}: tensor {t.name} is not part of the {arch} architecture")
            name = f"layers.{int(index)}.{_LAYER_GGUF[rest]}"
        else:
            raise UnsupportedModelError(f"{p}: tensor {t.name} is not part of the {arch} architecture")
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        try:
            w = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except Exception as exc:  # noqa: BLE001
            raise ModelSourceError(f"{p}: tensor {t.name} cannot be decoded ({exc})") from None
        weights[name] = w
    if "embed" not in weights:
        raise ModelSourceError(f"{p} has no token_embd.weight tensor")
    if arch == "llama":  # llama.cpp permutes q/k rows for its interleaved RoPE; qwen2 uses NeoX RoPE as is
        for name in list(weights):
            if name.endswith((".q", ".q_bias")):
                weights[name] = _unpermute(weights[name], n_head)
            elif name.endswith((".k", ".k_bias")):
                weights[name] = _unpermute(weights[name], int(n_kv))

    n_layers = int(meta("block_count", 0) or 0)
    scaling = None
    kind = meta("rope.scaling.type")
    if kind not in (None, "none"):
        if kind != "linear":
            raise UnsupportedModelError(f"{p}: RoPE scaling {kind!r} is not supported (linear is)")
        scaling = {"rope_type": "linear", "factor": float(meta("rope.scaling.factor", 1.0))}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ModelSourceError(f"{p} carries no tokenizer (tokenizer.ggml.tokens)")
    from edge_runtime.llm.tokenizer import tokenizer_from_gguf

    tok_json, specials = tokenizer_from_gguf(lambda k, d=None: _field(reader, k, d), p)
    eos = [
        i
        for i in (
            _field(reader, "tokenizer.ggml.eos_token_id"),
            _field(reader, "tokenizer.ggml.eot_token_id"),
            _field(reader, "tokenizer.ggml.eom_token_id"),
        )
        if i is not None
    ]
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    add_bos = bool(
        _field(
            reader,
            "tokenizer.ggml.add_bos_token",
            arch == "llama" and _field(reader, "tokenizer.ggml.model") == "llama",
        )
    )
    vocab = weights["embed"].shape[0]
    config = LlamaConfig(
        arch=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length", 0) or 0),
        num_layers=n_layers,
        num_heads=n_head,
        num_kv_heads=int(n_kv),
        head_dim=head_dim,
        max_context=int(meta("context_length", 2048) or 2048),
        rms_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        tie_embeddings="lm_head" not in weights,
        attention_bias="layers.0.q_bias" in weights,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos)),
        add_bos=add_bos,
        name=str(_field(reader, "general.name", p.stem)),
    )
    check_weights(config, weights, str(p))
    return ModelSource(
        config=config,
        weights=weights,
        tokenizer_json=tok_json,
        chat_template=_field(reader, "tokenizer.chat_template"),
        special_tokens=specials,
        provenance={"format": "gguf", "file": p.name, "file_type": _field(reader, "general.file_type")},
    )


# --- Hugging Face directories ---

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as float32 (F32, F16, BF16, F64)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelSourceError(f"{path} is not a safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise ModelSourceError(f"{path}: safetensors header of {n} bytes does not fit the file")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise ModelSourceError(f"{path}: safetensors header is not JSON ({exc})") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise UnsupportedModelError(
                f"{path}: tensor {name} has dtype {info.get('dtype')}; supported: {', '.join(_ST_DTYPES)}"
            )
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if (
            not 0 <= start <= end <= data.size
            or end - start != int(np.prod(shape)) * np.dtype(dtype).itemsize
        ):
            raise ModelSourceError(f"{path}: tensor {name} lies outside the file or has the wrong size")
        raw = np.frombuffer(data[start:end], dtype=dtype).reshape(shape)
        if info["dtype"] == "BF16":
            out[name] = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out[name] = raw.astype(np.float32)
    return out


def _json_file(path: Path, required: bool = True) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ModelSourceError(f"{path.parent} has no {path.name}; is it a Hugging Face model directory?")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelSourceError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelSourceError(f"{path} must hold a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_hf_dir(path: str | os.PathLike[str]) -> ModelSource:
    """A Hugging Face model directory: config.json, *.safetensors, tokenizer.json (+ tokenizer_config.json)."""
    root = Path(path)
    cfg = _json_file(root / "config.json")
    model_type = cfg.get("model_type")
    if model_type not in _HF_ARCHS:
        archs = cfg.get("architectures")
        raise UnsupportedModelError(
            f"{root}: model_type {model_type!r} ({archs}) is not supported; supported: {', '.join(_HF_ARCHS)}"
        )
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"{root} has no *.safetensors weights (PyTorch .bin files are not read)")
    raw: dict[str, np.ndarray] = {}
    for f in files:
        raw.update(read_safetensors(f))
    weights: dict[str, np.ndarray] = {}
    for name, w in raw.items():
        if name in _TOP_HF:
            weights[_TOP_HF[name]] = w
        elif name.startswith("model.layers."):
            _, _, index, rest = name.split(".", 3)
            if rest in _LAYER_HF:
                weights[f"layers.{int(index)}.{_LAYER_HF[rest]}"] = w
            elif not rest.endswith("rotary_emb.inv_freq"):
                raise UnsupportedModelError(f"{root}: tensor {name} is not part of the Llama family")
    tie = bool(cfg.get("tie_word_embeddings", False)) or "lm_head" not in weights
    if tie:
        weights.pop("lm_head", None)
    tok_cfg = _json_file(root / "tokenizer_config.json", required=False)
    if not (root / "tokenizer.json").exists():
        raise ModelSourceError(
            f"{root} has no tokenizer.json (a sentencepiece tokenizer.model alone is not read)"
        )
    tok_json = (root / "tokenizer.json").read_text(encoding="utf-8")
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None and (root / "chat_template.jinja").exists():
        template = (root / "chat_template.jinja").read_text(encoding="utf-8")
    gen = _json_file(root / "generation_config.json", required=False)
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    bos = gen.get("bos_token_id", cfg.get("bos_token_id"))
    specials = {k: t for k in ("bos_token", "eos_token") if (t := _token_text(tok_cfg.get(k))) is not None}
    from edge_runtime.llm.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_json)
    eos_text = specials.get("eos_token")
    if eos_text is not None and tok.token_to_id(eos_text) is not None:
        eos_ids.append(tok.token_to_id(eos_text))
    add_bos = tok_cfg.get("add_bos_token")
    if add_bos is None and bos is not None:  # a post-processor that adds BOS (Llama 3)
        add_bos = tok.encode("a", add_special_tokens=True).ids[:1] == [bos]
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    context = int(cfg.get("max_position_embeddings", 2048))
    if model_type == "mistral" and cfg.get("sliding_window"):
        context = min(context, int(cfg["sliding_window"]))
    config = LlamaConfig(
        arch=_HF_ARCHS[model_type],
        vocab_size=int(weights["embed"].shape[0]) if "embed" in weights else int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        max_context=context,
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rope_scaling=cfg.get("rope_scaling"),
        tie_embeddings=tie,
        attention_bias="layers.0.q_bias" in weights,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos_ids)),
        add_bos=bool(add_bos),
        name=root.name,
    )
    rope_inv_freq(config)  # refuses an unsupported RoPE scaling now, not at load
    check_weights(config, weights, str(root))
    return ModelSource(
        config=config,
        weights=weights,
        tokenizer_json=tok_json,
        chat_template=template,
        special_tokens=specials,
        provenance={"format": "huggingface", "directory": root.name},
    )
