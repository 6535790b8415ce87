"""The server process: start, serve, reload on SIGHUP, drain on SIGTERM; systemd integration.

Lifecycle of :func:`serve` (what ``edge serve`` runs)::

    load every configured model (self-test) ─► listen ─► READY=1 ─┬─► WATCHDOG=1 every WATCHDOG_USEC/2
                                                                   ├─► SIGHUP: re-read the config, swap
                                                                   │   changed models, load new ones,
                                                                   │   unload removed ones
                                                                   └─► SIGTERM/SIGINT: STOPPING=1, stop the
                                                                       hosted agent (if any), readiness
                                                                       503, stop listening, finish in-flight
                                                                       requests, drain queues, exit 0

The watchdog is petted by a task on the event loop itself and only while no
model's queue has a request older than the watchdog period, so a stuck loop
or stuck workers make systemd restart the service.

:class:`ServerThread` runs the same server on a background thread, for
embedding and tests.

With an agent to host (``edge serve --fleet ... --device ...``: the fleet agent, through the
protocols of :mod:`edge_runtime.serve.hosting`), the server also loads the models the agent
committed before READY=1, starts the agent after it (the agent connects in the background) and
stops it first on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edge_runtime.serve.app import STATE, create_app
from edge_runtime.serve.config import ModelConfig, ServeConfig, load_config
from edge_runtime.serve.errors import ServeConfigError, ServeError
from edge_runtime.serve.hosting import AgentSpec, HostedAgent
from edge_runtime.serve.manager import Loader, ModelManager, SwapResult, default_loader
from edge_runtime.serve.metrics import ServeMetrics
from edge_runtime.serve.openai import set_llm_limits
from edge_runtime.serve.sdnotify import Notifier, watchdog_interval

__all__ = ["InferenceServer", "ServerThread", "new_event_loop", "serve"]

log = logging.getLogger(__name__)


def _loader_for(config: ServeConfig, agent_spec: AgentSpec | None) -> Loader:
    """The default loader; packages must be signed by ``trust_dir``, else by the hosted agent's trust."""
    trust = (config.trust_dir,) if config.trust_dir is not None else agent_spec.trust if agent_spec else ()
    trust_store = None
    if trust:
        from edge_runtime.package import TrustStore

        trust_store = TrustStore.load(*trust)
    return default_loader(config.backend, config.threads or None, trust_store)


