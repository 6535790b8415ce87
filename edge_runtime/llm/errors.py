"""Typed errors of :mod:`edge_runtime.llm`.

Every error derives from :class:`LLMError` (itself an
:class:`~edge_runtime.errors.EdgeRuntimeError`) and from the matching builtin::

    LLMError
    ├── ModelSourceError (ValueError)        a GGUF file or Hugging Face directory that cannot be read
    ├── UnsupportedModelError (ValueError)   an architecture, tensor type or option this runtime lacks
    ├── ContextLengthError (ValueError)      a prompt plus generation longer than the context
    ├── ContextMemoryError (MemoryError)     not enough memory for the KV cache of the context asked for
    └── GenerationCancelled (RuntimeError)   a generation stopped by its caller (client went away)
"""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError

__all__ = [
    "ContextLengthError",
    "ContextMemoryError",
    "GenerationCancelled",
    "LLMError",
    "ModelSourceError",
    "UnsupportedModelError",
]


class LLMError(EdgeRuntimeError):
    """Base of every error of the language-model runtime."""


class ModelSourceError(ValueError, LLMError):
    """A model source (GGUF file, Hugging Face directory, LLM package) that is missing, truncated or malformed."""


class UnsupportedModelError(ValueError, LLMError):
    """An architecture, tensor type, tokenizer or option that this runtime does not implement; names it."""


class ContextLengthError(ValueError, LLMError):
    """Prompt and generation do not fit in the model's context."""


class ContextMemoryError(MemoryError, LLMError):
    """The KV cache of the requested context does not fit in the memory available."""


class GenerationCancelled(RuntimeError, LLMError):
    """The generation was cancelled by its caller."""
