"""The Open Inference Protocol's gRPC API: KServe v2 / Triton ``inference.GRPCInferenceService``.

What ``tritonclient.grpc`` (and KServe's and Triton's other gRPC clients) speak, served by
``edge serve --grpc HOST:PORT`` on grpc.aio in the same event loop as the HTTP app, over the
same :class:`~edge_runtime.serve.manager.ModelManager`: the same models, batchers, limits
and metrics, one inference path (:meth:`ModelManager.infer`) and one set of input checks
(:class:`~edge_runtime.serve.protocol.InputsBuilder`).

==================  =====================================================================
RPC                 answer
==================  =====================================================================
``ServerLive``      ``live`` (true while the process answers)
``ServerReady``     ``ready``: models loaded, not draining (as ``GET /v2/health/ready``)
``ModelReady``      ``ready``: false for an unknown model or version, or while draining
``ServerMetadata``  name, version, extensions
``ModelMetadata``   versions, platform, inputs and outputs (-1: a dynamic dimension)
``ModelConfig``     Triton's model configuration (as ``GET /v2/models/{m}/config``)
``ModelInfer``      inputs as ``raw_input_contents`` (one per input, in order) or typed
                    ``contents``; outputs always as ``raw_output_contents``, as Triton does
==================  =====================================================================

Other RPCs (streaming, statistics, repository, shared memory) answer UNIMPLEMENTED: the
repository API is HTTP's. Errors are gRPC status codes with the message as details
(``ServeError.grpc_code``: NOT_FOUND unknown model, INVALID_ARGUMENT bad shape or datatype,
RESOURCE_EXHAUSTED queue full or over a size limit, UNAVAILABLE loading or draining).
Bounds: a message over ``max_request_mib`` is refused by gRPC itself (RESOURCE_EXHAUSTED)
before it is decoded; ``grpc_max_concurrent_rpcs`` calls run at once, beyond them
RESOURCE_EXHAUSTED.

The message classes are tritonclient's generated ones (``tritonclient.grpc.service_pb2``:
the ``grpc`` extra, ``pip install 'edge-runtime[grpc]'``); the handlers are registered as a
generic handler so that no generated servicer base class is needed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb

from edge_runtime._version import __version__
from edge_runtime.errors import EdgeRuntimeError, ModelInputError
from edge_runtime.serve.app import SERVER_NAME, model_config_doc, not_ready_reason
from edge_runtime.serve.errors import InferenceRequestError, ServeError
from edge_runtime.serve.manager import LoadedVersion, ModelManager
from edge_runtime.serve.protocol import (
    InferRequest,
    InputsBuilder,
    RequestedOutput,
    RequestLimits,
    TensorSpecLike,
    datatype_of,
    dtype_of,
    requested_output,
    wire_bytes,
)

__all__ = [
    "EXTENSIONS",
    "SERVICE",
    "GrpcApi",
    "encode_grpc_response",
    "grpc_status",
    "parse_grpc_request",
    "start_grpc_server",
]

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ("model_configuration",)  # the repository and binary extensions are HTTP's

# The typed ``contents`` field of each datatype (the protocol's InferTensorContents). FP16 has
# none: it travels as raw_input_contents only.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_SHARED_MEMORY = "shared_memory_region"

# Typed values above this are decoded on a thread, so that the loop keeps answering meanwhile
# (raw contents cost nothing to decode: a numpy view of the message's bytes).
_DECODE_INLINE_VALUES = 1 << 16


def _bad(message: str) -> InferenceRequestError:
    return InferenceRequestError(message)


def _typed_values(request: pb.ModelInferRequest) -> int:
    return sum(len(value) for t in request.inputs for _, value in t.contents.ListFields())


def parse_grpc_request(
    request: pb.ModelInferRequest,
    input_specs: tuple[TensorSpecLike, ...],
    output_names: list[str],
    limits: RequestLimits,
    *,
    off_loop: bool = False,
) -> InferRequest:
    """A ModelInferRequest as an :class:`InferRequest`, checked as the HTTP forms are.

    Raises InferenceRequestError naming the field at fault (RequestTooLargeError over ``limits``).
    """
    if not request.inputs:
        raise _bad("'inputs' must be a non-empty list")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise _bad(
            f"raw_input_contents holds {len(raw)} tensor(s) for {len(request.inputs)} input(s): "
            "give one per input, in the order of inputs, or none"
        )
    builder = InputsBuilder(input_specs, limits, off_loop)
    builder.declare([list(t.shape) for t in request.inputs])
    for i, t in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if _SHARED_MEMORY in t.parameters:
            raise _bad(f"input {t.name!r}: the shared memory extension is not supported")
        filled = [field.name for field, _ in t.contents.ListFields()]
        if raw:
            if filled:
                raise _bad(f"input {t.name!r} has both raw_input_contents[{i}] and contents.{filled[0]}")
            builder.add(
                where, t.name, list(t.shape), t.datatype, raw=raw[i], raw_field=f"raw_input_contents[{i}]"
            )
            continue
        dtype_of(t.datatype)  # an unsupported datatype is named as such
        field = _CONTENTS_FIELD.get(t.datatype)
        if field is None:
            raise _bad(f"input {t.name!r}: {t.datatype} has no typed contents; send raw_input_contents")
        others = [f for f in filled if f != field]
        if others:
            raise _bad(
                f"input {t.name!r} of {t.datatype} must hold its values in contents.{field}, not {others[0]}"
            )
        builder.add(where, t.name, list(t.shape), t.datatype, data=list(getattr(t.contents, field)))
    inputs = builder.done()
    outputs = None
    if request.outputs:
        outputs = []
        for i, o in enumerate(request.outputs):
            if _SHARED_MEMORY in o.parameters:
                raise _bad(f"output {o.name!r}: the shared memory extension is not supported")
            name = requested_output(f"outputs[{i}]", o.name, output_names, o.parameters)
            outputs.append(RequestedOutput(name, binary=True))
    return InferRequest(inputs, request.id or None, {}, outputs, binary_output=True)


def encode_grpc_response(
    model_name: str, model_version: str, request: InferRequest, results: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """The ModelInferResponse: every requested output (default: all) in ``raw_output_contents``."""
    names = [o.name for o in request.outputs] if request.outputs else list(results)
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request.id or "")
    for name in names:
        array = np.asarray(results[name])
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(wire_bytes(array))
    return response


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details a failed call is answered with (HTTP's mapping, in gRPC codes)."""
    if isinstance(exc, ServeError):
        return grpc.StatusCode[exc.grpc_code], str(exc)
    if isinstance(exc, (ModelInputError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, EdgeRuntimeError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _answered(method: Handler) -> Handler:
    """Every failure of an RPC as a gRPC status (the HTTP middleware's counterpart)."""

    @functools.wraps(method)
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, (EdgeRuntimeError, ValueError)):
                log.exception("gRPC %s failed", method.__name__)
            code, details = grpc_status(exc)
            await context.abort(code, details)

    return call


class GrpcApi:
    """The RPCs over a model manager; ``state`` is the HTTP app's (``started``, ``draining``)."""

    def __init__(self, manager: ModelManager, state: dict[str, Any], limits: RequestLimits) -> None:
        self.manager = manager
        self.state = state
        self.limits = limits

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not_ready_reason(self.manager, self.state) is None)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            self.manager.get(request.name, request.version or None)
        except ServeError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self.state["draining"])

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        doc = self.manager.metadata(request.name, request.version or None)
        tensors = {
            key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc[key]]
            for key in ("inputs", "outputs")
        }
        return pb.ModelMetadataResponse(
            name=doc["name"], versions=doc["versions"], platform=doc["platform"], **tensors
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        doc = model_config_doc(self.manager.get(request.name, request.version or None))
        params = doc.pop("parameters")
        doc["parameters"] = {"source": {"string_value": params["source"]}}
        config = json_format.ParseDict(doc, model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        name = request.model_name

        async def decode(loaded: LoadedVersion) -> InferRequest:
            args = (request, loaded.inputs, loaded.output_names, self.limits)
            if _typed_values(request) > _DECODE_INLINE_VALUES:
                parse = functools.partial(parse_grpc_request, *args, off_loop=True)
                return await asyncio.get_running_loop().run_in_executor(None, parse)
            return parse_grpc_request(*args)

        def encode(
            loaded: LoadedVersion, parsed: InferRequest, results: dict[str, np.ndarray]
        ) -> pb.ModelInferResponse:
            return encode_grpc_response(name, loaded.version, parsed, results)

        return await self.manager.infer(name, request.model_version or None, decode, encode)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's RPCs as one generic handler (the others answer UNIMPLEMENTED)."""
        rpcs = (
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelConfig",
            "ModelInfer",
        )
        handlers = {}
        for rpc in rpcs:
            method = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name[rpc]
            request_cls = getattr(pb, method.input_type.name)
            response_cls = getattr(pb, method.output_type.name)
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                _answered(getattr(self, rpc)),
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def start_grpc_server(
    api: GrpcApi, host: str, port: int, max_request_mib: int, max_concurrent_rpcs: int
) -> tuple[grpc.aio.Server, int]:
    """Serve ``api`` on ``host:port`` in the running event loop; the server and its bound port.

    Raises OSError (its message names the address) when the address cannot be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_request_mib * 1024 * 1024),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on the same port fails, as HTTP's does
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers((api.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"{address} (gRPC): {exc}") from None
    if not bound:
        raise OSError(f"{address} (gRPC): the port could not be bound")
    await server.start()
    return server, bound
