"""The HTTP routes: the Open Inference Protocol (KServe v2) REST API on aiohttp.

=========================================================  ===========================================
``GET  /v2``                                               server metadata (name, version, extensions)
``GET  /v2/health/live``, ``/v2/health/ready``             liveness, readiness (503 until loaded / draining)
``GET  /v2/models/{m}[/versions/{v}]``                     model metadata
``GET  /v2/models/{m}[/versions/{v}]/ready``               model readiness
``GET  /v2/models/{m}[/versions/{v}]/config``              batching config (Triton's model_configuration)
``POST /v2/models/{m}[/versions/{v}]/infer``               inference, JSON or binary tensor data
``POST /v2/repository/index``                              models and their state (Triton's repository ext.)
``POST /v2/repository/models/{m}/load``                    load or hot-swap: ``{"parameters": {"path": ...}}``
``POST /v2/repository/models/{m}/unload``                  stop serving a model (or one kept version:
                                                           ``{"parameters": {"version": ...}}``)
``GET  /metrics``                                          Prometheus text format
=========================================================  ===========================================

Errors are answered as ``{"error": "<message>"}`` with the status of the
:mod:`edge_runtime.serve.errors` class raised. Inference runs on the
batcher's threads; the event loop only parses, queues and answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web

from edge_runtime._version import __version__
from edge_runtime.errors import EdgeRuntimeError, ModelInputError
from edge_runtime.package._json import JsonLimits, loads_bounded
from edge_runtime.serve.errors import (
    InferenceRequestError,
    ModelNotReadyError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServeError,
)
from edge_runtime.serve.manager import LoadedVersion, ModelManager
from edge_runtime.serve.metrics import CONTENT_TYPE
from edge_runtime.serve.protocol import (
    HEADER_LENGTH,
    InferRequest,
    RequestLimits,
    encode_infer_response,
    parse_infer_request,
)

__all__ = ["EXTENSIONS", "SERVER_NAME", "create_app"]

log = logging.getLogger(__name__)

SERVER_NAME = "edge-runtime"
EXTENSIONS = ("binary_tensor_data", "model_repository", "model_configuration")

MANAGER: web.AppKey[ModelManager] = web.AppKey("manager", ModelManager)
STATE: web.AppKey[dict[str, Any]] = web.AppKey("state", dict)
LIMITS: web.AppKey[RequestLimits] = web.AppKey("limits", RequestLimits)
BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout_s", float)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body_bytes", int)

# Defaults of ServeConfig.header_timeout_s and body_timeout_s.
HEADER_TIMEOUT_S = 15.0
BODY_TIMEOUT_S = 60.0
# The repository API's small JSON bodies.
_ADMIN_JSON = JsonLimits(max_depth=16, max_number_chars=64, max_values=1024)

# Bodies above this are parsed on a thread so the loop keeps answering health checks meanwhile.
_PARSE_INLINE_BYTES = 256 * 1024


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure in the protocol's error format."""
    try:
        return await handler(request)
    except ServeError as exc:
        response = _error(exc.http_status, str(exc))
        if exc.http_status in (408, 413):
            response.force_close()  # the rest of the body is not worth reading
        return response
    except (ModelInputError, ValueError) as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = _error(
                exc.status, exc.reason if exc.text is None else exc.text.removeprefix(f"{exc.status}: ")
            )
            if exc.status == 413:
                response.force_close()
            return response
        raise
    except EdgeRuntimeError as exc:
        return _error(500, str(exc))
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"{type(exc).__name__}: {exc}")


async def read_body(request: web.Request) -> bytes:
    """The request body, within the size limit and the body read timeout.

    A ``Content-Length`` over the limit is refused at once (413), before a byte of
    the body is read; a body that does not arrive within ``body_timeout_s`` is
    refused with 408. Both answers close the connection.
    """
    limit = request.app[MAX_BODY]
    announced = request.content_length
    if announced is not None and announced > limit:
        raise RequestTooLargeError(
            f"the request announces {announced} bytes, over the limit of {limit} (max_request_mib)"
        )
    timeout = request.app[BODY_TIMEOUT]
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {timeout:g} s (body_timeout_s)"
        ) from None


def _model_key(request: web.Request) -> tuple[str, str | None]:
    return request.match_info["name"], request.match_info.get("version")


# --- server ---


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


def not_ready_reason(manager: ModelManager, state: dict[str, Any]) -> str | None:
    """Why the server is not ready (HTTP and gRPC readiness), or None when it is."""
    if state["draining"]:
        return "the server is shutting down"
    if not state["started"]:
        return "not ready: loading models"
    if not manager.ready():
        return f"not ready: model(s) not loaded: {', '.join(manager.missing())}"
    return None


async def ready(request: web.Request) -> web.Response:
    reason = not_ready_reason(request.app[MANAGER], request.app[STATE])
    if reason is not None:
        return _error(503, reason, ready=False)
    return web.json_response({"ready": True})


# --- models ---


async def model_metadata(request: web.Request) -> web.Response:
    return web.json_response(request.app[MANAGER].metadata(*_model_key(request)))


async def model_ready(request: web.Request) -> web.Response:
    name, version = _model_key(request)
    loaded = request.app[MANAGER].get(name, version)  # 404 when unknown
    if request.app[STATE]["draining"]:
        raise ModelNotReadyError(f"model {name!r} is shutting down")
    return web.json_response({"name": name, "ready": True, "version": loaded.version})


