"""Model sources: GGUF and Hugging Face directories give the same model; bad sources are refused with
typed errors naming the problem; the tokenizer round-trips and matches tokenizers; the chat template."""

from __future__ import annotations

import numpy as np
import pytest
from _tiny import CORPUS, PROMPT, TinySpec, write_gguf

from edge_runtime import llm
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.llm.tokenizer import TextTokenizer


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_and_huggingface_directory_agree(arch, tiny_dir, llama_gguf, qwen2_gguf, tiny_tokenizer):
    a = llm.read_gguf(llama_gguf if arch == "llama" else qwen2_gguf)
    b = llm.read_hf_dir(tiny_dir / f"{arch}-hf")
    assert (
        a.config.num_kv_heads == b.config.num_kv_heads and a.config.tie_embeddings == b.config.tie_embeddings
    )
    assert a.config.attention_bias == (arch == "qwen2")
    ids = tiny_tokenizer.encode(PROMPT).ids
    # GGUF's permuted llama q/k rows are permuted back: the same logits as the HF layout.
    np.testing.assert_allclose(
        llm.reference_logits(a.config, a.weights, ids),
        llm.reference_logits(b.config, b.weights, ids),
        atol=1e-6,
    )
    assert a.chat_template == b.chat_template


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"])
def test_quantized_gguf_tensors_are_dequantized(qtype, tmp_path, tiny_tokenizer):
    spec = TinySpec(hidden=256, ffn=256, heads=4, kv_heads=2, layers=1, dtype=qtype)
    weights = write_gguf(tmp_path / "q.gguf", spec, tiny_tokenizer)
    src = llm.read_gguf(tmp_path / "q.gguf")
    gate = src.weights["layers.0.gate"]
    assert gate.shape == (256, 256) and np.isfinite(gate).all()
    if not qtype.endswith("_K"):  # k-quant tensors are random valid blocks, not quantized weights
        err = np.abs(gate - weights["layers.0.gate"]).max()
        assert err < {"F16": 1e-3, "Q8_0": 0.02}.get(qtype, 0.35), err
    else:
        assert gate.std() > 0


def test_bad_gguf_is_refused_with_a_typed_error(tmp_path, llama_gguf, tiny_tokenizer):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(llm.ModelSourceError, match="not a GGUF file"):
        llm.read_source(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(llama_gguf.read_bytes()[:5000])
    with pytest.raises(llm.ModelSourceError, match="truncated or corrupt"):
        llm.convert(truncated, tmp_path / "t.edgepkg")
    assert issubclass(llm.ModelSourceError, (ValueError, EdgeRuntimeError))
    with pytest.raises(llm.ModelSourceError, match="does not exist"):
        llm.read_source(tmp_path / "missing.gguf")


def test_unsupported_architecture_and_tensor_type_are_named(tmp_path, tiny_tokenizer):
    write_gguf(tmp_path / "gpt2.gguf", TinySpec(), tiny_tokenizer, arch_name="gpt2")
    with pytest.raises(llm.UnsupportedModelError, match="'gpt2'"):
        llm.read_gguf(tmp_path / "gpt2.gguf")
    write_gguf(tmp_path / "q5.gguf", TinySpec(layers=1, dtype="Q5_0"), tiny_tokenizer)
    with pytest.raises(llm.UnsupportedModelError, match="Q5_0"):
        llm.convert(tmp_path / "q5.gguf", tmp_path / "q5.edgepkg")


def test_huggingface_directory_errors(tmp_path, tiny_dir):
    import shutil

    d = tmp_path / "hf"
    shutil.copytree(tiny_dir / "llama-hf", d)
    (d / "config.json").write_text('{"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}')
    with pytest.raises(llm.UnsupportedModelError, match="gpt_neox"):
        llm.read_source(d)
    (d / "config.json").unlink()
    with pytest.raises(llm.ModelSourceError, match="config.json"):
        llm.read_source(d)


def test_tokenizer_round_trip_matches_tokenizers(llama_gguf, tiny_tokenizer):
    src = llm.read_gguf(llama_gguf)
    tok = TextTokenizer(src.tokenizer_json, bos_token_id=src.config.bos_token_id)
    for text in [*CORPUS[:5], "", "  spaces  and\nnew lines\t", "<|im_start|>user\nhi<|im_end|>"]:
        ids = tok.encode(text)
        assert ids == tiny_tokenizer.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_chat_template_and_bos(packages):
    with llm.load(packages("llama", "int8"), threads=1) as model:
        prompt = model.apply_chat_template([{"role": "user", "content": "Hi"}])
        assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        ids = model.tokenize(prompt)
        assert ids[0] == model.tokenizer.token_to_id("<|im_start|>")
        assert model.detokenize(ids) == "user\nHi\nassistant\n"  # special tokens skipped
        with pytest.raises(ValueError, match="role"):
            model.apply_chat_template([{"content": "no role"}])


def test_rope_scaling_llama3_and_linear():
    from edge_runtime.llm.config import LlamaConfig, rope_inv_freq

    base = {
        "arch": "llama",
        "vocab_size": 10,
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "head_dim": 32,
        "max_context": 128,
        "rope_theta": 500000.0,
    }
    plain = rope_inv_freq(LlamaConfig(**base))
    linear = rope_inv_freq(LlamaConfig(**base, rope_scaling={"rope_type": "linear", "factor": 4.0}))
    np.testing.assert_allclose(linear, plain / 4, rtol=1e-6)
    l3 = rope_inv_freq(
        LlamaConfig(
            **base,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        )
    )
    assert l3[0] == pytest.approx(plain[0]) and l3[-1] == pytest.approx(plain[-1] / 8)
    with pytest.raises(llm.UnsupportedModelError, match="yarn"):
        rope_inv_freq(LlamaConfig(**base, rope_scaling={"rope_type": "yarn", "factor": 4.0}))


def test_sentencepiece_gguf_tokenizer_round_trip():
    """GGUF's `llama` tokenizer (SentencePiece BPE with byte fallback: Llama 2, TinyLlama)."""
    from edge_runtime.llm.tokenizer import tokenizer_from_gguf

    pieces = [
        "\u2581",
        "\u2581H",
        "\u2581He",
        "\u2581Hel",
        "\u2581Hell",
        "\u2581Hello",
        "e",
        "l",
        "o",
        "H",
        "\u2581w",
        "\u2581wo",
        "\u2581wor",
        "\u2581worl",
        "\u2581world",
        "w",
        "r",
        "d",
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [float(len(p)) for p in pieces]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    tok_json, specials = tokenizer_from_gguf(lambda k, d=None: meta.get(k, d))
    assert specials == {"bos_token": "<s>", "eos_token": "</s>"}
    tok = TextTokenizer(tok_json, bos_token_id=1, add_bos=True)
    ids = tok.encode("Hello world")
    assert ids == [1, tokens.index("\u2581Hello"), tokens.index("\u2581world")]
    for text in ["Hello world", "Hello wörld!", "new\nline"]:
        assert tok.decode(tok.encode(text)) == text  # unknown characters through byte fallback
