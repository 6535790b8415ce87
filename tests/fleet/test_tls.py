"""TLS with the shipped mosquitto config: CA verification, per-device logins, certificate pinning.

A CA and a server certificate are generated with ``cryptography``; ``deploy/mosquitto/mosquitto.conf``
is rendered with this test's port and paths (every substitution asserted, so a drift in the shipped
file breaks this test rather than silently testing something else).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FLEET
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fleet_helpers import REPO, Mosquitto, wait_for

from fleet.agent import Agent, AgentConfig
from fleet.errors import BrokerError, CertificatePinError
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig, make_client

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")

USERS = {"manager": "m-secret", "dev-a": "a-secret"}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_pki(d: Path) -> bytes:
    """ca.crt, server.crt (127.0.0.1 and localhost) and server.key under ``d``; the server cert's DER."""
    d.mkdir(parents=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("edge-fleet test CA"))
        .issuer_name(_name("edge-fleet test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("broker"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return server.public_bytes(serialization.Encoding.DER)


def _render_shipped_conf(root: Path, port: int, user: str) -> str:
    """deploy/mosquitto/mosquitto.conf with this test's port, certificates, password and ACL files."""
    text = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    for old, new in {
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/etc/mosquitto/certs/": f"{root}/certs/",
        "/etc/mosquitto/edge-fleet.passwd": f"{root}/passwd",
        "/etc/mosquitto/edge-fleet.acl": f"{root}/acl",
        "/var/lib/mosquitto/": f"{root}/",
    }.items():
        assert old in text, f"the shipped mosquitto.conf no longer has {old!r}"
        text = text.replace(old, new)
    assert "allow_anonymous false" in text and "tls_version tlsv1.2" in text
    # Run as root, mosquitto would drop to user "mosquitto", who cannot read the test's files.
    return f"user {user}\n{text}"


class TLSBroker:
    def __init__(self, mosquitto: Mosquitto, certs: Path, server_der: bytes) -> None:
        self.mosquitto, self.ca = mosquitto, str(certs / "ca.crt")
        self.url = f"mqtts://127.0.0.1:{mosquitto.port}"
        self.fingerprint = hashlib.sha256(server_der).hexdigest()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSBroker]:
    import os
    import pwd

    root = tmp_path_factory.mktemp("tls")
    der = _write_pki(root / "certs")
    passwd = root / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        flags = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *flags, "-b", str(passwd), user, password], check=True)
    (root / "acl").write_text(
        (REPO / "deploy" / "mosquitto" / "acl.template").read_text().replace("FLEET", FLEET)
    )
    m = Mosquitto(root / "broker")
    m.conf.write_text(_render_shipped_conf(root, m.port, pwd.getpwuid(os.geteuid()).pw_name))
    m.start()
    yield TLSBroker(m, root / "certs", der)
    m.stop()


def _connect(config: BrokerConfig) -> Any:
    """Connect synchronously (so a TLS failure raises here); returns the connected client."""
    c = make_client(f"probe-{config.username}", config)
    c.connect(config.host, config.port, keepalive=10)
    return c


def test_manager_and_agent_over_tls_with_device_credentials(tmp_path, tls_broker):
    manager = FleetManager(
        ManagerConfig(
            FLEET,
            tmp_path / "manager",
            BrokerConfig(tls_broker.url, "manager", USERS["manager"], ca_file=tls_broker.ca),
        )
    ).start()
    agent = None
    try:
        # The fingerprint the manager advertises (zeroconf TXT) is the broker's real certificate.
        assert manager.tls_fingerprint == tls_broker.fingerprint
        broker = BrokerConfig(tls_broker.url, "dev-a", USERS["dev-a"], ca_file=tls_broker.ca)
        agent = Agent(AgentConfig(FLEET, "dev-a", tmp_path / "dev-a", broker=broker)).start()
        wait_for(lambda: [d["id"] for d in manager.devices() if d["online"]] == ["dev-a"], 15, "dev-a online")
    finally:
        if agent is not None:
            agent.stop()
        manager.stop()


def test_client_without_the_ca_is_refused(tls_broker):
    with pytest.raises(ssl.SSLCertVerificationError):
        _connect(BrokerConfig(tls_broker.url, "dev-a", USERS["dev-a"]))  # system CAs only


def test_pinned_fingerprint_accepts_the_broker_and_refuses_an_impostor(tls_broker):
    # Pinned without a CA file: the exact certificate is the trust anchor.
    good = _connect(
        BrokerConfig(tls_broker.url, "dev-a", USERS["dev-a"], tls_fingerprint=tls_broker.fingerprint)
    )
    good.disconnect()
    # Pinned with the CA file as well, in the colon-separated upper-case form people paste.
    colons = ":".join(tls_broker.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    both = _connect(BrokerConfig(tls_broker.url, "dev-a", USERS["dev-a"], tls_broker.ca, colons))
    both.disconnect()
    # A certificate that is not the pinned one, even one the CA vouches for: refused after the
    # handshake, before CONNECT (so the password is never sent).
    wrong = "00" * 32
    for ca in (None, tls_broker.ca):
        with pytest.raises(CertificatePinError):
            _connect(BrokerConfig(tls_broker.url, "dev-a", USERS["dev-a"], ca, wrong))
    with pytest.raises(BrokerError):  # a pin on a plain connection would send the password in clear
        make_client("x", BrokerConfig("mqtt://127.0.0.1:1", tls_fingerprint=tls_broker.fingerprint))


def test_agent_pins_a_discovered_fingerprint(tmp_path, tls_broker, monkeypatch):
    """No broker configured: the agent takes the broker and fingerprint zeroconf found, and pins it."""
    from fleet import discovery

    def found(fleet: str, timeout: float = 10.0, interface: str | None = None) -> Any:
        return discovery.FoundManager(fleet, tls_broker.url, "http://127.0.0.1:1", tls_broker.fingerprint)

    monkeypatch.setattr(discovery, "discover", found)
    seen: list[str] = []
    observer = _connect(BrokerConfig(tls_broker.url, "manager", USERS["manager"], tls_broker.ca))
    observer.on_message = lambda _c, _u, m: seen.append(m.topic)
    observer.subscribe(f"edge/v1/{FLEET}/+/status", qos=1)
    observer.loop_start()
    # Credentials configured, broker URL left to discovery (what `edge agent --password ...` does).
    login = BrokerConfig("", "dev-a", USERS["dev-a"])
    agent = Agent(AgentConfig(FLEET, "dev-a", tmp_path / "dev-a", broker=login)).start()
    try:
        wait_for(lambda: f"edge/v1/{FLEET}/dev-a/status" in seen, 15, "dev-a's status over pinned TLS")
    finally:
        agent.stop()
        observer.disconnect()
        observer.loop_stop()
