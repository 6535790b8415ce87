"""Upload a model package to the fleet manager: ``POST {fleet}/api/v1/packages``.

The manager's API (``fleet.manager.http``) takes the raw ``.edgepkg`` bytes as the request
body, verifies the package and stores it by sha256, and answers ``201`` with the stored
package's record (JSON, including its ``sha256``). The file is streamed, not loaded whole;
the standard library's ``urllib`` is the only dependency. The manager requires its API token
(``Authorization: Bearer``): ``edge train push --token``, else ``$EDGE_FLEET_TOKEN`` (the variable
the fleet's own client reads too). A ``401`` says the token is missing or wrong.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cloud_trainer.errors import PushError

__all__ = ["PACKAGES_ENDPOINT", "push_package"]

PACKAGES_ENDPOINT = "/api/v1/packages"
TOKEN_ENV = "EDGE_FLEET_TOKEN"


def push_package(
    package: str | os.PathLike[str], fleet_url: str, *, token: str | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Upload ``package`` to the manager at ``fleet_url``; returns the manager's JSON record.

    Raises :class:`PushError` for a missing file, an unreachable manager or a non-2xx answer
    (with the manager's error message).
    """
    path = Path(package)
    if not path.is_file():
        raise PushError(f"no package file at {path}")
    url = fleet_url.rstrip("/") + PACKAGES_ENDPOINT
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with path.open("rb") as body:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            if exc.code == 401:
                detail += " (give the manager's API token: --token or $EDGE_FLEET_TOKEN)"
            raise PushError(f"{url} refused {path.name}: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PushError(f"cannot reach the fleet manager at {url}: {exc}") from exc
    try:
        return json.loads(payload) if payload else {}
    except json.JSONDecodeError as exc:
        raise PushError(f"{url} answered with something that is not JSON: {payload[:200]!r}") from exc


def main_push(package: str, fleet: str, token: str | None) -> int:
    record = push_package(package, fleet, token=token or os.environ.get(TOKEN_ENV, "").strip() or None)
    print(json.dumps(record, indent=2, sort_keys=True), file=sys.stdout)
    return 0
