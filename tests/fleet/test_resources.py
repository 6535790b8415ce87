"""Per-device resource summary (CPU, memory, temperature, throttling) in the API and `edge fleet devices`."""

from __future__ import annotations

import time

from fleet.cli import device_rows
from fleet.protocol import Status, Telemetry


def _report(manager, device: str, seq: int, system: dict) -> None:
    manager.ingest_telemetry(
        Telemetry(device=device, stream="s1", seq=seq, ts=time.time(), window_s=1.0, system=system)
    )


def test_resource_summary_per_device(manager):
    for dev in ("pi", "bare"):
        manager.db.upsert_device(Status(device=dev, state="online", ts=time.time()))
    mem = {"mem_used_bytes": 300 << 20, "mem_total_bytes": 1 << 30}
    _report(manager, "pi", 1, {"cpu_percent": 20.0, "temperature_c": 55.0, "throttled": 0, **mem})
    _report(manager, "pi", 2, {"cpu_percent": 60.0, "temperature_c": 71.5, "throttled": 0x50005, **mem})
    _report(manager, "pi", 2, {"cpu_percent": 99.0})  # a duplicate: counted once, never summarised
    _report(manager, "bare", 1, {"load_1m": 0.5})  # no psutil, no sensors

    devices = {d["id"]: d for d in manager.devices()}
    pi = devices["pi"]["resources"]
    assert pi["reports"] == 2 and pi["cpu_mean"] == 40.0 and pi["cpu_max"] == 60.0
    assert pi["temperature_max"] == 71.5 and pi["throttled_reports"] == 1
    assert pi["mem_used_max"] == 300 << 20 and pi["mem_total"] == 1 << 30
    bare = devices["bare"]["resources"]
    assert bare["reports"] == 1 and bare["cpu_max"] is None and bare["throttled_reports"] is None
    # Outside the window: no summary.
    assert manager.devices(since_s=-1)[0]["resources"] is None

    rows = device_rows(list(devices.values()))
    assert "CPU avg/max" in rows[0]
    pi_row = next(r for r in rows if r.startswith("pi "))
    assert "40/60%" in pi_row and "300/1024M" in pi_row and "72C" in pi_row and "1/2" in pi_row
    bare_row = next(r for r in rows if r.startswith("bare "))
    assert "%" not in bare_row
