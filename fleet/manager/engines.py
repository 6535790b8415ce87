"""Which storage engine a manager uses: SQLite in its state directory, or ``--database postgresql://``."""

from __future__ import annotations

from pathlib import Path

from fleet.manager.db import FleetDB

__all__ = ["open_database", "redact_url"]


def open_database(database: str | None, state_dir: Path) -> FleetDB:
    """The manager's database: ``state_dir/fleet.sqlite``, or PostgreSQL when ``database`` is its URL.

    Either way the schema is migrated to the latest version first (:mod:`fleet.manager.migrations`).
    """
    from fleet.manager.pg import PgFleetDB, is_postgres_url

    if database and is_postgres_url(database):
        return PgFleetDB(database)
    if database:
        raise ValueError(f"--database must be a postgresql:// URL, got {redact_url(database)!r}")
    return FleetDB(Path(state_dir) / "fleet.sqlite")


def redact_url(url: str) -> str:
    """A database URL without its password, for logs and errors."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
