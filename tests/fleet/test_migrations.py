"""Versioned schema migrations, on SQLite and PostgreSQL alike (fleet/manager/migrations.py)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from fleet.manager.engines import open_database
from fleet.manager.migrations import LATEST, MIGRATIONS, SchemaTooNewError, current_version
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig
from fleet.protocol import Status

_LATER_TABLES = ("leases", "package_chunks", "device_alerts", "audit")


def _make_old(db, engine: str) -> None:
    """Turn a fresh database into one an older manager made: schema version 1 (or none at all)."""
    with db.tx() as c:
        for table in _LATER_TABLES:
            c.execute(f"DROP TABLE IF EXISTS {table}")
        if engine == "sqlite":
            c.execute("DROP TABLE schema_version")  # made before versioning
        else:
            c.execute("DELETE FROM schema_version WHERE version > 1")


def test_a_manager_started_on_an_older_schema_migrates_it(tmp_path, broker, database, engine):
    state = tmp_path / "manager"
    db = open_database(database, state)
    db.upsert_device(Status(device="old-1", state="online", ts=time.time()))
    _make_old(db, engine)
    if engine == "postgresql":
        assert current_version(db) == 1
    db.close()

    m = FleetManager(ManagerConfig("test", state, BrokerConfig(broker.url), database=database)).start()
    try:
        assert current_version(m.db) == LATEST
        versions = [r["version"] for r in m.db.query("SELECT version FROM schema_version ORDER BY version")]
        assert versions == [mig.version for mig in MIGRATIONS]
        assert [d["id"] for d in m.devices()] == ["old-1"]  # the data stayed
        for table in _LATER_TABLES:
            m.db.query(f"SELECT COUNT(*) AS n FROM {table}")  # the later steps' tables exist
        # Starting again applies nothing.
        from fleet.manager.migrations import migrate

        assert migrate(m.db) == []
    finally:
        m.stop()


def test_a_schema_newer_than_the_manager_is_refused(tmp_path, database, engine):
    state = tmp_path / "manager"
    db = open_database(database, state)
    with db.tx() as c:
        c.execute(
            "INSERT INTO schema_version (version, applied, description) VALUES (?, ?, ?)",
            (LATEST + 1, time.time(), "from the future"),
        )
    db.close()
    with pytest.raises(SchemaTooNewError, match="newer than this manager"):
        open_database(database, state)


def test_pre_versioning_sqlite_file_is_adopted(tmp_path):
    """A fleet.sqlite made before schema_version existed: its tables are version 1, kept as they are."""
    from fleet.manager.db import FleetDB

    path = tmp_path / "fleet.sqlite"
    db = FleetDB(path)
    db.upsert_device(Status(device="d", state="online", ts=time.time()))
    db.close()
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE schema_version")
    raw.execute("DROP TABLE leases")
    raw.commit()
    raw.close()
    db = FleetDB(path)
    assert current_version(db) == LATEST and [d["id"] for d in db.devices()] == ["d"]
    db.close()
