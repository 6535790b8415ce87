"""Typed errors of the serving layer, each with the HTTP status it is answered with.

All derive from :class:`edge_runtime.errors.EdgeRuntimeError` through
:class:`ServeError`, and from the matching builtin::

    EdgeRuntimeError
    └── ServeError                                  500
        ├── ServeConfigError (ValueError)           a config file or flag that cannot be used
        ├── ModelUnavailableError (LookupError)     404  unknown model or version
        ├── ModelNotReadyError (RuntimeError)       503  known, but loading, unloaded or shutting down
        ├── InferenceRequestError (ValueError)      400  bad JSON, tensor, shape, datatype or output name
        │   └── RequestTooLargeError                413  over the bytes, elements or JSON values limit
        ├── RequestTimeoutError (TimeoutError)      408  the body did not arrive in time
        ├── ModelNameError (ValueError)             400  a model name that is not one safe path segment
        ├── OverloadedError (RuntimeError)          503  the model's queue is full (back-pressure)
        └── ModelLoadError (RuntimeError)           400  a package that failed to load or to self-test

The HTTP layer answers every one of them in the protocol's error format,
``{"error": "<message>"}``, so messages are written for the person reading them.
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
    """Base of the serving errors; ``http_status`` is the status code the server answers with."""

    http_status: int = 500


class ServeConfigError(ValueError, ServeError):
    """A serving config file or flag that cannot be used; names the field."""


class ModelUnavailableError(LookupError, ServeError):
    """A model name or version this server does not serve."""

    http_status = 404


class ModelNotReadyError(RuntimeError, ServeError):
    """A model that exists but cannot take requests now (loading, unloaded, server draining)."""

    http_status = 503


class InferenceRequestError(ValueError, ServeError):
    """A malformed inference request: JSON, tensor data, shape, datatype or a requested output."""

    http_status = 400


class OverloadedError(RuntimeError, ServeError):
    """The model's request queue is full; the client should retry later."""

    http_status = 503


class ModelLoadError(RuntimeError, ServeError):
    """A package that could not be loaded or failed its self-test; the old version keeps serving."""

    http_status = 400


class RequestTooLargeError(InferenceRequestError):
    """A request over a size limit: its bytes, its tensors' elements or its JSON values."""

    http_status = 413


class RequestTimeoutError(TimeoutError, ServeError):
    """A request whose body did not arrive within the body read timeout."""

    http_status = 408


class ModelNameError(ValueError, ServeError):
    """A model name that is not one path segment of ``[A-Za-z0-9._-]`` (at most 128 characters)."""

    http_status = 400
