"""The decoder runtime: prefill and decode on the native INT8 GEMM, a KV cache per sequence.

Every linear layer runs ``edge_q8_gemm`` (int8 weights, symmetric per output
channel, int32 accumulation): activations are quantized per row (symmetric
int8, scale ``max|x| / 127``), the int32 result is scaled back by the row and
channel scales. q/k/v and gate/up are fused into one GEMM each. RMSNorm,
RoPE, attention (scores and probabilities in float32) and SwiGLU run in numpy.

One forward pass takes the new tokens of one or several sequences
(*segments*): prefill is one segment of many tokens, a decode step of a
continuous batch is many segments of one token, and their linear layers are
one GEMM. Each sequence owns a KV cache allocated once for its capacity
(float16 by default).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.llm.config import LlamaConfig, rope_inv_freq
from edge_runtime.llm.decoder import NativeDecoder
from edge_runtime.llm.errors import (
    ContextLengthError,
    ContextMemoryError,
    GenerationCancelled,
    ModelSourceError,
)
from edge_runtime.llm.quant import decode_matrix
from edge_runtime.llm.sampling import Sampler, SamplingParams, StopMatcher
from edge_runtime.llm.tokenizer import IncrementalDecoder, TextTokenizer

__all__ = ["LLM", "Generation", "GenerationState", "KVSequence", "TokenEvent", "available_memory"]

# Tokens per prefill pass: bounds the attention score matrix of a long prompt.
PREFILL_CHUNK = 256
# Multiply-accumulates below which a GEMM runs on the calling thread alone.
PARALLEL_MIN_MACS = 4_000_000
# The same for the native decode step, whose GEMVs stream weights from memory: two cores pull more
# bandwidth than one, and the step does not return to Python between them (SmolLM2, 2 threads:
# about 105 -> 130-150 tok/s with every per-layer GEMV split instead of the output layer alone).
DECODE_PARALLEL_MIN_MACS = 100_000
_INV127 = np.float32(1.0 / 127.0)
_INV254 = np.float32(1.0 / 254.0)
_TINY = np.float32(1e-30)


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


_MATRIX_SUFFIXES = (".q8", ".s", ".q4", ".s4", ".f16")


def _complete(store: Mapping[str, np.ndarray], names: Sequence[str], biases: Sequence[str] | None) -> bool:
    """Whether every matrix (in any of the weight formats) and bias of a linear is in ``store``."""
    return all(
        (n + ".q8" in store and n + ".s" in store)
        or (n + ".q4" in store and n + ".s4" in store)
        or n + ".f16" in store
        for n in names
    ) and all(b in store for b in biases or ())


def _pairs(store: Any, consume: bool) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` of a weights dict (popped from it when ``consume``) or of pairs as given."""
    if not isinstance(store, Mapping):
        yield from store
        return
    for key in list(store):
        yield key, (store.pop(key) if consume else store[key])


class _Int8Linear:
    """``y = x @ W.T (+ b)`` with W int8 per output channel and x quantized per row.

    ``digits`` 2 (the default) quantizes each row as two int8 digits: ``q1`` at scale
    ``s = max|x| / 127``, then the remainder ``x - q1 * s`` as ``q2`` at scale ``s / 254``;
    both go through one GEMM (2 rows per row: the weights are read once) and
    ``y = (acc1 * s + acc2 * (s / 254)) * scale``, activations good to about 15 bits
    (``digits`` 1: one int8 digit, 8 bits). ``native/include/edge/decoder.h`` does the same.
    """

    def __init__(self, q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, digits: int = 2) -> None:
        from edge_runtime.kernels import pack_gemm

        self.n, self.k = q.shape
        self.digits = digits
        self.packed = pack_gemm(np.ascontiguousarray(q))
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.nbytes = self.packed.buffer.nbytes + self.scale.nbytes
        from edge_runtime.kernels import gemm

        self._gemm = gemm

    def __call__(self, x: np.ndarray, pool: Any) -> np.ndarray:
        m = x.shape[0]
        rs = np.abs(x).max(axis=1, keepdims=True)
        rs *= _INV127
        np.maximum(rs, _TINY, out=rs)  # an all-zero row: any scale gives zeros
        q1 = np.rint(x / rs)
        if self.digits == 2:
            rs2 = rs * _INV254
            q = np.empty((2 * m, self.k), dtype=np.int8)
            q[:m] = q1
            q[m:] = np.clip(np.rint((x - q1 * rs) / rs2), -127, 127)
        else:
            q = q1.astype(np.int8)
        # A small GEMM (a decode step's q/k/v, say) runs faster on one thread than waking the others.
        big = q.shape[0] * self.n * self.k >= PARALLEL_MIN_MACS
        acc = self._gemm(q, self.packed, 0, out_dtype=np.int32, pool=pool if big else None)
        y = acc[:m].astype(np.float32)
        y *= rs
        if self.digits == 2:
            y2 = acc[m:].astype(np.float32)
            y2 *= rs2
            y += y2
        y *= self.scale
        if self.bias is not None:
            y += self.bias
        return y


