"""The manager's HTTP API (aiohttp, like ``edge serve``), run in its own thread.

Routes (JSON unless said otherwise)::

    GET  /api/v1/devices?since_s=300         the registry, with each device's resource summary
    GET  /api/v1/packages                    stored packages
    POST /api/v1/packages                    body: an .edgepkg; verified and stored by sha256
    GET  /api/v1/packages/{sha256}/content   the file, with HTTP Range support (resumable downloads)
    GET  /api/v1/deployments                 all deployments with per-state counts
    POST /api/v1/deployments                 {"package": sha256, "spec": {...RolloutSpec}}
    GET  /api/v1/deployments/{id}            one deployment with its devices
    POST /api/v1/deployments/{id}/{pause|resume|abort}
    GET  /api/v1/telemetry?since_s=3600      per model and version: inferences, errors, p95
    GET  /metrics                            Prometheus text format
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from fleet.errors import ConflictError, NotFoundError
from fleet.manager.rollout import RolloutSpec
from fleet.manager.service import FleetManager

__all__ = ["ApiServer", "create_app"]


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


def create_app(manager: FleetManager) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=4 << 30)

    async def run(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def devices(request: web.Request) -> web.Response:
        return _json(await run(manager.devices, float(request.query.get("since_s", 300))))

    async def packages(_r: web.Request) -> web.Response:
        return _json(await run(manager.packages.list))

    async def add_package(request: web.Request) -> web.Response:
        with tempfile.NamedTemporaryFile(dir=manager.packages.root, prefix=".tmp-upload-") as tmp:
            async for chunk in request.content.iter_chunked(1 << 20):
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
        return _json(await run(manager.deploy, str(body["package"]), spec), 201)

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

    app.add_routes(
        [
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

    def __init__(self, manager: FleetManager, host: str = "127.0.0.1", port: int = 0) -> None:
        self.manager, self.host, self.port = manager, host, port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ApiServer:
        self._thread.start()

        async def up() -> None:
            self._runner = web.AppRunner(create_app(self.manager), access_log=None)
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
