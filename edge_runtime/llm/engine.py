"""Continuous batching: the decode steps of concurrent generations run as one batch.

One engine thread per model loops::

    admit waiting requests while fewer than max_batch are running or prefilling
    one forward pass: the next token of every running sequence, and chunks of the admitted
        prompts (prefill_tokens per pass), so a long prompt never stalls the running generations
    emit each sequence's token (a prompt's first token once it is complete);
    retire the finished and the cancelled

Requests wait in a bounded queue (:class:`EngineOverloadedError` beyond
``max_queue``: the server answers 503). A request is cancelled by its handle
(the server does this when the client goes away); its sequence leaves the
batch before the next step. Events are delivered by a callback on the engine
thread, which must not block (the server hands them to its event loop).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.llm.errors import ContextLengthError, GenerationCancelled, LLMError
from edge_runtime.llm.model import GenerationState
from edge_runtime.llm.sampling import SamplingParams

__all__ = ["EngineOverloadedError", "GenerationHandle", "LLMEngine"]

log = logging.getLogger(__name__)

Emit = Callable[[Any], None]  # a TokenEvent, or an exception that ends the request


class EngineOverloadedError(RuntimeError, LLMError):
    """The engine's queue is full; retry later (HTTP 503)."""


@dataclass(eq=False)
class GenerationHandle:
    """A submitted generation: cancel it, read its counts."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Emit
    capacity: int
    submitted: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None  # when it left the queue for the batch
    first_token_at: float | None = None
    generated: int = 0
    _cancelled: threading.Event = field(default_factory=threading.Event)
    state: Any = None
    seq: Any = None  # the KV sequence, created when the request is admitted

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class LLMEngine:
    """Runs the generations of one model, batching their decode steps (see the module's doc)."""

    def __init__(
        self, model: Any, max_batch: int = 8, max_queue: int = 64, prefill_tokens: int = 128
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_tokens = prefill_tokens  # prompt tokens per step, beside the running sequences' tokens
        self._waiting: collections.deque[GenerationHandle] = collections.deque()
        self._running: list[GenerationHandle] = []
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0
        self.batched_tokens = 0
        # Called on the engine thread after each forward pass with the number of sequences it
        # decoded (the batch size of the decode GEMM); must not block (the server's metrics).
        self.on_step: Callable[[int], None] | None = None
        self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
        self._thread.start()

    # --- the callers' side ---

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, emit: Emit) -> GenerationHandle:
        """Queue a generation; raises ContextLengthError or EngineOverloadedError at once."""
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ValueError("the prompt is empty")
        capacity = self.model._fit(len(ids), params.max_new_tokens)
        handle = GenerationHandle(ids, params, emit, capacity)
        with self._cond:
            if self._closed:
                raise GenerationCancelled("the model is being unloaded")
            if len(self._waiting) >= self.max_queue:
                raise EngineOverloadedError(
                    f"{len(self._waiting)} generations are already waiting (queue limit {self.max_queue}); "
                    "retry later"
                )
            self._waiting.append(handle)
            self._cond.notify()
        return handle

    def queued(self) -> int:
        return len(self._waiting)

    def running(self) -> int:
        return len(self._running)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # --- the engine thread ---

    def _deliver(self, handle: GenerationHandle, item: Any) -> None:
        try:
            handle.emit(item)
        except Exception:
            log.exception("delivering a generation event failed; cancelling that generation")
            handle.cancel()

    def _fail(self, handles: list[GenerationHandle], exc: BaseException) -> None:
        for h in handles:
            self._deliver(h, exc)

    def _loop(self) -> None:
        prefilling: list[GenerationHandle] = []
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._running and not prefilling:
                    self._cond.wait()
                if self._closed:
                    pending = list(self._waiting) + self._running + prefilling
                    self._waiting.clear()
                    self._running = []
                    break
                while self._waiting and len(self._running) + len(prefilling) < self.max_batch:
                    admitted = self._waiting.popleft()
                    admitted.admitted_at = time.monotonic()
                    prefilling.append(admitted)
            self._running = [h for h in self._running if not h.cancelled]
            prefilling = [h for h in prefilling if not h.cancelled]
            # One forward pass: a token of every running sequence, and prompt chunks of the admitted ones.
            batch: list[tuple[GenerationHandle, list[int], bool]] = [
                (h, [h.state.seq_next], False) for h in self._running
            ]
            budget = self.prefill_tokens
            for h in prefilling:
                if budget <= 0:
                    break
                try:
                    if h.seq is None:
                        h.seq = self.model.new_sequence(h.capacity)
                except Exception as exc:  # noqa: BLE001 - the request fails, the engine goes on
                    self._deliver(h, exc)
                    h.cancel()
                    continue
                chunk = h.prompt_ids[h.seq.length : h.seq.length + budget]
                budget -= len(chunk)
                batch.append((h, chunk, True))
            if not batch:
                continue
            try:
                logits = self.model.forward(
                    [h.seq if pre else h.state.seq for h, _, pre in batch], [t for _, t, _ in batch]
                )
            except Exception as exc:
                log.exception("a forward pass failed")
                self._fail([h for h, _, _ in batch], exc)
                self._running = [h for h in self._running if all(h is not b for b, _, _ in batch)]
                prefilling = [h for h in prefilling if all(h is not b for b, _, _ in batch)]
                continue
            self.steps += 1
            decoded = sum(1 for _, _, pre in batch if not pre)
            self.batched_tokens += decoded
            if self.on_step is not None and decoded:
                try:
                    self.on_step(decoded)
                except Exception:
                    log.exception("the engine's on_step callback failed")
            running = []
            for (h, _, pre), row in zip(batch, logits):
                if pre:
                    if h.seq.length < len(h.prompt_ids):
                        continue  # more prompt to go
                    prefilling.remove(h)
                    h.state = GenerationState(self.model, h.seq, h.params)
                if self._emit_next(h, row):
                    running.append(h)
            self._running = running
        self._fail(pending, GenerationCancelled("the model was unloaded before the generation finished"))

    def _emit_next(self, h: GenerationHandle, logits: Any) -> bool:
        """Sample and deliver the next token of ``h``; whether it goes on."""
        if h.cancelled:
            return False
        try:
            event = h.state.advance(logits)
        except Exception as exc:  # noqa: BLE001
            self._deliver(h, exc)
            return False
        if h.first_token_at is None:
            h.first_token_at = time.monotonic()
        h.generated += 1
        h.state.seq_next = event.id
        self._deliver(h, event)
        if event.finish_reason is None and h.state.seq.length >= h.state.seq.capacity:
            self._deliver(h, ContextLengthError("the sequence filled its context"))
            return False
        return event.finish_reason is None and not h.cancelled
