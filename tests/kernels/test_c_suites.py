"""The C kernel tests, built with CMake and run by ctest: natively, under
AddressSanitizer + UndefinedBehaviorSanitizer, and cross-compiled for arm64 and
run under qemu-aarch64 as a Cortex-A72 (NEON, Raspberry Pi 4 / Jetson Nano)
and as a Cortex-A76 (NEON with dot product, Raspberry Pi 5 / Orin).

Each C test runs every kernel on every ISA the (emulated) CPU supports and
compares bit-exact with the naive reference; ctest's summary is checked here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "tests"
pytestmark = pytest.mark.slow


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        message = f"{tool} is not installed (bash scripts/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run every suite, never skip one
        pytest.skip(message)


def _build(name: str, *cmake_args: str) -> Path:
    _require("cmake")
    build_dir = BUILD / name
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", *cmake_args],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return build_dir


def _ctest(build_dir: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["ctest", "--test-dir", str(build_dir), "--output-on-failure", "-j", str(os.cpu_count() or 2), "-V"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "100% tests passed" in output
    return output


def _isas_seen(output: str) -> set[str]:
    """The ISAs the test executables report having run."""
    seen: set[str] = set()
    for line in re.findall(r"ISAs:([a-z0-9 ]+)", output):
        seen.update(line.split())
    return seen


def test_native_host() -> None:
    output = _ctest(_build("host"))
    assert "scalar" in _isas_seen(output)


def test_native_sanitizers() -> None:
    output = _ctest(_build("asan", "-DEDGE_SANITIZE=ON"), env={"ASAN_OPTIONS": "detect_leaks=1"})
    assert "runtime error" not in output  # UBSan reports, should it ever not abort


@pytest.fixture(scope="module")
def arm64_build() -> Path:
    _require("aarch64-linux-gnu-gcc")
    _require("qemu-aarch64")
    return _build("arm64", f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'native/cmake/aarch64-linux-gnu.cmake'}")


def test_arm64_neon_cortex_a72(arm64_build: Path) -> None:
    output = _ctest(arm64_build, env={"QEMU_CPU": "cortex-a72"})
    assert _isas_seen(output) == {"scalar", "neon"}


def test_arm64_neondot_cortex_a76(arm64_build: Path) -> None:
    output = _ctest(arm64_build, env={"QEMU_CPU": "cortex-a76"})
    assert _isas_seen(output) == {"scalar", "neon", "neondot"}
