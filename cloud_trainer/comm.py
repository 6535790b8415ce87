"""Gradient compression through DDP communication hooks, on any backend (gloo on CPU, nccl on GPU).

Lightning's ``DDPStrategy(ddp_comm_hook=...)`` registers hooks only on CUDA. The
:class:`GradientCompression` callback registers one itself, on whatever device, in
``on_fit_start``: the first hook point after the strategy has wrapped the model in
``DistributedDataParallel`` and before the first backward pass.

Compressors (``GradientCompression(method=...)``):

==============  =====================================================================
``none``        plain all-reduce of each float32 bucket (the baseline; counted too)
``fp16``        buckets cast to float16 for the all-reduce (torch's ``fp16_compress_hook``)
``bf16``        the same with bfloat16
``powersgd``    PyTorch's ``powerSGD_hook`` (rank ``rank``, error feedback, warm start)
``topk``        top-k sparsification with error feedback: each rank sends the ``ratio``
                largest-magnitude entries of each parameter's (gradient + residual) as
                (value, int32 index) pairs through all-gather; what it did not send stays
                in its residual
==============  =====================================================================

**Byte counting.** Every collective a hook starts goes through :class:`ByteCounter`,
which adds the payload of the tensor this rank hands to it (``numel * element_size``):
the bytes this rank contributes per step, not an estimate from the model size. For
PowerSGD, whose collectives are issued inside torch's module, the module's ``dist``
reference is replaced by a counting proxy (:func:`_count_powersgd_collectives`).

**Checkpoints.** The callback's ``state_dict`` carries the compressor's state: the
top-k residuals (per parameter, so they do not depend on DDP's bucket layout) and
PowerSGD's state (its ``__getstate__``: error and warm-start memories, iteration). PowerSGD
keys its memories by bucket index, so after a restart (DDP lays out buckets again) they are
close to, not exactly, those of an uninterrupted run; top-k and the casts resume exactly.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning import Callback, LightningModule, Trainer
from torch.nn.parallel import DistributedDataParallel

from cloud_trainer.errors import CompressionError

__all__ = ["COMPRESSION_METHODS", "ByteCounter", "GradientCompression", "TopKState", "make_hook"]

log = logging.getLogger(__name__)

COMPRESSION_METHODS = ("none", "fp16", "bf16", "powersgd", "topk")

HookFn = Callable[[Any, dist.GradBucket], torch.futures.Future[torch.Tensor]]
# _HOOK_ANNOTATIONS: DDP checks a hook's annotations against the classes themselves, and this
# module's annotations are strings (PEP 563), so the hook functions carry none.


@dataclass
class ByteCounter:
    """Bytes this rank handed to collectives: in total, and per optimizer step."""

    total: int = 0
    calls: int = 0
    _step: int = 0
    per_step: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tensor: torch.Tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        with self._lock:  # PowerSGD issues some collectives from future callbacks
            self.total += n
            self._step += n
            self.calls += 1

    def end_step(self) -> None:
        with self._lock:
            self.per_step.append(self._step)
            self._step = 0

    def mean_per_step(self, skip: int = 0) -> float:
        """Mean bytes per step, leaving out the first ``skip`` steps (warm-up: PowerSGD starts late)."""
        steps = self.per_step[skip:]
        return sum(steps) / len(steps) if steps else 0.0


# --------------------------------------------------------------------------- hooks


def _allreduce_mean(tensor: torch.Tensor, counter: ByteCounter, group: Any = None) -> torch.futures.Future:
    world = dist.get_world_size(group)
    counter.add(tensor)
    fut = dist.all_reduce(tensor, group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0].div_(world))


def _plain_hook(counter: ByteCounter) -> HookFn:
    def hook(state, bucket):
        return _allreduce_mean(bucket.buffer(), counter)

    return hook


def _cast_hook(counter: ByteCounter, dtype: torch.dtype) -> HookFn:
    def hook(state, bucket):
        buffer = bucket.buffer()
        compressed = buffer.to(dtype)

        def decompress(fut: torch.futures.Future) -> torch.Tensor:
            buffer.copy_(fut.value())
            return buffer

        return _allreduce_mean(compressed, counter).then(decompress)

    return hook


class TopKState:
    """Settings and error-feedback residuals of the top-k hook, one residual per parameter."""

    def __init__(self, ratio: float, parameters: list[torch.nn.Parameter]) -> None:
        if not 0.0 < ratio <= 1.0:
            raise CompressionError(f"top-k ratio {ratio} outside (0, 1]")
        self.ratio = ratio
        self.index = {id(p): i for i, p in enumerate(parameters)}
        self.residuals: dict[int, torch.Tensor] = {}

    def residual(self, i: int, like: torch.Tensor) -> torch.Tensor:
        r = self.residuals.get(i)
        if r is None or r.shape != like.shape:
            r = self.residuals[i] = torch.zeros_like(like)
        return r

    def state_dict(self) -> dict[str, Any]:
        """Every rank's residuals (each rank's differ: they hold what *its* gradients did not send).

        Collective under DDP: every rank must call it, as Lightning does when it saves."""
        mine = {i: r.clone() for i, r in self.residuals.items()}
        per_rank = [mine]
        if dist.is_available() and dist.is_initialized():
            per_rank = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, mine)
        return {"ratio": self.ratio, "per_rank": per_rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ratio = state["ratio"]
        per_rank = state.get("per_rank", [])
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if len(per_rank) != world:
            log.warning(
                "top-k residuals saved by %d ranks, %d now: starting them at zero", len(per_rank), world
            )
            self.residuals = {}
            return
        self.residuals = {int(i): r.clone() for i, r in per_rank[rank].items()}


def _topk_hook(counter: ByteCounter) -> HookFn:
    """Top-k per parameter (not per bucket), so that the selection does not depend on how DDP
    lays parameters out in buckets (it rebuilds them after the first step, and again after a
    restart): a resumed run then makes exactly the choices an uninterrupted one makes."""

    def hook(state, bucket):
        buffer = bucket.buffer()
        world = dist.get_world_size()
        values_parts, index_parts = [], []
        offset = 0
        for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
            i = state.index[id(param)]
            flat = grad.reshape(-1)
            acc = flat + state.residual(i, flat)
            k = max(1, math.ceil(state.ratio * acc.numel()))
            _, top = torch.topk(acc.abs(), k, sorted=False)
            values_parts.append(acc[top])
            index_parts.append(top + offset)
            acc[top] = 0.0
            state.residuals[i] = acc  # what was not sent waits for the next step
            offset += flat.numel()
        values = torch.cat(values_parts)
        indices = torch.cat(index_parts).to(torch.int32)
        gathered_values = [torch.empty_like(values) for _ in range(world)]
        gathered_index = [torch.empty_like(indices) for _ in range(world)]
        counter.add(values)
        counter.add(indices)
        dist.all_gather(gathered_values, values)
        dist.all_gather(gathered_index, indices)
        buffer.zero_()
        for v, idx in zip(gathered_values, gathered_index, strict=True):
            buffer.index_add_(0, idx.to(torch.int64), v)
        buffer.div_(world)
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(buffer)
        return fut

    return hook


class _CountingDist:
    """``torch.distributed`` with ``all_reduce``/``all_gather`` counted into the current counter."""

    counter: ByteCounter | None = None

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def all_reduce(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if _CountingDist.counter is not None:
            _CountingDist.counter.add(tensor)
        return self._real.all_reduce(tensor, *args, **kwargs)


def _count_powersgd_collectives(counter: ByteCounter) -> None:
    """Route the PowerSGD module's collectives through :class:`_CountingDist` (idempotent)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    # PowerSGD's own collectives, and the plain all-reduce it uses before start_powerSGD_iter.
    for module in (powerSGD_hook, default_hooks):
        if not isinstance(module.dist, _CountingDist):
            module.dist = _CountingDist(module.dist)
    _CountingDist.counter = counter


