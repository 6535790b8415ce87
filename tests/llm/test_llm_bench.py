"""bench/llm.py runs without llama.cpp: its rows are skipped with the reason; its quality corpus ships with Python."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "llm.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_llm", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llama_cpp_rows_are_skipped_with_the_reason(tmp_path):
    bench = _bench()
    no_llama = tmp_path / "python-without-llama"
    no_llama.write_text(
        f"#!/bin/sh\nexec {sys.executable} -I -S -c 'import llama_cpp_surely_missing_module'\n"
    )
    no_llama.chmod(0o755)
    assert "cannot import llama_cpp" in bench._has_llama_cpp(str(no_llama))
    assert "cannot be run" in bench._has_llama_cpp(str(tmp_path / "missing-python"))


def test_quality_corpus_is_english_prose_from_the_standard_library():
    text = _bench().corpus_text()
    words = text.split()
    assert len(words) > 5000  # well over the 2,555 tokens measured
    assert "exception" in text and "namespace" in text
    assert not any(line.startswith("   ") for line in text.splitlines())  # code blocks left out