def model_config_doc(loaded: LoadedVersion) -> dict[str, Any]:
    """Triton's model configuration of a loaded version (HTTP ``.../config`` and gRPC ModelConfig)."""
    b = loaded.batching
    meta = loaded.metadata()
    return {
        "name": loaded.name,
        "platform": loaded.platform,
        "max_batch_size": b.max_batch_size if loaded.batchable else 0,
        "dynamic_batching": {
            "preferred_batch_size": list(b.preferred_batch_sizes),
            "max_queue_delay_microseconds": b.max_queue_delay_us,
            "default_queue_policy": {"max_queue_size": b.max_queue_size},
        },
        "input": [
            {"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"]}
            for t in meta["inputs"]
        ],
        "output": [
            {"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"]}
            for t in meta["outputs"]
        ],
        "parameters": {"source": str(loaded.path), "batching": b.to_dict()},
    }


async def model_config(request: web.Request) -> web.Response:
    return web.json_response(model_config_doc(request.app[MANAGER].get(*_model_key(request))))


async def infer(request: web.Request) -> web.Response:
    manager: ModelManager = request.app[MANAGER]
    name, version = _model_key(request)

    async def decode(loaded: LoadedVersion) -> InferRequest:
        header = request.headers.get(HEADER_LENGTH)
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise InferenceRequestError(f"{HEADER_LENGTH} must be an integer, got {header!r}") from None
        body = await read_body(request)
        args = (body, header_length, loaded.inputs, loaded.output_names, request.app[LIMITS])
        if len(body) > _PARSE_INLINE_BYTES:
            parse = functools.partial(parse_infer_request, *args, off_loop=True)
            return await asyncio.get_running_loop().run_in_executor(None, parse)
        return parse_infer_request(*args)

    def encode(
        loaded: LoadedVersion, parsed: InferRequest, results: dict[str, np.ndarray]
    ) -> tuple[bytes, dict[str, str]]:
        return encode_infer_response(name, loaded.version, parsed, results)

    payload, headers = await manager.infer(name, version, decode, encode)
    return web.Response(body=payload, headers=headers)


# --- repository (admin) ---


async def repository_index(request: web.Request) -> web.Response:
    return web.json_response(request.app[MANAGER].index())


async def _parameters(request: web.Request) -> dict[str, Any]:
    """``parameters`` of a repository request body (an empty body has none)."""
    body = await read_body(request)
    if not body.strip():
        return {}
    doc = loads_bounded(body, _ADMIN_JSON, InferenceRequestError, "request body")
    if not isinstance(doc, dict):
        raise InferenceRequestError("request body must be a JSON object")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InferenceRequestError("parameters must be a JSON object")
    return params


async def repository_load(request: web.Request) -> web.Response:
    """Load or hot-swap a model: from ``parameters.path``, else from where it was loaded last.

    The path may be a package file or a model store directory (``models/<name>/current``):
    loading again without a path after the store switched ``current`` swaps to the new version.
    """
    manager: ModelManager = request.app[MANAGER]
    name = request.match_info["name"]
    path = (await _parameters(request)).get("path")
    if path is None:
        path = manager.path_of(name)
        if path is None:
            raise InferenceRequestError(f"model {name!r} was never loaded: give parameters.path")
    elif not isinstance(path, str):
        raise InferenceRequestError("parameters.path must be a string")
    log.info("repository API: load %s from %s (from %s)", name, path, request.remote)
    result = await asyncio.get_running_loop().run_in_executor(None, manager.swap, name, path)
    if not result.ok:
        return _error(400, f"failed to load {name!r}: {result.error}", **result.to_dict())
    return web.json_response(result.to_dict())


async def repository_unload(request: web.Request) -> web.Response:
    """Unload a model, or with ``parameters.version`` one of its kept (non-current) versions."""
    version = (await _parameters(request)).get("version")
    if version is not None and not isinstance(version, str):
        raise InferenceRequestError("parameters.version must be a string")
    request.app[MANAGER].unload(request.match_info["name"], version)
    return web.json_response({})


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.get_running_loop().run_in_executor(None, request.app[MANAGER].metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_app(
    manager: ModelManager,
    *,
    repository_api: bool = True,
    max_request_mib: int = 64,
    limits: RequestLimits | None = None,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> web.Application:
    """The aiohttp application serving ``manager``'s models.

    ``app[STATE]`` holds ``started`` (set once the initial models are
    loaded) and ``draining`` (set on shutdown): both feed the readiness checks.

    Bounds on what a client can hold or make the server build: ``max_request_mib``
    (bytes of a body; a larger ``Content-Length`` is refused before reading),
    ``limits`` (tensor elements, JSON values and depth), ``body_timeout_s`` (to
    receive a body) and ``header_timeout_s``: a connection that has not sent a
    complete request head this long after it opened, or after its previous
    response, is closed (aiohttp's keep-alive timer, which also closes idle
    keep-alive connections).
    """
    app = web.Application(
        middlewares=[_errors],
        client_max_size=max_request_mib * 1024 * 1024,
        handler_args={"keepalive_timeout": header_timeout_s},
    )
    app[MANAGER] = manager
    app[LIMITS] = limits or RequestLimits()
    app[BODY_TIMEOUT] = float(body_timeout_s)
    app[MAX_BODY] = max_request_mib * 1024 * 1024
    app[STATE] = {"started": True, "draining": False}
    r = app.router
    # Routes are matched in the order they are added: inference, the hot path, first.
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_post(prefix + "/infer", infer)
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/", server_metadata)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_get(prefix, model_metadata)
        r.add_get(prefix + "/ready", model_ready)
        r.add_get(prefix + "/config", model_config)
    if repository_api:
        r.add_post("/v2/repository/index", repository_index)
        r.add_post("/v2/repository/models/{name}/load", repository_load)
        r.add_post("/v2/repository/models/{name}/unload", repository_unload)
    r.add_get("/metrics", metrics)
    from edge_runtime.serve.openai import add_routes as add_llm_routes  # /v1/..., /v2/.../generate

    add_llm_routes(app)
    return app
