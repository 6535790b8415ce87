"""Ed25519 keys, the trust store and the ``manifest.sig`` envelope.

``manifest.sig`` is a small JSON object::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64 of 64 bytes>"}

The signature covers the exact bytes of ``manifest.json``. The key id is only
a hint naming which key to verify with, so that a refusal can tell "signed by
a key you do not trust" from "the signature does not match".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.errors import SignatureError

__all__ = [
    "SignatureInfo",
    "TrustStore",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "make_signature",
    "parse_signature",
]

ALGORITHM = "ed25519"
MAX_SIGNATURE_BYTES = 4096


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex characters of the sha256 of the raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a PEM (SubjectPublicKeyInfo) Ed25519 public key; SignatureError if it is not one."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, but packages are signed with Ed25519 keys")
    return key


def load_private_key(path: str | os.PathLike[str], password: bytes | None = None) -> Ed25519PrivateKey:
    """Read a PEM (PKCS#8) Ed25519 private key, as written by :func:`generate_keypair`."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not a usable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, but packages are signed with Ed25519 keys")
    return key


def generate_keypair(out_prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new key pair to ``<prefix>.key`` (PEM, mode 0600) and ``<prefix>.pub``.

    Refuses to overwrite either file: losing a signing key by a typo is not
    recoverable. Returns the two paths.
    """
    prefix = Path(out_prefix)
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for p in (key_path, pub_path):
        if p.exists():
            raise FileExistsError(f"{p} already exists; choose another prefix or move it away first")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL with mode 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_path, pub_path


@dataclass(frozen=True)
class SignatureInfo:
    """What ``manifest.sig`` says, and whether a trust store confirmed it."""

    key_id: str
    signature: bytes
    verified: bool = False


def make_signature(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` bytes for these manifest bytes."""
    envelope = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode("ascii")


def parse_signature(data: bytes) -> SignatureInfo:
    """Decode ``manifest.sig``; SignatureError when it is malformed."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"manifest.sig is {len(data)} bytes, more than {MAX_SIGNATURE_BYTES}")
    try:
        envelope = json.loads(data.decode("utf-8"))
        if not isinstance(envelope, dict):
            raise TypeError("not a JSON object")
        algorithm, kid, sig_b64 = envelope["algorithm"], envelope["key_id"], envelope["signature"]
        signature = base64.b64decode(sig_b64, validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SignatureError(f"manifest.sig is malformed ({exc}); re-sign the package") from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"manifest.sig uses algorithm {algorithm!r}; only {ALGORITHM!r} is accepted")
    if not isinstance(kid, str) or len(signature) != 64:
        raise SignatureError(
            "manifest.sig is malformed (bad key_id or signature length); re-sign the package"
        )
    return SignatureInfo(key_id=kid, signature=signature)


class TrustStore:
    """The Ed25519 public keys whose signatures this device accepts.

    Several keys may be trusted at once so that keys can be rotated: add the
    new key to every device, start signing with it, then remove the old one.
    """

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def load(cls, *paths: str | os.PathLike[str]) -> TrustStore:
        """Load from ``.pub`` files and/or directories of ``*.pub`` files.

        A directory with no ``*.pub`` file is an error: an empty trust store
        would refuse every package, which is never what a typo meant.
        """
        store = cls()
        for path in map(Path, paths):
            if path.is_dir():
                files = sorted(path.glob("*.pub"))
                if not files:
                    raise SignatureError(f"trust directory {path} holds no *.pub file")
            elif path.is_file():
                files = [path]
            else:
                raise SignatureError(f"trust path {path} does not exist")
            for f in files:
                store.add(load_public_key(f))
        return store

    def add(self, key: Ed25519PublicKey) -> str:
        """Trust ``key``; returns its key id."""
        kid = key_id(key)
        self._keys[kid] = key
        return kid

    def remove(self, kid: str) -> None:
        """Stop trusting the key with this id (KeyError if it is not held)."""
        del self._keys[kid]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self.key_ids)

    def __repr__(self) -> str:
        return f"TrustStore(key_ids={list(self.key_ids)})"

    def verify(self, manifest_bytes: bytes, sig: SignatureInfo) -> SignatureInfo:
        """Check ``sig`` over ``manifest_bytes``; returns it marked verified, or raises SignatureError."""
        key = self._keys.get(sig.key_id)
        if key is None:
            trusted = ", ".join(self.key_ids) or "none"
            raise SignatureError(
                f"package is signed by key {sig.key_id}, which is not in the trust store (trusted: {trusted})"
            )
        try:
            key.verify(sig.signature, manifest_bytes)
        except InvalidSignature:
            raise SignatureError(
                f"bad signature: the manifest does not match the signature of key {sig.key_id}"
                " (the package was modified after signing)"
            ) from None
        return SignatureInfo(key_id=sig.key_id, signature=sig.signature, verified=True)