@dataclass
class InferenceServer:
    """One HTTP server and its models. Use from a running event loop: ``await start()``, ``await stop()``.

    ``agent_spec``: host this agent in the server (:mod:`edge_runtime.serve.hosting`); a bad setting
    raises the agent's own typed error here, before any load.
    """

    config: ServeConfig
    loader: Loader | None = None
    notifier: Notifier = field(default_factory=Notifier)
    agent_spec: AgentSpec | None = None
    manager: ModelManager = field(init=False)
    agent: HostedAgent | None = field(init=False, default=None)
    port: int = field(init=False, default=0)
    grpc_port: int = field(init=False, default=0)  # where the gRPC API listens (0: it is off)
    nothing_loaded: bool = field(init=False, default=False)  # every model failed at start, no agent

    def __post_init__(self) -> None:
        self.manager = ModelManager(
            self.loader or _loader_for(self.config, self.agent_spec),
            ServeMetrics(device=True),
            self.config.batching,
            require_selftest=self.config.require_selftest,
            keep_versions=self.config.keep_versions,
        )
        self._app = create_app(
            self.manager,
            repository_api=self.config.repository_api,
            max_request_mib=self.config.max_request_mib,
            limits=self.config.request_limits(),
            header_timeout_s=self.config.header_timeout_s,
            body_timeout_s=self.config.body_timeout_s,
        )
        # Language models' engine limits, from the config in force (SIGHUP replaces it).
        set_llm_limits(self.manager, lambda name: self.config.llm_limits(name))
        self._runner: web.AppRunner | None = None
        self._grpc: Any = None  # the grpc.aio server, with --grpc
        self._grpc_api: Any = None
        if self.config.grpc_host_port is not None:
            try:
                from edge_runtime.serve.grpc_api import GrpcApi
            except ImportError as exc:
                raise ServeConfigError(
                    f"the gRPC API (--grpc) needs grpcio and tritonclient[grpc] ({exc}): "
                    "pip install 'edge-runtime[grpc]'"
                ) from None
            self._grpc_api = GrpcApi(self.manager, self._app[STATE], self.config.request_limits())
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="serve-admin")
        self._stop_started = False
        if self.agent_spec is not None:
            self.agent = self.agent_spec.create(self.manager)

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def grpc_address(self) -> str | None:
        """``host:port`` of the gRPC API (what tritonclient.grpc takes), None when it is off."""
        address = self.config.grpc_host_port
        if address is None:
            return None
        host = address[0] if address[0] not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load_models(self, models: tuple[ModelConfig, ...]) -> list[SwapResult]:
        """Load (or swap to) each model, in parallel; failures are logged, not raised."""
        results = await asyncio.gather(
            *(
                self._run(self.manager.swap, m.name, m.path, m.batching, m.selftest, m.keep_versions)
                for m in models
            )
        )
        return list(results)

    def _startup_models(self) -> tuple[ModelConfig, ...]:
        """The configured models, plus those the hosted agent committed (which win)."""
        if self.agent is None:
            return self.config.models
        committed = self.agent.committed_models(self.config.batching)
        names = {m.name for m in committed}
        for m in self.config.models:
            if m.name in names:
                log.warning(
                    "model %s is configured and also managed by the %s: its committed version serves "
                    "(remove it from the config; a SIGHUP would swap it to %s)",
                    m.name,
                    self.agent.description,
                    m.path,
                )
        return tuple(m for m in self.config.models if m.name not in names) + committed

    async def start(self) -> None:
        """Load the models, listen, tell systemd READY=1, then start the hosted agent (if any)."""
        self._app[STATE]["started"] = False
        models = self._startup_models()
        self.notifier.status(f"loading {len(models)} model(s)")
        results = await self.load_models(models)
        self._runner = web.AppRunner(
            self._app, shutdown_timeout=self.config.drain_timeout_s, access_log=None, handle_signals=False
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        server = site._server  # the bound socket tells the real port when port = 0
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if self._grpc_api is not None:
            from edge_runtime.serve.grpc_api import start_grpc_server

            host, port = self.config.grpc_host_port  # type: ignore[misc]
            self._grpc, self.grpc_port = await start_grpc_server(
                self._grpc_api, host, port, self.config.max_request_mib, self.config.grpc_max_concurrent_rpcs
            )
        self._app[STATE]["started"] = True
        failed = [r for r in results if not r.ok]
        self.nothing_loaded = bool(results) and len(failed) == len(results) and self.agent is None
        status = f"serving {len(results) - len(failed)} model(s) on {self.url}"
        if self._grpc is not None:
            status += f" and gRPC on {self.grpc_address}"
        if failed:
            status += f"; {len(failed)} failed to load: " + ", ".join(r.name for r in failed)
        if self.agent is not None:
            status += f"; {self.agent.description}"
        log.info("%s", status)
        self.notifier.ready(status)
        interval = watchdog_interval()
        if interval is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(interval * 2, interval)))
        if self.agent is not None:
            self.agent.start()  # connects in the background; readiness never waits for the broker

    async def _watchdog(self, period: float, interval: float) -> None:
        log.info("systemd watchdog: petting every %.1fs", interval)
        while True:
            stuck = self._stuck_models(period)
            if stuck:
                log.error(
                    "not petting the watchdog: requests of %s waited over %.0fs", ", ".join(stuck), period
                )
            else:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _stuck_models(self, limit: float) -> list[str]:
        return sorted(
            {
                v.name
                for v in self.manager.loaded_versions()
                if v.batcher is not None and v.batcher.oldest_wait() > limit
            }
        )

    async def reload(self) -> list[SwapResult]:
        """SIGHUP: re-read the config file; swap models whose entry changed, add and remove.

        A model whose path is a store link (``models/<name>/current``) that now resolves to
        another version is swapped too: switch ``current``, then SIGHUP.
        """
        if self.config.source is None:
            log.warning("SIGHUP: no config file to re-read (started from flags only)")
            return []
        self.notifier.reloading()
        try:
            new = load_config(self.config.source)
        except ServeError as exc:
            log.error("SIGHUP: keeping the running config: %s", exc)
            self.notifier.ready("reload failed, serving the previous config")
            return []
        old = {m.name: m for m in self.config.models}
        changed = tuple(
            m for m in new.models if old.get(m.name) != m or self.manager.is_stale(m.name, m.path)
        )
        removed = [name for name in old if name not in {m.name for m in new.models}]
        log.info("SIGHUP: %d model(s) to load or swap, %d to unload", len(changed), len(removed))
        results = await self.load_models(changed)
        for name in removed:
            try:
                self.manager.unload(name)
            except ServeError as exc:
                log.warning("SIGHUP: %s", exc)
        self.config = new.replace(host=self.config.host, port=self.config.port, grpc=self.config.grpc)
        self.notifier.ready(f"reloaded: {sum(r.ok for r in results)}/{len(results)} model(s) swapped")
        return results

    async def stop(self) -> None:
        """Graceful shutdown: refuse new work, finish what was accepted, close the models."""
        if self._stop_started:
            return
        self._stop_started = True  # before the first await: a second stop() returns at once
        self.notifier.stopping()
        if self.agent is not None:
            # First, while the models still serve: an update in progress is abandoned and swapped
            # back, and the agent publishes "offline" before it disconnects.
            log.info("shutting down: stopping the %s", self.agent.description)
            agent, self.agent = self.agent, None
            await self._run(agent.stop)
        log.info("shutting down: draining in-flight requests (up to %.0fs)", self.config.drain_timeout_s)
        self._app[STATE]["draining"] = True
        for task in self._tasks:
            task.cancel()
        # Both at once: the manager refuses new work and runs what is queued without waiting for
        # batches to fill; the runner stops listening and waits for the handlers to answer.
        closing = asyncio.ensure_future(self._run(self.manager.close, self.config.drain_timeout_s))
        listeners = []
        if self._runner is not None:
            listeners.append(self._runner.cleanup())
        if self._grpc is not None:  # refuses new calls, lets those in progress finish
            listeners.append(self._grpc.stop(self.config.drain_timeout_s))
        await asyncio.gather(*listeners)
        await closing
        self._executor.shutdown(wait=False)
        self.notifier.close()
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def _serve(config: ServeConfig, loader: Loader | None, agent_spec: AgentSpec | None) -> int:
    server = InferenceServer(config, loader, agent_spec=agent_spec)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: list[asyncio.Task[Any]] = []
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reloads.append(loop.create_task(server.reload())))
    try:
        await server.start()
    except OSError as exc:
        log.error(
            "cannot listen on %s", f"{config.host}:{config.port}: {exc.strerror}" if exc.strerror else exc
        )
        await server.stop()
        return 1
    if server.nothing_loaded:  # as Triton exits when its models fail: a unit restarts, a person sees why
        log.error("no model could be loaded (the reasons are above); exiting")
        await server.stop()
        return 1
    await stop.wait()
    for task in reloads:
        if not task.done():
            await task
    await server.stop()
    return 0


