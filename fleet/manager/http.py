"""The manager's HTTP API (aiohttp, like ``edge serve``), run in its own thread.

Every route needs ``Authorization: Bearer <token>`` (see :mod:`fleet.auth`) except ``/metrics``
and ``/healthz``: without it, or with a wrong one, the answer is ``401``. The read-only routes are
protected too, because device ids, tags, package names and the packages themselves are the fleet's
inventory. Uploads are limited to ``max_upload_bytes`` (``413`` beyond it).

Routes (JSON unless said otherwise)::

    GET  /api/v1/devices?since_s=300         the registry, with each device's resource summary
    GET  /api/v1/packages                    stored packages
    POST /api/v1/packages                    body: an .edgepkg; verified and stored by sha256
    GET  /api/v1/packages/{sha256}/content   the file, with HTTP Range support (resumable downloads)
    GET  /api/v1/deployments                 all deployments with per-state counts
    POST /api/v1/deployments                 {"package": sha256, "spec": {...RolloutSpec}, "supersede": bool}
    GET  /api/v1/deployments/{id}            one deployment with its devices
    POST /api/v1/deployments/{id}/{pause|resume|abort}
    GET  /api/v1/telemetry?since_s=3600      per model and version: inferences, errors, p95
    GET  /metrics                            Prometheus text format (no token)
    GET  /healthz                            {"ok": true} while the manager runs (no token)
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from fleet.auth import bearer_matches
from fleet.errors import ConflictError, NotFoundError
from fleet.manager.rollout import RolloutSpec
from fleet.manager.service import FleetManager

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "OPEN_PATHS", "ApiServer", "create_app"]

DEFAULT_MAX_UPLOAD_BYTES = 512 << 20
# Served without a token: scrapers and health checks. Neither reveals more than counts and states.
OPEN_PATHS = frozenset({"/metrics", "/healthz"})
_JSON_BODY_LIMIT = 1 << 20  # deployment requests; uploads stream and have their own limit


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFoundError as exc:
        return _json({"error": str(exc)}, 404)
    except (ConflictError, ValueError, TypeError) as exc:
        return _json({"error": str(exc)}, 409 if isinstance(exc, ConflictError) else 400)


def _auth(token: str) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not bearer_matches(request.headers.get("Authorization"), token):
            return web.json_response(
                {"error": "missing or wrong API token (Authorization: Bearer ...)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="edge-fleet"'},
            )
        return await handler(request)

    return check


def _too_large(limit: int) -> web.Response:
    return _json({"error": f"the upload is over the manager's limit of {limit} bytes"}, 413)


def create_app(
    manager: FleetManager, token: str, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> web.Application:
    """The API; every route but :data:`OPEN_PATHS` requires ``token``; uploads up to ``max_upload_bytes``."""
    if not token:
        raise ValueError("the HTTP API needs a token")
    app = web.Application(middlewares=[_auth(token), _errors], client_max_size=_JSON_BODY_LIMIT)

    async def run(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def devices(request: web.Request) -> web.Response:
        return _json(await run(manager.devices, float(request.query.get("since_s", 300))))

    async def packages(_r: web.Request) -> web.Response:
        return _json(await run(manager.packages.list))

    async def add_package(request: web.Request) -> web.Response:
        # aiohttp's client_max_size does not apply to a streamed body: count it here.
        if request.content_length is not None and request.content_length > max_upload_bytes:
            return _too_large(max_upload_bytes)
        received = 0
        with tempfile.NamedTemporaryFile(dir=manager.packages.root, prefix=".tmp-upload-") as tmp:
            async for chunk in request.content.iter_chunked(1 << 20):
                received += len(chunk)
                if received > max_upload_bytes:
                    return _too_large(max_upload_bytes)
                tmp.write(chunk)
            tmp.flush()
            row = await run(manager.packages.add, Path(tmp.name))
        return _json(row, 201)

    async def package_content(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(manager.packages.path(request.match_info["sha"]))

    async def deployments(_r: web.Request) -> web.Response:
        return _json(await run(manager.rollouts.list))

    async def create_deployment(request: web.Request) -> web.Response:
        body = await request.json()
        spec = RolloutSpec.from_dict(body.get("spec") or {})
        supersede = bool(body.get("supersede", False))
        return _json(await run(manager.deploy, str(body["package"]), spec, supersede), 201)

    async def deployment(request: web.Request) -> web.Response:
        return _json(await run(manager.rollouts.status, request.match_info["id"]))

    async def control(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        fn = {
            "pause": manager.rollouts.pause,
            "resume": manager.rollouts.resume,
            "abort": manager.rollouts.abort,
        }
        if action not in fn:
            raise NotFoundError(f"no action {action!r}")
        return _json(await run(fn[action], request.match_info["id"]))

    async def telemetry(request: web.Request) -> web.Response:
        return _json(await run(manager.telemetry_summary, float(request.query.get("since_s", 3600))))

    async def metrics(_r: web.Request) -> web.Response:
        body = await run(manager.render_metrics)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def healthz(_r: web.Request) -> web.Response:
        return _json({"ok": True})

    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/api/v1/devices", devices),
            web.get("/api/v1/packages", packages),
            web.post("/api/v1/packages", add_package),
            web.get("/api/v1/packages/{sha}/content", package_content),
            web.get("/api/v1/deployments", deployments),
            web.post("/api/v1/deployments", create_deployment),
            web.get("/api/v1/deployments/{id}", deployment),
            web.post("/api/v1/deployments/{id}/{action}", control),
            web.get("/api/v1/telemetry", telemetry),
            web.get("/metrics", metrics),
        ]
    )
    return app


class ApiServer:
    """The HTTP API on ``host:port`` (0: a free port) in a background thread."""

    def __init__(
        self,
        manager: FleetManager,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        self.manager, self.host, self.port = manager, host, port
        self.token, self.max_upload_bytes = token, max_upload_bytes
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ApiServer:
        self._thread.start()

        async def up() -> None:
            self._runner = web.AppRunner(
                create_app(self.manager, self.token, self.max_upload_bytes), access_log=None
            )
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        asyncio.run_coroutine_threadsafe(up(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
