"""edge llm convert/run/chat as a user runs them (in process): signing, trust, one-line errors."""

from __future__ import annotations

import io

import pytest

from edge_runtime.cli import main
from edge_runtime.package import generate_keypair, open_package


def test_convert_signed_then_run_with_trust(tmp_path, llama_gguf, capsys):
    key, pub = generate_keypair(tmp_path / "dev")
    out = tmp_path / "tiny.edgepkg"
    assert (
        main(["llm", "convert", str(llama_gguf), "--out", str(out), "--sign", str(key), "--weights", "int4"])
        == 0
    )
    assert "signed by" in capsys.readouterr().out
    with open_package(out) as pkg:
        m = pkg.manifest
        assert {a.kind for a in m.artifacts} >= {"llm-config", "llm-weights", "llm-tokenizer", "selftest"}
        assert m.quantization["weights"] == "int4" and m.inputs[0].name == "input_ids"
    code = main(
        [
            "llm",
            "run",
            str(out),
            "--prompt",
            "Hello",
            "--max-tokens",
            "5",
            "--trust",
            str(pub),
            "--stats",
            "--threads",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and "tokens/s" in captured.err


def test_unsigned_package_refused_under_trust(tmp_path, packages, capsys):
    _, pub = generate_keypair(tmp_path / "k")
    code = main(["llm", "run", str(packages("llama", "int8")), "--prompt", "x", "--trust", str(pub)])
    err = capsys.readouterr().err
    assert code == 1 and "not signed" in err and "Traceback" not in err


def test_bad_gguf_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    code = main(["llm", "convert", str(bad), "--out", str(tmp_path / "x.edgepkg")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("edge llm: error:") and "bad.gguf" in err


def test_chat_keeps_the_conversation(packages, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/reset\nHi again\n/quit\n"))
    assert (
        main(
            [
                "llm",
                "chat",
                str(packages("llama", "int8")),
                "--max-tokens",
                "4",
                "--threads",
                "1",
                "--temperature",
                "0.8",
                "--top-k",
                "20",
                "--top-p",
                "0.9",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("\n") >= 2


@pytest.mark.parametrize("cmd", ["convert", "run", "chat"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit):
        main(["llm", cmd, "--help"])
    assert "--" in capsys.readouterr().out


def test_convert_a_huggingface_directory(tmp_path, tiny_dir, packages, capsys):
    from edge_runtime import llm

    out = tmp_path / "hf.edgepkg"
    assert main(["llm", "convert", str(tiny_dir / "qwen2-hf"), "--out", str(out), "--weights", "f16"]) == 0
    with llm.load(out, threads=1) as a, llm.load(packages("qwen2", "f16"), threads=1) as b:
        assert (
            a.generate("Hello", max_new_tokens=16).token_ids
            == b.generate("Hello", max_new_tokens=16).token_ids
        )
