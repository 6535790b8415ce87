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
    POST /api/v1/deployments                 {"package": sha256, "spec": {"targets": {...}, ...RolloutSpec},
                                             "supersede": bool}; unknown keys, targets naming nothing
                                             (the whole fleet is {"all": true}) and out-of-range values: 400
    GET  /api/v1/deployments/{id}            one deployment with its devices
    POST /api/v1/deployments/{id}/{pause|resume|abort}
    GET  /api/v1/telemetry?since_s=3600      per model and version: inferences, errors, p95
    GET  /metrics                            Prometheus text format (no token)
    GET  /healthz                            {"ok": true} while the manager runs (no token)

Two roles (:class:`fleet.auth.Role`): the operator token may use every route; the viewer token
(``viewer_token``) only GET ones (``403`` otherwise). Every action (a method other than GET/HEAD)
is recorded in the ``audit`` table. The console (:mod:`fleet.console`, docs/console.md) adds::

    GET  /                                   the console's page (no token: it holds no data)
    GET  /console/static/{path}              its scripts, styles and vendored libraries
    GET|POST|DELETE /console/session         who is signed in | sign in with a token | sign out
    GET  /api/v1/overview                    counts by profile/group/tag, versions, rollouts, alerts
    GET  /api/v1/console/devices?offset=&limit=&q=&online=&profile=&group=&tag=&model=&sort=
    GET  /api/v1/console/deployments         the newest deployments with per-state counts
    GET  /api/v1/devices/{id}                one device: alerts, events, deployments
    GET  /api/v1/devices/{id}/series?since_s= its system telemetry and per-model series
    GET  /api/v1/deployments/{id}/timeline   a deployment with its events and audit entries
    POST /api/v1/deployments/preview         the devices and waves a deployment would reach
    GET  /api/v1/packages/{sha256}/inside    manifest, per-layer view, accuracy, self-test
    GET  /api/v1/telemetry/series?model=&since_s=  per model and version over time
    GET  /api/v1/audit                       the operators' actions, newest first
    GET  /api/v1/stream                      server-sent events: which parts changed
The console's session cookie authenticates these (and every /api/v1 route) like a bearer token
of its role, with the ``X-CSRF-Token`` header required on actions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from fleet.auth import role_of
from fleet.console.api import console_routes
from fleet.console.api import is_open_path as is_console_path
from fleet.console.sessions import CSRF_HEADER, ConsoleSessions
from fleet.errors import ConflictError, NotFoundError, ProtocolError
from fleet.manager.rollout import InvalidRequestError, RolloutSpec
from fleet.manager.service import FleetManager
from fleet.protocol import MAX_JSON_DEPTH, loads_bounded

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "OPEN_PATHS", "ApiServer", "create_app"]

