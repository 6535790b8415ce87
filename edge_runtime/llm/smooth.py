"""Activation smoothing (SmoothQuant) at conversion, so that per-row int8 activations stay accurate.

LLM hidden states carry a few outlier channels; quantizing a whole row with
one scale then crushes every other channel. Before the weights are quantized,
each input channel ``j`` of a linear layer is divided by ``s_j`` on the
activation side and multiplied by ``s_j`` in the weight columns, with
``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)`` (activation ranges from a
short calibration text run through the float model). The division is folded
into what produces the activation, so the runtime does no extra work:

- q/k/v and gate/up inputs: into the RMSNorm weight before them;
- the down projection's input ``silu(gate) * up``: into the rows of ``up``;
- the output projection's input (the attention output): into the rows of
  ``v`` (one factor per KV channel, shared by the query heads of its group).

The float model is unchanged up to rounding; only the quantization improves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.llm.config import LlamaConfig

__all__ = ["CALIBRATION_TEXT", "activation_ranges", "smooth_weights"]

CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon; Neil Armstrong "
    "and Buzz Aldrin walked on its surface while Michael Collins orbited above. Water boils at 100 degrees "
    "Celsius at sea level. def add(a, b):\n    return a + b\n\nQuestion: What is the capital of France?\n"
    "Answer: The capital of France is Paris, a city on the Seine known for the Eiffel Tower and the Louvre. "
    "Small language models can run on a Raspberry Pi, answering questions, summarising text and writing code."
)


class _Recorder:
    def __init__(self, inner: Any, key: str, ranges: dict[str, np.ndarray]) -> None:
        self.inner, self.key, self.ranges = inner, key, ranges
        self.nbytes = inner.nbytes

    def __call__(self, x: np.ndarray, pool: Any) -> np.ndarray:
        amax = np.max(np.abs(x), axis=0)
        prev = self.ranges.get(self.key)
        self.ranges[self.key] = amax if prev is None else np.maximum(prev, amax)
        return self.inner(x, pool)


def activation_ranges(model: Any, ids: list[int]) -> dict[str, np.ndarray]:
    """Per-input-channel max |x| of every linear layer's input, over ``ids`` run through ``model``."""
    ranges: dict[str, np.ndarray] = {}
    for i, layer in enumerate(model.layers):
        for name in ("qkv", "o", "gate_up", "down"):
            setattr(layer, name, _Recorder(getattr(layer, name), f"layers.{i}.{name}", ranges))
    model.logits(ids)
    for layer in model.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            setattr(layer, name, getattr(layer, name).inner)
    return ranges


def _factors(act: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    wmax = np.max(np.stack([np.max(np.abs(w), axis=0) for w in weights]), axis=0)
    s = np.power(np.maximum(act, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
    return np.clip(s, 1e-2, 1e2).astype(np.float32)


def smooth_weights(
    config: LlamaConfig, weights: dict[str, np.ndarray], ranges: dict[str, np.ndarray], alpha: float = 0.5
) -> dict[str, np.ndarray]:
    """A copy of the float ``weights`` with the smoothing factors folded in (see the module's doc)."""
    w = dict(weights)
    kvh, group, hd = config.num_kv_heads, config.num_heads // config.num_kv_heads, config.head_dim
    for i in range(config.num_layers):
        p = f"layers.{i}."
        # q/k/v: fold into attn_norm
        s = _factors(ranges[p + "qkv"], [w[p + "q"], w[p + "k"], w[p + "v"]], alpha)
        w[p + "attn_norm"] = w[p + "attn_norm"] / s
        for n in ("q", "k", "v"):
            w[p + n] = w[p + n] * s[None, :]
        # gate/up: fold into ffn_norm
        s = _factors(ranges[p + "gate_up"], [w[p + "gate"], w[p + "up"]], alpha)
        w[p + "ffn_norm"] = w[p + "ffn_norm"] / s
        for n in ("gate", "up"):
            w[p + n] = w[p + n] * s[None, :]
        # down: fold into the rows of up
        s = _factors(ranges[p + "down"], [w[p + "down"]], alpha)
        w[p + "up"] = w[p + "up"] / s[:, None]
        w[p + "down"] = w[p + "down"] * s[None, :]
        # o: fold into the rows of v, one factor per KV channel
        act = ranges[p + "o"].reshape(kvh, group, hd).max(axis=1).reshape(-1)
        wo = w[p + "o"].reshape(-1, kvh, group, hd)
        s = _factors(act, [np.abs(wo).max(axis=2).reshape(wo.shape[0], -1)], alpha)
        w[p + "v"] = w[p + "v"] / s[:, None]
        if p + "v_bias" in w:
            w[p + "v_bias"] = w[p + "v_bias"] / s
        w[p + "o"] = (wo * s.reshape(1, kvh, 1, hd)).reshape(w[p + "o"].shape)
    return w
