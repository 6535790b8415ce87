"""`edge fleet serve` (embedded amqtt broker) driven by the `edge fleet ...` client commands.

The manager generates its API token into its state directory (mode 0600); the clients find it there
(--state-dir), in --token-file or in $EDGE_FLEET_TOKEN, and are refused (401) without it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from fleet_helpers import REPO, free_port, wait_for, write_model_package

from cloud_trainer.errors import PushError
from cloud_trainer.push import push_package

_TOKEN_VARS = ("EDGE_FLEET_TOKEN", "EDGE_FLEET_TOKEN_FILE")


def _edge(*args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in _TOKEN_VARS}
    env.update(PYTHONPATH=str(REPO), **env_extra)
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
    env = {k: v for k, v in os.environ.items() if k not in _TOKEN_VARS}
    env["PYTHONPATH"] = str(REPO)
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
        token_file = tmp_path / "m" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        local = ("--api", api, "--state-dir", str(tmp_path / "m"))  # the default file, found there
        nowhere = ("--api", api, "--state-dir", str(tmp_path / "none"))

        # Without a token, or with a wrong one, every client command is refused.
        denied = _edge("fleet", "packages", *nowhere, "add", str(pkg.path))
        assert denied.returncode == 1 and "401" in denied.stderr and "token" in denied.stderr
        wrong = _edge("fleet", "devices", *nowhere, EDGE_FLEET_TOKEN="x" * 43)
        assert wrong.returncode == 1 and "401" in wrong.stderr
        with pytest.raises(PushError, match="401"):
            push_package(pkg.path, api)

        added = _edge("fleet", "packages", *local, "add", str(pkg.path))
        assert added.returncode == 0, added.stderr
        assert pkg.sha256 in added.stdout
        listed = _edge("fleet", "packages", *nowhere, "--token-file", str(token_file), "--json")
        assert json.loads(listed.stdout)[0]["sha256"] == pkg.sha256
        # `edge train push` uploads with the token (the same package again: stored once).
        assert push_package(pkg.path, api, token=token)["sha256"] == pkg.sha256
        # No device is known yet: deploying is refused with a reason, exit code 1.
        refused = _edge("fleet", "deploy", *nowhere, pkg.sha256[:12], "--all", EDGE_FLEET_TOKEN=token)
        assert refused.returncode == 1 and "no known device" in refused.stderr
        status = _edge("fleet", "rollout", *local, "status")
        assert status.returncode == 0 and "no deployments" in status.stdout
        # Range requests on package content: the HTTP resumable path, behind the token too.
        url = f"{api}/api/v1/packages/{pkg.sha256}/content"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=5)
        assert info.value.code == 401
        req = urllib.request.Request(
            url, headers={"Range": "bytes=10-19", "Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 206 and resp.read() == pkg.path.read_bytes()[10:20]
        # A second manager on the same state directory refuses to start, naming the first one.
        second = _edge(
            "fleet", "serve", "--fleet", "lab", "--state-dir", str(tmp_path / "m"), "--http", "127.0.0.1:0"
        )
        assert second.returncode == 1, second.stderr
        assert f"another fleet manager (pid {proc.pid})" in second.stderr
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    assert proc.returncode == 0, (tmp_path / "manager.log").read_text()[-3000:]
