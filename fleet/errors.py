"""Typed errors of the fleet manager and device agent.

Every error raised on purpose by ``fleet`` derives from :class:`FleetError`;
specific errors also derive from the matching builtin::

    FleetError
    ├── AgentOptionsError (ValueError)   agent settings that cannot start an agent (ids, files, table)
    ├── ProtocolError (ValueError)       a message that does not follow docs/mqtt-protocol.md
    ├── BrokerError (ConnectionError)    the broker cannot be reached or refused us
    │   └── CertificatePinError          the broker's TLS certificate is not the pinned one
    ├── DownloadError (RuntimeError)     a package transfer that failed or stalled
    │   ├── DigestMismatchError          a downloaded file whose sha256 differs from the deployment's
    │   ├── DownloadTooLargeError        a package over the device's size limit (refused, or cut off)
    │   └── InsufficientSpaceError       the state directory's file system has no room for it
    ├── UpdateError (RuntimeError)       an OTA step failed; ``step`` says which (verify, selftest, ...)
    │   └── DowngradeError               a version lower than the committed one, not allowed
    ├── DiscoveryError (LookupError)     no manager answered on DNS-SD in time
    ├── NotFoundError (LookupError)      a device, package or deployment the manager does not know
    ├── ConflictError (ValueError)       a request the manager's current state does not allow
    │   └── ManagerLockedError           another manager already runs on this state directory
    └── AuthError (PermissionError)      a missing, unreadable or wrong HTTP API token
"""

from __future__ import annotations

__all__ = [
    "AgentOptionsError",
    "AuthError",
    "BrokerError",
    "CertificatePinError",
    "ConflictError",
    "DigestMismatchError",
    "DiscoveryError",
    "DowngradeError",
    "DownloadError",
    "DownloadTooLargeError",
    "FleetError",
    "InsufficientSpaceError",
    "ManagerLockedError",
    "NotFoundError",
    "ProtocolError",
    "UpdateError",
]


class FleetError(Exception):
    """Base of every error the fleet package raises on purpose."""


class AgentOptionsError(ValueError, FleetError):
    """Agent settings that cannot start an agent: a bad id, broker URL, trust store or password file."""


class ProtocolError(ValueError, FleetError):
    """A malformed, unknown or wrongly versioned MQTT message; the receiver logs and drops it."""


class BrokerError(ConnectionError, FleetError):
    """The broker could not be reached, or it refused the credentials."""


class CertificatePinError(BrokerError):
    """The broker's certificate does not hash to the pinned sha256: the connection is dropped before login."""


class DownloadError(RuntimeError, FleetError):
    """A package transfer that failed, stalled past its timeout or was cancelled."""


class DigestMismatchError(DownloadError):
    """The downloaded bytes do not hash to the sha256 the deployment named."""


class DownloadTooLargeError(DownloadError):
    """The package is bigger than the device accepts (``max_package_bytes``), or the manager sent more
    bytes than the deployment announced; refused before (or as soon as) the limit is crossed."""


class InsufficientSpaceError(DownloadError):
    """The file system of the agent's state directory lacks room for the download and its install."""


class UpdateError(RuntimeError, FleetError):
    """One OTA step failed; the device rolled back. ``step`` names it, the message says why."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class DiscoveryError(LookupError, FleetError):
    """No fleet manager was found by DNS-SD before the timeout."""


class NotFoundError(LookupError, FleetError):
    """A device, package or deployment the manager does not know."""


class ConflictError(ValueError, FleetError):
    """A request the current state does not allow (e.g. resuming an aborted rollout)."""


class DowngradeError(UpdateError):
    """The package's version is lower than the committed one and the deployment does not allow it."""

    def __init__(self, reason: str) -> None:
        super().__init__("verify", reason)


class ManagerLockedError(ConflictError):
    """Another fleet manager holds this state directory's lock: one manager per state (and fleet)."""


class AuthError(PermissionError, FleetError):
    """The manager's HTTP API token is missing, unreadable or not the one the manager expects."""
