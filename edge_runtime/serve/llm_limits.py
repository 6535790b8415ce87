"""The limits of a served language model's continuous-batching engine (``[llm]`` in the config).

=================  =======  =====================================================================
``max_sequences``  8        generations decoding together: the batch of the one decode GEMM per step
``max_queue``      64       generations waiting for a slot; one more is answered 503 (retry later)
``max_context``    0        tokens per request, prompt plus ``max_tokens``; over it: 400 (context
                            exceeded). 0: the model's context (what its package was converted with)
``prefill_tokens`` 128      prompt tokens per forward pass beside the running sequences' tokens
                            (a long prompt is prefilled in chunks and never stalls the others)
=================  =======  =====================================================================

``[llm]`` sets them for every language model of the server, ``[models.NAME.llm]``
overrides them for one; the ``--llm-*`` flags of ``edge serve`` override both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from edge_runtime.serve.errors import ServeConfigError

__all__ = ["LLMLimits"]


@dataclass(frozen=True)
class LLMLimits:
    """Queue and batch limits of one language model's engine (see the module's doc)."""

    max_sequences: int = 8
    max_queue: int = 64
    max_context: int = 0
    prefill_tokens: int = 128

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name in ("max_queue", "max_context") else 1
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 1 << 20:
                raise ServeConfigError(f"llm.{f.name} must be an integer in [{low}, 1048576], got {value!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "[llm]") -> LLMLimits:
        if not isinstance(d, Mapping):
            raise ServeConfigError(f"{where} must be a table")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ServeConfigError(
                f"{where} has unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}"
            )
        try:
            return cls(**d)
        except ServeConfigError as exc:
            raise ServeConfigError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def engine_options(self) -> dict[str, int]:
        """The keyword arguments of :class:`edge_runtime.llm.engine.LLMEngine`."""
        return {
            "max_batch": self.max_sequences,
            "max_queue": self.max_queue,
            "prefill_tokens": self.prefill_tokens,
        }
