"""The device profiles: one dataclass, one table. A new board is a new row, not new code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from device_profiles.errors import ProfileError

__all__ = ["PROFILES", "BackendPreference", "Profile", "get_profile"]


@dataclass(frozen=True)
class BackendPreference:
    """One entry of a profile's backend order.

    ``providers`` names onnxruntime execution providers: the entry applies
    only when onnxruntime offers at least one of them, and they are tried in
    this order. Empty for backends without providers (``native``, ``tflite``).
    """

    backend: str
    providers: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.backend}[{', '.join(self.providers)}]" if self.providers else self.backend


NATIVE = BackendPreference("native")
ORT_CPU = BackendPreference("onnxruntime", ("CPUExecutionProvider",))
ORT_GPU = BackendPreference("onnxruntime", ("TensorrtExecutionProvider", "CUDAExecutionProvider"))


@dataclass(frozen=True)
class Profile:
    """What the runtime needs to know about a kind of device.

    Table rows describe the board as sold; :func:`detect_profile` returns a
    copy adjusted to the machine it runs on (memory, cores, the kernel ISA the
    CPU flags allow) with ``reasons`` saying why it was chosen.
    """

    name: str
    description: str
    soc: str
    cpu_core: str
    cpu_cores: int  # 0: unknown until detected
    isa_features: tuple[str, ...]  # as /proc/cpuinfo names them
    kernel_isa: str  # one of edge_runtime.kernels.ISA_NAMES
    memory_mb: int  # smallest variant sold; detection fills in MemTotal
    thermal_zones: tuple[str, ...]  # thermal zone types to read, preferred first; empty: hottest zone
    throttle_source: str | None  # "raspberrypi-firmware" or None
    backends: tuple[BackendPreference, ...]
    threads: int  # 0: one per detected core
    max_batch_size: int
    models: tuple[str, ...] = ()  # device-tree model prefixes that identify the board
    cpu_parts: tuple[tuple[int, int], ...] = ()  # (implementer, part) of its CPU cores
    # Peak DRAM bandwidth in GB/s of the variant in memory_mb, from the vendor's spec (bus width x
    # transfer rate), NOT measured on the board; a CPU reaches a fraction of it. 0: unknown.
    memory_bandwidth_gbs: float = 0.0
    reasons: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backends"] = [str(b) for b in self.backends]
        d["cpu_parts"] = [f"{impl:#04x}:{part:#05x}" for impl, part in self.cpu_parts]
        return d


_ARM = 0x41
_NVIDIA = 0x4E
_PI_THERMAL = ("cpu-thermal",)
# L4T R32-R35 name zones "CPU-therm"; R36 (JetPack 6) uses "cpu-thermal". Matching is case-insensitive.
_JETSON_THERMAL = ("CPU-therm", "cpu-thermal", "tj-therm", "tj-thermal", "SOC0-therm", "GPU-therm")

# What every board of a family shares, unpacked into its rows so that each row
# states only what differs (a field given twice is a TypeError at import).
_RASPBERRY_PI: dict[str, Any] = {
    "cpu_cores": 4,
    "thermal_zones": _PI_THERMAL,
    "throttle_source": "raspberrypi-firmware",
    "backends": (NATIVE, ORT_CPU),
    "threads": 4,
}
_JETSON: dict[str, Any] = {
    "thermal_zones": _JETSON_THERMAL,
    "throttle_source": None,
    "backends": (ORT_GPU, NATIVE, ORT_CPU),
}
_GENERIC: dict[str, Any] = {
    "soc": "unknown",
    "cpu_cores": 0,
    "memory_mb": 0,
    "throttle_source": None,
    "backends": (NATIVE, ORT_CPU),
    "threads": 0,
}
# ARMv8.0 with the crypto extension, as every Jetson reports it.
_ARMV8_CRYPTO = ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32")

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            **_RASPBERRY_PI,
            name="raspberrypi-4b",
            description="Raspberry Pi 4 Model B (also Pi 400, Compute Module 4)",
            soc="Broadcom BCM2711",
            cpu_core="Cortex-A72",
            isa_features=("fp", "asimd", "crc32"),
            kernel_isa="neon",  # A72 has no sdot
            memory_mb=1024,
            max_batch_size=4,
            memory_bandwidth_gbs=12.8,  # LPDDR4-3200, 32-bit bus
            models=("Raspberry Pi 4", "Raspberry Pi 400", "Raspberry Pi Compute Module 4"),
            cpu_parts=((_ARM, 0xD08),),
        ),
        Profile(
            **_RASPBERRY_PI,
            name="raspberrypi-5",
            description="Raspberry Pi 5 (also Pi 500, Compute Module 5)",
            soc="Broadcom BCM2712",
            cpu_core="Cortex-A76",
            isa_features=("fp", "asimd", "crc32", "atomics", "asimdhp", "asimdrdm", "asimddp"),
            kernel_isa="neondot",
            memory_mb=2048,
            max_batch_size=8,
            memory_bandwidth_gbs=17.1,  # LPDDR4X-4267, 32-bit bus
            models=("Raspberry Pi 5", "Raspberry Pi 500", "Raspberry Pi Compute Module 5"),
            cpu_parts=((_ARM, 0xD0B),),
        ),
        Profile(
            **_JETSON,
            name="jetson-nano",
            description="NVIDIA Jetson Nano (4 GB and 2 GB developer kits)",
            soc="NVIDIA Tegra X1 (T210)",
            cpu_core="Cortex-A57",
            cpu_cores=4,
            isa_features=_ARMV8_CRYPTO,
            kernel_isa="neon",  # A57 has no sdot
            memory_mb=2048,
            threads=4,
            max_batch_size=8,
            memory_bandwidth_gbs=25.6,  # LPDDR4 64-bit at 1600 MHz (NVIDIA's module spec)
            models=("NVIDIA Jetson Nano",),
            cpu_parts=((_ARM, 0xD07),),
        ),
        Profile(
            **_JETSON,
            name="jetson-xavier-nx",
            description="NVIDIA Jetson Xavier NX",
            soc="NVIDIA Xavier (T194)",
            cpu_core="NVIDIA Carmel",
            cpu_cores=6,
            isa_features=(*_ARMV8_CRYPTO, "atomics", "asimdhp", "asimddp"),
            # Carmel implements dot product, but only kernels that report asimddp
            # let user space use it: detection falls back to neon otherwise.
            kernel_isa="neondot",
            memory_mb=8192,
            threads=6,
            max_batch_size=16,
            memory_bandwidth_gbs=59.7,  # LPDDR4x 128-bit at 1866 MHz (NVIDIA's module spec)
            models=("NVIDIA Jetson Xavier NX",),
            cpu_parts=((_NVIDIA, 0x004),),
        ),
        Profile(
            **_JETSON,
            name="jetson-orin-nano",
            description="NVIDIA Jetson Orin Nano",
            soc="NVIDIA Orin (T234)",
            cpu_core="Cortex-A78AE",
            cpu_cores=6,
            isa_features=(*_ARMV8_CRYPTO, "atomics", "asimdrdm", "asimddp"),
            kernel_isa="neondot",
            memory_mb=4096,
            threads=6,
            max_batch_size=16,
            memory_bandwidth_gbs=34.0,  # 4 GB module: LPDDR5 64-bit (the 8 GB one: 128-bit, 68 GB/s)
            models=("NVIDIA Jetson Orin Nano", "NVIDIA Orin Nano"),
            cpu_parts=((_ARM, 0xD42),),
        ),
        Profile(
            **_GENERIC,
            name="generic-x86_64",
            description="Any x86-64 Linux machine",
            cpu_core="x86-64",
            isa_features=(),
            kernel_isa="scalar",  # raised to avx2 or avx512vnni from the CPU flags
            thermal_zones=("x86_pkg_temp",),
            max_batch_size=32,
        ),
        Profile(
            **_GENERIC,
            name="generic-arm64",
            description="Any other 64-bit Arm Linux machine",
            cpu_core="unknown",
            isa_features=("asimd",),
            kernel_isa="neon",  # raised to neondot when the CPU reports asimddp
            thermal_zones=(),
            max_batch_size=8,
        ),
    )
}


def get_profile(name: str) -> Profile:
    """The table profile called ``name``; ProfileError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown device profile {name!r}; known: {', '.join(PROFILES)}") from None
