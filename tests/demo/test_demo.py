"""``edge demo --quick`` end to end: its outcome (summary.json, the PNG) and that nothing it started survives.

Each test runs the real demo in a subprocess (training with 2 DDP processes, mosquitto or the
embedded broker, the manager and three device processes) under a time bound, with its workdir
under ``tmp_path``. The demo's child processes all carry the workdir in their command line,
which is how the tests look for survivors.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pytorch_lightning")
pytest.importorskip("matplotlib")
pytest.importorskip("paho.mqtt")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_helpers import survivors, wait_no_survivors

DEMO_TIMEOUT_S = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _demo_argv(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli", "demo", "--quick", "--workdir", str(workdir)]


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_quick_demo_outcome(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    start = time.monotonic()
    proc = subprocess.run(
        _demo_argv(workdir), check=False, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, cwd=tmp_path
    )
    elapsed = time.monotonic() - start
    output = f"exit {proc.returncode}\n--- stderr ---\n{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-4000:]}"
    assert proc.returncode == 0, output
    assert wait_no_survivors(str(workdir)) == [], "processes the demo started are still running"

    # Progress: numbered steps, each reported done.
    for n in range(1, 7):
        assert f"[{n}/6]" in proc.stdout and f"step {n} done" in proc.stdout, output

    s = json.loads((workdir / "summary.json").read_text())
    assert s["ok"] is True and s["quick"] is True
    assert [step["n"] for step in s["steps"]] == [1, 2, 3, 4, 5, 6]

    # 1-2: trained with 2 DDP ranks; two signed packages, the second 2:4-sparse.
    assert s["training"]["ranks"] == 2
    v1, v2 = s["packages"]["1.0.0"], s["packages"]["2.0.0"]
    assert v1["signer"] and v1["signer"] == v2["signer"]
    assert v1["sparsity"] is None and v2["sparsity"] == "2:4" and v2["sparse_layers"]

    # 3: three devices with the three profiles, the faulty one named.
    devices = s["devices"]
    assert {d["profile"] for d in devices.values()} == {"raspberrypi-4b", "raspberrypi-5", "jetson-orin-nano"}
    failing = s["failing_device"]
    assert devices[failing]["fault_version"] == "2.0.0"

    # 4: 1.0.0 everywhere; 2.0.0 in two waves: the faulty device failed its health window and
    # rolled back locally to 1.0.0, the others committed 2.0.0.
    initial, update = s["rollouts"]["initial"], s["rollouts"]["update"]
    assert initial["state"] == "succeeded"
    assert all(d["state"] == "succeeded" for d in initial["devices"].values())
    assert update["waves"] == 2 and update["state"] == "completed_with_failures"
    assert update["devices"][failing]["state"] == "failed"
    assert update["devices"][failing]["step"] == "health"
    assert devices[failing]["final_version"] == "1.0.0"
    for name, d in devices.items():
        if name != failing:
            assert update["devices"][name]["state"] == "succeeded", update
            assert d["final_version"] == "2.0.0"

    # 5: real traffic: every device answered the whole test split with no errors after the rollout;
    # the faulty device's requests failed during its health window only.
    assert s["traffic"]["requests"] > 0
    assert s["traffic"]["devices"][failing]["failed"] > 0
    assert all(s["traffic"]["devices"][n]["failed"] == 0 for n in devices if n != failing)
    for ev in s["evaluation"]:
        assert ev["requests"] == s["accuracy"]["test_images"] > 0 and ev["errors"] == 0, ev
        assert ev["version"] == devices[ev["device"]]["final_version"]
        assert ev["latency_ms"]["p50"] > 0
    acc = s["accuracy"]
    assert acc["float"] > 0.9 and acc["float_2_4"] > 0.9
    assert abs(acc["int8"] - acc["float"]) <= 0.01, acc  # INT8 within a point of float
    assert abs(acc["int8_2_4"] - acc["float_2_4"]) <= 0.01, acc
    assert acc["int8_2_4"] >= acc["float"] - 0.02, acc  # 2:4 costs at most two points

    # Telemetry reached the manager from all three devices, with plausible counts: no more
    # inferences than the demo sent plus the agents' health probes.
    tel = s["telemetry"]
    assert tel["devices"] == 3 and tel["messages"] >= 3
    by_version = {m["version"]: m for m in tel["models"]}
    assert by_version["1.0.0"]["inferences"] > 0 and by_version["2.0.0"]["inferences"] > 0
    sent = s["traffic"]["requests"] + 3 * s["accuracy"]["test_images"]
    assert sum(m["inferences"] for m in tel["models"]) < sent + 2000, tel
    assert by_version["2.0.0"]["errors"] > 0  # the faulty device's window was reported

    # 6: the plot.
    plot = Path(s["plot"])
    assert plot.read_bytes()[:8] == PNG_MAGIC and plot.stat().st_size > 10_000
    print(f"quick demo: {elapsed:.0f}s")


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_ctrl_c_mid_rollout_stops_everything(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) while the 2.0.0 rollout runs: exit 130, and no process of the demo survives."""
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        _demo_argv(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        # A shell's background job starts with SIGINT ignored, and Python keeps it so: the demo gets
        # Ctrl-C's default behaviour whatever the test run inherited.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    seen: list[str] = []
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "wave 1/2 starts" in line:
                break
            assert time.monotonic() < deadline, "".join(seen[-30:])
        else:
            pytest.fail("the demo ended before the rollout:\n" + "".join(seen[-30:]))
        assert len(survivors(str(workdir))) >= 5  # broker, manager, three devices
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen[-20:]) + rest
    assert "interrupted" in rest and "stopping" in rest
    assert wait_no_survivors(str(workdir)) == []
    assert json.loads((workdir / "summary.json").read_text())["ok"] is False
