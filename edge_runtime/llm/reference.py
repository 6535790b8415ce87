"""The float reference decoder: the living definition of what the runtime computes.

Plain numpy in float64, the whole sequence at once (no KV cache), so that the
cached, batched, int8 runtime (:mod:`edge_runtime.llm.model`) can be checked
token by token against it.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.llm.config import LlamaConfig, rope_inv_freq

__all__ = ["reference_generate", "reference_logits", "rms_norm", "rope"]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of ``x`` ``[T, heads, head_dim]`` at ``positions``."""
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :].astype(np.float64)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def reference_logits(config: LlamaConfig, weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of the decoder with these float weights."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    t = len(ids)
    hd, h, kv = config.head_dim, config.num_heads, config.num_kv_heads
    inv_freq = rope_inv_freq(config, weights.get("rope_freqs"))
    pos = np.arange(t)
    x = w["embed"][np.asarray(ids)]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(config.num_layers):
        p = f"layers.{i}."
        a = rms_norm(x, w[p + "attn_norm"], config.rms_eps)
        q, k, v = a @ w[p + "q"].T, a @ w[p + "k"].T, a @ w[p + "v"].T
        if config.attention_bias:
            q, k, v = q + w[p + "q_bias"], k + w[p + "k_bias"], v + w[p + "v_bias"]
        q = rope(q.reshape(t, h, hd), pos, inv_freq)
        k = rope(k.reshape(t, kv, hd), pos, inv_freq)
        v = v.reshape(t, kv, hd)
        rep = h // kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        out = np.einsum("hts,shd->thd", probs, v).reshape(t, h * hd)
        x = x + out @ w[p + "o"].T
        f = rms_norm(x, w[p + "ffn_norm"], config.rms_eps)
        g, u = f @ w[p + "gate"].T, f @ w[p + "up"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "down"].T
    x = rms_norm(x, w["norm"], config.rms_eps)
    head = w["embed"] if config.tie_embeddings else w["lm_head"]
    return x @ head.T


def reference_generate(
    config: LlamaConfig, weights: dict[str, np.ndarray], ids: list[int], max_new_tokens: int
) -> list[int]:
    """Greedy tokens of the reference, recomputing the whole sequence each step."""
    seq = list(ids)
    out = []
    for _ in range(max_new_tokens):
        nxt = int(np.argmax(reference_logits(config, weights, seq)[-1]))
        out.append(nxt)
        seq.append(nxt)
    return out
