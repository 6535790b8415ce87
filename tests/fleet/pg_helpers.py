"""A real PostgreSQL for the fleet tests: Debian's package, a throwaway cluster on a free port.

``initdb`` refuses to run as root (CI runs as root): then the cluster is made and run as the
``postgres`` user (``runuser``), in a directory under /tmp that user owns. Without PostgreSQL's
binaries (or psycopg), :func:`find_postgres` returns None and the PostgreSQL variants skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from fleet_helpers import free_port


def find_postgres() -> Path | None:
    """The bin directory of the newest installed PostgreSQL, or None (also None without psycopg)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return None
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """One cluster: :meth:`start`, :meth:`new_database` per test, :meth:`stop` (and remove)."""

    def __init__(self, bindir: Path, fsync: bool = False) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="edge-fleet-pg-"))
        self.data = self.root / "data"
        self.fsync = fsync
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError("running as root and there is no postgres user for initdb") from exc
            self.as_user = "postgres"
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o700)

    def _run(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
        full = [str(c) for c in cmd]
        if self.as_user:
            full = ["runuser", "-u", self.as_user, "--", *full]
        return subprocess.run(full, check=True, capture_output=True, timeout=120, **kw)  # type: ignore[call-overload]

    def start(self) -> Postgres:
        self._run(
            self.bindir / "initdb",
            "-D",
            self.data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 "
            f"-c fsync={'on' if self.fsync else 'off'} -c shared_buffers=128MB"
        )
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            self.data,
            "-o",
            opts,
            "-l",
            self.root / "log",
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"fleet_{uuid.uuid4().hex[:10]}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.admin_url, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                return self.url(name)
            except psycopg.errors.ObjectInUse:  # template1 busy with another CREATE DATABASE
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`new_database` (its connections closed first); errors ignored."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except psycopg.Error:
            pass

    def stop(self) -> None:
        try:
            self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "20", "stop")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
