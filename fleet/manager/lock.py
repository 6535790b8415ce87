"""One manager per state directory: an exclusive ``flock`` on ``<state-dir>/manager.lock``.

The database must be on a local file system (SQLite WAL needs shared memory), so every manager
that could open the same ``fleet.sqlite`` runs on this host and sees this lock. The kernel drops
the lock when the holder exits, however it exits: there is no stale lock to clean up after a
crash. The holder's pid is written into the file for the error message of the one refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fleet.errors import ManagerLockedError

__all__ = ["LOCK_FILE_NAME", "StateLock"]

LOCK_FILE_NAME = "manager.lock"


class StateLock:
    """Held from :meth:`acquire` to :meth:`release` (or the process's end)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock; ManagerLockedError (naming the holder's pid) when another manager has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ManagerLockedError(
                f"another fleet manager (pid {holder}) is running on {self.path.parent}: "
                "one manager per state directory; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
