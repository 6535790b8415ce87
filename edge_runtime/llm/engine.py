"""Continuous batching: the decode steps of concurrent generations run as one batch.

One engine thread per model loops::

    admit waiting requests (up to max_batch running): prefill each, emit its first token
    one decode step for every running sequence: one forward pass, one GEMM per layer
    emit each sequence's token; retire the finished and the cancelled

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
    first_token_at: float | None = None
    generated: int = 0
    _cancelled: threading.Event = field(default_factory=threading.Event)
    state: Any = None

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class LLMEngine:
    """Runs the generations of one model, batching their decode steps (see the module's doc)."""

    def __init__(self, model: Any, max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: collections.deque[GenerationHandle] = collections.deque()
        self._running: list[GenerationHandle] = []
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0
        self.batched_tokens = 0
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
        from edge_runtime.llm.model import GenerationState

        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._running:
                    self._cond.wait()
                if self._closed:
                    pending = list(self._waiting) + self._running
                    self._waiting.clear()
                    self._running = []
                    break
                admit = []
                while self._waiting and len(self._running) + len(admit) < self.max_batch:
                    admit.append(self._waiting.popleft())
            for h in admit:
                if h.cancelled:
                    continue
                try:
                    seq = self.model.new_sequence(h.capacity)
                    logits = self.model.prefill(seq, h.prompt_ids)
                    h.state = GenerationState(self.model, seq, h.params)
                except Exception as exc:  # noqa: BLE001 - the request fails, the engine goes on
                    self._deliver(h, exc)
                    continue
                if self._emit_next(h, logits):
                    self._running.append(h)
            self._running = [h for h in self._running if not h.cancelled]
            if not self._running:
                continue
            batch = list(self._running)
            try:
                logits = self.model.decode([h.state.seq for h in batch], [h.state.seq_next for h in batch])
            except Exception as exc:
                log.exception("a decode step failed")
                self._fail(batch, exc)
                self._running = []
                continue
            self.steps += 1
            self.batched_tokens += len(batch)
            self._running = [h for h, row in zip(batch, logits) if self._emit_next(h, row)]
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
