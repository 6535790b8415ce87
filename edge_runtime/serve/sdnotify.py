"""The systemd notify protocol without libsystemd: datagrams to ``$NOTIFY_SOCKET``.

systemd sets ``NOTIFY_SOCKET`` for ``Type=notify`` services (a path, or an
abstract socket name starting with ``@``) and ``WATCHDOG_USEC`` (with
``WATCHDOG_PID``) when ``WatchdogSec=`` is set. The service sends
``READY=1`` once it serves, ``WATCHDOG=1`` at least every ``WATCHDOG_USEC``
(we send at half of it), ``STATUS=<text>`` for ``systemctl status``, and
``STOPPING=1`` when it begins to shut down. Outside systemd every call is a
cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger(__name__)


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WATCHDOG_USEC``), or None when not asked for."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were forked off)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 2 / 1e6 if value > 0 else None


class Notifier:
    """Sends notify messages to ``$NOTIFY_SOCKET`` (read once, at construction)."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        address = env.get("NOTIFY_SOCKET") or None
        self.address: str | None = address
        self._sock: socket.socket | None = None
        if address is None:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]  # Linux abstract namespace
        elif not address.startswith("/"):
            log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor an abstract name", address)
            self.address = None
            return
        self._target = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (such as ``"READY=1"``, ``"STATUS=serving"``) in one datagram."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._target)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config")

    def stopping(self, status: str = "draining requests") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
