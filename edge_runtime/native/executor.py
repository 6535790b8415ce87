"""Running a :class:`QuantizedPlan` on the C kernels.

At load, :class:`NativeSession` packs every GEMM and convolution's weights for
the kernels (or reads them from the packed-weight cache, see :class:`PackedCache`).
Per call it quantizes the float inputs, runs the steps in order and dequantizes
the outputs.

Buffers: the outputs of GEMMs and convolutions, and the convolutions' im2col
workspaces, are allocated once per input-shape signature (so once per batch
size: the batch dimension is dynamic) on first use and reused by later calls;
the few most recent signatures are kept.

Threads: one call uses the session's native thread pool of ``threads`` workers
(the kernels split GEMM and convolution work over it). Because those buffers and
that pool are shared, :meth:`NativeSession.run` holds a per-session lock: calls
from several threads are safe and serialised. For throughput from concurrent
callers, open one session per caller thread (packing then comes from the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import kernels
from edge_runtime.errors import ModelInputError, UnsupportedOperatorError
from edge_runtime.graph import Node
from edge_runtime.graph.reference import evaluate_node
from edge_runtime.native.plan import QuantizedPlan, Step
from edge_runtime.quant import QuantParams

__all__ = ["NativeSession", "PackedCache", "default_cache_dir", "packed_format_versions"]

_MAX_SIGNATURES = 8  # buffer sets kept (one per distinct input-shape signature)


def default_cache_dir() -> Path:
    """``$EDGE_CACHE_DIR/packed``, else ``~/.cache/edge-runtime/packed``."""
    root = os.environ.get("EDGE_CACHE_DIR")
    return Path(root) / "packed" if root else Path.home() / ".cache" / "edge-runtime" / "packed"


_FORMAT_VERSIONS: dict[str, str] | None = None


def packed_format_versions() -> dict[str, str]:
    """Magic and version of every packed layout, read from the C library's own headers
    (first 8 bytes of a tiny packed buffer), plus the kernels' build version."""
    global _FORMAT_VERSIONS
    if _FORMAT_VERSIONS is None:
        from edge_runtime._native import ffi, lib

        w = np.ones((1, 1, 3, 3), np.int8)
        samples = {
            "gemm": kernels.pack_gemm(np.ones((1, 4), np.int8)).buffer,
            "gemm24": kernels.pack_gemm24(np.array([[1, 0, 1, 0]], np.int8)).buffer,
            "conv2d": kernels.pack_conv2d(w, input_shape=(1, 3, 3, 1)).buffer,
            "dwconv2d": kernels.pack_dwconv2d(w, input_shape=(1, 3, 3, 1)).buffer,
        }
        versions = {k: v[:8].tobytes().hex() for k, v in samples.items()}
        versions["kernels"] = ffi.string(lib.edge_version()).decode()
        _FORMAT_VERSIONS = versions
    return dict(_FORMAT_VERSIONS)


