"""Which profile describes this machine, and why.

Evidence, strongest first:

1. the board model: ``/proc/device-tree/model`` (NUL-terminated), or the
   ``Model`` line Raspberry Pi kernels add to ``/proc/cpuinfo`` (containers
   often lack the device tree but see cpuinfo);
2. on Jetson, ``/etc/nv_tegra_release`` together with the CPU part number
   (L4T containers carry the file even without a device tree);
3. the CPU alone: x86 flags or Arm features choose a generic profile.

Everything is read below ``root`` so that tests can point at a fixture tree.
Whatever board is chosen, the kernel ISA is lowered if the CPU does not report
the features it needs: running ``neondot`` code on a CPU without ``asimddp``
would be an illegal instruction, not a slow path.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from device_profiles._profiles import PROFILES, Profile
from device_profiles.errors import ProfileError

__all__ = ["CpuInfo", "detect_profile", "parse_cpuinfo"]

_CORE_NAMES = {
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD05): "Cortex-A55",
    (0x4E, 0x004): "NVIDIA Carmel",
}
# What each kernel ISA needs, in /proc/cpuinfo names (the same bits native/src/dispatch/isa.c tests).
_X86_ISAS = (
    ("avx512vnni", {"avx", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni"}),
    ("avx2", {"avx", "fma", "avx2"}),
)
_ARM_ISAS = (("neondot", {"asimd", "asimddp"}), ("neon", {"asimd"}))
_ISA_NEEDS = dict(_X86_ISAS + _ARM_ISAS)


@dataclass(frozen=True)
class CpuInfo:
    """The parts of ``/proc/cpuinfo`` detection uses."""

    arch: str | None  # "x86_64", "arm64" or None when unknown
    cores: int
    features: frozenset[str]  # x86 "flags" or Arm "Features" of the first processor
    parts: tuple[tuple[int, int], ...]  # distinct (implementer, part), in order of appearance
    board_model: str | None  # the Raspberry Pi "Model" line
    model_name: str | None


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(errors="replace")
    except OSError:
        return None


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parse ``/proc/cpuinfo`` of an x86 or Arm Linux kernel."""
    fields: dict[str, str] = {}
    cores = 0
    parts: list[tuple[int, int]] = []
    implementer: int | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            cores += 1
        elif key == "CPU implementer":
            implementer = int(value, 16)
        elif key == "CPU part" and implementer is not None:
            part = (implementer, int(value, 16))
            if part not in parts:
                parts.append(part)
        fields.setdefault(key, value)  # the first processor's value
    if "flags" in fields:
        arch, features = "x86_64", fields["flags"]
    elif "Features" in fields or parts:
        arch, features = "arm64", fields.get("Features", "")
    else:
        arch, features = None, ""
    return CpuInfo(
        arch=arch,
        cores=cores,
        features=frozenset(features.split()),
        parts=tuple(parts),
        board_model=fields.get("Model"),
        model_name=fields.get("model name"),
    )


def _meminfo_mb(text: str | None) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", text or "", re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


