"""Tiny random decoders for the tests: a GGUF file (written with gguf.GGUFWriter), the same model
as a Hugging Face directory, and a matching tiny byte-level BPE tokenizer trained with tokenizers."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.llm.sources import permute_for_gguf

PROMPT = "The capital of France is"

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Small language models run on small devices, token by token.",
    "Hello world! How are you today? I am fine, thank you.",
    "def add(a, b): return a + b  # numbers 0 1 2 3 4 5 6 7 8 9",
    "Ünïcödé text: café, naïve, 東京, emoji 🙂 and more words for merges.",
] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@dataclass
class TinySpec:
    arch: str = "llama"
    hidden: int = 64
    ffn: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    context: int = 256
    tie: bool = True
    seed: int = 0
    rope_theta: float = 10000.0
    dtype: str = "F32"  # GGUF type of the matrices: F32, F16, Q8_0, Q4_0, ...


def random_weights(spec: TinySpec, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    d, f = spec.hidden, spec.ffn
    hd = d // spec.heads

    def mat(n: int, k: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((n, k)) * gain / np.sqrt(k)).astype(np.float32)

    w = {
        "embed": rng.standard_normal((vocab, d)).astype(np.float32),
        "norm": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32),
    }
    if not spec.tie:
        w["lm_head"] = mat(vocab, d, 4.0)
    for i in range(spec.layers):
        p = f"layers.{i}."
        w[p + "attn_norm"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        w[p + "ffn_norm"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        w[p + "q"], w[p + "k"] = mat(d, d), mat(spec.kv_heads * hd, d)
        w[p + "v"], w[p + "o"] = mat(spec.kv_heads * hd, d, 2.0), mat(d, d, 2.0)
        w[p + "gate"], w[p + "up"], w[p + "down"] = mat(f, d), mat(f, d), mat(d, f, 2.0)
        if spec.arch == "qwen2":
            for n, size in (("q_bias", d), ("k_bias", spec.kv_heads * hd), ("v_bias", spec.kv_heads * hd)):
                w[p + n] = (0.1 * rng.standard_normal(size)).astype(np.float32)
    return w


_GGUF_NAMES = {
    "attn_norm": "attn_norm.weight",
    "ffn_norm": "ffn_norm.weight",
    "q": "attn_q.weight",
    "k": "attn_k.weight",
    "v": "attn_v.weight",
    "o": "attn_output.weight",
    "gate": "ffn_gate.weight",
    "up": "ffn_up.weight",
    "down": "ffn_down.weight",
    "q_bias": "attn_q.bias",
    "k_bias": "attn_k.bias",
    "v_bias": "attn_v.bias",
}


def _merges(tok) -> list[str]:
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


# k-quant block: (bytes, offset of the float16 scale(s), how many) - the rest is random codes.
_K_LAYOUT = {"Q4_K": (144, 0, 2), "Q5_K": (176, 0, 2), "Q6_K": (210, 208, 1)}


def _random_k_blocks(shape: tuple[int, int], dtype: str) -> np.ndarray:
    size, offset, count = _K_LAYOUT[dtype]
    rows, cols = shape
    rng = np.random.default_rng(rows * cols)
    blocks = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
    scales = np.full((rows, cols // 256, count), 0.004, dtype=np.float16).view(np.uint8)
    blocks[:, :, offset : offset + 2 * count] = scales
    return blocks.reshape(rows, -1)


def write_gguf(
    path: Path,
    spec: TinySpec,
    tok,
    weights: dict[str, np.ndarray] | None = None,
    arch_name: str | None = None,
) -> dict[str, np.ndarray]:
    import gguf

    vocab = tok.get_vocab_size()
    weights = weights or random_weights(spec, vocab)
    w = gguf.GGUFWriter(str(path), arch_name or spec.arch)
    w.add_name("tiny")
    w.add_block_count(spec.layers)
    w.add_context_length(spec.context)
    w.add_embedding_length(spec.hidden)
    w.add_feed_forward_length(spec.ffn)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    id_to_tok = {i: t for t, i in tok.get_vocab().items()}
    tokens = [id_to_tok[i] for i in range(vocab)]
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(_merges(tok))
    w.add_bos_token_id(tok.token_to_id("<|im_start|>"))
    w.add_eos_token_id(tok.token_to_id("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    qtype = getattr(gguf.GGMLQuantizationType, spec.dtype)

    def put(name: str, arr: np.ndarray, matrix: bool) -> None:
        if matrix and spec.dtype in _K_LAYOUT:  # gguf-py cannot quantize k-quants: random valid blocks
            w.add_tensor(name, _random_k_blocks(arr.shape, spec.dtype), raw_dtype=qtype)
        elif matrix and spec.dtype != "F32":
            if spec.dtype == "F16":
                w.add_tensor(name, arr.astype(np.float16))
            else:
                w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, arr.astype(np.float32))

    put("token_embd.weight", weights["embed"], True)
    put("output_norm.weight", weights["norm"], False)
    if "lm_head" in weights:
        put("output.weight", weights["lm_head"], True)
    for i in range(spec.layers):
        for short, gname in _GGUF_NAMES.items():
            key = f"layers.{i}.{short}"
            if key not in weights:
                continue
            arr = weights[key]
            if spec.arch == "llama" and short in ("q", "k"):
                arr = permute_for_gguf(arr, spec.heads if short == "q" else spec.kv_heads)
            put(f"blk.{i}.{gname}", arr, arr.ndim == 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def write_hf_dir(root: Path, spec: TinySpec, tok, weights: dict[str, np.ndarray]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    hd = spec.hidden // spec.heads
    (root / "config.json").write_text(
        json.dumps(
            {
                "model_type": spec.arch,
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": spec.hidden,
                "intermediate_size": spec.ffn,
                "num_hidden_layers": spec.layers,
                "num_attention_heads": spec.heads,
                "num_key_value_heads": spec.kv_heads,
                "head_dim": hd,
                "max_position_embeddings": spec.context,
                "rms_norm_eps": 1e-5,
                "rope_theta": spec.rope_theta,
                "tie_word_embeddings": spec.tie,
                "vocab_size": tok.get_vocab_size(),
                "bos_token_id": tok.token_to_id("<|im_start|>"),
                "eos_token_id": tok.token_to_id("<|im_end|>"),
            }
        )
    )
    (root / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHAT_TEMPLATE,
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "add_bos_token": False,
            }
        )
    )
    tok.save(str(root / "tokenizer.json"))
    hf = {"model.embed_tokens.weight": weights["embed"], "model.norm.weight": weights["norm"]}
    if "lm_head" in weights:
        hf["lm_head.weight"] = weights["lm_head"]
    names = {
        "attn_norm": "input_layernorm.weight",
        "ffn_norm": "post_attention_layernorm.weight",
        "q": "self_attn.q_proj.weight",
        "k": "self_attn.k_proj.weight",
        "v": "self_attn.v_proj.weight",
        "o": "self_attn.o_proj.weight",
        "gate": "mlp.gate_proj.weight",
        "up": "mlp.up_proj.weight",
        "down": "mlp.down_proj.weight",
        "q_bias": "self_attn.q_proj.bias",
        "k_bias": "self_attn.k_proj.bias",
        "v_bias": "self_attn.v_proj.bias",
    }
    for i in range(spec.layers):
        for short, hname in names.items():
            if f"layers.{i}.{short}" in weights:
                hf[f"model.layers.{i}.{hname}"] = weights[f"layers.{i}.{short}"]
    _write_safetensors(root / "model.safetensors", hf)
