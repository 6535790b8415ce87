"""The on-device model store: verified packages, content-addressed, with atomic switching.

Layout under ``state_dir``::

    models/<name>/<sha256>/     one extracted, verified package (sha256 of the package file)
    models/<name>/current  ->  <sha256>    symlink switched atomically
    models/<name>/previous ->  <sha256>    what ``rollback`` switches back to
    models/<name>/.lock         serialises changes between processes (agent, CLI)

Crash safety comes from three rules: a version directory appears only by
renaming a complete temporary directory; a link changes only by renaming a
new link over it; and a version is deleted by first renaming it to a
temporary name. So whatever instant a process dies at, ``current`` names a
complete version, and the only debris is ``.tmp-*`` entries, which the next
:class:`ModelStore` removes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import ModelNotFoundError, StoreError
from edge_runtime.package import (
    MANIFEST_NAME,
    Limits,
    Manifest,
    TrustStore,
    open_package,
    parse_manifest_bytes,
)
from edge_runtime.package._archive import TEMP_PREFIX, _fsync_dir

__all__ = ["InstalledModel", "ModelStore"]

log = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CURRENT, _PREVIOUS, _LOCK = "current", "previous", ".lock"


@dataclass(frozen=True)
class InstalledModel:
    """One version in the store: an extracted, verified package."""

    name: str
    sha256: str
    path: Path
    manifest: Manifest

    @property
    def version(self) -> str:
        return self.manifest.version

    def artifact_path(self, path_or_kind: str) -> Path:
        """Where an artifact (by path, or the only one of a kind) lies on disk."""
        return self.path / self.manifest.artifact(path_or_kind).path


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StoreError(f"model name {name!r} is invalid: use letters, digits, '.', '_' and '-'")
    return name


def _check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise StoreError(f"{sha256!r} is not a sha256 (64 lowercase hex characters)")
    return sha256


class ModelStore:
    """Models installed on this device, under ``<state_dir>/models``.

    ``trust_store``, when given, is used by every :meth:`install` (a call
    may pass a different one, never none). Opening the store removes the
    debris an interrupted install, switch or gc left behind.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        trust_store: TrustStore | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.root = Path(state_dir) / "models"
        self.trust_store = trust_store
        self.limits = limits or Limits()
        self.root.mkdir(parents=True, exist_ok=True)
        for name in self.names():
            self._clean_if_idle(name)

    # --- paths and locking ---

    def _dir(self, name: str) -> Path:
        return self.root / _check_name(name)

    @contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        """Hold the per-model lock (an flock, released by the kernel if the process dies)."""
        d = self._dir(name)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / _LOCK, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield d
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _clean_if_idle(self, name: str) -> None:
        """Remove ``.tmp-*`` debris, unless another process holds the lock (then it is not debris yet)."""
        d = self._dir(name)
        with open(d / _LOCK, "a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            try:
                self._clean(d)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _clean(d: Path) -> None:
        for entry in d.iterdir():
            if entry.name.startswith(TEMP_PREFIX):
                log.info("removing %s left by an interrupted operation", entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def _link_target(self, name: str, link: str) -> str | None:
        try:
            target = os.readlink(self._dir(name) / link)
        except (FileNotFoundError, OSError):
            return None
        return target if _SHA256_RE.match(target) else None

    def _switch(self, d: Path, link: str, sha256: str) -> None:
        # A new link under a temporary name, renamed over the old one: rename is atomic,
        # so readers see the old target or the new one, never a missing link.
        tmp = d / f"{TEMP_PREFIX}{link}-{uuid.uuid4().hex[:8]}"
        os.symlink(sha256, tmp)
        os.replace(tmp, d / link)
        _fsync_dir(d)

    def _installed(self, name: str, sha256: str) -> InstalledModel:
        path = self._dir(name) / _check_sha(sha256)
        try:
            manifest = parse_manifest_bytes((path / MANIFEST_NAME).read_bytes())
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {name} has no version {sha256}; install it first") from None
        return InstalledModel(name=name, sha256=sha256, path=path, manifest=manifest)

    # --- public API ---

    def names(self) -> list[str]:
        """Names of the models with a directory in the store, sorted."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def install(
        self, package_path: str | os.PathLike[str], trust_store: TrustStore | None = None
    ) -> InstalledModel:
        """Verify a package and extract it to ``models/<name>/<sha256>/``; does not activate it.

        Installing a package whose sha256 is already present does nothing.
        Raises the package errors of :func:`open_package` (SignatureError when
        a trust store is configured and the package is unsigned or not trusted).
        """
        with open_package(package_path, trust_store or self.trust_store, self.limits) as pkg:
            name, sha256 = pkg.manifest.name, pkg.sha256
            with self._locked(name) as d:
                dest = d / sha256
                if dest.is_dir():
                    log.info("%s %s is already installed", name, sha256[:12])
                else:
                    pkg.extract(dest)
                    log.info("installed %s %s (%s)", name, pkg.manifest.version, sha256[:12])
        return self._installed(name, sha256)

    def activate(self, name: str, sha256: str) -> InstalledModel:
        """Make an installed version current; the version it replaces becomes ``previous``."""
        with self._locked(name) as d:
            model = self._installed(name, sha256)
            old = self._link_target(name, _CURRENT)
            if old != sha256:
                # previous first: a crash between the two renames leaves current unchanged.
                if old is not None:
                    self._switch(d, _PREVIOUS, old)
                self._switch(d, _CURRENT, sha256)
        return model

    def rollback(self, name: str) -> InstalledModel:
        """Switch ``current`` back to ``previous`` (and ``previous`` to what was current)."""
        with self._locked(name) as d:
            prev, cur = self._link_target(name, _PREVIOUS), self._link_target(name, _CURRENT)
            if prev is None or not (d / prev).is_dir():
                raise ModelNotFoundError(f"model {name} has no previous version to roll back to")
            model = self._installed(name, prev)
            # current first: it is the link that must always be right.
            self._switch(d, _CURRENT, prev)
            if cur is not None:
                self._switch(d, _PREVIOUS, cur)
        return model

    def current(self, name: str) -> InstalledModel | None:
        """The active version of ``name``, or None when none was activated."""
        sha256 = self._link_target(name, _CURRENT)
        return self._installed(name, sha256) if sha256 is not None else None

    def previous(self, name: str) -> InstalledModel | None:
        """The version :meth:`rollback` would switch to, or None."""
        sha256 = self._link_target(name, _PREVIOUS)
        return self._installed(name, sha256) if sha256 is not None else None

    def versions(self, name: str) -> list[InstalledModel]:
        """Installed versions of ``name``, oldest install first."""
        d = self._dir(name)
        if not d.is_dir():
            return []
        dirs = [p for p in d.iterdir() if _SHA256_RE.match(p.name) and p.is_dir() and not p.is_symlink()]
        dirs.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [self._installed(name, p.name) for p in dirs]

    def gc(self, name: str, keep: int = 3) -> list[str]:
        """Delete all but the ``keep`` newest versions, never current or previous; returns deleted hashes."""
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        with self._locked(name) as d:
            protected = {self._link_target(name, _CURRENT), self._link_target(name, _PREVIOUS)}
            candidates = [m.sha256 for m in self.versions(name)]
            newest = set(candidates[-keep:]) if keep else set()
            removed = []
            for sha256 in candidates:
                if sha256 in protected or sha256 in newest:
                    continue
                # Rename first: a crash mid-delete leaves .tmp-* debris, never a half-deleted version.
                doomed = d / f"{TEMP_PREFIX}gc-{sha256}"
                os.rename(d / sha256, doomed)
                shutil.rmtree(doomed)
                removed.append(sha256)
            if removed:
                _fsync_dir(d)
        return removed
