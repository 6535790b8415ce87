"""Temperature and throttling readings for telemetry. Both return None when unreadable.

Telemetry must never fail because a sensor is missing (containers, VMs), so
these functions swallow I/O and parse errors by design and say "unknown".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from device_profiles._profiles import Profile

__all__ = ["Throttling", "read_temperature_c", "read_throttled"]

# Where the Raspberry Pi firmware driver exposes the get_throttled mailbox value (hex).
_PI_THROTTLED_GLOBS = (
    "sys/devices/platform/soc/soc:firmware/get_throttled",
    "sys/devices/platform/*/*firmware/get_throttled",
)


def _zones(root: Path) -> list[tuple[str, Path]]:
    found = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        try:
            found.append(((zone / "type").read_text().strip(), zone / "temp"))
        except OSError:
            continue
    return found


def _read_millidegrees(path: Path) -> float | None:
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def read_temperature_c(profile: Profile, root: str | os.PathLike[str] = Path("/")) -> float | None:
    """The SoC temperature in degrees Celsius, or None.

    Reads the first of ``profile.thermal_zones`` present (by zone type,
    case-insensitive); for a profile without preferred zones, or when none is
    present, the hottest readable zone.
    """
    zones = _zones(Path(root))
    by_type = {zone_type.casefold(): temp for zone_type, temp in zones}
    for wanted in profile.thermal_zones:
        temp_path = by_type.get(wanted.casefold())
        if temp_path is not None:
            value = _read_millidegrees(temp_path)
            if value is not None:
                return value
    readings = [v for _, p in zones if (v := _read_millidegrees(p)) is not None]
    return max(readings) if readings else None


@dataclass(frozen=True)
class Throttling:
    """The Raspberry Pi firmware's throttling bits (``vcgencmd get_throttled``)."""

    raw: int

    @property
    def under_voltage(self) -> bool:
        return bool(self.raw & 0x1)

    @property
    def frequency_capped(self) -> bool:
        return bool(self.raw & 0x2)

    @property
    def throttled(self) -> bool:
        return bool(self.raw & 0x4)

    @property
    def soft_temperature_limit(self) -> bool:
        return bool(self.raw & 0x8)

    @property
    def active(self) -> bool:
        """Any limitation in force right now (bits 0-3)."""
        return bool(self.raw & 0xF)

    @property
    def occurred_since_boot(self) -> bool:
        """Any limitation since boot (bits 16-19)."""
        return bool(self.raw & 0xF0000)


def _parse_hex(text: str) -> int | None:
    text = text.strip().removeprefix("throttled=")
    try:
        return int(text, 16)
    except ValueError:
        return None


def read_throttled(profile: Profile, root: str | os.PathLike[str] = Path("/")) -> Throttling | None:
    """Throttling state, or None when the profile has no source or it cannot be read.

    Raspberry Pi: the firmware's sysfs file, else ``vcgencmd get_throttled``
    (run only when ``root`` is the real ``/``). Jetson and generic profiles
    have no such source: None.
    """
    if profile.throttle_source != "raspberrypi-firmware":
        return None
    root = Path(root)
    for pattern in _PI_THROTTLED_GLOBS:
        for path in sorted(root.glob(pattern)):
            try:
                value = _parse_hex(path.read_text())
            except OSError:
                continue
            if value is not None:
                return Throttling(value)
    vcgencmd = shutil.which("vcgencmd")
    if root != Path("/") or vcgencmd is None:
        return None
    try:
        result = subprocess.run(
            [vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = _parse_hex(result.stdout) if result.returncode == 0 else None
    return Throttling(value) if value is not None else None
