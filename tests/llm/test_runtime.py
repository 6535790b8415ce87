"""The runtime against the float reference: token by token, float and int8 paths; context and memory limits."""

from __future__ import annotations

import numpy as np
import pytest
from _tiny import PROMPT

from edge_runtime import llm
from edge_runtime.llm import model as llm_model

# The int8 path (per-channel int8 weights, per-row int8 activations) against the float64 reference,
# teacher-forced on the reference's 64 greedy tokens of random tiny decoders.
INT8_MIN_AGREEMENT = 0.90
# Largest |logit - reference| over every position and token, as a fraction of the reference logits' std.
INT8_MAX_LOGIT_ERROR = 0.25
# int4 (groups of 32, 15 levels) on a 64-wide random decoder loses much more; it is the size-saving option.
INT4_MIN_AGREEMENT = 0.6
FLOAT_MAX_LOGIT_ERROR = 0.02  # float16 weights, float32 compute, relative to the logits' std


@pytest.fixture(scope="module")
def sources(llama_gguf, qwen2_gguf):
    return {"llama": llm.read_gguf(llama_gguf), "qwen2": llm.read_gguf(qwen2_gguf)}


@pytest.fixture(scope="module")
def references(sources, tiny_tokenizer):
    out = {}
    ids = tiny_tokenizer.encode(PROMPT).ids
    for arch, src in sources.items():
        greedy = llm.reference_generate(src.config, src.weights, ids, 64)
        out[arch] = (ids, greedy, llm.reference_logits(src.config, src.weights, ids + greedy))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float_path_matches_reference_token_by_token(arch, packages, references):
    ids, greedy, ref_logits = references[arch]
    with llm.load(packages(arch, "f16"), threads=1) as model:
        # Free-running greedy decoding with the KV cache: the same 64 tokens (EOS does not stop it here).
        seq = model.new_sequence(len(ids) + 64)
        logits = model.prefill(seq, ids)
        got = []
        for _ in range(64):
            tok = int(np.argmax(logits))
            got.append(tok)
            logits = model.decode([seq], [tok])[0] if len(got) < 64 else logits
        assert got == greedy
        full = model.logits(ids + greedy)
    err = np.abs(full - ref_logits).max() / ref_logits.std()
    assert err < FLOAT_MAX_LOGIT_ERROR, err  # float16 rounding of the weights only


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_int8_path_agrees_with_reference(arch, packages, references):
    ids, greedy, ref_logits = references[arch]
    with llm.load(packages(arch, "int8"), threads=2) as model:
        logits = model.logits(ids + greedy)
    forced = logits[len(ids) - 1 : -1].argmax(-1)
    agreement = float(np.mean(forced == np.asarray(greedy)))
    error = float(np.abs(logits - ref_logits).max() / ref_logits.std())
    assert agreement >= INT8_MIN_AGREEMENT, agreement
    assert error <= INT8_MAX_LOGIT_ERROR, error


def test_int4_package_is_smaller_and_close(packages, references):
    ids, greedy, _ = references["qwen2"]
    assert packages("qwen2", "int4").stat().st_size < 0.8 * packages("qwen2", "int8").stat().st_size
    with llm.load(packages("qwen2", "int4"), threads=1) as model:
        forced = model.logits(ids + greedy)[len(ids) - 1 : -1].argmax(-1)
    assert float(np.mean(forced == np.asarray(greedy))) >= INT4_MIN_AGREEMENT


def test_batched_decode_equals_one_at_a_time(packages, tiny_tokenizer):
    with llm.load(packages("qwen2", "int8"), threads=1) as model:
        prompts = [tiny_tokenizer.encode(t).ids for t in (PROMPT, "Hello world!", "def add(a, b):")]
        solo = []
        for p in prompts:
            seq = model.new_sequence(len(p) + 4)
            model.prefill(seq, p)
            solo.append(model.decode([seq], [5])[0])
        seqs = [model.new_sequence(len(p) + 4) for p in prompts]
        for s, p in zip(seqs, prompts):
            model.prefill(s, p)
        batched = model.decode(seqs, [5, 5, 5])
    # Each row is quantized on its own, so a batch gives the same numbers as single rows.
    np.testing.assert_allclose(batched, np.stack(solo), rtol=0, atol=1e-4)


