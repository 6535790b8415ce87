"""Broker settings and a configured paho-mqtt 2.x client, shared by the agent and the manager.

TLS trust, in order of what is configured (``mqtts://`` only):

- ``ca_file``: the broker's chain must verify against it and name the host;
- ``tls_fingerprint``: the broker's certificate (DER) must hash to this sha256, checked right after
  the TLS handshake and *before* the MQTT CONNECT carrying the password is sent. With a CA file
  both must hold; without one the pin is the only trust anchor (like an SSH host key);
- neither: the system CAs.

A fingerprint found by zeroconf is only as trustworthy as the LAN's multicast DNS; on a network you
do not trust, configure the CA file or the fingerprint on the device.
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.errors import BrokerError, CertificatePinError

__all__ = [
    "BrokerConfig",
    "certificate_fingerprint",
    "make_client",
    "normalize_fingerprint",
    "peer_fingerprint",
]

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def certificate_fingerprint(der: bytes) -> str:
    """The sha256 of a DER certificate, 64 lowercase hex characters (the form zeroconf advertises)."""
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept ``AB:CD:...`` or any case; BrokerError unless it is a sha256."""
    value = text.replace(":", "").strip().lower()
    if not _HEX64.match(value):
        raise BrokerError(f"TLS fingerprint {text!r} is not a sha256 (64 hex characters)")
    return value


def peer_fingerprint(client: mqtt.Client) -> str | None:
    """The sha256 of the certificate the broker presented on ``client``'s live TLS connection, or None."""
    sock = client.socket()
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    return certificate_fingerprint(der) if der else None


class _PinnedSSLSocket(ssl.SSLSocket):
    """Checks the peer's certificate against the context's pin as soon as the handshake completes.

    paho wraps with ``do_handshake_on_connect=False`` and calls :meth:`do_handshake` itself, before
    it sends CONNECT: a mismatch closes the socket with no credentials sent.
    """

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        expected: str = self.context.pinned_sha256  # type: ignore[attr-defined]
        der = self.getpeercert(binary_form=True)
        actual = certificate_fingerprint(der) if der else "none"
        if actual != expected:
            self.close()
            error = CertificatePinError(
                f"the broker's certificate has sha256 {actual}, the pinned one is {expected}: refused"
            )
            log.error("%s", error)  # paho's network thread retries quietly; say why here
            raise error


class _PinningContext(ssl.SSLContext):
    sslsocket_class = _PinnedSSLSocket
    pinned_sha256: str


def _tls_context(ca_file: str | None, fingerprint: str | None) -> ssl.SSLContext:
    if fingerprint is None:
        return ssl.create_default_context(cafile=ca_file)
    ctx = _PinningContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.pinned_sha256 = fingerprint
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)  # CERT_REQUIRED and host name check by default
    else:
        # The pin is the trust anchor: no chain to verify, the exact certificate is checked instead.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to log in.

    ``url``: ``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS);
    user and password may be in the URL or given apart. ``ca_file`` and
    ``tls_fingerprint`` (sha256 of the broker's certificate, as zeroconf
    advertises it) set how the broker's certificate is trusted (module docstring).
    """

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    tls_fingerprint: str | None = None
    keepalive: int = 30

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise BrokerError(f"broker URL {self.url!r} must start with mqtt:// or mqtts://")
        return parts.port or (8883 if self.tls else 1883)

    @property
    def public_url(self) -> str:
        """The URL without user name or password: what may be shown, logged or advertised."""
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()

    def credentials(self) -> tuple[str | None, str | None]:
        parts = urlsplit(self.url)
        user = self.username or (unquote(parts.username) if parts.username else None)
        password = self.password or (unquote(parts.password) if parts.password else None)
        return user, password


def make_client(client_id: str, config: BrokerConfig, clean_session: bool = True, **kw: Any) -> mqtt.Client:
    """A paho client (callback API v2, MQTT 3.1.1 so that amqtt and mosquitto both work), not connected.

    ``clean_session=False`` keeps the subscriptions and queued QoS 1 messages
    at the broker while the client is away (the manager uses it so that
    telemetry sent during its restart waits for it).
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        **kw,
    )
    user, password = config.credentials()
    if user is not None:
        client.username_pw_set(user, password)
    fingerprint = normalize_fingerprint(config.tls_fingerprint) if config.tls_fingerprint else None
    if config.tls:
        client.tls_set_context(_tls_context(config.ca_file, fingerprint))
    elif fingerprint is not None:
        raise BrokerError(
            f"{config.url}: a TLS fingerprint is configured but the URL is plain mqtt://; use mqtts://"
        )
    # Reconnect quickly on loopback, back off to 10 s against a broker that is down for long.
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client.max_inflight_messages_set(64)
    client.max_queued_messages_set(0)
    return client
