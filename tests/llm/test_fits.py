"""What fits on a device profile: the weights and KV cache against its memory, the largest context,
the decode ceiling from its (spec) bandwidth; refused up front with ContextMemoryError; edge llm fits."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from device_profiles import PROFILES, get_profile
from edge_runtime import llm
from edge_runtime.llm import ContextMemoryError
from edge_runtime.llm.fits import REFERENCE_MODELS, check_fits, fit, model_config, runtime_weight_bytes


def _ref(name: str):
    return next(m for m in REFERENCE_MODELS if m.name == name)


def _edge(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", *argv], capture_output=True, text=True, check=False
    )


def test_every_board_has_its_spec_bandwidth_and_the_ceiling_follows_from_it():
    boards = [p for p in PROFILES.values() if not p.name.startswith("generic")]
    assert boards and all(p.memory_bandwidth_gbs > 0 for p in boards)
    smol = _ref("SmolLM2-135M")
    assert 130e6 < smol.parameter_count() < 140e6  # the published shape
    held, read = runtime_weight_bytes(smol)
    pi4 = fit(smol, get_profile("raspberrypi-4b"), 2048)
    assert pi4.decode_ceiling_tok_s == pytest.approx(12.8e9 / read)
    assert pi4.weight_bytes == held and pi4.needed_bytes == held + 2048 * smol.kv_bytes_per_token(4)
    assert fit(smol, get_profile("generic-x86_64"), 2048).decode_ceiling_tok_s is None  # unknown bandwidth


def test_the_largest_context_is_the_boundary():
    qwen, pi4 = _ref("Qwen2.5-0.5B"), get_profile("raspberrypi-4b")
    f = fit(qwen, pi4, 8192)
    assert not f.fits and 0 < f.max_context < 8192
    assert fit(qwen, pi4, f.max_context).fits
    assert not fit(qwen, pi4, f.max_context + 1).fits
    with pytest.raises(
        ContextMemoryError, match=rf"not enough memory for the context.*--context {f.max_context}"
    ):
        check_fits(qwen, pi4, 8192)
    assert check_fits(qwen, pi4, f.max_context).fits
    # Weights alone over the board's memory: the model is named as the problem, not the context.
    with pytest.raises(ContextMemoryError, match="not enough memory for the model"):
        check_fits(_ref("Llama-3.2-3B"), get_profile("raspberrypi-5"), 16)
    assert fit(_ref("Llama-3.2-3B"), get_profile("raspberrypi-5"), 16, memory_mb=8192).fits  # the 8 GB Pi 5


def test_estimate_matches_what_the_runtime_holds(packages):
    model = llm.load(packages("qwen2", "int8"), threads=1)
    try:
        held, _ = runtime_weight_bytes(model.config)
        actual = model.weight_bytes
        # The packed GEMM layout pads rows and columns: a few percent of a 64-wide toy (under 1% of
        # SmolLM2-135M's 157.8 MiB, estimated 156.4), never the 2x of a missing or doubled matrix.
        assert held == pytest.approx(actual, rel=0.1)
        assert model_config(packages("qwen2", "int8")) == model.config
    finally:
        model.close()


def test_load_and_convert_refuse_up_front(packages, llama_gguf, tmp_path):
    no_room = dataclasses.replace(get_profile("raspberrypi-4b"), memory_mb=384)  # all of it reserved
    with pytest.raises(ContextMemoryError, match="raspberrypi-4b"):
        llm.load(packages("llama", "int8"), threads=1, profile=no_room)
    model = llm.load(packages("llama", "int8"), threads=1, profile="raspberrypi-4b")
    model.close()
    out = tmp_path / "fits.edgepkg"
    done = _edge("llm", "convert", str(llama_gguf), "--out", str(out), "--profile", "jetson-nano")
    assert done.returncode == 0 and out.exists(), done.stderr
    bad = _edge("llm", "convert", str(llama_gguf), "--out", str(out), "--profile", "no-such-board")
    assert bad.returncode != 0 and "unknown device profile" in bad.stderr


def test_edge_llm_fits(packages):
    done = _edge("llm", "fits", "--json", "--context", "1024")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    boards = [p for p in PROFILES.values() if p.memory_mb]
    assert len(rows) == len(REFERENCE_MODELS) * len(boards)
    assert {r["model"] for r in rows if r["profile"] == "raspberrypi-4b" and r["fits"]} >= {"SmolLM2-135M"}
    one = _edge("llm", "fits", str(packages("llama", "int8")), "--profile", "raspberrypi-5")
    assert one.returncode == 0 and "raspberrypi-5" in one.stdout and "fits" in one.stdout, one.stderr
    assert "not measured" in " ".join(_edge("llm", "fits", "--help").stdout.lower().split())
