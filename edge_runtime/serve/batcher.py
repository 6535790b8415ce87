"""The dynamic batcher: requests queued per model version, run together in worker threads.

How a batch forms (each model version has its own queue and threads)::

    submit() ──► bounded queue (max_queue_size requests; full: OverloadedError, answered 503)
                    │
      a worker takes the compatible requests at the head (same dtypes and
      non-batch dims, FIFO) as soon as one of these holds:
        * they fill max_batch_size, or the largest preferred batch size;
        * the next request would not fit, or is incompatible;
        * the oldest has waited max_queue_delay_us, or its share of
          latency_target_us (the target minus the recent compute time);
        * the batcher is draining.
                    │
      concatenate along dim 0 ─► pad to a preferred size (optional) ─► model.run
                    │
      split the outputs back by rows ─► each request's future

A request with more rows than ``max_batch_size`` is split into chunks that
queue separately; its future completes when all chunks have. Models whose
inputs have a fixed first dimension are never concatenated: each request runs
alone (still queued, so back-pressure and threading stay the same).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.serve.errors import (
    InferenceRequestError,
    ModelNotReadyError,
    OverloadedError,
    ServeConfigError,
    ServeError,
)

__all__ = ["BatchStats", "BatchingConfig", "DynamicBatcher"]

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchingConfig:
    """Per-model batching. ``max_batch_size = 1`` turns batching off."""

    max_batch_size: int = 8
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    pad_to_preferred: bool = False  # pad a batch with copies of its last row up to a preferred size
    max_queue_size: int = 64  # requests waiting; beyond it, submit() refuses (503)
    latency_target_us: int | None = None  # dispatch early so the oldest request can meet it
    workers: int = 1  # batches computed at the same time (Model.run is thread-safe)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue_size", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeConfigError(f"batching.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.max_queue_delay_us, int) or self.max_queue_delay_us < 0:
            raise ServeConfigError(
                f"batching.max_queue_delay_us must be >= 0, got {self.max_queue_delay_us!r}"
            )
        if self.latency_target_us is not None and (
            not isinstance(self.latency_target_us, int) or self.latency_target_us <= 0
        ):
            raise ServeConfigError(f"batching.latency_target_us must be > 0, got {self.latency_target_us!r}")
        sizes = tuple(self.preferred_batch_sizes)
        if any(not isinstance(s, int) or not 1 <= s <= self.max_batch_size for s in sizes):
            raise ServeConfigError(
                f"batching.preferred_batch_sizes must lie in 1..max_batch_size ({self.max_batch_size}), "
                f"got {list(sizes)}"
            )
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(sizes))))
        if self.pad_to_preferred and not sizes:
            raise ServeConfigError("batching.pad_to_preferred needs preferred_batch_sizes")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "batching") -> BatchingConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ServeConfigError(
                f"{where} has unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(cls.__dataclass_fields__)}"
            )
        values = dict(d)
        if "preferred_batch_sizes" in values:
            values["preferred_batch_sizes"] = tuple(values["preferred_batch_sizes"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__} | {
            "preferred_batch_sizes": list(self.preferred_batch_sizes)
        }


@dataclass(frozen=True)
class BatchStats:
    """What one model execution did, for metrics."""

    requests: int
    rows: int  # real rows, before padding
    padded_rows: int
    queue_seconds: tuple[float, ...]  # per request (chunk)
    compute_seconds: float
    error: BaseException | None


class _Job:
    """One queued request (or chunk); answered through a thread future or, from an event
    loop, through an asyncio future that the worker settles with one loop call per batch."""

    __slots__ = ("afuture", "enqueued", "future", "inputs", "key", "loop", "rows")

    def __init__(
        self,
        inputs: Outputs,
        rows: int,
        key: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.loop = loop
        self.afuture: asyncio.Future[Outputs] | None = loop.create_future() if loop is not None else None
        self.future: Future[Outputs] | None = Future() if loop is None else None
        self.enqueued = time.monotonic()

    def start(self) -> bool:
        """False when the caller gave up (cancelled) before the job ran."""
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        assert self.afuture is not None
        return not self.afuture.done()  # a racy read at worst computes a cancelled job


def _settle(results: list[tuple[asyncio.Future[Outputs], Outputs | None, BaseException | None]]) -> None:
    """On the event loop: answer every asyncio job of a batch (one loop wake-up for all)."""
    for future, outputs, error in results:
        if future.done():  # cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outputs)  # type: ignore[arg-type]


def _combine(chunks: list[Future[Outputs]]) -> Future[Outputs]:
    """One future for the results of several chunks, concatenated in order."""
    parent: Future[Outputs] = Future()
    remaining = [len(chunks)]
    lock = threading.Lock()

    def done(_: Future[Outputs]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        if parent.done():
            return
        errors = [c.exception() for c in chunks if c.cancelled() or c.exception() is not None]
        if errors:
            parent.set_exception(errors[0] or ServeError("a chunk of the request was cancelled"))
            return
        results = [c.result() for c in chunks]
        parent.set_result({k: np.concatenate([r[k] for r in results]) for k in results[0]})

    for chunk in chunks:
        chunk.add_done_callback(done)
    return parent


class DynamicBatcher:
    """Queues requests for one model version and runs them in batches on worker threads.

    ``run`` is the model's run function (thread-safe); ``batchable`` says
    whether dim 0 of every input and output is a batch dimension;
    ``on_batch`` receives a :class:`BatchStats` after each execution.
    """

    def __init__(
        self,
        run: Callable[[Mapping[str, np.ndarray]], Outputs],
        config: BatchingConfig,
        *,
        batchable: bool,
        name: str = "model",
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._run = run
        self.config = config
        self.batchable = batchable
        self.name = name
        self._on_batch = on_batch
        self._max_rows = config.max_batch_size if batchable else 1
        self._full_rows = min(self._max_rows, max(config.preferred_batch_sizes, default=self._max_rows))
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._compute_ewma = 0.0  # seconds per batch, for the latency target
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-{name}-{i}", daemon=True)
            for i in range(config.workers)
        ]
        for t in self._threads:
            t.start()

    # --- the caller's side ---

    def queued(self) -> int:
        """Requests (chunks) waiting in the queue."""
        return len(self._queue)

    def oldest_wait(self) -> float:
        """Seconds the oldest queued request has waited (0 when the queue is empty)."""
        try:
            return time.monotonic() - self._queue[0].enqueued
        except IndexError:
            return 0.0

    def submit(self, inputs: Mapping[str, np.ndarray]) -> Future[Outputs]:
        """Queue a request; the future gets the outputs for its rows.

        Raises OverloadedError when the queue is full and ModelNotReadyError once closing.
        """
        chunks = self._jobs(inputs, None)
        self._enqueue(chunks)
        futures = [c.future for c in chunks if c.future is not None]
        return futures[0] if len(futures) == 1 else _combine(futures)

    def submit_async(self, inputs: Mapping[str, np.ndarray]) -> asyncio.Future[Outputs]:
        """:meth:`submit` for the running event loop: an asyncio future, settled without a thread
        future in between (the worker makes one ``call_soon_threadsafe`` per batch, not per request)."""
        loop = asyncio.get_running_loop()
        chunks = self._jobs(inputs, loop)
        if len(chunks) > 1:  # a request split over several batches: combined by the thread path
            return asyncio.wrap_future(self.submit(inputs), loop=loop)
        self._enqueue(chunks)
        assert chunks[0].afuture is not None
        return chunks[0].afuture

    def _jobs(self, inputs: Mapping[str, np.ndarray], loop: asyncio.AbstractEventLoop | None) -> list[_Job]:
        """The request as jobs of at most ``max_batch_size`` rows; validates the batch dimension."""
        arrays = dict(inputs)
        if self.batchable:
            rows = {int(a.shape[0]) if a.ndim else -1 for a in arrays.values()}
            if len(rows) != 1 or -1 in rows:
                raise InferenceRequestError(
                    f"every input must have the same batch size (first dimension) {sorted(rows)}"
                )
            (n,) = rows
            key = tuple((k, a.dtype.str, a.shape[1:]) for k, a in sorted(arrays.items()))
        else:
            n, key = 1, ()
        step = self._max_rows
        if n <= step:
            return [_Job(arrays, n, key, loop)]
        needed = -(-n // step)  # counted before any job is built: a huge request costs nothing
        if needed > self.config.max_queue_size:
            raise InferenceRequestError(
                f"a request of {n} rows needs {needed} batches of at most {step}; "
                f"more than the queue holds ({self.config.max_queue_size})"
            )
        return [
            _Job({k: a[i : i + step] for k, a in arrays.items()}, min(step, n - i), key)
            for i in range(0, n, step)
        ]

    def _enqueue(self, chunks: list[_Job]) -> None:
        n = sum(c.rows for c in chunks)
        with self._cond:
            if self._closing:
                raise ModelNotReadyError(f"model {self.name} is shutting down")
            if len(self._queue) + len(chunks) > self.config.max_queue_size:
                raise OverloadedError(
                    f"model {self.name}: the queue is full ({self.config.max_queue_size} requests); retry later"
                )
            # Wake a worker only when that changes what it would do: the queue was empty (a worker
            # may be idle), a batch can be full now, or the head can no longer grow. A worker that
            # is waiting out the queue delay need not wake for every arrival: each wake-up is a
            # GIL hand-off between the event loop and the worker, the costliest thing per request.
            wake = (
                not self._queue
                or self._queued_rows + n >= self._full_rows
                or chunks[0].key != self._queue[0].key
            )
            self._queue.extend(chunks)
            self._queued_rows += n
            if wake:
                self._cond.notify()

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting, run what is queued, stop the threads; True if they stopped in time."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            if t is threading.current_thread():
                continue
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads if t is not threading.current_thread())

    # --- the workers' side ---

    def _deadline(self, job: _Job) -> float:
        delay = self.config.max_queue_delay_us / 1e6
        if self.config.latency_target_us is not None:
            delay = min(delay, max(0.0, self.config.latency_target_us / 1e6 - self._compute_ewma))
        return job.enqueued + delay

    def _head(self) -> tuple[int, int, bool]:
        """``(jobs, rows, can_grow)`` for the batch the head of the queue would form now."""
        first = self._queue[0]
        jobs, rows = 1, first.rows
        for job in itertools.islice(self._queue, 1, None):
            if job.key != first.key or rows + job.rows > self._max_rows:
                return jobs, rows, False
            jobs += 1
            rows += job.rows
        return jobs, rows, rows < self._max_rows

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                jobs, rows, can_grow = self._head()
                now = time.monotonic()
                deadline = self._deadline(self._queue[0])
                if self._closing or not can_grow or rows >= self._full_rows or now >= deadline:
                    batch = [self._queue.popleft() for _ in range(jobs)]
                    self._queued_rows -= rows
                    if self._queue:
                        self._cond.notify()  # another idle worker may start on the rest
                    return batch
                self._cond.wait(deadline - now)

    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [job for job in batch if job.start()]
            if batch:
                self._execute(batch)

    def _pad_target(self, rows: int) -> int:
        if not self.config.pad_to_preferred or not self.batchable:
            return rows
        return next((p for p in self.config.preferred_batch_sizes if p >= rows), rows)

    def _execute(self, batch: list[_Job]) -> None:
        start = time.monotonic()
        rows = sum(job.rows for job in batch)
        padded = self._pad_target(rows)
        error: BaseException | None = None
        try:
            if len(batch) == 1 and padded == rows:
                feeds = batch[0].inputs
            else:
                feeds = {}
                for name in batch[0].inputs:
                    parts = [job.inputs[name] for job in batch]
                    if padded > rows:
                        last = parts[-1][-1:]
                        parts.append(np.repeat(last, padded - rows, axis=0))
                    feeds[name] = np.concatenate(parts)
            outputs = self._run(feeds)
            if self.batchable:
                bad = [k for k, v in outputs.items() if np.ndim(v) == 0 or np.shape(v)[0] != padded]
                if bad:
                    raise ServeError(
                        f"model {self.name}: output(s) {', '.join(bad)} do not have the batch size "
                        f"{padded} as first dimension; serve it with max_batch_size 1"
                    )
        except BaseException as exc:  # noqa: BLE001 - the model's error goes to every request of the batch
            error = exc
        compute = time.monotonic() - start
        self._compute_ewma = compute if not self._compute_ewma else 0.8 * self._compute_ewma + 0.2 * compute
        queue_seconds = tuple(start - job.enqueued for job in batch)
        if self._on_batch is not None:  # before the futures: a client that got its answer sees the metrics
            try:
                self._on_batch(BatchStats(len(batch), rows, padded, queue_seconds, compute, error))
            except Exception:
                log.exception("batch metrics callback failed")
        offset = 0
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job in batch:
            result = None
            if error is None:
                whole = len(batch) == 1 and padded == rows
                result = outputs if whole else {k: v[offset : offset + job.rows] for k, v in outputs.items()}
            offset += job.rows
            if job.future is not None:
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(result)  # type: ignore[arg-type]
            else:
                assert job.loop is not None
                by_loop.setdefault(job.loop, []).append((job.afuture, result, error))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, results)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.debug("batch of %s answered after its event loop closed", self.name)
        if error is not None and not isinstance(error, Exception):
            raise error
