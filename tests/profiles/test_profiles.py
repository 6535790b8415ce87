"""Device profile detection against fixture trees holding the real strings of each board."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from device_profiles import (
    PROFILES,
    detect_profile,
    get_profile,
    parse_cpuinfo,
    read_temperature_c,
    read_throttled,
)
from edge_runtime.errors import ProfileError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "board, profile, isa, cores, core",
    [
        ("raspberrypi-4b", "raspberrypi-4b", "neon", 4, "Cortex-A72"),
        ("raspberrypi-5", "raspberrypi-5", "neondot", 4, "Cortex-A76"),
        ("jetson-nano", "jetson-nano", "neon", 4, "Cortex-A57"),
        ("jetson-orin-nano", "jetson-orin-nano", "neondot", 6, "Cortex-A78AE"),
        ("rock-5b", "generic-arm64", "neondot", 8, "Cortex-A55, Cortex-A76"),
        ("x86_64-avx2", "generic-x86_64", "avx2", 4, "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz"),
        (
            "x86_64-avx512vnni",
            "generic-x86_64",
            "avx512vnni",
            2,
            "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
        ),
    ],
)
def test_detects_each_fixture_board(board: str, profile: str, isa: str, cores: int, core: str) -> None:
    p = detect_profile(FIXTURES / board)
    assert (p.name, p.kernel_isa, p.cpu_cores, p.cpu_core) == (profile, isa, cores, core)
    assert p.reasons  # always says why
    assert p.memory_mb > 1000  # from /proc/meminfo, not the table


def test_device_tree_model_with_trailing_nul_is_the_reason() -> None:
    p = detect_profile(FIXTURES / "raspberrypi-4b")
    assert p.reasons[0] == "device-tree model 'Raspberry Pi 4 Model B Rev 1.4' matches raspberrypi-4b"
    assert p.memory_mb == 3790


def test_jetson_profiles_prefer_gpu_onnxruntime_then_native() -> None:
    p = detect_profile(FIXTURES / "jetson-orin-nano")
    assert [str(b) for b in p.backends[:2]] == [
        "onnxruntime[TensorrtExecutionProvider, CUDAExecutionProvider]",
        "native",
    ]
    assert any("L4T R35.4.1" in r for r in p.reasons)
    assert detect_profile(FIXTURES / "raspberrypi-5").backends[0].backend == "native"


def test_xavier_without_asimddp_in_cpuinfo_falls_back_to_neon() -> None:
    # L4T R32 runs Linux 4.9, which predates HWCAP_ASIMDDP: running sdot code would be unsafe.
    p = detect_profile(FIXTURES / "jetson-xavier-nx")
    assert p.name == "jetson-xavier-nx" and PROFILES["jetson-xavier-nx"].kernel_isa == "neondot"
    assert p.kernel_isa == "neon"
    assert any("lowered from neondot to neon" in r and "asimddp" in r for r in p.reasons)


def test_xavier_with_asimddp_keeps_neondot(tmp_path: Path) -> None:
    root = shutil.copytree(FIXTURES / "jetson-xavier-nx", tmp_path / "xavier")
    cpuinfo = root / "proc/cpuinfo"
    cpuinfo.write_text(cpuinfo.read_text().replace("asimdhp", "asimdhp asimddp"))
    assert detect_profile(root).kernel_isa == "neondot"


def test_jetson_in_a_container_without_device_tree(tmp_path: Path) -> None:
    root = shutil.copytree(FIXTURES / "jetson-nano", tmp_path / "nano")
    shutil.rmtree(root / "proc/device-tree")
    p = detect_profile(root)
    assert p.name == "jetson-nano"
    assert "nv_tegra_release" in p.reasons[0] and "Cortex-A57" in p.reasons[0]


def test_pi_in_a_container_uses_the_cpuinfo_model_line(tmp_path: Path) -> None:
    root = shutil.copytree(FIXTURES / "raspberrypi-5", tmp_path / "pi5")
    shutil.rmtree(root / "proc/device-tree")
    p = detect_profile(root)
    assert p.name == "raspberrypi-5" and "/proc/cpuinfo Model" in p.reasons[0]


def test_arm_board_without_model_or_tegra_falls_back_with_reason(tmp_path: Path) -> None:
    root = shutil.copytree(FIXTURES / "jetson-nano", tmp_path / "a57")
    shutil.rmtree(root / "proc/device-tree")
    (root / "etc/nv_tegra_release").unlink()
    p = detect_profile(root)
    assert (p.name, p.kernel_isa) == ("generic-arm64", "neon")
    assert any("falling back to generic-arm64" in r for r in p.reasons)


def test_unknown_architecture_is_a_profile_error(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdc\n")
    with pytest.raises(ProfileError, match="cannot tell the CPU architecture"):
        detect_profile(tmp_path)


def test_parse_cpuinfo_collects_distinct_parts_in_order() -> None:
    cpu = parse_cpuinfo((FIXTURES / "rock-5b/proc/cpuinfo").read_text())
    assert cpu.arch == "arm64" and cpu.cores == 8
    assert cpu.parts == ((0x41, 0xD05), (0x41, 0xD0B))
    assert "asimddp" in cpu.features


@pytest.mark.parametrize(
    "board, celsius",
    [
        ("raspberrypi-4b", 48.686),
        ("jetson-nano", 41.0),  # CPU-therm, not the constant 100 C of PMIC-Die
        ("jetson-orin-nano", 47.062),
        ("x86_64-avx2", 45.0),  # x86_pkg_temp
        ("rock-5b", 42.5),  # no preferred zone: the hottest
        ("x86_64-avx512vnni", None),  # no thermal zones at all
    ],
)
def test_read_temperature(board: str, celsius: float | None) -> None:
    root = FIXTURES / board
    assert read_temperature_c(detect_profile(root), root) == celsius


def test_read_throttled_pi_firmware_bits() -> None:
    root = FIXTURES / "raspberrypi-4b"
    state = read_throttled(detect_profile(root), root)
    assert state is not None and state.raw == 0x50005
    assert state.under_voltage and state.throttled and state.active and state.occurred_since_boot
    assert not state.frequency_capped


def test_read_throttled_none_when_unreadable_or_no_source() -> None:
    assert read_throttled(get_profile("raspberrypi-5"), FIXTURES / "raspberrypi-5") is None  # no sysfs file
    assert read_throttled(get_profile("jetson-nano"), FIXTURES / "jetson-nano") is None  # no source


def test_get_profile_unknown_name_lists_known() -> None:
    with pytest.raises(ProfileError, match="known: raspberrypi-4b"):
        get_profile("raspberrypi-3")


def test_table_isas_are_kernel_isas() -> None:
    kernels = pytest.importorskip("edge_runtime.kernels")  # skipped when the native build is missing
    assert {p.kernel_isa for p in PROFILES.values()} <= set(kernels.ISA_NAMES)
