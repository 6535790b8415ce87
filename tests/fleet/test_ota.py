"""OTA through a real mosquitto with in-process agents: success, refusals, rollout aborts and rollbacks."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import MODEL, seed_device, serving, wait_for, write_key, write_model_package

from fleet.errors import UpdateError
from fleet.manager.rollout import RolloutSpec
from fleet.protocol import HealthPolicy
from fleet.targets import StandaloneTarget

# The device-side window judges errors only: on a loaded machine a healthy version's p95 can exceed
# twice the previous one's, which would fail good devices (a threshold test once counted 3 failures
# for its 2 faulty devices). No test here is about the latency judgement.
FAST = HealthPolicy(window_s=0.5, min_inferences=1, max_latency_ratio=1000.0)


def _spec(**kw: Any) -> RolloutSpec:
    kw.setdefault("health", FAST)
    kw.setdefault("block_size", 4096)
    return RolloutSpec(**kw)


def _packages(tmp_path: Path, key: Any, **v2: Any) -> tuple[Path, Path]:
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    v2_path = write_model_package(tmp_path / "v2.edgepkg", "2.0", key, seed=2, **v2).path
    return v1, v2_path


def _wait_registered(manager: Any, n: int) -> None:
    wait_for(lambda: sum(d["online"] for d in manager.devices()) == n, 15, f"{n} devices online")


def _wait_done(manager: Any, dep_id: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (s := manager.rollouts.status(dep_id))["state"] not in ("running", "paused") and s,
        timeout,
        f"deployment {dep_id} to finish",
    )


def _no_debris(state_dir: Path) -> None:
    debris = [p for p in (state_dir / "models").rglob(".tmp-*")]
    assert not debris, f"half-installed leftovers: {debris}"


def test_rollout_succeeds_and_devices_commit(tmp_path, manager, start_agent, keys):
    key, trust = keys
    v1, v2 = _packages(tmp_path, key)
    for dev in ("a", "b"):
        seed_device(tmp_path / dev, v1, trust)
        start_agent(dev)
    _wait_registered(manager, 2)
    pkg = manager.packages.add(v2)
    dep = manager.deploy(pkg["sha256"], _spec(canary=0.5))
    assert dep["waves"] == 2

    final = _wait_done(manager, dep["id"])
    assert final["state"] == "succeeded", final
    assert final["counts"] == {"succeeded": 2}
    for dev in ("a", "b"):
        assert serving(tmp_path / dev, trust) == ("2.0", True)
        _no_debris(tmp_path / dev)
    # The registry follows the devices' retained status.
    wait_for(
        lambda: all(d["models"][MODEL]["version"] == "2.0" for d in manager.devices()), 10, "status with 2.0"
    )
    # Events went through the durable outbox: every step is recorded once, in order.
    states = [
        r["state"]
        for r in manager.db.query(
            "SELECT state FROM events WHERE device='a' AND deployment_id=? ORDER BY seq", (dep["id"],)
        )
    ]
    assert states[0] == "accepted" and states[-1] == "succeeded"
    assert states.index("verified") < states.index("swapped") < states.index("succeeded")


@pytest.mark.parametrize("fault", ["crc-caught", "lying-source"])
def test_corrupt_chunk(tmp_path, manager, start_agent, keys, fault):
    """A block corrupted in transit is asked for again; bytes that lie about their crc fail the sha256."""
    key, trust = keys
    v1, v2 = _packages(tmp_path, key, k=2048)  # ~25 KB: several 4 KiB blocks
    seed_device(tmp_path / "a", v1, trust)
    start_agent("a")
    _wait_registered(manager, 1)
    corrupted: list[int] = []

    def corrupt(device: str, index: int, data: bytes) -> bytes:
        if index != 2 or (fault == "crc-caught" and corrupted):
            return data
        corrupted.append(index)
        return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]

    manager.block_filter = corrupt
    if fault == "lying-source":
        # Re-encode with the corrupted bytes' own crc: only the end-to-end sha256 can catch it.
        import zlib

        from fleet import protocol

        original = protocol.encode_block

        def lying(*args: Any, crc32: Any = None, **kw: Any) -> bytes:
            return original(*args, crc32=zlib.crc32(args[3]), **kw)

        from fleet.manager import stream

        stream.encode_block = lying  # type: ignore[assignment]
    try:
        dep = manager.deploy(manager.packages.add(v2)["sha256"], _spec())
        final = _wait_done(manager, dep["id"])
    finally:
        from fleet import protocol
        from fleet.manager import stream

        stream.encode_block = protocol.encode_block
    assert corrupted
    dev = final["devices"][0]
    if fault == "crc-caught":
        assert final["state"] == "succeeded", final
        assert serving(tmp_path / "a", trust) == ("2.0", True)
    else:
        assert dev["state"] == "failed" and dev["step"] == "download", dev
        assert "hash" in dev["reason"]
        assert serving(tmp_path / "a", trust) == ("1.0", True)
        assert not list((tmp_path / "a" / "fleet" / "downloads").iterdir()), "bad download kept"
    _no_debris(tmp_path / "a")


def _store_unchecked(manager: Any, path: Path) -> str:
    """Put a package in the manager's store without its checks (as a compromised server would)."""
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    shutil.copy(path, manager.packages.root / f"{sha}.edgepkg")
    with manager.db.tx() as db:
        db.execute("INSERT INTO packages VALUES (?, ?, '2.0', ?, NULL, 0)", (sha, MODEL, path.stat().st_size))
    return sha


