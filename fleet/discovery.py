"""Zeroconf (DNS-SD) discovery: the manager advertises itself and its broker; agents browse.

Service type ``_edge-fleet._tcp.local.``, instance name ``<fleet>``, the port
is the manager's HTTP API, and the TXT record carries what an agent needs::

    v=1                       protocol version
    fleet=<fleet id>
    broker=mqtt(s)://host:port
    api=http://host:port
    tls_sha256=<hex>          sha256 of the broker's DER certificate (pinning), empty without TLS
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from fleet.errors import DiscoveryError
from fleet.mqtt import BrokerConfig
from fleet.protocol import PROTOCOL_VERSION

__all__ = ["SERVICE_TYPE", "Advertiser", "FoundManager", "discover", "find_broker"]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_edge-fleet._tcp.local."


@dataclass(frozen=True)
class FoundManager:
    fleet: str
    broker_url: str
    api_url: str
    tls_fingerprint: str | None


class Advertiser:
    """Registers the manager's service record until :meth:`stop`."""

    def __init__(
        self, fleet: str, broker_url: str, api_url: str, tls_fingerprint: str = "", address: str | None = None
    ) -> None:
        self.fleet, self.broker_url, self.api_url = fleet, broker_url, api_url
        self.tls_fingerprint = tls_fingerprint
        self.address = address or urlsplit(api_url).hostname or "127.0.0.1"
        self._zc = None
        self._info = None

    def start(self) -> Advertiser:
        from zeroconf import ServiceInfo, Zeroconf

        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"{self.fleet}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(self.address)],
            port=urlsplit(self.api_url).port or 80,
            properties={
                "v": str(PROTOCOL_VERSION),
                "fleet": self.fleet,
                "broker": self.broker_url,
                "api": self.api_url,
                "tls_sha256": self.tls_fingerprint,
            },
            server=f"edge-fleet-{self.fleet}.local.",
        )
        self._zc = Zeroconf(interfaces=[self.address])
        self._zc.register_service(self._info)
        log.info("advertising fleet %s as %s", self.fleet, self._info.name)
        return self

    def stop(self) -> None:
        if self._zc is not None:
            self._zc.unregister_service(self._info)
            self._zc.close()


def discover(fleet: str, timeout: float = 10.0, interface: str | None = None) -> FoundManager:
    """Browse for the manager of ``fleet``; DiscoveryError when none answers within ``timeout``."""
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    found: list[FoundManager] = []
    done = threading.Event()
    zc = Zeroconf(interfaces=[interface] if interface else None)  # type: ignore[arg-type]

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Added:
            return
        info = zeroconf.get_service_info(service_type, name, timeout=3000)
        if info is None:
            return
        txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        if txt.get("fleet") != fleet or txt.get("v") != str(PROTOCOL_VERSION):
            log.debug("ignoring %s: fleet %s, protocol %s", name, txt.get("fleet"), txt.get("v"))
            return
        found.append(FoundManager(fleet, txt["broker"], txt.get("api", ""), txt.get("tls_sha256") or None))
        done.set()

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        if not done.wait(timeout):
            raise DiscoveryError(
                f"no manager of fleet {fleet!r} answered on {SERVICE_TYPE} in {timeout:.0f} s"
            )
        return found[0]
    finally:
        browser.cancel()
        zc.close()


# Zeroconf is browsed again with back-off between these bounds (seconds) until a manager answers.
RETRY_S = (2.0, 30.0)


def find_broker(
    fleet: str, login: BrokerConfig, stopping: threading.Event, timeout: float = 10.0
) -> BrokerConfig | None:
    """The broker of ``fleet``'s manager, logging in with ``login``; None once ``stopping`` is set.

    Browses until a manager answers, waiting 2 s, 4 s, ... up to 30 s between tries. A configured
    TLS fingerprint wins over the advertised one. The one discovery of the agent, standalone
    (``edge agent``) or inside ``edge serve``.
    """
    delay = RETRY_S[0]
    while not stopping.is_set():
        try:
            found = discover(fleet, timeout=timeout)
        except DiscoveryError as exc:
            log.warning("%s; trying again in %.0f s", exc, delay)
            if stopping.wait(delay):
                return None
            delay = min(delay * 2, RETRY_S[1])
            continue
        log.info("found fleet %s manager at %s (broker %s)", found.fleet, found.api_url, found.broker_url)
        return dataclasses.replace(
            login, url=found.broker_url, tls_fingerprint=login.tls_fingerprint or found.tls_fingerprint
        )
    return None