class _FloatLinear:
    """The float path (``--weights f16`` packages, and tests)."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None) -> None:
        self.n, self.k = w.shape
        self.wt = np.ascontiguousarray(w.T, dtype=np.float32)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        self.nbytes = self.wt.nbytes

    def __call__(self, x: np.ndarray, pool: Any) -> np.ndarray:
        y = x @ self.wt
        if self.bias is not None:
            y += self.bias
        return y


@dataclass
class _Layer:
    attn_norm: np.ndarray
    qkv: Any
    o: Any
    ffn_norm: np.ndarray
    gate_up: Any
    down: Any


class KVSequence:
    """One sequence's KV cache (allocated once for ``capacity`` tokens) and its tokens so far."""

    def __init__(self, config: LlamaConfig, capacity: int, dtype: np.dtype) -> None:
        shape = (config.num_layers, config.num_kv_heads, capacity, config.head_dim)
        self.k = np.zeros(shape, dtype=dtype)
        self.v = np.zeros(shape, dtype=dtype)
        self.capacity = capacity
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its id, the text it adds (may be empty), and the finish reason once done."""

    id: int
    text: str
    finish_reason: str | None = None


@dataclass
class Generation:
    """A finished generation."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    seconds_to_first_token: float = 0.0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = np.einsum("ij,ij->i", x, x)[:, None] * (1.0 / x.shape[1])
    return x * (1.0 / np.sqrt(ms + eps)) * w


class GenerationState:
    """Where one generation stands: sampler, incremental detokenizer, stop strings, token budget.

    :meth:`advance` turns the logits of the latest position into the next :class:`TokenEvent`;
    the caller runs that token through the model (alone, or batched with other sequences).
    """

    def __init__(self, model: LLM, seq: KVSequence, params: SamplingParams) -> None:
        self.seq = seq
        self.params = params
        self.sampler = Sampler(params)
        self.decoder = IncrementalDecoder(model.tokenizer)
        self.matcher = StopMatcher(params.stop)
        self.eos = frozenset(model.config.eos_token_ids)
        self.remaining = seq.capacity - seq.length
        self.generated = 0
        self.finish_reason: str | None = None

    def advance(self, logits: np.ndarray) -> TokenEvent:
        tok = self.sampler(logits, self.seq.tokens)
        self.generated += 1
        self.remaining -= 1
        if tok in self.eos:
            self.finish_reason = "stop"
            return TokenEvent(tok, self.matcher.flush(), "stop")
        text, stopped = self.matcher.feed(self.decoder.push(tok))
        if stopped:
            self.finish_reason = "stop"
        elif self.remaining <= 0:
            self.finish_reason = "length"
            text += self.matcher.flush()
        return TokenEvent(tok, text, self.finish_reason)


