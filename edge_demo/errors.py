"""Typed errors of ``edge demo``; all are :class:`~edge_runtime.errors.EdgeRuntimeError`, so ``edge``
prints them on one line and exits 1."""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError

__all__ = ["DemoError", "DemoStepError", "DemoTimeoutError", "InjectedFaultError"]


class DemoError(EdgeRuntimeError):
    """The demo could not complete."""


class DemoStepError(DemoError):
    """A step of the demo failed; the message names the step and where its log is."""


class DemoTimeoutError(DemoError):
    """Something the demo waited for did not happen in time."""


class InjectedFaultError(EdgeRuntimeError):
    """The deliberate fault of a simulated device (``--fault-version``): never raised outside the demo."""