DEFAULT_MAX_UPLOAD_BYTES = 512 << 20
# Served without a token: scrapers and health checks. Neither reveals more than counts and states.
OPEN_PATHS = frozenset({"/metrics", "/healthz"})
_JSON_BODY_LIMIT = 1 << 20  # deployment requests; uploads stream and have their own limit
_PACKAGE_REF = re.compile(r"[0-9a-f]{8,64}")
_DEPLOY_KEYS = frozenset({"package", "spec", "supersede"})
_MAX_SINCE_S = 366 * 86400.0
log = logging.getLogger(__name__)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: a response is always valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(data: Any) -> str:
    return json.dumps(_finite(data), allow_nan=False)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, parsed with size and depth limits; InvalidRequestError otherwise."""
    raw = await request.read()
    try:
        # NaN and Infinity parse, so that the field checks refuse them by name (spec.device_timeout_s).
        body = loads_bounded(raw, max_bytes=_JSON_BODY_LIMIT, max_depth=MAX_JSON_DEPTH, finite=False)
    except ProtocolError as exc:
        raise InvalidRequestError(f"request body: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _since(request: web.Request, default: float) -> float:
    raw = request.query.get("since_s")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequestError(f"since_s must be a number of seconds, got {raw[:40]!r}") from None
    if not (math.isfinite(value) and 0 < value <= _MAX_SINCE_S):
        raise InvalidRequestError(f"since_s must be in (0, {_MAX_SINCE_S:.0f}], got {raw[:40]!r}")
    return value


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFoundError as exc:
        return _json({"error": str(exc)}, 404)
    except (ConflictError, ValueError, TypeError) as exc:
        return _json({"error": str(exc)}, 409 if isinstance(exc, ConflictError) else 400)


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _auth(token: str, viewer_token: str | None = None, sessions: Any = None, audit: Any = None) -> Any:
    """Roles: the operator token (or an operator's console session) may do everything; the viewer
    token (or a viewer's session) only read (403 on any other method). A request authenticated by
    the console's session cookie must carry its CSRF header on actions (fleet.console.sessions).
    ``audit(actor, action, target, detail)`` records every action (method other than GET/HEAD)."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in OPEN_PATHS or (sessions is not None and is_console_path(request.path)):
            return await handler(request)
        role = role_of(request.headers.get("Authorization"), token, viewer_token)
        actor = f"{role} token"
        session = None
        if role is None and sessions is not None:
            session = sessions.from_request(request)
            if session is not None:
                role, actor = session.role, session.actor
        if role is None:
            return web.json_response(
                {"error": "missing or wrong API token (Authorization: Bearer ...)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="edge-fleet"'},
            )
        if request.method in _READ_METHODS:
            return await handler(request)
        if not role.can_act:
            return web.json_response({"error": "the viewer token is read-only"}, status=403)
        if session is not None and not sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
            return web.json_response(
                {"error": f"missing or wrong {CSRF_HEADER} header (the console's CSRF token)"}, status=403
            )
        response = await handler(request)
        if audit is not None and response.status < 400 and not request.path.endswith("/preview"):
            target = request.match_info.get("id") or request.match_info.get("sha") or ""
            if not target and isinstance(response, web.Response) and response.body:
                try:
                    body = json.loads(response.body)  # type: ignore[arg-type]
                    target = str(body.get("id") or body.get("sha256") or "")[:100]
                except (TypeError, ValueError, AttributeError):
                    target = ""
            action = request.match_info.get("action") or f"{request.method} {request.path}"
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None,
                    audit,
                    actor,
                    action,
                    target,
                    f"{request.method} {request.path} -> {response.status}",
                )
            except Exception:
                log.exception("could not record %s %s in the audit log", request.method, request.path)
        return response

    return check


def _too_large(limit: int) -> web.Response:
    return _json({"error": f"the upload is over the manager's limit of {limit} bytes"}, 413)


def create_app(
    manager: FleetManager,
    token: str,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    *,
    viewer_token: str | None = None,
    console: bool = True,
) -> web.Application:
    """The API; every route but :data:`OPEN_PATHS` requires ``token`` (or ``viewer_token``, for GET
    routes only); uploads up to ``max_upload_bytes``. ``console``: serve the console at ``/``."""
    if not token:
        raise ValueError("the HTTP API needs a token")
    if viewer_token is not None and (not viewer_token or viewer_token == token):
        raise ValueError("the viewer token must be set and differ from the operator's")
    sessions = ConsoleSessions(token, viewer_token) if console else None
    app = web.Application(
        middlewares=[_auth(token, viewer_token, sessions, manager.db.add_audit), _errors],
        client_max_size=_JSON_BODY_LIMIT,
    )

    async def run(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def devices(request: web.Request) -> web.Response:
        return _json(await run(manager.devices, _since(request, 300.0)))

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
        body = await _body(request)
        unknown = set(body) - _DEPLOY_KEYS
        if unknown:
            raise InvalidRequestError(
                f"unknown key(s) in the deployment request: {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(_DEPLOY_KEYS))}; targets go in spec.targets)"
            )
        package = body.get("package")
        if not isinstance(package, str) or not _PACKAGE_REF.fullmatch(package):
            raise InvalidRequestError("package must be a sha256 or a prefix of 8 or more of its hex digits")
        if "spec" not in body:
            raise InvalidRequestError(
                'spec is missing: at least {"targets": {...}} ({"all": true} for every device)'
            )
        spec = RolloutSpec.from_dict(body["spec"])
        supersede = body.get("supersede", False)
        if not isinstance(supersede, bool):
            raise InvalidRequestError("supersede must be true or false")
        return _json(await run(manager.deploy, package, spec, supersede), 201)

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
        return _json(await run(manager.telemetry_summary, _since(request, 3600.0)))

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
    if sessions is not None:
        # The console (fleet/console): its page at /, sign-in, the reads of its pages, live updates.
        app.add_routes(console_routes(manager, sessions, run, app))
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
        viewer_token: str | None = None,
    ) -> None:
        self.manager, self.host, self.port = manager, host, port
        self.token, self.max_upload_bytes = token, max_upload_bytes
        self.viewer_token = viewer_token
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
                create_app(self.manager, self.token, self.max_upload_bytes, viewer_token=self.viewer_token),
                access_log=None,
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