def make_hook(
    method: str,
    ddp: DistributedDataParallel,
    counter: ByteCounter,
    *,
    rank: int = 2,
    ratio: float = 0.01,
    start_iter: int = 2,
) -> tuple[Any, HookFn]:
    """(state, hook) for ``ddp.register_comm_hook``: see the module docstring for the methods."""
    if method == "none":
        return None, _plain_hook(counter)
    if method == "fp16":
        return None, _cast_hook(counter, torch.float16)
    if method == "bf16":
        return None, _cast_hook(counter, torch.bfloat16)
    if method == "topk":
        return TopKState(ratio, list(ddp.module.parameters())), _topk_hook(counter)
    if method == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

        if rank < 1:
            raise CompressionError(f"PowerSGD rank {rank} must be at least 1")
        _count_powersgd_collectives(counter)
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=rank,
            start_powerSGD_iter=max(2, start_iter),  # torch needs >= 2 with error feedback
            min_compression_rate=1.0,
            use_error_feedback=True,
            warm_start=True,
            random_seed=0,
        )
        return state, powerSGD_hook.powerSGD_hook
    raise CompressionError(f"unknown gradient compression {method!r}: expected one of {COMPRESSION_METHODS}")


# --------------------------------------------------------------------------- callback


class GradientCompression(Callback):
    """Register a gradient-compression DDP hook on CPU or GPU, count its bytes, checkpoint its state.

    Works with Lightning's plain ``ddp`` strategy (do not also pass ``ddp_comm_hook`` to
    it). Without a process group (one process) it does nothing. ``counter`` holds the
    bytes this rank sent; ``bytes_per_step`` is also logged (``comm_bytes``).
    """

    def __init__(self, method: str = "none", rank: int = 2, ratio: float = 0.01, start_iter: int = 2) -> None:
        if method not in COMPRESSION_METHODS:
            raise CompressionError(
                f"unknown gradient compression {method!r}: expected one of {COMPRESSION_METHODS}"
            )
        self.method = method
        self.rank = rank
        self.ratio = ratio
        self.start_iter = start_iter
        self.counter = ByteCounter()
        self.state: Any = None
        self._pending: dict[str, Any] | None = None
        self.registered = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ddp = trainer.strategy.model
        if not isinstance(ddp, DistributedDataParallel) or self.registered:
            return
        self.state, hook = make_hook(
            self.method, ddp, self.counter, rank=self.rank, ratio=self.ratio, start_iter=self.start_iter
        )
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        ddp.register_comm_hook(self.state, hook)
        self.registered = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.registered:
            self.counter.end_step()
            pl_module.log("comm_bytes", float(self.counter.per_step[-1]), on_step=True, prog_bar=False)

    def _restore(self, state: dict[str, Any]) -> None:
        saved = state.get("hook_state")
        if saved is None or self.state is None:
            return
        if isinstance(self.state, TopKState):
            self.state.load_state_dict(saved)
        else:  # PowerSGDState: its own pickling protocol, minus the process group
            process_group = self.state.process_group
            self.state.__setstate__(saved)
            self.state.process_group = process_group

    def state_dict(self) -> dict[str, Any]:
        hook_state = None
        if isinstance(self.state, TopKState):
            hook_state = self.state.state_dict()
        elif self.state is not None:
            hook_state = self.state.__getstate__()
        return {"method": self.method, "rank": self.rank, "ratio": self.ratio, "hook_state": hook_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("method") != self.method:
            return  # a different compressor now: start its state fresh
        if self.registered:
            self._restore(state_dict)
        else:
            self._pending = state_dict  # restored before the strategy wraps the model
