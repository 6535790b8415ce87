"""Typed errors of ``edge demo``, rooted at :class:`DemoError` (``edge`` prints them on one line and
exits 1)."""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError

__all__ = ["DemoError", "DemoStepError", "DemoTimeoutError", "InjectedFaultError"]


class DemoError(Exception):
    """The demo could not complete."""


class DemoStepError(DemoError):
    """A step of the demo failed; the message names the step and where its log is."""


class DemoTimeoutError(DemoError):
    """Something the demo waited for did not happen in time."""


class InjectedFaultError(EdgeRuntimeError, DemoError):
    """The deliberate fault of a simulated device (``--fault-version``): never raised outside the demo.

    Also an EdgeRuntimeError: the server reports it as a model failing, as it would a real one."""
