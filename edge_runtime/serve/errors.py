"""Typed errors of the serving layer, each with the HTTP status it is answered with.

All derive from :class:`edge_runtime.errors.EdgeRuntimeError` through
:class:`ServeError`, and from the matching builtin::

    EdgeRuntimeError
    └── ServeError                                  500
        ├── ServeConfigError (ValueError)           a config file or flag that cannot be used
        ├── ModelUnavailableError (LookupError)     404  unknown model or version
        ├── ModelNotReadyError (RuntimeError)       503  known, but loading, unloaded or shutting down
        ├── InferenceRequestError (ValueError)      400  bad JSON, tensor, shape, datatype or output name
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
    "ModelNotReadyError",
    "ModelUnavailableError",
    "OverloadedError",
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
