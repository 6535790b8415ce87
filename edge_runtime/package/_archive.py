"""Writing and reading the ``.edgepkg`` zip archive.

The reader trusts nothing in the archive until it has checked it: entry
count, sizes and names come from the zip's central directory and are
checked against :class:`Limits` before any byte is decompressed; the
signature is checked over the raw manifest bytes before the manifest is
parsed; artifact bytes are hashed as they stream and are only handed out (or
renamed into place) once their sha256 matched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import IO, Any, final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.errors import IntegrityError, PackageFormatError, PackageTooLargeError, SignatureError
from edge_runtime.package._manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    Manifest,
    check_member_path,
    check_schema_version,
    parse_manifest_bytes,
    utc_now_iso,
)
from edge_runtime.package._signing import SignatureInfo, TrustStore, key_id, make_signature, parse_signature

__all__ = [
    "TEMP_PREFIX",
    "Limits",
    "Package",
    "PackageInfo",
    "file_sha256",
    "open_package",
    "open_regular_file",
    "write_package",
]

_CHUNK = 1 << 20
# Fixed zip metadata so that the same inputs give the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_UNIX = 3
_FILE_MODE = 0o644
# Anything named like this beside a destination is an unfinished extraction or
# write; the model store removes such leftovers when it opens.
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Limits:
    """Upper bounds a reader enforces before decompressing anything (zip bombs, huge manifests)."""

    max_package_bytes: int = 4 << 30
    max_manifest_bytes: int = 8 << 20
    max_artifact_bytes: int = 4 << 30
    max_total_bytes: int = 8 << 30
    max_entries: int = 1024


@dataclass(frozen=True)
class PackageInfo:
    """What :func:`write_package` wrote."""

    path: Path
    sha256: str
    size: int
    manifest: Manifest
    signer: str | None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zip_info(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.create_system = _UNIX
    info.external_attr = (stat.S_IFREG | _FILE_MODE) << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    return info


def _created_default() -> str:
    # SOURCE_DATE_EPOCH is the reproducible-builds convention for "the time of this build".
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), timezone.utc).isoformat().replace("+00:00", "Z")
    return utc_now_iso()


def _normalise_manifest_input(
    manifest: Mapping[str, Any] | Manifest, artifacts: Mapping[str, bytes | os.PathLike[str]]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The manifest as a dict with defaults filled, and its artifact entries by path."""
    d = manifest.to_dict() if isinstance(manifest, Manifest) else dict(manifest)
    d.setdefault("schema_version", SCHEMA_VERSION)
    check_schema_version(d)
    d.setdefault("created", _created_default())
    listed = d.get("artifacts")
    if not isinstance(listed, list) or not all(isinstance(a, Mapping) for a in listed):
        raise PackageFormatError("manifest artifacts must be a list of {path, kind} objects")
    entries = {str(a.get("path")): dict(a) for a in listed}
    if len(entries) != len(listed):
        raise PackageFormatError("manifest artifacts list the same path twice")
    missing = sorted(set(entries) - set(artifacts))
    extra = sorted(set(artifacts) - set(entries))
    if missing:
        raise PackageFormatError(f"manifest lists artifact(s) {', '.join(missing)} but no content was given")
    if extra:
        raise PackageFormatError(
            f"content given for {', '.join(extra)}, which the manifest does not list; add a {{path, kind}} entry"
        )
    # Validate everything but the sizes and hashes now, before streaming gigabytes.
    probe = dict(d)
    probe["artifacts"] = [{**e, "size": 0, "sha256": "0" * 64} for e in entries.values()]
    Manifest.from_dict(probe)
    return d, entries


