"""Shared helpers of the benchmarks: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

__all__ = ["BENCHMARKS_MD", "l3_cache_bytes", "machine_description", "update_section"]

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def l3_cache_bytes() -> int | None:
    """Size of cpu0's L3 cache from sysfs (e.g. "32768K"), or None where unknown."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    match = re.fullmatch(r"(\d+)([KMG]?)", text)
    if not match:
        return None
    return int(match.group(1)) * units.get(match.group(2), 1)


def machine_description() -> str:
    """CPU model (from /proc/cpuinfo), logical CPUs, L3 size and OS, in one line."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    l3 = l3_cache_bytes()
    cache = f", L3 {l3 >> 20} MiB" if l3 else ""
    return f"{model}, {os.cpu_count()} logical CPUs{cache}, {platform.system()} {platform.machine()}"


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
