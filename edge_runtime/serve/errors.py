"""Typed errors of the serving layer, each with the HTTP status and the gRPC status code it is answered with.

All derive from :class:`edge_runtime.errors.EdgeRuntimeError` through
:class:`ServeError`, and from the matching builtin::

    EdgeRuntimeError                                HTTP gRPC
    └── ServeError                                  500  INTERNAL
        ├── ServeConfigError (ValueError)                                 a config file or flag that cannot be used
        ├── ModelUnavailableError (LookupError)     404  NOT_FOUND           unknown model or version
        ├── ModelNotReadyError (RuntimeError)       503  UNAVAILABLE         loading, unloaded, shutting down
        ├── InferenceRequestError (ValueError)      400  INVALID_ARGUMENT    bad JSON, tensor, shape, datatype
        │   └── RequestTooLargeError                413  RESOURCE_EXHAUSTED  over a bytes, elements, values limit
        ├── RequestTimeoutError (TimeoutError)      408  DEADLINE_EXCEEDED   the body did not arrive in time
        ├── ModelNameError (ValueError)             400  INVALID_ARGUMENT    not one safe path segment
        ├── OverloadedError (RuntimeError)          503  RESOURCE_EXHAUSTED  the model's queue is full
        └── ModelLoadError (RuntimeError)           400  FAILED_PRECONDITION a package failed to load/self-test

The HTTP layer answers every one of them in the protocol's error format,
``{"error": "<message>"}``, and the gRPC API with the status code above and the
message as its details, so messages are written for the person reading them.
"""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError

__all__ = [
    "InferenceRequestError",
    "ModelLoadError",
    "ModelNameError",
    "ModelNotReadyError",
    "ModelUnavailableError",
    "OverloadedError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "ServeConfigError",
    "ServeError",
]


class ServeError(EdgeRuntimeError):
    """Base of the serving errors; ``http_status`` is the HTTP status the server answers with,
    ``grpc_code`` the name of the ``grpc.StatusCode`` its gRPC API answers with."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"


class ServeConfigError(ValueError, ServeError):
    """A serving config file or flag that cannot be used; names the field."""


class ModelUnavailableError(LookupError, ServeError):
    """A model name or version this server does not serve."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelNotReadyError(RuntimeError, ServeError):
    """A model that exists but cannot take requests now (loading, unloaded, server draining)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class InferenceRequestError(ValueError, ServeError):
    """A malformed inference request: JSON, tensor data, shape, datatype or a requested output."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class OverloadedError(RuntimeError, ServeError):
    """The model's request queue is full; the client should retry later."""

    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"


class ModelLoadError(RuntimeError, ServeError):
    """A package that could not be loaded or failed its self-test; the old version keeps serving."""

    http_status = 400
    grpc_code = "FAILED_PRECONDITION"


class RequestTooLargeError(InferenceRequestError):
    """A request over a size limit: its bytes, its tensors' elements or its JSON values."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class RequestTimeoutError(TimeoutError, ServeError):
    """A request whose body did not arrive within the body read timeout."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class ModelNameError(ValueError, ServeError):
    """A model name that is not one path segment of ``[A-Za-z0-9._-]`` (at most 128 characters)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
