"""ISA selection from Python and the environment, and the native thread pool."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edge_runtime import errors, kernels


def test_scalar_always_supported_and_detected_is_supported() -> None:
    supported = kernels.supported_isas()
    assert supported[0] == "scalar"
    assert kernels.detect_isa() in supported


def test_set_isa_round_trip_on_every_supported_path() -> None:
    before = kernels.get_isa()
    for isa in kernels.supported_isas():
        with kernels.use_isa(isa):
            assert kernels.get_isa() == isa
    assert kernels.get_isa() == before


def test_unsupported_isa_is_a_typed_error_naming_it() -> None:
    foreign = [isa for isa in kernels.ISA_NAMES if isa not in kernels.supported_isas()]
    assert foreign, "one architecture's paths are always foreign to the other"
    with pytest.raises(errors.UnsupportedISAError, match=foreign[0]):
        kernels.set_isa(foreign[0])
    with pytest.raises(errors.UnsupportedISAError, match="unknown ISA"):
        kernels.set_isa("sse9")


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_environment_variable_selects_the_isa(isa: str) -> None:
    if isa not in kernels.supported_isas():
        pytest.skip(f"{isa} not supported here")
    code = "from edge_runtime import kernels; print(kernels.get_isa())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "EDGE_ISA": isa},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == isa


def test_thread_pool_sizes_and_bad_sizes() -> None:
    with kernels.ThreadPool(3) as pool:
        assert pool.num_threads == 3
    with pytest.raises(errors.KernelArgumentError, match="thread count"):
        kernels.ThreadPool(0)


def test_requant_from_scale_refuses_out_of_range_scales() -> None:
    mult, shift = kernels.requant_from_scale(0.25)
    assert mult == 1 << 30 and shift == 32
    with pytest.raises(errors.KernelArgumentError, match="outside"):
        kernels.requant_from_scale(1.5)