def _tegra_release(text: str | None) -> str | None:
    """``R35.4.1`` from ``# R35 (release), REVISION: 4.1, ...``."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def _best_isa(candidates: tuple[tuple[str, set[str]], ...], features: frozenset[str]) -> str:
    for isa, needs in candidates:
        if needs <= features:
            return isa
    return "scalar"


def _describe_parts(parts: tuple[tuple[int, int], ...]) -> str:
    return (
        ", ".join(_CORE_NAMES.get(p, f"implementer {p[0]:#04x} part {p[1]:#05x}") for p in parts) or "unknown"
    )


def _by_model(model: str) -> Profile | None:
    for profile in PROFILES.values():
        if any(model.startswith(prefix) for prefix in profile.models):
            return profile
    return None


def _by_tegra_cpu(cpu: CpuInfo) -> Profile | None:
    for profile in PROFILES.values():
        if profile.name.startswith("jetson-") and set(profile.cpu_parts) & set(cpu.parts):
            return profile
    return None


def detect_profile(root: str | os.PathLike[str] = Path("/")) -> Profile:
    """The profile of the machine whose filesystem is at ``root``, with ``reasons`` filled in.

    Unknown boards fall back to ``generic-x86_64`` or ``generic-arm64``;
    ProfileError only when not even the CPU architecture can be told.
    """
    root = Path(root)
    reasons: list[str] = []
    dt_model = _read(root, "proc/device-tree/model")
    model = dt_model.rstrip("\x00\n ").strip() if dt_model else None
    cpuinfo_text = _read(root, "proc/cpuinfo")
    cpu = parse_cpuinfo(cpuinfo_text or "")
    tegra = _tegra_release(_read(root, "etc/nv_tegra_release"))
    if model is None and cpu.board_model:
        model = cpu.board_model

    profile: Profile | None = None
    if model:
        source = "device-tree model" if dt_model else "/proc/cpuinfo Model"
        profile = _by_model(model)
        if profile is not None:
            reasons.append(f"{source} {model!r} matches {profile.name}")
            if cpu.parts and not set(profile.cpu_parts) & set(cpu.parts):
                reasons.append(
                    f"note: /proc/cpuinfo reports {_describe_parts(cpu.parts)}, expected {profile.cpu_core}"
                )
        else:
            reasons.append(f"{source} {model!r} is not a board in the profile table")
    if profile is None and tegra and cpu.parts:
        profile = _by_tegra_cpu(cpu)
        if profile is not None:
            reasons.append(
                f"/etc/nv_tegra_release says L4T {tegra} and /proc/cpuinfo reports {_describe_parts(cpu.parts)}"
                f" (another Jetson with the same CPU would match too)"
            )
    if profile is None:
        arch = cpu.arch
        if arch is None and root == Path("/"):
            machine = platform.machine().lower()
            arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
            if arch:
                reasons.append(f"/proc/cpuinfo unreadable; platform.machine() is {machine!r}")
        if arch is None:
            raise ProfileError(
                f"cannot tell the CPU architecture from {root / 'proc/cpuinfo'}; "
                "choose a profile by name (edge_runtime.load(..., profile='generic-arm64'))"
            )
        profile = PROFILES[f"generic-{arch}"]
        if not model:
            reasons.append("no board model (no /proc/device-tree/model, no Model line in /proc/cpuinfo)")
        reasons.append(f"falling back to {profile.name}")

    return _adjust_to_machine(profile, cpu, _meminfo_mb(_read(root, "proc/meminfo")), tegra, reasons)


def _adjust_to_machine(
    profile: Profile, cpu: CpuInfo, memory_mb: int | None, tegra: str | None, reasons: list[str]
) -> Profile:
    changes: dict[str, object] = {}
    if cpu.features:
        changes["isa_features"] = (
            tuple(sorted(cpu.features))
            if profile.name.startswith("generic-")
            else tuple(f for f in profile.isa_features if f in cpu.features)
        )
    if profile.name.startswith("generic-"):
        candidates = _X86_ISAS if profile.name == "generic-x86_64" else _ARM_ISAS
        isa = _best_isa(candidates, cpu.features)
        reasons.append(f"kernel ISA {isa}: best the CPU flags allow")
        changes["kernel_isa"] = isa
        if cpu.parts:
            changes["cpu_core"] = _describe_parts(cpu.parts)
        elif cpu.model_name:
            changes["cpu_core"] = cpu.model_name
    elif cpu.features and not _ISA_NEEDS.get(profile.kernel_isa, set()) <= cpu.features:
        isa = _best_isa(_ARM_ISAS, cpu.features)
        missing = sorted(_ISA_NEEDS[profile.kernel_isa] - cpu.features)
        reasons.append(
            f"kernel ISA lowered from {profile.kernel_isa} to {isa}: the kernel does not report "
            f"{', '.join(missing)} (Linux before 4.15 never does)"
        )
        changes["kernel_isa"] = isa
    if cpu.cores:
        changes["cpu_cores"] = cpu.cores
        if profile.threads == 0:
            changes["threads"] = cpu.cores
    if profile.threads == 0 and "threads" not in changes:
        changes["threads"] = os.cpu_count() or 1
    if memory_mb:
        changes["memory_mb"] = memory_mb
    if tegra:
        reasons.append(f"L4T {tegra}")
    return dataclasses.replace(profile, reasons=tuple(reasons), **changes)  # type: ignore[arg-type]
