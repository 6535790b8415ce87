"""The console's reads (FleetDB's console methods and fleet.console.views) on both engines:
SQLite, and PostgreSQL when Debian's postgresql and psycopg are installed (tests/fleet/pg_helpers)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

from fleet.console import views
from fleet.manager.db import FleetDB


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        database = FleetDB(tmp_path / "fleet.sqlite")
        yield database
        database.close()
        return
    from pg_helpers import Postgres, find_postgres

    bindir = find_postgres()
    if bindir is None:
        pytest.skip("PostgreSQL (Debian's postgresql package) or psycopg is not installed")
    from fleet.manager.engines import open_database

    pg = Postgres(bindir).start()
    try:
        database = open_database(str(pg.new_database()), tmp_path)
        yield database
        database.close()
    finally:
        pg.stop()


def test_console_reads(db: Any) -> None:
    now = time.time()
    with db.tx() as c:
        for i in range(30):
            c.execute(
                "INSERT INTO devices (id, online, first_seen, last_seen, profile, grp, tags, models, agent_version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (f"dev-{i:02d}", i % 2, now, now - i, ("rpi4", "orin")[i % 2], "g", json.dumps(["a_b", "x"]),
                 json.dumps({"m": {"version": "1", "sha256": "0" * 64}}), "1"),
            )  # fmt: skip
    if hasattr(db, "ensure_partitions"):
        db.ensure_partitions([now])
    with db.tx() as c:
        c.execute(
            "INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("dev-01", "s", 1, now, now, json.dumps({"cpu_percent": 5.0, "temperature_c": 85.0}), 0, 3),
        )
        c.execute(
            "INSERT INTO telemetry_models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("dev-01", "s", 1, "m", "1", now, 10, 1, None),
        )
    # Alerts keep the time first seen; a status without one drops it.
    db.set_device_alerts("dev-01", ["duplicate_device_id"])
    since = db.device_alerts("dev-01")[0]["since"]
    db.set_device_alerts("dev-01", ["duplicate_device_id", "other"])
    assert {a["alert"]: a["since"] for a in db.device_alerts("dev-01")}["duplicate_device_id"] == since
    db.set_device_alerts("dev-01", ["other"])
    assert [a["alert"] for a in db.device_alerts("dev-01")] == ["other"]

    total, rows = db.device_page(0, 5, search="dev-0", online=True, tag="a_b", model="m", sort="-last_seen")
    assert total == 5 and [r["id"] for r in rows] == ["dev-01", "dev-03", "dev-05", "dev-07", "dev-09"]
    assert db.device_page(0, 5, tag="a%")[0] == 0  # LIKE wildcards in a filter match literally
    assert db.device_page(0, 5, search="_")[0] == 0
    assert db.device_page(10, 100, profile="orin")[0] == 15
    with pytest.raises(ValueError, match="sort"):
        db.device_page(sort="id; DROP TABLE devices")
    assert sum(f["n"] for f in db.device_facets()) == 30
    assert db.queue_drops(now - 60) == [{"device": "dev-01", "total": 3}]
    db.add_audit("operator token", "abort", "d1", "POST ...")
    assert db.audit(5, target="d1")[0]["action"] == "abort"
    marks = db.change_marks()
    db.set_device_alerts("dev-02", ["duplicate_device_id"])
    assert db.change_marks()["devices"] != marks["devices"]

    manager = SimpleNamespace(db=db)
    series = views.device_series(manager, "dev-01", 60, buckets=6)
    assert series["system"]["cpu"] == [5.0] and series["system"]["temp"] == [85.0]
    assert series["models"]["series"][0]["ips"][-1] == pytest.approx(1.0)
    assert series["models"]["series"][0]["error_rate"][-1] == pytest.approx(0.1)
    page = views.device_page(manager, {"offset": 0, "limit": 3, "search": "dev-01"})
    assert page["devices"][0]["resources"]["temperature_max"] == 85.0 and page["devices"][0]["alerted"]
