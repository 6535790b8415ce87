"""Choosing the next token: a chain of small steps (repetition penalty, temperature, top-k, top-p).

Temperature 0 is greedy (argmax, no randomness). Otherwise each request has
its own generator seeded from ``seed``, so that a seeded request is
reproducible whatever else the server runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Sampler", "SamplingParams", "StopMatcher"]


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates. ``max_new_tokens=None``: until the context is full."""

    max_new_tokens: int | None = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        checks = [
            (
                self.max_new_tokens is None
                or (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1),
                f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}",
            ),
            (
                math.isfinite(self.temperature) and 0 <= self.temperature <= 100,
                f"temperature must be in [0, 100], got {self.temperature!r}",
            ),
            (
                isinstance(self.top_k, int) and self.top_k >= 0,
                f"top_k must be an integer >= 0, got {self.top_k!r}",
            ),
            (
                math.isfinite(self.top_p) and 0 < self.top_p <= 1,
                f"top_p must be in (0, 1], got {self.top_p!r}",
            ),
            (
                math.isfinite(self.repetition_penalty) and 0 < self.repetition_penalty <= 10,
                f"repetition_penalty must be in (0, 10], got {self.repetition_penalty!r}",
            ),
            (self.seed is None or isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Sampler:
    """The next token from a row of logits, given the tokens so far (for the repetition penalty)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        x = np.asarray(logits, dtype=np.float64)
        if p.repetition_penalty != 1.0 and len(history):
            x = x.copy()
            seen = np.unique(np.asarray(history, dtype=np.int64))
            seen = seen[(seen >= 0) & (seen < x.size)]
            v = x[seen]
            x[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if p.temperature <= 0:
            return int(np.argmax(x))
        x = x / p.temperature
        if 0 < p.top_k < x.size:
            kth = np.partition(x, -p.top_k)[-p.top_k]
            x = np.where(x >= kth, x, -np.inf)
        probs = np.exp(x - np.max(x))
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, p.top_p)) + 1]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        cum = np.cumsum(probs)
        return int(min(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"), x.size - 1))


class StopMatcher:
    """Cuts generated text at the first stop string; holds back text that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._buffer = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        if not self.stops:
            return piece, False
        self._buffer += piece
        hits = [i for i in (self._buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._buffer = self._buffer[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self._buffer)), hold, -1):
                if self._buffer.endswith(s[:k]):
                    hold = k
                    break
        out = self._buffer[: len(self._buffer) - hold]
        self._buffer = self._buffer[len(self._buffer) - hold :]
        return out, False

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out
