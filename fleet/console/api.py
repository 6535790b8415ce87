"""The console's routes: its static page, sign-in, the reads its pages make, and live updates (SSE).

:func:`console_routes` gives :func:`fleet.manager.http.create_app` the route table; the
manager's auth middleware has already checked the role (bearer token or session cookie, CSRF
for actions) of every ``/api/`` request by the time a handler here runs. ``/`` and
``/console/...`` are open: the page itself is public (no data in it), and the session routes
do their own checks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from fleet.console import views
from fleet.console.sessions import COOKIE, CSRF_HEADER, ConsoleSessions
from fleet.errors import NotFoundError
from fleet.manager.rollout import InvalidRequestError, RolloutSpec

__all__ = ["SECURITY_HEADERS", "STATIC_DIR", "ChangeFeed", "console_routes", "is_open_path"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_MAX_SINCE_S = 30 * 86400.0
_MAX_PAGE = 500
_TEXT_PARAM = 200

Run = Callable[..., Awaitable[Any]]


def is_open_path(path: str) -> bool:
    """Paths served without a token: the page and its files, and the session routes."""
    return path == "/" or path.startswith("/console/")


def _param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if len(value) > _TEXT_PARAM:
        raise InvalidRequestError(f"{name} is longer than {_TEXT_PARAM} characters")
    return value


def _number(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be a number, got {raw[:40]!r}") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InvalidRequestError(f"{name} must be in [{lo:g}, {hi:g}], got {raw[:40]!r}")
    return value


def _dumps(data: Any) -> str:
    def finite(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(data), allow_nan=False, default=str)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


class ChangeFeed:
    """Polls the database's change marks once a second while someone listens, and tells every
    listener which parts changed (``devices``, ``telemetry``, ``deployments``). Polling the
    database, not hooking ingestion, also sees what other manager instances sharing it wrote."""

    def __init__(self, manager: Any, run: Run, interval_s: float = 1.0) -> None:
        self.manager, self.run, self.interval_s = manager, run, interval_s
        self._listeners: set[asyncio.Queue[list[str]]] = set()
        self._task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    def subscribe(self) -> asyncio.Queue[list[str]]:
        queue: asyncio.Queue[list[str]] = asyncio.Queue(maxsize=16)
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._poll())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[list[str]]) -> None:
        self._listeners.discard(queue)

    async def _poll(self) -> None:
        last: dict[str, Any] | None = None
        while self._listeners and not self.closing.is_set():
            try:
                marks = await self.run(self.manager.db.change_marks)
            except Exception:
                log.debug("console change feed: reading the marks failed", exc_info=True)
                marks = last
            if marks is not None and last is not None:
                changed = [k for k in marks if marks[k] != last.get(k)]
                if changed:
                    for queue in list(self._listeners):
                        if queue.full():
                            queue.get_nowait()
                        queue.put_nowait(changed)
            last = marks
            try:
                await asyncio.wait_for(self.closing.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass


def _warm_alerts(manager: Any) -> None:
    try:
        views.cached_alerts(manager)
    except Exception:  # a warm-up: the first overview computes them again
        log.debug("console: warming the alerts failed", exc_info=True)


def console_routes(manager: Any, sessions: ConsoleSessions, run: Run, app: web.Application) -> list[Any]:
    """The console's routes (for ``app.add_routes``); registers the SSE feed's shutdown on ``app``."""
    feed = ChangeFeed(manager, run)

    async def closing(_app: web.Application) -> None:
        feed.closing.set()

    app.on_shutdown.append(closing)

    async def warm(_app: web.Application) -> None:
        # The overview's telemetry alerts scan a window of the fleet's telemetry: computed once now,
        # in the background, so the first page is served from the cache (views.cached_alerts).
        threading.Thread(target=_warm_alerts, args=(manager,), name="console-warm", daemon=True).start()

    app.on_startup.append(warm)
    index_html = (STATIC_DIR / "index.html").read_bytes()

    # --- the page ---

    async def index(_r: web.Request) -> web.Response:
        return web.Response(
            body=index_html, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
        )

    async def static(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        path = (STATIC_DIR / rel).resolve()
        if STATIC_DIR.resolve() not in path.parents or not path.is_file():
            raise web.HTTPNotFound()
        response = web.FileResponse(path, headers=SECURITY_HEADERS)
        if path.suffix == ".js":
            response.content_type = "text/javascript"
        return response

    # --- sign-in ---

    def _same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or origin.split("://", 1)[-1] == request.host

    async def session_get(request: web.Request) -> web.Response:
        session = sessions.from_request(request)
        if session is None:  # 200, not 401: asking is not an error (and the page asks on every load)
            return _json({"signed_in": False})
        return _json(
            {
                "signed_in": True,
                "role": session.role.value,
                "csrf": session.csrf,
                "expires": session.expires,
                "fleet": manager.config.fleet,
            }
        )

    async def session_post(request: web.Request) -> web.Response:
        if request.content_type != "application/json" or not _same_origin(request):
            return _json({"error": "sign in from the console's own page (a JSON body, same origin)"}, 403)
        try:
            body = json.loads(await request.content.read(4096))
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        issued = sessions.sign_in(token.strip()) if isinstance(token, str) and len(token) <= 1024 else None
        if issued is None:
            await asyncio.sleep(0.3)  # not worth guessing at
            return _json({"error": "this is neither the operator's nor the viewer's API token"}, 401)
        cookie, session = issued
        await run(manager.db.add_audit, session.actor, "sign_in", "console", "")
        response = _json(
            {
                "signed_in": True,
                "role": session.role.value,
                "csrf": session.csrf,
                "expires": session.expires,
                "fleet": manager.config.fleet,
            }
        )
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=sessions.lifetime_s,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure,
        )
        return response

    async def session_delete(request: web.Request) -> web.Response:
        session = sessions.from_request(request)
        if session is not None:
            if not sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
                return _json({"error": f"missing or wrong {CSRF_HEADER} header"}, 403)
            sessions.revoke(session)
            await run(manager.db.add_audit, session.actor, "sign_out", "console", "")
        response = _json({"signed_in": False})
        response.del_cookie(COOKIE, path="/")
        return response

    # --- reads ---

    async def overview(request: web.Request) -> web.Response:
        return _json(await run(views.overview, manager, _number(request, "since_s", 300.0, 10, _MAX_SINCE_S)))

    async def device_table(request: web.Request) -> web.Response:
        online = _param(request, "online")
        query = {
            "offset": int(_number(request, "offset", 0, 0, 1e9)),
            "limit": int(_number(request, "limit", 50, 1, _MAX_PAGE)),
            "search": _param(request, "q") or "",
            "online": None if online is None else online in ("1", "true", "online"),
            "profile": _param(request, "profile"),
            "group": _param(request, "group"),
            "tag": _param(request, "tag"),
            "model": _param(request, "model"),
            "sort": _param(request, "sort") or "id",
        }
        return _json(await run(views.device_page, manager, query))

    async def device(request: web.Request) -> web.Response:
        found = await run(views.device_detail, manager, request.match_info["id"])
        if found is None:
            raise NotFoundError(f"no device {request.match_info['id'][:64]!r}")
        return _json(found)

    async def device_series(request: web.Request) -> web.Response:
        since = _number(request, "since_s", 900.0, 10, _MAX_SINCE_S)
        buckets = int(_number(request, "buckets", 60, 2, 500))
        return _json(await run(views.device_series, manager, request.match_info["id"], since, buckets))

    async def deployment_list(_r: web.Request) -> web.Response:
        return _json(await run(manager.db.deployment_summaries, 200))

    async def deployment_timeline(request: web.Request) -> web.Response:
        return _json(await run(views.deployment_detail, manager, request.match_info["id"]))

    async def deployment_preview(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.content.read(1 << 16))
        except ValueError:
            raise InvalidRequestError("the preview request is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("package"), str):
            raise InvalidRequestError('expected {"package": sha256, "spec": {...}}')
        spec = RolloutSpec.from_dict(body.get("spec"))
        return _json(await run(views.preview, manager, body["package"], spec))

    async def package_inside(request: web.Request) -> web.Response:
        return _json(await run(views.package_inside, manager, request.match_info["sha"]))

    async def telemetry_series(request: web.Request) -> web.Response:
        import time

        since = _number(request, "since_s", 3600.0, 10, _MAX_SINCE_S)
        buckets = int(_number(request, "buckets", 60, 2, 500))
        model = _param(request, "model")
        rows = await run(manager.db.model_rows, time.time() - since, None, model)
        return _json(views.model_series(rows, time.time(), since, buckets))

    async def audit(request: web.Request) -> web.Response:
        return _json(await run(manager.db.audit, int(_number(request, "limit", 200, 1, 1000))))

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue = feed.subscribe()
        try:
            await response.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
            while not feed.closing.is_set():
                try:
                    changed = await asyncio.wait_for(queue.get(), 15.0)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(f"event: change\ndata: {json.dumps({'changed': changed})}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            feed.unsubscribe(queue)
        return response

    return [
        web.get("/", index),
        web.get("/console/static/{path:.+}", static),
        web.get("/console/session", session_get),
        web.post("/console/session", session_post),
        web.delete("/console/session", session_delete),
        web.get("/api/v1/overview", overview),
        web.get("/api/v1/console/devices", device_table),
        web.get("/api/v1/console/deployments", deployment_list),
        web.get("/api/v1/devices/{id}", device),
        web.get("/api/v1/devices/{id}/series", device_series),
        web.get("/api/v1/deployments/{id}/timeline", deployment_timeline),
        web.post("/api/v1/deployments/preview", deployment_preview),
        web.get("/api/v1/packages/{sha}/inside", package_inside),
        web.get("/api/v1/telemetry/series", telemetry_series),
        web.get("/api/v1/audit", audit),
        web.get("/api/v1/stream", stream),
    ]