@pytest.mark.parametrize("kind", ["tampered", "unsigned", "untrusted-key"])
def test_bad_package_refused_old_keeps_serving(tmp_path, manager, start_agent, keys, kind):
    key, trust = keys
    v1 = write_model_package(tmp_path / "v1.edgepkg", "1.0", key, seed=1).path
    bad = tmp_path / "bad.edgepkg"
    if kind == "tampered":
        write_model_package(bad, "2.0", key, seed=2)
        data = bytearray(bad.read_bytes())
        at = data.index(b"selftest.npz", 200)  # inside the archive, past the first header
        data[at + 40] ^= 0x01
        bad.write_bytes(bytes(data))
    elif kind == "unsigned":
        write_model_package(bad, "2.0", None, seed=2)
    else:
        write_model_package(bad, "2.0", write_key(tmp_path / "other" / "k"), seed=2)
    seed_device(tmp_path / "a", v1, trust)
    start_agent("a")
    _wait_registered(manager, 1)

    dep = manager.deploy(_store_unchecked(manager, bad), _spec())
    final = _wait_done(manager, dep["id"])
    dev = final["devices"][0]
    assert dev["state"] == "failed" and dev["step"] == "verify", dev
    assert serving(tmp_path / "a", trust) == ("1.0", True)
    assert len(list((tmp_path / "a" / "models" / MODEL).glob("[0-9a-f]" * 8 + "*"))) == 1, (
        "bad version stored"
    )
    _no_debris(tmp_path / "a")


class FaultyHardware(StandaloneTarget):
    """A device on which version 2.0 fails its self-test (say, a kernel bug on this CPU)."""

    def swap(self, name: str, package_path: Path) -> str:
        from edge_runtime.package import open_package

        with open_package(package_path) as pkg:
            if pkg.manifest.version == "2.0":
                raise UpdateError("selftest", "outputs out of tolerance on this device (simulated)")
        return super().swap(name, package_path)


def test_selftest_failures_abort_rollout_and_updated_devices_roll_back(tmp_path, manager, start_agent, keys):
    key, trust = keys
    v1, v2 = _packages(tmp_path, key)
    manager.packages.add(v1)  # so the manager can serve a rollback to a device that lacks it
    good, bad = ["g1", "g2"], ["b1", "b2"]
    for dev in good + bad:
        seed_device(tmp_path / dev, v1, trust)
        start_agent(dev, runtime=FaultyHardware() if dev in bad else None)
    _wait_registered(manager, 4)
    # min_executed=4: the threshold is judged once every device finished, so the good ones are
    # updated (committed 2.0) when the abort comes, and must roll back.
    spec = _spec(max_failures=2, min_executed=4)
    dep = manager.deploy(manager.packages.add(v2)["sha256"], spec)
    final = _wait_done(manager, dep["id"], timeout=40)
    assert final["state"] == "aborted", final
    assert "2 device(s) failed" in final["reason"]
    states = {d["device"]: d for d in final["devices"]}
    for dev in bad:
        assert states[dev]["state"] == "failed" and states[dev]["step"] == "selftest", states[dev]
    for dev in good:
        # Updated when the abort came (a rollback may already have completed by now).
        assert states[dev]["state"] in ("rolling_back", "rolled_back"), states[dev]
        assert states[dev]["phase"] in ("succeeded", "rolled_back"), states[dev]
    # Updated devices get a rollback and end on 1.0, committed.
    for dev in good + bad:
        wait_for(lambda dev=dev: serving(tmp_path / dev, trust)[0] == "1.0", 20, f"{dev} back on 1.0")
        assert serving(tmp_path / dev, trust) == ("1.0", True)
        _no_debris(tmp_path / dev)
    wait_for(
        lambda: all(
            d["state"] in ("rolled_back", "failed", "skipped")
            for d in manager.rollouts.status(dep["id"])["devices"]
        ),
        20,
        "every device rolled back or failed",
    )


def test_operator_abort_and_pause(tmp_path, manager, start_agent, keys):
    key, trust = keys
    v1, v2 = _packages(tmp_path, key)
    for dev in ("a", "b", "c"):
        seed_device(tmp_path / dev, v1, trust)
        start_agent(dev)
    _wait_registered(manager, 3)
    dep = manager.deploy(manager.packages.add(v2)["sha256"], _spec(rate_per_min=1))
    # Rate 1/min: one device starts, the others wait.
    wait_for(
        lambda: manager.rollouts.status(dep["id"])["counts"].get("succeeded") == 1, 20, "one device done"
    )
    time.sleep(0.5)
    assert manager.rollouts.status(dep["id"])["counts"].get("pending") == 2
    manager.rollouts.pause(dep["id"])
    assert manager.rollouts.status(dep["id"])["state"] == "paused"
    final = manager.rollouts.abort(dep["id"])
    assert final["state"] == "aborted" and final["counts"].get("skipped") == 2
    updated = next(d["device"] for d in final["devices"] if d["state"] == "rolling_back")
    wait_for(lambda: serving(tmp_path / updated, trust)[0] == "1.0", 20, "rollback of the updated device")
