"""Typed errors of the device profiles (the bottom of the import graph: imports nothing of ours).

::

    DeviceProfileError
    └── ProfileError (RuntimeError)   a device profile that cannot be found or parsed
"""

from __future__ import annotations

__all__ = ["DeviceProfileError", "ProfileError"]


class DeviceProfileError(Exception):
    """Base of every error ``device_profiles`` raises on purpose."""


class ProfileError(RuntimeError, DeviceProfileError):
    """A device profile that cannot be found or parsed."""
