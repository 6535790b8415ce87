"""Shared helpers of the benchmarks: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

__all__ = ["BENCHMARKS_MD", "machine_description", "update_section"]

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine_description() -> str:
    """CPU model (from /proc/cpuinfo), core count and OS, in one line."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


def update_section(title: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Write ``markdown`` as the body of the ``## {title}`` section of BENCHMARKS.md.

    Replaces that section (up to the next ``## `` heading) when it exists,
    appends it otherwise, and leaves every other section as it was.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = f"## {title}"
    section = f"{heading}\n\n{markdown.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