def write_package(
    path: str | os.PathLike[str],
    manifest: Mapping[str, Any] | Manifest,
    artifacts: Mapping[str, bytes | os.PathLike[str]],
    signing_key: Ed25519PrivateKey | None = None,
    *,
    compress: bool = True,
) -> PackageInfo:
    """Write a package atomically and return what was written.

    ``manifest`` lists each artifact's ``path`` and ``kind``; the writer
    computes ``size`` and ``sha256`` (files are streamed, never loaded whole).
    A size or sha256 already present must match the content, which catches a
    stale manifest. ``schema_version`` defaults to the current one and
    ``created`` to ``$SOURCE_DATE_EPOCH`` or now. Entries are written in path
    order with fixed timestamps, so the same inputs give the same bytes (with
    ``compress=True``, for the same zlib). The file appears under ``path``
    only once complete (temporary file, fsync, ``os.replace``).
    """
    out = Path(path)
    d, entries = _normalise_manifest_input(manifest, artifacts)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{out.name}.", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as raw:
            with zipfile.ZipFile(raw, "w") as zf:
                for name in sorted(entries):
                    size, digest = _write_entry(zf, name, artifacts[name], compress)
                    entry = entries[name]
                    for key, value in (("size", size), ("sha256", digest)):
                        if key in entry and entry[key] != value:
                            raise IntegrityError(
                                f"manifest says artifact {name} has {key} {entry[key]}, the content has {value}"
                            )
                    entry["size"], entry["sha256"] = size, digest
                d["artifacts"] = [entries[name] for name in sorted(entries)]
                final = Manifest.from_dict(d)
                manifest_bytes = final.to_json_bytes()
                zf.writestr(_zip_info(MANIFEST_NAME, compress), manifest_bytes)
                if signing_key is not None:
                    zf.writestr(_zip_info(SIGNATURE_NAME, False), make_signature(manifest_bytes, signing_key))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return PackageInfo(
        path=out,
        sha256=file_sha256(out),
        size=out.stat().st_size,
        manifest=final,
        signer=key_id(signing_key) if signing_key is not None else None,
    )


def _write_entry(
    zf: zipfile.ZipFile, name: str, source: bytes | os.PathLike[str], compress: bool
) -> tuple[int, str]:
    info = _zip_info(name, compress)
    h = hashlib.sha256()
    size = 0
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        zf.writestr(info, data)
        return len(data), hashlib.sha256(data).hexdigest()
    src_path = Path(source)
    with (
        open(src_path, "rb") as src,
        zf.open(info, "w", force_zip64=src_path.stat().st_size > (1 << 31)) as dst,
    ):
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            dst.write(chunk)
    return size, h.hexdigest()


# --- reading ---

_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