def test_generate_stream_stop_and_seed(packages):
    with llm.load(packages("qwen2", "int8"), threads=1) as model:
        g = model.generate(PROMPT, max_new_tokens=16)
        events = list(model.stream(PROMPT, max_new_tokens=16))
        assert "".join(e.text for e in events) == g.text
        assert events[-1].finish_reason == g.finish_reason
        a = model.generate(PROMPT, max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=20, seed=7)
        b = model.generate(PROMPT, max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=20, seed=7)
        assert a.token_ids == b.token_ids
        if len(g.text) > 3:
            stop = g.text[1:3]
            cut = model.generate(PROMPT, max_new_tokens=16, stop=[stop])
            assert cut.finish_reason == "stop" and stop not in cut.text and g.text.startswith(cut.text)


def test_context_exceeded_says_what_to_do(packages):
    with llm.load(packages("llama", "int8"), threads=1, context=32) as model:
        with pytest.raises(llm.ContextLengthError, match="shorten the prompt"):
            model.generate(list(range(40)), max_new_tokens=4)
        with pytest.raises(llm.ContextLengthError, match="lower max_new_tokens to"):
            model.generate(list(range(20)), max_new_tokens=20)
        assert model.generate(list(range(20)), max_new_tokens=None).completion_tokens <= 12


def test_not_enough_memory_for_the_context(packages, monkeypatch):
    monkeypatch.setattr(llm_model, "available_memory", lambda: 1 << 10)
    with pytest.raises(llm.ContextMemoryError, match="smaller context"):
        llm.load(packages("llama", "int8"), threads=1)


def test_selftest_and_info(packages):
    with llm.load(packages("llama", "int8"), threads=1) as model:
        assert model.selftest()["passed"] is True
        info = model.info()
        assert info["kind"] == "llm" and info["weights"] == "int8"
        out = model.run({"input_ids": np.asarray([[1, 2, 3]], dtype=np.int32)})
        assert out["logits"].shape == (1, 3, model.config.vocab_size)


def test_engine_batches_chunked_prefill_with_decode(packages, tiny_tokenizer):
    """Generations through the continuous-batching engine equal generate() one at a time, also when a
    long prompt is prefilled in chunks beside running sequences."""
    import threading

    from edge_runtime.llm.sampling import SamplingParams

    with llm.load(packages("qwen2", "int8"), threads=1) as model:
        prompts = [
            model.tokenize(PROMPT),
            model.tokenize("Hello world! " * 25),
            model.tokenize("def add(a, b):"),
        ]
        expected = [model.generate(p, max_new_tokens=10).text for p in prompts]
        engine = model.engine(prefill_tokens=32)
        done = [threading.Event() for _ in prompts]
        texts: list[list[str]] = [[] for _ in prompts]

        def emit(i):
            def on(item):
                assert not isinstance(item, BaseException), item
                texts[i].append(item.text)
                if item.finish_reason is not None:
                    done[i].set()

            return on

        for i, p in enumerate(prompts):
            engine.submit(p, SamplingParams(max_new_tokens=10), emit(i))
        for d in done:
            assert d.wait(30)
        assert ["".join(t) for t in texts] == expected
        assert engine.prefill_tokens == 32 and len(prompts[1]) > 64


def test_load_from_an_extracted_store_directory(packages, tmp_path):
    from edge_runtime.package import open_package

    with open_package(packages("llama", "int8")) as pkg:
        target = pkg.extract(tmp_path / "store" / "v1")
    assert llm.is_llm_package(target) and llm.is_llm_package(packages("llama", "int8"))
    with llm.load(target, threads=1) as model:
        assert model.selftest()["passed"]