class LLM:
    """A loaded decoder: tokenizer, chat template, weights on the native kernels.

    Thread-safe: forward passes are serialised by a lock (the server's engine
    batches concurrent requests into one pass instead).

    ``store``: the weights archive's arrays (:mod:`edge_runtime.llm.quant`), a dict (emptied
    as it is packed when ``consume_store``) or ``(name, array)`` pairs in any order, such as
    :func:`edge_runtime.llm.package.load` streams from the package.
    """

    def __init__(
        self,
        config: LlamaConfig,
        store: dict[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
        tokenizer: TextTokenizer,
        *,
        threads: int | None = None,
        context: int | None = None,
        kv_dtype: str = "float32",
        weights_format: str = "int8",
        manifest: Any = None,
        selftest_vectors: dict[str, np.ndarray] | None = None,
        source: str = "",
        consume_store: bool = False,
        activation_bits: int = 16,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.weights_format = weights_format
        self.float_path = weights_format == "f16"
        self.manifest = manifest
        self.source = source
        self._selftest = selftest_vectors
        self.context = int(min(context or config.max_context, config.max_context))
        if self.context < 2:
            raise ContextLengthError(f"context must be at least 2 tokens, got {self.context}")
        if kv_dtype not in ("float16", "float32"):
            raise ValueError(f"kv_dtype must be float16 or float32, got {kv_dtype!r}")
        self.kv_dtype = np.dtype(kv_dtype)
        if activation_bits not in (8, 16):
            raise ValueError(f"activation_bits must be 8 or 16, got {activation_bits!r}")
        # int8 linears: activations as one int8 digit (8 bits) or two (about 15 bits; see _Int8Linear)
        self.activation_bits = activation_bits
        self._lock = threading.RLock()
        from edge_runtime.kernels import ThreadPool

        self.threads = int(threads or min(os.cpu_count() or 1, 4))
        self._pool = ThreadPool(self.threads)
        self._build(_pairs(store, consume_store))
        self.check_memory(self.context)

    # --- construction ---

    def _linear(
        self, store: dict[str, np.ndarray], names: Sequence[str], biases: Sequence[str] | None
    ) -> Any:
        """The fused linear of matrices ``names`` (and ``biases``), taken out of ``store``."""
        parts = [decode_matrix(store, n, self.float_path) for n in names]
        for n in names:  # drop the archive's copy as soon as the packed one exists (peak memory at load)
            for suffix in _MATRIX_SUFFIXES:
                store.pop(n + suffix, None)
        bias = None
        if biases is not None:
            missing = [b for b in biases if b not in store]
            if missing:
                raise ModelSourceError(f"the weights archive has no {', '.join(missing)}")
            bias = np.concatenate([np.asarray(store.pop(b), dtype=np.float32) for b in biases])
        if self.float_path:
            return _FloatLinear(np.concatenate([p[0] for p in parts]), bias)
        q = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        s = np.concatenate([p[1] for p in parts])  # type: ignore[misc]
        return _Int8Linear(q, s, bias, digits=self.activation_bits // 8)

    def _vector(self, store: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name not in store:
            raise ModelSourceError(f"the weights archive has no {name}")
        return np.asarray(store[name], dtype=np.float32)

    def _groups(self) -> dict[str, tuple[list[str], list[str] | None]]:
        """What is built from the archive's matrices: key -> (matrices, biases), in build order."""
        c = self.config
        groups: dict[str, tuple[list[str], list[str] | None]] = {}
        if not (c.tie_embeddings and not self.float_path):
            groups["embed"] = (["embed"], None)  # token rows (a tied int8 embedding reads the output layer's)
        groups["lm_head"] = (["embed"] if c.tie_embeddings else ["lm_head"], None)
        for i in range(c.num_layers):
            p = f"layers.{i}."
            biases = [p + "q_bias", p + "k_bias", p + "v_bias"] if c.attention_bias else None
            groups[p + "qkv"] = ([p + "q", p + "k", p + "v"], biases)
            groups[p + "o"] = ([p + "o"], None)
            groups[p + "gate_up"] = ([p + "gate", p + "up"], None)
            groups[p + "down"] = ([p + "down"], None)
        return groups

    def _build_group(self, key: str, pending: dict[str, np.ndarray], names: list[str], biases: Any) -> Any:
        if key == "embed":  # kept as stored (no packing): the lookup table of token rows
            return decode_matrix(pending, "embed", self.float_path)
        return self._linear(pending, names, biases)

    def _build(self, arrays: Iterator[tuple[str, np.ndarray]]) -> None:
        """Build from the archive's ``(name, array)`` pairs in any order, packing each linear as soon
        as its last part arrives and dropping the parts: at most one group's source arrays are held
        beside the packed weights (when the archive is in build order; see ``package.convert``)."""
        c = self.config
        groups = self._groups()
        owners: dict[str, list[str]] = {}
        for key, (names, biases) in groups.items():
            for n in [*names, *(biases or [])]:
                owners.setdefault(n, []).append(key)
        pending: dict[str, np.ndarray] = {}
        built: dict[str, Any] = {}
        for name, array in arrays:
            pending[name] = array
            base = name.rsplit(".", 1)[0] if name.endswith(_MATRIX_SUFFIXES) else name
            for key in owners.get(base, ()):
                names, biases = groups[key]
                if key not in built and _complete(pending, names, biases):
                    built[key] = self._build_group(key, pending, names, biases)
        for key, (names, biases) in groups.items():  # what never completed: its error names what is missing
            if key not in built:
                built[key] = self._build_group(key, pending, names, biases)
        self.inv_freq = rope_inv_freq(c, pending.get("rope_freqs"))
        angles = np.arange(self.context, dtype=np.float64)[:, None] * self.inv_freq[None, :].astype(
            np.float64
        )
        self._cos, self._sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        self.lm_head = built["lm_head"]
        self._embed: np.ndarray | None = None
        self._embed_scale: np.ndarray | None = None
        if "embed" in built:
            self._embed, self._embed_scale = built["embed"]
        else:
            self._embed_scale = self.lm_head.scale
        self.norm = self._vector(pending, "norm")
        self.layers: list[_Layer] = []
        for i in range(c.num_layers):
            p = f"layers.{i}."
            self.layers.append(
                _Layer(
                    attn_norm=self._vector(pending, p + "attn_norm"),
                    qkv=built[p + "qkv"],
                    o=built[p + "o"],
                    ffn_norm=self._vector(pending, p + "ffn_norm"),
                    gate_up=built[p + "gate_up"],
                    down=built[p + "down"],
                )
            )
        # One C call per decode step of a single sequence (float32 KV cache); None on the float path.
        self._native = (
            None
            if self.float_path
            else NativeDecoder(
                c,
                self.layers,
                self.lm_head,
                self.norm,
                self._cos,
                self._sin,
                DECODE_PARALLEL_MIN_MACS,
                self.activation_bits // 8,
            )
        )
        self.weight_bytes = int(
            self.lm_head.nbytes
            + (0 if self._embed is None else self._embed.nbytes)
            + (0 if self._embed is None or self._embed_scale is None else self._embed_scale.nbytes)
            + sum(l.qkv.nbytes + l.o.nbytes + l.gate_up.nbytes + l.down.nbytes for l in self.layers)
        )

    # --- memory and context ---

    def kv_bytes(self, tokens: int) -> int:
        return self.config.kv_bytes_per_token(self.kv_dtype.itemsize) * int(tokens)

    def check_memory(self, tokens: int) -> None:
        """ContextMemoryError if a KV cache of ``tokens`` does not fit in the available memory."""
        need = self.kv_bytes(tokens)
        avail = available_memory()
        if avail is not None and need > 0.9 * avail:
            raise ContextMemoryError(
                f"a context of {tokens} tokens needs {need / 2**20:.0f} MiB of KV cache "
                f"({self.kv_dtype.name}), only {avail / 2**20:.0f} MiB are available; load with a smaller "
                f"context= (edge llm ... --context N) or kv_dtype='float16'"
            )

    def new_sequence(self, capacity: int | None = None) -> KVSequence:
        cap = int(capacity or self.context)
        if cap > self.context:
            raise ContextLengthError(
                f"{cap} tokens do not fit in the context of {self.context} tokens"
                f" (the model allows {self.config.max_context}; load with a larger context=)"
            )
        self.check_memory(cap)
        return KVSequence(self.config, cap, self.kv_dtype)

    # --- the forward pass ---

    def _embed_rows(self, ids: np.ndarray) -> np.ndarray:
        table = self.lm_head.packed.rows(ids) if self._embed is None else self._embed[ids]
        rows = table.astype(np.float32)
        if self._embed_scale is not None:
            rows *= self._embed_scale[ids][:, None]
        return rows

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = np.empty_like(x)
        out[..., :half] = x1 * cos - x2 * sin
        out[..., half:] = x2 * cos + x1 * sin
        return out

    def _attend(
        self,
        seq: KVSequence,
        li: int,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        row: int,
        n: int,
        scale: Any,
    ) -> np.ndarray:
        """Append ``n`` new keys/values of layer ``li`` to ``seq``'s cache; their attention output ``[n, q_dim]``."""
        c = self.config
        kvh, hd = c.num_kv_heads, c.head_dim
        group = c.num_heads // kvh
        start = seq.length
        end = start + n
        if n == 1:  # decode: no mask, no transposes of the queries
            seq.k[li, :, start] = k[row]
            seq.v[li, :, start] = v[row]
            qs = q[row].reshape(kvh, group, hd)
            scores = np.matmul(qs, seq.k[li, :, :end].transpose(0, 2, 1))  # [kv, g, end]
            scores *= scale
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            return np.matmul(scores, seq.v[li, :, :end]).reshape(1, c.q_dim)  # [kv, g, hd]
        seq.k[li, :, start:end] = k[row : row + n].transpose(1, 0, 2)
        seq.v[li, :, start:end] = v[row : row + n].transpose(1, 0, 2)
        keys = seq.k[li, :, :end].astype(np.float32, copy=False)
        vals = seq.v[li, :, :end].astype(np.float32, copy=False)
        qs = q[row : row + n].reshape(n, kvh, group, hd).transpose(1, 2, 0, 3)  # [kv, g, n, hd]
        scores = np.matmul(qs, keys[:, None].transpose(0, 1, 3, 2)) * scale  # [kv, g, n, end]
        causal = np.arange(end)[None, :] > (start + np.arange(n))[:, None]
        scores[..., causal] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out = np.matmul(scores, vals[:, None])  # [kv, g, n, hd]
        return out.transpose(2, 0, 1, 3).reshape(n, c.q_dim)

    def forward(
        self, seqs: Sequence[KVSequence], tokens: Sequence[Sequence[int]], all_logits: bool = False
    ) -> np.ndarray:
        """Run the new ``tokens[i]`` of each ``seqs[i]``, append them to its cache.

        Returns the logits of the last new token of each sequence ``[len(seqs), vocab]``
        (or of every new token, concatenated, with ``all_logits``).
        """
        c = self.config
        for s, t in zip(seqs, tokens):
            if not t:
                raise ValueError("forward: every sequence needs at least one new token")
            if s.length + len(t) > s.capacity:
                raise ContextLengthError(
                    f"the sequence would grow to {s.length + len(t)} tokens, over its context of {s.capacity}"
                )
        ids = np.fromiter((i for t in tokens for i in t), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= c.vocab_size):
            raise ValueError(f"token ids must be in [0, {c.vocab_size})")
        if self._native is not None and len(seqs) == 1 and ids.size == 1 and seqs[0].k.dtype == np.float32:
            seq = seqs[0]  # a decode step of one sequence: the native step (edge_runtime.llm.decoder)
            with self._lock:
                logits = self._native.step(self._embed_rows(ids)[0], seq.length, seq.k, seq.v, self._pool)
                seq.tokens.append(int(ids[0]))
            return logits[None]
        positions = np.concatenate([np.arange(s.length, s.length + len(t)) for s, t in zip(seqs, tokens)])
        cos, sin = self._cos[positions][:, None, :], self._sin[positions][:, None, :]
        h, kvh, hd = c.num_heads, c.num_kv_heads, c.head_dim
        qd, kd = c.q_dim, c.kv_dim
        scale = np.float32(1.0 / np.sqrt(hd))
        pool = self._pool
        m = ids.size
        with self._lock:
            x = self._embed_rows(ids)
            for li, layer in enumerate(self.layers):
                a = _rms_norm(x, layer.attn_norm, c.rms_eps)
                qkv = layer.qkv(a, pool)
                qk = self._rope(qkv[:, : qd + kd].reshape(m, h + kvh, hd), cos, sin)  # q and k heads at once
                q, k = qk[:, :h], qk[:, h:]
                v = qkv[:, qd + kd :].reshape(m, kvh, hd)
                attn = np.empty((m, qd), dtype=np.float32)
                row = 0
                for seq, t in zip(seqs, tokens):
                    attn[row : row + len(t)] = self._attend(seq, li, q, k, v, row, len(t), scale)
                    row += len(t)
                x += layer.o(attn, pool)
                f = _rms_norm(x, layer.ffn_norm, c.rms_eps)
                gu = layer.gate_up(f, pool)
                g, u = gu[:, : c.intermediate_size], gu[:, c.intermediate_size :]
                x += layer.down(g / (1.0 + np.exp(-g)) * u, pool)
            for s, t in zip(seqs, tokens):
                s.tokens.extend(int(i) for i in t)
            if all_logits:
                rows = x
            else:
                last = np.cumsum([len(t) for t in tokens]) - 1
                rows = x[last]
            return self.lm_head(_rms_norm(rows, self.norm, c.rms_eps), pool)

    def prefill(self, seq: KVSequence, ids: Sequence[int]) -> np.ndarray:
        """Run a prompt (in chunks of PREFILL_CHUNK tokens); the logits of its last token."""
        ids = list(ids)
        logits = None
        for i in range(0, len(ids), PREFILL_CHUNK):
            logits = self.forward([seq], [ids[i : i + PREFILL_CHUNK]])[0]
        assert logits is not None
        return logits

    def decode(self, seqs: Sequence[KVSequence], tokens: Sequence[int]) -> np.ndarray:
        """One decode step of several sequences at once: logits ``[len(seqs), vocab]``."""
        return self.forward(seqs, [[int(t)] for t in tokens])

    # --- the public API ---

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        return self.tokenizer.encode(text, add_bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits ``[len(ids), vocab]`` of every position of ``ids`` (float32)."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("logits: give at least one token")
        if len(ids) > self.context:
            raise ContextLengthError(f"{len(ids)} tokens do not fit in the context of {self.context} tokens")
        seq = self.new_sequence(len(ids))
        out = [
            self.forward([seq], [ids[i : i + PREFILL_CHUNK]], all_logits=True)
            for i in range(0, len(ids), PREFILL_CHUNK)
        ]
        return np.concatenate(out)

    def _fit(self, prompt: int, new: int | None) -> int:
        """The KV capacity a generation of ``new`` tokens (None: up to the context) after ``prompt`` needs."""
        if prompt >= self.context:
            larger = (
                f" or load with a larger context (the model allows {self.config.max_context})"
                if self.context < self.config.max_context
                else ""
            )
            raise ContextLengthError(
                f"the prompt has {prompt} tokens and the context holds {self.context}: shorten the prompt{larger}"
            )
        if new is None:
            return self.context
        if prompt + new > self.context:
            raise ContextLengthError(
                f"the prompt ({prompt} tokens) plus max_new_tokens ({new}) exceed the context of "
                f"{self.context} tokens: lower max_new_tokens to {self.context - prompt} or shorten the prompt"
            )
        return prompt + new

    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt)
        ids = [int(i) for i in prompt]
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        repetition_penalty: float = 1.0,
        cancelled: Any = None,
    ) -> Iterator[TokenEvent]:
        """Generate token by token; the last event carries ``finish_reason`` ("stop" or "length").

        ``cancelled``: an optional callable (or threading.Event) checked before each step.
        """
        params = SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            repetition_penalty=float(repetition_penalty),
            seed=seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        )
        ids = self.prompt_ids(prompt)
        seq = self.new_sequence(self._fit(len(ids), params.max_new_tokens))
        logits = self.prefill(seq, ids)
        yield from self._continue(seq, logits, params, len(ids), cancelled)

    def _continue(
        self, seq: KVSequence, logits: np.ndarray, params: SamplingParams, prompt_len: int, cancelled: Any
    ) -> Iterator[TokenEvent]:
        state = GenerationState(self, seq, params)
        is_cancelled = getattr(cancelled, "is_set", cancelled)
        while True:
            if is_cancelled is not None and is_cancelled():
                raise GenerationCancelled("the generation was cancelled")
            event = state.advance(logits)
            yield event
            if event.finish_reason is not None:
                return
            logits = self.decode([seq], [event.id])[0]

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        repetition_penalty: float = 1.0,
    ) -> Generation:
        """Generate a completion of ``prompt`` (text, tokenized with the model's tokenizer, or ids)."""
        ids = self.prompt_ids(prompt)
        start = time.perf_counter()
        first = None
        tokens: list[int] = []
        parts: list[str] = []
        reason = "length"
        for ev in self.stream(ids, max_new_tokens, temperature, top_k, top_p, seed, stop, repetition_penalty):
            if first is None:
                first = time.perf_counter() - start
            if ev.finish_reason != "stop" or ev.id not in self.config.eos_token_ids:
                tokens.append(ev.id)
            parts.append(ev.text)
            reason = ev.finish_reason or reason
        return Generation("".join(parts), tokens, len(ids), reason, first or 0.0, time.perf_counter() - start)

    # --- what the server and the fleet need (edge_runtime.serve's ModelLike) ---

    @property
    def inputs(self) -> tuple[Any, ...]:
        from edge_runtime.package import TensorSpec

        return (TensorSpec("input_ids", "int32", (1, "tokens")),)

    @property
    def outputs(self) -> tuple[Any, ...]:
        from edge_runtime.package import TensorSpec

        return (TensorSpec("logits", "float32", (1, "tokens", self.config.vocab_size)),)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """KServe v2 ``infer``: ``input_ids [1, T]`` -> ``logits [1, T, vocab]``."""
        from edge_runtime.errors import ModelInputError

        ids = inputs.get("input_ids")
        if ids is None or np.asarray(ids).ndim != 2 or np.asarray(ids).shape[0] != 1:
            raise ModelInputError("input_ids must be given as an integer array of shape [1, tokens]")
        arr = np.asarray(ids)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ModelInputError(f"input_ids must be integers, got {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.config.vocab_size):
            raise ModelInputError(f"input_ids must be in [0, {self.config.vocab_size})")
        return {"logits": self.logits(arr[0].tolist())[None]}

    @property
    def has_selftest(self) -> bool:
        return self._selftest is not None

    def selftest(self) -> dict[str, Any]:
        """Replay the package's self-test: the expected greedy tokens of its fixed prompt.

        Teacher-forced: one pass over prompt + expected tokens; each expected token
        must be the argmax, or within ``atol`` of it (a tie broken differently on
        another ISA is not a failure).
        """
        if self._selftest is None:
            return {"passed": False, "reason": "the package carries no self-test vectors"}
        prompt = [int(i) for i in self._selftest["input.input_ids"].reshape(-1)]
        expected = [int(i) for i in self._selftest["expected.tokens"].reshape(-1)]
        atol = float(self._selftest.get("atol", np.float32(0.05)))
        logits = self.logits(prompt + expected)[len(prompt) - 1 : len(prompt) - 1 + len(expected)]
        worst = 0.0
        for row, tok in zip(logits, expected):
            worst = max(worst, float(row.max() - row[tok]))
        passed = worst <= atol
        return {
            "passed": passed,
            "tokens": len(expected),
            "max_logit_gap": worst,
            "atol": atol,
            "summary": None if passed else f"self-test tokens differ (logit gap {worst:.4f} > {atol})",
        }

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "backend": "native-llm",
            "kind": "llm",
            "name": m.name if m is not None else self.config.name,
            "version": m.version if m is not None else "1",
            "architecture": self.config.to_dict(),
            "weights": self.weights_format,
            "weight_bytes": self.weight_bytes,
            "context": self.context,
            "kv_dtype": self.kv_dtype.name,
            "activation_bits": self.activation_bits,
            "kv_bytes_per_token": self.config.kv_bytes_per_token(self.kv_dtype.itemsize),
            "threads": self.threads,
            "source": self.source,
        }

    def engine(self, **options: Any) -> Any:
        """The continuous-batching engine of this model (created on first use; closed with the model)."""
        with self._lock:
            if getattr(self, "_engine", None) is None:
                from edge_runtime.llm.engine import LLMEngine

                self._engine = LLMEngine(self, **options)
            return self._engine

    def close(self) -> None:
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            engine.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> LLM:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
