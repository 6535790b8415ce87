"""``edge serve``: models over HTTP and gRPC with the Open Inference Protocol (KServe v2).

Parts, one module each: :mod:`~edge_runtime.serve.protocol` (the wire format),
:mod:`~edge_runtime.serve.batcher` (dynamic batching), :mod:`~edge_runtime.serve.manager`
(loading, self-test, hot swap, the one inference path), :mod:`~edge_runtime.serve.app` (HTTP routes),
:mod:`~edge_runtime.serve.grpc_api` (the gRPC API, with ``--grpc``),
:mod:`~edge_runtime.serve.server` (process lifecycle, signals, systemd),
:mod:`~edge_runtime.serve.metrics` (Prometheus). See ``docs/serving.md``.

Embedding (e.g. the fleet agent)::

    from edge_runtime.serve import ModelConfig, ServeConfig, ServerThread

    with ServerThread(ServeConfig(port=8000, models=(ModelConfig("digits", path),))) as srv:
        result = srv.manager.swap("digits", "digits-1.3.edgepkg")   # SwapResult
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edge_runtime.serve.batcher import BatchingConfig, DynamicBatcher
from edge_runtime.serve.config import ModelConfig, ServeConfig, load_config
from edge_runtime.serve.errors import (
    InferenceRequestError,
    ModelLoadError,
    ModelNameError,
    ModelNotReadyError,
    ModelUnavailableError,
    OverloadedError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServeConfigError,
    ServeError,
)
from edge_runtime.serve.protocol import ModelLike, TensorSpecLike

if TYPE_CHECKING:
    from edge_runtime.serve.manager import LoadedVersion, ModelManager, SwapResult
    from edge_runtime.serve.server import InferenceServer, ServerThread, serve

# Imported on first use, so that `edge --help` and the CLI parser need neither aiohttp
# nor prometheus-client.
_LAZY = {
    "LoadedVersion": "edge_runtime.serve.manager",
    "ModelManager": "edge_runtime.serve.manager",
    "SwapResult": "edge_runtime.serve.manager",
    "InferenceServer": "edge_runtime.serve.server",
    "ServerThread": "edge_runtime.serve.server",
    "serve": "edge_runtime.serve.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_runtime.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "BatchingConfig",
    "DynamicBatcher",
    "InferenceRequestError",
    "InferenceServer",
    "LoadedVersion",
    "ModelConfig",
    "ModelLike",
    "ModelLoadError",
    "ModelManager",
    "ModelNameError",
    "ModelNotReadyError",
    "ModelUnavailableError",
    "OverloadedError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "ServeConfig",
    "ServeConfigError",
    "ServeError",
    "ServerThread",
    "SwapResult",
    "TensorSpecLike",
    "load_config",
    "serve",
]
