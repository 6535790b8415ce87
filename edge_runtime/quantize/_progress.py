"""A progress bar for long loops: tqdm when installed, else one rewritten stderr line."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` while showing how many were done (on stderr, never stdout)."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield from _line_progress(items, desc, total)
        return
    yield from tqdm(items, desc=desc, total=total, unit="batch", file=sys.stderr, leave=False)


def _line_progress(items: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= 0.5:  # at most two updates a second
            last = now
            of = f"/{total}" if total else ""
            sys.stderr.write(f"\r{desc}: {done}{of} batches, {now - start:.1f} s")
            sys.stderr.flush()
    if done and time.monotonic() - start >= 0.5:
        sys.stderr.write(f"\r{desc}: {done} batches, {time.monotonic() - start:.1f} s\n")
