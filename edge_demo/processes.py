"""Child processes of the demo: each in its own process group, all stopped on exit.

:class:`Supervisor` starts every child with ``start_new_session=True`` (so a
child's own children, such as the trainer's second DDP rank, share its process
group) and, on Linux, asks the kernel to send the child SIGTERM should the demo
itself die without cleaning up (``PR_SET_PDEATHSIG``). :meth:`Supervisor.stop_all`
sends SIGTERM to each group, waits, then SIGKILLs whatever is left, newest first.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_demo.errors import DemoStepError

__all__ = ["Child", "Supervisor", "free_port"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another program could take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the demo process dies (Linux only, best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_file: IO[bytes]
    grace_s: float | None = None  # how long SIGTERM may take before SIGKILL (None: the caller's timeout)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class Supervisor:
    """Starts children and guarantees they are gone when :meth:`stop_all` returns."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        grace_s: float | None = None,
    ) -> Child:
        """Start ``argv`` with stdout and stderr in ``<log_dir>/<name>.log``.

        ``grace_s`` bounds how long it may take to exit after SIGTERM (e.g. a few seconds for a
        trainer, whose DDP ranks wait on each other rather than exit).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop_all
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads touch state between fork and exec
            )
        except OSError as exc:
            log_file.close()
            raise DemoStepError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        child = Child(name, process, log_path, log_file, grace_s)
        self.children.append(child)
        log.debug("started %s (pid %d): %s", name, process.pid, " ".join(argv))
        return child

    def check_alive(self, child: Child) -> None:
        """Raise DemoStepError with the end of its log if ``child`` has exited."""
        code = child.process.poll()
        if code is not None:
            raise DemoStepError(
                f"{child.name} exited with code {code}; the end of {child.log_path}:\n{child.log_tail()}"
            )

    def stop(self, child: Child, timeout: float = 10.0) -> int | None:
        """SIGTERM the child's process group, wait up to ``timeout``, then SIGKILL it."""
        try:
            if child.running():
                _signal_group(child.pid, signal.SIGTERM)
                try:
                    child.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0fs; killing it", child.name, timeout)
                    child.process.kill()
                    child.process.wait(5)
            # Grandchildren (a DDP rank) may outlive the group leader: kill what is left of the group.
            _signal_group(child.pid, signal.SIGKILL)
            return child.process.returncode
        finally:
            child._log_file.close()
            if child in self.children:
                self.children.remove(child)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every child, the most recently started first (devices before the manager and broker)."""
        # SIGTERM everyone first, so they shut down in parallel, then wait for each.
        for child in reversed(self.children):
            if child.running():
                _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in list(reversed(self.children)):
            remaining = max(0.5, deadline - time.monotonic())
            self.stop(child, min(remaining, child.grace_s) if child.grace_s is not None else remaining)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
