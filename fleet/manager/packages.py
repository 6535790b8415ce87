"""The manager's package store: ``.edgepkg`` files named by their sha256.

A package is checked when it is added (structure, hashes and, when the
manager has a trust store, the signature), so a rollout never starts with a
package every device would refuse. Devices verify it again themselves.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge_runtime.package import TrustStore, open_package
from fleet.errors import FleetError, NotFoundError, ProtocolError
from fleet.manager.db import FleetDB
from fleet.protocol import MAX_TEXT, check_id

__all__ = ["InvalidPackageError", "PackageStore"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_deployable(name: Any, version: Any) -> None:
    """A package whose name or version could not travel in a ``desired`` state is refused at upload."""
    try:
        check_id(name, "package name")
    except ProtocolError as exc:
        raise InvalidPackageError(f"{exc}: devices would refuse its desired state") from None
    if not isinstance(version, str) or len(version) > MAX_TEXT or _CONTROL.search(version):
        raise InvalidPackageError(
            f"package version {str(version)[:40]!r} is not a text of at most {MAX_TEXT} characters without "
            "control characters: devices would refuse its desired state"
        )


class InvalidPackageError(ValueError, FleetError):
    """A package the fleet cannot deploy (HTTP 400)."""


_PREFIX = re.compile(r"[0-9a-f]{8,64}")


CHUNK = 1 << 20  # bytes per package_chunks row


class PackageStore:
    """Files under ``root/<sha256>.edgepkg``, with their metadata in the ``packages`` table.

    ``root`` is the state directory's ``packages`` (one manager), or a directory every instance
    mounts (``--package-store``). With ``in_database`` (the default with ``--database
    postgresql://``) the files live in the database itself, in ``package_chunks`` rows of 1 MiB,
    and ``root`` is this instance's local cache of them: a file is streamed out of the database
    chunk by chunk the first time this instance needs it (a block request, a download), checked
    against its sha256, and served from the cache from then on (HTTP Range included).
    """

    def __init__(
        self, root: str | Path, db: FleetDB, trust_store: TrustStore | None = None, in_database: bool = False
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = db
        self.trust_store = trust_store
        self.in_database = in_database
        self._fetch_lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise NotFoundError(f"no package {sha256[:12]!r} in the store (not a sha256)")
        p = self.root / f"{sha256}.edgepkg"
        if not p.is_file():
            if self.in_database:
                return self._from_database(sha256, p)
            raise NotFoundError(f"no package {sha256[:12]} in the store")
        return p

    def _from_database(self, sha256: str, final: Path) -> Path:
        """Stream a package's chunks from the database into the local cache (verified by hash)."""
        with self._fetch_lock:
            if final.is_file():
                return final
            row = self.db.one("SELECT size FROM packages WHERE sha256=?", (sha256,))
            if row is None:
                raise NotFoundError(f"no package {sha256[:12]} in the store")
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-fetch-", dir=self.root)
            tmp = Path(tmp_name)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as dst:
                    idx = 0
                    while True:
                        chunk = self.db.one(
                            "SELECT data FROM package_chunks WHERE sha256=? AND idx=?", (sha256, idx)
                        )
                        if chunk is None:
                            break
                        data = bytes(chunk["data"])
                        h.update(data)
                        dst.write(data)
                        idx += 1
                if h.hexdigest() != sha256 or tmp.stat().st_size != row["size"]:
                    raise NotFoundError(f"package {sha256[:12]}: its stored chunks are incomplete or damaged")
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            return final

    def _to_database(self, sha256: str, path: Path) -> None:
        """Store a verified file's chunks (one transaction; a second upload of it is a no-op)."""
        if self.db.one("SELECT 1 AS x FROM package_chunks WHERE sha256=? AND idx=0", (sha256,)):
            return
        with self.db.tx() as db, open(path, "rb") as f:
            idx = 0
            while chunk := f.read(CHUNK):
                db.execute("INSERT OR IGNORE INTO package_chunks VALUES (?, ?, ?)", (sha256, idx, chunk))
                idx += 1

    def add(self, source: str | Path) -> dict[str, Any]:
        """Copy a package in (verifying it); adding the same bytes twice is a no-op. Returns its row."""
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            sha256 = h.hexdigest()
            with open_package(tmp, trust_store=self.trust_store) as pkg:
                pkg.verify()
                manifest, signer = pkg.manifest, pkg.signer
            _check_deployable(manifest.name, manifest.version)
            final = self.root / f"{sha256}.edgepkg"
            if self.in_database:
                self._to_database(sha256, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        with self.db.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO packages VALUES (?, ?, ?, ?, ?, ?)",
                (sha256, manifest.name, manifest.version, final.stat().st_size, signer, time.time()),
            )
        return self.get(sha256)

    def get(self, ref: str) -> dict[str, Any]:
        """A package by sha256 (or a unique prefix of at least 8 characters)."""
        # Hex only: a '%' or '_' would be a LIKE wildcard.
        rows = (
            self.db.query("SELECT * FROM packages WHERE sha256 LIKE ?", (ref + "%",))
            if _PREFIX.fullmatch(ref)
            else []
        )
        if len(rows) != 1:
            raise NotFoundError(f"no package {ref!r}" if not rows else f"package prefix {ref!r} is ambiguous")
        return rows[0]

    def list(self) -> list[dict[str, Any]]:
        return self.db.query("SELECT * FROM packages ORDER BY added")

    def read_block(self, sha256: str, index: int, block_size: int) -> tuple[bytes, int]:
        """Block ``index`` of the file and the file's size."""
        p = self.path(sha256)
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(index * block_size)
            return f.read(block_size), size

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
