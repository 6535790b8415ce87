"""An embedded MQTT 3.1.1 broker (amqtt) for one-machine fleets: ``edge fleet serve`` without ``--broker``.

It listens on loopback by default, allows anonymous clients and applies no
ACL: fine for a laptop demo or a single gateway, never for devices on a
network (use mosquitto with ``deploy/mosquitto/``). It runs its own asyncio
loop in a background thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from fleet.errors import BrokerError

__all__ = ["EmbeddedBroker"]

log = logging.getLogger(__name__)


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host, self.port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedded-broker", daemon=True)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._thread.start()

        async def up() -> None:
            self._broker = Broker(config)
            await self._broker.start()

        try:
            asyncio.run_coroutine_threadsafe(up(), self._loop).result(timeout)
        except Exception as exc:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise BrokerError(
                f"the embedded broker could not listen on {self.host}:{self.port}: {exc}"
            ) from exc
        log.info("embedded MQTT broker (amqtt) on %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout)
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                log.warning("embedded broker shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
