"""`edge fleet serve` (embedded amqtt broker) driven by the `edge fleet ...` client commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from fleet_helpers import REPO, free_port, wait_for, write_model_package


def _edge(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_with_embedded_broker_and_client_commands(tmp_path, keys):
    key, _trust = keys
    pkg = write_model_package(tmp_path / "v1.edgepkg", "1.0", key)
    http, mqtt_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "manager.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.cli",
            "fleet",
            "serve",
            "--fleet",
            "lab",
            "--state-dir",
            str(tmp_path / "m"),
            "--broker-port",
            str(mqtt_port),
            "--http",
            f"127.0.0.1:{http}",
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    api = f"http://127.0.0.1:{http}"
    try:

        def up() -> bool:
            try:
                return urllib.request.urlopen(f"{api}/metrics", timeout=1).status == 200
            except OSError:
                return False

        wait_for(up, 30, "the manager's HTTP API")
        added = _edge("fleet", "packages", "--api", api, "add", str(pkg.path))
        assert added.returncode == 0, added.stderr
        assert pkg.sha256 in added.stdout
        listed = _edge("fleet", "packages", "--api", api, "--json")
        assert json.loads(listed.stdout)[0]["sha256"] == pkg.sha256
        # No device is known yet: deploying is refused with a reason, exit code 1.
        refused = _edge("fleet", "deploy", "--api", api, pkg.sha256[:12])
        assert refused.returncode == 1 and "no known device" in refused.stderr
        status = _edge("fleet", "rollout", "--api", api, "status")
        assert status.returncode == 0 and "no deployments" in status.stdout
        # Range requests on package content: the HTTP resumable path.
        req = urllib.request.Request(
            f"{api}/api/v1/packages/{pkg.sha256}/content", headers={"Range": "bytes=10-19"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 206 and resp.read() == pkg.path.read_bytes()[10:20]
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    assert proc.returncode == 0, (tmp_path / "manager.log").read_text()[-3000:]
