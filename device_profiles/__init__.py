"""Device profiles: what the runtime should do on a Raspberry Pi, a Jetson or a generic Linux box.

A profile is data (:class:`Profile`, rows of :data:`PROFILES`): the CPU, the
kernel ISA to use, memory, thermal and throttling sources, the preferred
backend order, threads and batch limits. :func:`detect_profile` picks the row
for this machine and records why; the sensors read temperature and
throttling for telemetry.
"""

from device_profiles._detect import CpuInfo, detect_profile, parse_cpuinfo
from device_profiles._profiles import PROFILES, BackendPreference, Profile, get_profile
from device_profiles._sensors import Throttling, read_temperature_c, read_throttled
from device_profiles.errors import DeviceProfileError, ProfileError

__all__ = [
    "PROFILES",
    "BackendPreference",
    "CpuInfo",
    "DeviceProfileError",
    "Profile",
    "ProfileError",
    "Throttling",
    "detect_profile",
    "get_profile",
    "parse_cpuinfo",
    "read_temperature_c",
    "read_throttled",
]