def serve(config: ServeConfig, loader: Loader | None = None, agent_spec: AgentSpec | None = None) -> int:
    """Run the server (and the agent ``agent_spec`` describes, if any) until SIGTERM or SIGINT.

    Returns the exit code (0 after a clean drain).
    """
    return _run_loop(_serve(config, loader, agent_spec))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (a faster HTTP path), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def _run_loop(main: Any) -> Any:
    """``asyncio.run(main)`` on :func:`new_event_loop`."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


class ServerThread:
    """An :class:`InferenceServer` on its own event loop thread.

    ::

        with ServerThread(config, loader=my_loader) as srv:
            srv.manager.swap("digits", "digits-2.edgepkg")
            urllib.request.urlopen(srv.url + "/v2/health/ready")
    """

    def __init__(
        self,
        config: ServeConfig,
        loader: Loader | None = None,
        notifier: Notifier | None = None,
        agent_spec: AgentSpec | None = None,
    ) -> None:
        self._config, self._loader, self._notifier, self._agent_spec = config, loader, notifier, agent_spec
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="serve-loop", daemon=True)
        self.server: InferenceServer | None = None

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()

        async def make() -> InferenceServer:
            kwargs = {"notifier": self._notifier} if self._notifier is not None else {}
            server = InferenceServer(self._config, self._loader, agent_spec=self._agent_spec, **kwargs)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)
        return self

    @property
    def manager(self) -> ModelManager:
        assert self.server is not None, "start() first"
        return self.server.manager

    @property
    def url(self) -> str:
        assert self.server is not None, "start() first"
        return self.server.url

    @property
    def grpc_address(self) -> str | None:
        assert self.server is not None, "start() first"
        return self.server.grpc_address

    @property
    def agent(self) -> HostedAgent | None:
        """The agent hosted in the server (None without one, or once stopped)."""
        assert self.server is not None, "start() first"
        return self.server.agent

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        if self.server is not None:
            self.call(self.server.stop(), timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop.close()

    def __enter__(self) -> ServerThread:  # noqa: PYI034 - final in practice
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
