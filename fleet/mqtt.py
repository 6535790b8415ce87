"""Broker settings and a configured paho-mqtt 2.x client, shared by the agent and the manager."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.errors import BrokerError

__all__ = ["BrokerConfig", "make_client"]


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to log in.

    ``url``: ``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS);
    user and password may be in the URL or given apart. ``ca_file`` verifies
    the broker's certificate (the system CAs without it); ``tls_fingerprint``
    (as advertised by zeroconf) is carried but not yet enforced, so it is refused
    without a ``ca_file``.
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

    def credentials(self) -> tuple[str | None, str | None]:
        parts = urlsplit(self.url)
        user = self.username or (unquote(parts.username) if parts.username else None)
        password = self.password or (unquote(parts.password) if parts.password else None)
        return user, password


def make_client(client_id: str, config: BrokerConfig, clean_session: bool = True) -> mqtt.Client:
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
    )
    user, password = config.credentials()
    if user is not None:
        client.username_pw_set(user, password)
    if config.tls:
        # Always a verified chain: a fingerprint alone (from zeroconf) is not enough until pinning is
        # implemented, and turning verification off instead would let anyone on the LAN pose as the broker.
        if config.tls_fingerprint and not config.ca_file:
            raise BrokerError(
                f"{config.url}: certificate pinning by fingerprint is not supported yet; give a CA file"
            )
        client.tls_set_context(ssl.create_default_context(cafile=config.ca_file))
    # Reconnect quickly on loopback, back off to 10 s against a broker that is down for long.
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client.max_inflight_messages_set(64)
    client.max_queued_messages_set(0)
    return client
