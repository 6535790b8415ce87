"""Fixtures of the LLM tests: tiny random decoders as GGUF files, Hugging Face directories and packages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import TinySpec, train_tokenizer, write_gguf, write_hf_dir

PROMPT = "The capital of France is"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-llm")


def _make(tiny_dir: Path, tok, arch: str, tie: bool) -> Path:
    path = tiny_dir / f"{arch}.gguf"
    if not path.exists():
        spec = TinySpec(arch=arch, tie=tie)
        weights = write_gguf(path, spec, tok)
        write_hf_dir(tiny_dir / f"{arch}-hf", spec, tok, weights)
    return path


@pytest.fixture(scope="session")
def llama_gguf(tiny_dir, tiny_tokenizer) -> Path:
    """A tiny Llama (tied embeddings, GQA 4/2), weights F32."""
    return _make(tiny_dir, tiny_tokenizer, "llama", True)


@pytest.fixture(scope="session")
def qwen2_gguf(tiny_dir, tiny_tokenizer) -> Path:
    """A tiny Qwen2 (q/k/v bias, untied output layer)."""
    return _make(tiny_dir, tiny_tokenizer, "qwen2", False)


@pytest.fixture(scope="session")
def packages(tiny_dir, llama_gguf, qwen2_gguf):
    """{(arch, weights): package path} converted once per session (lazily)."""
    from edge_runtime import llm

    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, weights: str = "int8") -> Path:
        key = (arch, weights)
        if key not in cache:
            src = llama_gguf if arch == "llama" else qwen2_gguf
            cache[key] = llm.convert(src, tiny_dir / f"{arch}-{weights}.edgepkg", weights=weights).path
        return cache[key]

    return get
