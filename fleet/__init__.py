"""The fleet: a manager that rolls signed model packages out to device agents over MQTT.

Modules, one concept each: :mod:`fleet.protocol` (topics and message schemas,
the one definition of the wire format), :mod:`fleet.agent` (the device side),
:mod:`fleet.targets` (the agent's hook into the runtime), :mod:`fleet.queue`
(the durable outbox), :mod:`fleet.manager` (registry, packages, rollouts,
HTTP API), :mod:`fleet.broker` (embedded broker), :mod:`fleet.discovery`
(zeroconf). See ``docs/fleet.md`` and ``docs/mqtt-protocol.md``.
"""

from fleet.errors import (
    BrokerError,
    CertificatePinError,
    ConflictError,
    DigestMismatchError,
    DiscoveryError,
    DownloadError,
    FleetError,
    NotFoundError,
    ProtocolError,
    UpdateError,
)
from fleet.protocol import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "BrokerError",
    "CertificatePinError",
    "ConflictError",
    "DigestMismatchError",
    "DiscoveryError",
    "DownloadError",
    "FleetError",
    "NotFoundError",
    "ProtocolError",
    "UpdateError",
]