@final
class Package:
    """An opened, structurally checked package. Use :func:`open_package` to get one.

    Opening checks limits, names, the signature and the manifest; artifact
    hashes are checked when artifacts are read (:meth:`read_artifact`,
    :meth:`extract`, :meth:`verify`), so that a package is read once, not twice.
    """

    def __init__(
        self,
        path: Path,
        file: IO[bytes],
        zf: zipfile.ZipFile,
        manifest: Manifest,
        manifest_bytes: bytes,
        signature_bytes: bytes | None,
        signature: SignatureInfo | None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes
        self.signature = signature
        self._signature_bytes = signature_bytes
        self._file = file
        self._zip = zf

    # --- identity and trust ---

    @property
    def signer(self) -> str | None:
        """Key id of the signer as verified against a trust store; None when not verified or unsigned."""
        return self.signature.key_id if self.signature is not None and self.signature.verified else None

    @cached_property
    def sha256(self) -> str:
        """sha256 of the whole package file: its content address in the model store."""
        # pread on the descriptor the zip reader uses: the hash is of the very
        # file we opened even if the path has been replaced since.
        h = hashlib.sha256()
        fd, offset = self._file.fileno(), 0
        while chunk := os.pread(fd, _CHUNK, offset):
            h.update(chunk)
            offset += len(chunk)
        return h.hexdigest()

    @property
    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    # --- artifacts ---

    def _stream(self, path: str) -> Iterator[bytes]:
        """Chunks of one artifact; raises IntegrityError at the end if size or sha256 differ.

        Callers must not trust the chunks before the generator has finished.
        """
        entry = self.manifest.artifact(path)
        h, n = hashlib.sha256(), 0
        try:
            with self._zip.open(entry.path) as f:
                while chunk := f.read(_CHUNK):
                    n += len(chunk)
                    if n > entry.size:
                        break
                    h.update(chunk)
                    yield chunk
        except _ZIP_ERRORS as exc:
            raise IntegrityError(
                f"artifact {entry.path} is corrupt ({exc}); fetch the package again"
            ) from None
        if n != entry.size or h.hexdigest() != entry.sha256:
            raise IntegrityError(
                f"artifact {entry.path} does not match the manifest (size {n} vs {entry.size}, "
                f"sha256 {h.hexdigest()[:16]}... vs {entry.sha256[:16]}...); fetch the package again"
            )

    def stream_artifact(self, path_or_kind: str) -> Iterator[bytes]:
        """The artifact in chunks, never whole; IntegrityError from the last ``next`` if size or sha256
        differ, so nothing built from the chunks may be used before the iterator is exhausted."""
        return self._stream(path_or_kind)

    def read_artifact(self, path_or_kind: str) -> bytes:
        """The verified bytes of the artifact with this path (or the only one of this kind)."""
        return b"".join(self._stream(path_or_kind))

    def verify(self) -> None:
        """Stream every artifact and check its size and sha256 (IntegrityError on the first mismatch)."""
        for entry in self.manifest.artifacts:
            for _ in self._stream(entry.path):
                pass

    def extract(self, dest_dir: str | os.PathLike[str]) -> Path:
        """Verify and write every artifact, the manifest and its signature into ``dest_dir``.

        Files go to a temporary directory beside ``dest_dir`` that is renamed
        into place only when every hash matched, so ``dest_dir`` either does
        not exist or is complete. ``dest_dir`` must not exist yet.
        """
        dest = Path(dest_dir)
        if dest.exists():
            raise FileExistsError(f"{dest} already exists; extract into a new directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{TEMP_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            (tmp / MANIFEST_NAME).write_bytes(self.manifest_bytes)
            if self._signature_bytes is not None:
                (tmp / SIGNATURE_NAME).write_bytes(self._signature_bytes)
            for entry in self.manifest.artifacts:
                target = tmp / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as out:
                    out.writelines(self._stream(entry.path))
                    out.flush()
                    os.fsync(out.fileno())
            _fsync_dir(tmp)
            os.rename(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    # --- lifetime ---

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        return f"Package({str(self.path)!r}, name={m.name!r}, version={m.version!r}, signer={self.signer!r})"


def open_package(
    path: str | os.PathLike[str],
    trust_store: TrustStore | None = None,
    limits: Limits = Limits(),
) -> Package:
    """Open and check a package; the caller closes it (or uses ``with``).

    Raises PackageTooLargeError, PackageFormatError, SignatureError (only
    when ``trust_store`` is given: an unsigned package is accepted without
    one) or IntegrityError for a size that differs from the manifest.
    """
    pkg_path = Path(path)
    # Kept open on success: the returned Package owns it. FileNotFoundError propagates as is.
    file = open_regular_file(pkg_path)
    try:
        size = os.fstat(file.fileno()).st_size
        if size > limits.max_package_bytes:
            raise PackageTooLargeError(
                f"{pkg_path} is {size} bytes, over the limit of {limits.max_package_bytes}"
            )
        try:
            zf = zipfile.ZipFile(file)
        except _ZIP_ERRORS as exc:
            raise PackageFormatError(
                f"{pkg_path} is not a readable zip archive (truncated or corrupt: {exc})"
            ) from None
        try:
            return _open_checked(pkg_path, file, zf, trust_store, limits)
        except BaseException:
            zf.close()
            raise
    except BaseException:
        file.close()
        raise


def open_regular_file(path: Path) -> IO[bytes]:
    """``open(path, "rb")`` for a regular file only; PackageFormatError for a FIFO, device or socket.

    Checked twice: ``os.stat`` before opening (a FIFO's ``open`` would block until a writer
    comes), then ``fstat`` on what was opened with ``O_NONBLOCK`` (the path may have been
    replaced in between; on a regular file the flag changes nothing).
    """
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise PackageFormatError(f"{path} is not a regular file (a FIFO, device, socket or directory)")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PackageFormatError(f"{path} is not a regular file (a FIFO, device, socket or directory)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_entries(infos: list[zipfile.ZipInfo], limits: Limits) -> dict[str, zipfile.ZipInfo]:
    if len(infos) > limits.max_entries:
        raise PackageTooLargeError(
            f"package has {len(infos)} entries, over the limit of {limits.max_entries}"
        )
    by_name: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if name not in (MANIFEST_NAME, SIGNATURE_NAME):
            check_member_path(name, "archive entry")
        if name in by_name:
            raise PackageFormatError(f"archive holds the entry {name!r} twice")
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if info.create_system == _UNIX and file_type not in (0, stat.S_IFREG):
            raise PackageFormatError(
                f"archive entry {name!r} is a symlink or special file; only files are allowed"
            )
        if info.flag_bits & 0x1:
            raise PackageFormatError(f"archive entry {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise PackageFormatError(
                f"archive entry {name!r} uses compression method {info.compress_type}; only stored and deflate are read"
            )
        limit = limits.max_manifest_bytes if name == MANIFEST_NAME else limits.max_artifact_bytes
        if info.file_size > limit:
            raise PackageTooLargeError(
                f"archive entry {name!r} is {info.file_size} bytes, over the limit of {limit}"
            )
        total += info.file_size
        by_name[name] = info
    if total > limits.max_total_bytes:
        raise PackageTooLargeError(
            f"package expands to {total} bytes, over the limit of {limits.max_total_bytes} (zip bomb?)"
        )
    return by_name


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with zf.open(info) as f:
            return f.read()
    except _ZIP_ERRORS as exc:
        raise PackageFormatError(f"archive entry {info.filename} is corrupt ({exc})") from None


def _open_checked(
    path: Path, file: IO[bytes], zf: zipfile.ZipFile, trust_store: TrustStore | None, limits: Limits
) -> Package:
    entries = _check_entries(zf.infolist(), limits)
    if MANIFEST_NAME not in entries:
        raise PackageFormatError(f"{path} has no {MANIFEST_NAME}; is it an .edgepkg?")
    manifest_bytes = _read_member(zf, entries[MANIFEST_NAME])

    # The signature is checked over the raw bytes before the manifest is parsed.
    signature_bytes = signature = None
    if SIGNATURE_NAME in entries:
        signature_bytes = _read_member(zf, entries[SIGNATURE_NAME])
        signature = parse_signature(signature_bytes)
    if trust_store is not None:
        if signature is None:
            raise SignatureError(
                f"{path} is not signed, but a trust store is configured; sign it (edge pack --sign KEY)"
            )
        signature = trust_store.verify(manifest_bytes, signature)

    manifest = parse_manifest_bytes(manifest_bytes)

    listed = {a.path: a for a in manifest.artifacts}
    missing = sorted(set(listed) - set(entries))
    if missing:
        raise PackageFormatError(f"artifact(s) {', '.join(missing)} are listed in the manifest but missing")
    unlisted = sorted(set(entries) - set(listed) - {MANIFEST_NAME, SIGNATURE_NAME})
    if unlisted:
        raise PackageFormatError(
            f"archive holds file(s) {', '.join(unlisted)} that the manifest does not list"
        )
    for name, entry in listed.items():
        if entries[name].file_size != entry.size:
            raise IntegrityError(
                f"artifact {name} is {entries[name].file_size} bytes, the manifest says {entry.size}"
            )
    return Package(path, file, zf, manifest, manifest_bytes, signature_bytes, signature)