class PackedCache:
    """Packed weights on disk, one ``.npz`` per (plan sha256, packed formats, ISA).

    Written to a temporary file and renamed, so a reader never sees half a file and
    concurrent writers of the same key are harmless. A file that cannot be read is
    ignored (and rewritten).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def key(self, plan_sha256: str, isa: str) -> str:
        formats = json.dumps(packed_format_versions(), sort_keys=True)
        return hashlib.sha256(f"{plan_sha256}|{formats}|{isa}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError):
            return None

    def store(self, key: str, buffers: Mapping[str, np.ndarray]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".packing-", suffix=".npz")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **buffers)
            os.replace(tmp, self.path(key))
        except OSError:
            pass  # a read-only or full disk only costs the next load its packing time


class NativeSession:
    """A loaded :class:`QuantizedPlan`: ``run(feeds)`` -> float32 outputs by name.

    ``threads``: native worker threads for GEMM and convolution. ``cache_dir``:
    where packed weights are cached (default :func:`default_cache_dir`); ``False``
    disables the cache.
    """

    def __init__(
        self, plan: QuantizedPlan, threads: int = 1, cache_dir: str | os.PathLike[str] | bool | None = None
    ) -> None:
        self.plan = plan
        self.threads = max(1, int(threads))
        self.isa = kernels.get_isa()
        self._pool = kernels.ThreadPool(self.threads)
        self._lock = threading.Lock()
        self._buffers: OrderedDict[tuple, dict[int, dict[str, np.ndarray]]] = OrderedDict()
        self.cache_hit: bool | None = None  # None: no cache
        self.load_seconds = 0.0
        start = time.perf_counter()
        self._packed = self._pack(cache_dir)
        self._prepared = [self._prepare(i, step) for i, step in enumerate(plan.steps)]
        self.load_seconds = time.perf_counter() - start

    # -- load ----------------------------------------------------------------

    def _pack_step(self, step: Step) -> np.ndarray | None:
        a = step.arrays
        if step.op == "gemm":
            pack = kernels.pack_gemm24 if step.attrs["sparse"] else kernels.pack_gemm
            return pack(a["weights"], a["bias"]).buffer
        if step.op == "conv":
            h, w, c = step.attrs["input_hwc"]
            if step.attrs["depthwise"]:
                return kernels.pack_dwconv2d(
                    a["weights"], a["bias"], input_shape=(1, h, w, c),
                    stride=step.attrs["stride"][0], padding=step.attrs["padding"],
                ).buffer  # fmt: skip
            return kernels.pack_conv2d(
                a["weights"], a["bias"], input_shape=(1, h, w, c), stride=tuple(step.attrs["stride"]),
                padding=tuple(step.attrs["padding"]), dilation=tuple(step.attrs["dilation"]),
                groups=step.attrs["groups"],
            ).buffer  # fmt: skip
        return None

    def _pack(self, cache_dir: str | os.PathLike[str] | bool | None) -> dict[int, np.ndarray]:
        cache = None if cache_dir is False else PackedCache(None if cache_dir in (None, True) else cache_dir)
        key = cache.key(self.plan.sha256(), self.isa) if cache is not None else ""
        if cache is not None:
            stored = cache.load(key)
            if stored is not None:
                self.cache_hit = True
                return {int(k[1:]): _aligned(v) for k, v in stored.items()}
        packed = {}
        for i, step in enumerate(self.plan.steps):
            buffer = self._pack_step(step)
            if buffer is not None:
                packed[i] = buffer
        if cache is not None:
            self.cache_hit = False
            cache.store(key, {f"s{i}": b for i, b in packed.items()})
        return packed

    def _prepare(self, index: int, step: Step) -> Callable[[dict[str, Any], dict[str, np.ndarray]], None]:
        """A closure that runs ``step`` on the environment (and its buffer set)."""
        make = getattr(self, f"_prep_{step.op}", None)
        if make is None:
            raise UnsupportedOperatorError(f"plan step {index} ({step.node}): unknown step kind {step.op!r}")
        return make(index, step)

    # -- run ------------------------------------------------------------------

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float32 outputs (and integer ones as they are) for float/integer feeds by input name."""
        env: dict[str, Any] = {}
        for io_ in self.plan.inputs:
            if io_.name not in feeds:
                raise ModelInputError(
                    f"input {io_.name!r} missing; the plan expects {[i.name for i in self.plan.inputs]}"
                )
            value = np.asarray(feeds[io_.name])
            if io_.dtype == "float32":
                value = np.ascontiguousarray(value, dtype=np.float32)
            env[io_.buffer] = value
        signature = tuple((k, v.shape) for k, v in sorted(env.items()))
        with self._lock:
            buffers = self._buffers.get(signature)
            if buffers is None:
                buffers = self._buffers[signature] = {}
                while len(self._buffers) > _MAX_SIGNATURES:
                    self._buffers.popitem(last=False)
            else:
                self._buffers.move_to_end(signature)
            for i, fn in enumerate(self._prepared):
                fn(env, buffers.setdefault(i, {}))
            return {io_.name: np.array(env[io_.buffer], copy=True) for io_ in self.plan.outputs}

    def describe(self) -> dict[str, Any]:
        """ISA, threads, steps, op histogram, sparse layers and packed-cache outcome."""
        return {
            "engine": "native",
            "isa": self.isa,
            "threads": self.threads,
            "steps": len(self.plan.steps),
            "ops": self.plan.op_histogram(),
            "sparse_layers": self.plan.sparse_layers(),
            "packed_cache": {None: "disabled", True: "hit", False: "miss"}[self.cache_hit],
            "load_seconds": round(self.load_seconds, 4),
            "plan_sha256": self.plan.sha256(),
        }

    def close(self) -> None:
        self._pool.close()

    # -- step implementations -----------------------------------------------------
    # Each _prep_<op> returns fn(env, buffers) that reads step.inputs from env and
    # writes step.outputs.

    def _prep_quantize(self, index: int, step: Step):
        qp = QuantParams.from_dict(step.attrs)
        perm = step.attrs.get("perm")
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            q = kernels.quantize(env[src], qp.scale, qp.zero_point, qp.numpy_dtype)
            env[dst] = np.ascontiguousarray(q.transpose(perm)) if perm else q

        return fn

    def _prep_dequantize(self, index: int, step: Step):
        qp = QuantParams.from_dict(step.attrs)
        perm = step.attrs.get("perm")
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            x = env[src]
            x = np.ascontiguousarray(x.transpose(perm)) if perm else x
            env[dst] = kernels.dequantize(x, qp.scale, qp.zero_point)

        return fn

    def _prep_transpose(self, index: int, step: Step):
        perm = step.attrs["perm"]
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            env[dst] = np.ascontiguousarray(env[src].transpose(perm))

        return fn

    def _requant(self, step: Step) -> kernels.Requant:
        return kernels.Requant(
            multiplier=np.ascontiguousarray(step.arrays["multiplier"], np.int32),
            shift=np.ascontiguousarray(step.arrays["shift"], np.int32),
            zero_point=int(step.attrs["zero_point"]),
            out_min=int(step.attrs["out_min"]),
            out_max=int(step.attrs["out_max"]),
        )

    def _prep_gemm(self, index: int, step: Step):
        rq = self._requant(step)
        n, k = step.arrays["weights"].shape
        if step.attrs["sparse"]:
            packed: Any = kernels.PackedGemm24(n=n, k=k, buffer=self._packed[index])
            run = kernels.gemm24
        else:
            packed = kernels.PackedGemm(n=n, k=k, buffer=self._packed[index])
            run = kernels.gemm
        zp = int(step.attrs["a_zero_point"])
        out_dtype = np.dtype(step.attrs["out_dtype"])
        pool = self._pool
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            x = env[src]
            lead = x.shape[:-1]
            a = x.reshape(-1, k)
            out = buffers.get("out")
            if out is None:
                out = buffers["out"] = np.empty((a.shape[0], n), out_dtype)
            run(a, packed, a_zero_point=zp, requant=rq, out_dtype=out_dtype, out=out, pool=pool)
            env[dst] = out.reshape(*lead, n)

        return fn

    def _prep_conv(self, index: int, step: Step):
        attrs = step.attrs
        rq = self._requant(step)
        h, w, c = attrs["input_hwc"]
        weights = step.arrays["weights"]
        params = kernels.Conv2dParams(
            batch=1, in_h=h, in_w=w, in_c=c, out_c=weights.shape[0], kernel_h=weights.shape[2],
            kernel_w=weights.shape[3], stride=tuple(attrs["stride"]), padding=tuple(attrs["padding"]),
            dilation=tuple(attrs["dilation"]), groups=attrs["groups"],
        )  # fmt: skip
        depthwise = bool(attrs["depthwise"])
        packed = kernels.PackedConv2d(params=params, buffer=self._packed[index], depthwise=depthwise)
        out_h, out_w = params.output_size()
        zp = int(attrs["x_zero_point"])
        out_dtype = np.dtype(attrs["out_dtype"])
        pool = self._pool
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            x = env[src]
            out = buffers.get("out")
            if out is None:
                out = buffers["out"] = np.empty((x.shape[0], out_h, out_w, params.out_c), out_dtype)
            if depthwise:
                kernels.dwconv2d(x, packed, zp, rq, out_dtype, out=out, pool=pool)
            else:
                if "workspace" not in buffers:
                    size = kernels.conv2d_workspace_size(packed, x.shape[0], pool)
                    from edge_runtime._native import aligned_empty

                    buffers["workspace"] = aligned_empty(size) if size else None
                kernels.conv2d(
                    x, packed, zp, rq, out_dtype, out=out, workspace=buffers["workspace"], pool=pool
                )
            env[dst] = out

        return fn

    def _prep_add(self, index: int, step: Step):
        return self._binary(step, kernels.add)

    def _prep_mul(self, index: int, step: Step):
        return self._binary(step, kernels.mul)

    def _binary(self, step: Step, kernel):
        a = step.attrs
        args = (
            a["a_scale"],
            a["a_zero_point"],
            a["b_scale"],
            a["b_zero_point"],
            a["y_scale"],
            a["y_zero_point"],
        )
        const = step.arrays.get("constant")
        first = bool(a.get("constant_first"))
        inputs, (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            if const is None:
                x, y = env[inputs[0]], env[inputs[1]]
            else:
                x, y = (const, env[inputs[0]]) if first else (env[inputs[0]], const)
            env[dst] = kernel(x, y, *args)

        return fn

    def _prep_lut(self, index: int, step: Step):
        table = np.ascontiguousarray(step.arrays["table"])
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            env[dst] = kernels.lut(env[src], table)

        return fn

    def _prep_clamp(self, index: int, step: Step):
        lo, hi = step.attrs["lo"], step.attrs["hi"]
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            x = env[src]
            env[dst] = np.clip(x, np.array(lo, x.dtype), np.array(hi, x.dtype))

        return fn

    def _prep_maxpool(self, index: int, step: Step):
        a = step.attrs
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            env[dst] = kernels.maxpool2d(env[src], a["kernel"], a["stride"], a["padding"], a["dilation"])

        return fn

    def _prep_avgpool(self, index: int, step: Step):
        a = step.attrs
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            env[dst] = kernels.avgpool2d(
                env[src], a["kernel"], a["x_scale"], a["x_zero_point"], a["y_scale"], a["y_zero_point"],
                stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                count_include_pad=a["count_include_pad"],
            )  # fmt: skip

        return fn

    def _prep_global_avgpool(self, index: int, step: Step):
        a = step.attrs
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            env[dst] = kernels.global_avgpool(
                env[src], a["x_scale"], a["x_zero_point"], a["y_scale"], a["y_zero_point"]
            )

        return fn

    def _prep_concat(self, index: int, step: Step):
        axis = step.attrs["axis"]
        inputs, (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            env[dst] = np.concatenate([env[n] for n in inputs], axis=axis)

        return fn

    def _node(self, step: Step) -> tuple[Node, list[str], list[Any]]:
        node = Node(
            step.attrs["node_op"],
            step.node,
            list(step.inputs),
            list(step.outputs),
            dict(step.attrs["node_attrs"]),
        )
        constants = [step.arrays.get(f"input{i}") for i in range(len(step.inputs))]
        return node, step.inputs, constants

    def _prep_move(self, index: int, step: Step):
        node, inputs, constants = self._node(step)
        (dst,) = step.outputs

        def fn(env, buffers):
            values = [env[n] if n else c for n, c in zip(inputs, constants)]
            (env[dst],) = evaluate_node(node, values)

        return fn

    def _prep_embed(self, index: int, step: Step):
        table = step.arrays["table"]
        axis = int(step.attrs["axis"])
        qp = QuantParams.from_dict(step.attrs)
        (src,), (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            idx = np.asarray(env[src], dtype=np.int64)
            idx = np.where(idx < 0, idx + table.shape[axis], idx)
            if idx.size and (idx.min() < 0 or idx.max() >= table.shape[axis]):
                raise ModelInputError(
                    f"{step.node}: indices out of range for a table of {table.shape[axis]} rows"
                )
            rows = np.ascontiguousarray(np.take(table, idx, axis=axis))
            env[dst] = kernels.quantize(rows, qp.scale, qp.zero_point, qp.numpy_dtype)

        return fn

    def _float_step(self, step: Step, compute: Callable[[list[Any]], np.ndarray]):
        in_params = [None if p is None else QuantParams.from_dict(p) for p in step.attrs["in_params"]]
        out = QuantParams.from_dict(step.attrs["out_params"])
        constants = [step.arrays.get(f"input{i}") for i in range(len(step.inputs))]
        inputs, (dst,) = step.inputs, step.outputs

        def fn(env, buffers):
            values = []
            for name, qp, const in zip(inputs, in_params, constants):
                if not name:
                    values.append(const)
                elif qp is None:
                    values.append(env[name])
                else:
                    values.append(kernels.dequantize(env[name], qp.scale, qp.zero_point))
            y = np.ascontiguousarray(compute(values), dtype=np.float32)
            env[dst] = kernels.quantize(y, out.scale, out.zero_point, out.numpy_dtype)

        return fn

    def _prep_float(self, index: int, step: Step):
        node, _, _ = self._node(step)
        return self._float_step(step, lambda values: evaluate_node(node, values)[0])

    def _prep_matmul(self, index: int, step: Step):
        return self._float_step(step, lambda v: np.matmul(v[0].astype(np.float32), v[1].astype(np.float32)))

    def _prep_softmax(self, index: int, step: Step):
        axis = int(step.attrs["node_attrs"].get("axis", -1))

        def compute(values):
            x = np.moveaxis(values[0], axis, -1)
            return np.moveaxis(kernels.softmax(x), -1, axis)

        return self._float_step(step, compute)

    def _prep_layernorm(self, index: int, step: Step):
        attrs = step.attrs["node_attrs"]
        axis = int(attrs.get("axis", -1))
        eps = float(attrs.get("epsilon", 1e-5))

        def compute(values):
            x = values[0]
            gamma = values[1] if len(values) > 1 else None
            beta = values[2] if len(values) > 2 else None
            start = axis % x.ndim
            cols = int(np.prod(x.shape[start:]))
            norm_shape = x.shape[start:]

            def flat(v):
                return (
                    None
                    if v is None
                    else np.broadcast_to(np.asarray(v, np.float32), norm_shape).reshape(cols)
                )

            y = kernels.layernorm(x.reshape(-1, cols), flat(gamma), flat(beta), eps)
            return y.reshape(x.shape)

        return self._float_step(step, compute)


def _aligned(value: np.ndarray) -> np.ndarray:
    """A 64-byte-aligned copy of a packed buffer read from disk."""
    from edge_runtime._native import aligned_empty

    out = aligned_empty(value.nbytes)
    out[:] = value.reshape(-1).view(np.uint8)
    return out
