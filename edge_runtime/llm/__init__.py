"""Small language models on the device (the Llama family: Llama 3.x, SmolLM2, TinyLlama, Qwen2).

::

    from edge_runtime import llm

    llm.convert("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2.edgepkg")   # edge llm convert
    model = llm.load("smollm2.edgepkg", threads=2)
    prompt = model.apply_chat_template([{"role": "user", "content": "Hi!"}])
    for event in model.stream(prompt, max_new_tokens=64):
        print(event.text, end="", flush=True)

See ``docs/llm.md``.
"""

from edge_runtime.llm.config import LlamaConfig
from edge_runtime.llm.errors import (
    ContextLengthError,
    ContextMemoryError,
    GenerationCancelled,
    LLMError,
    ModelSourceError,
    UnsupportedModelError,
)
from edge_runtime.llm.model import LLM, Generation, KVSequence, TokenEvent
from edge_runtime.llm.package import convert, is_llm_package, load
from edge_runtime.llm.reference import reference_generate, reference_logits
from edge_runtime.llm.sampling import Sampler, SamplingParams
from edge_runtime.llm.sources import ModelSource, read_gguf, read_hf_dir, read_source

__all__ = [
    "LLM",
    "ContextLengthError",
    "ContextMemoryError",
    "Generation",
    "GenerationCancelled",
    "KVSequence",
    "LLMError",
    "LlamaConfig",
    "ModelSource",
    "ModelSourceError",
    "Sampler",
    "SamplingParams",
    "TokenEvent",
    "UnsupportedModelError",
    "convert",
    "is_llm_package",
    "load",
    "read_gguf",
    "read_hf_dir",
    "read_source",
    "reference_generate",
    "reference_logits",
]
