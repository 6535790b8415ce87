"""The native decode step (edge_llm_decode) against the numpy forward pass it replaces, on every ISA."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from _tiny import PROMPT

from edge_runtime import errors, llm
from edge_runtime.kernels import supported_isas, use_isa

# One step from the same cache: the C step and numpy differ only in float rounding (summation order,
# exp), which can move an activation across an int8 rounding boundary; relative to the logits' std.
MAX_STEP_ERROR = 0.05


def _numpy_step(model, seq, tok):
    native, model._native = model._native, None
    try:
        return model.decode([seq], [tok])[0]
    finally:
        model._native = native


def _steps(model, ids, n=24):
    """(cache state before each step, token) pairs of a greedy run on the numpy path."""
    seq = model.new_sequence(len(ids) + n + 1)
    logits = model.prefill(seq, ids)
    states = []
    for _ in range(n):
        tok = int(np.argmax(logits))
        states.append((copy.deepcopy(seq), tok))
        logits = _numpy_step(model, seq, tok)
    return states


@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_native_step_matches_numpy_step(arch, bits, packages, tiny_tokenizer):
    ids = tiny_tokenizer.encode(PROMPT).ids
    with llm.load(packages(arch, "int8"), threads=1, activation_bits=bits) as model:
        assert model._native is not None
        worst, agree = 0.0, 0
        for seq, tok in _steps(model, ids):
            ref_seq, nat_seq = copy.deepcopy(seq), copy.deepcopy(seq)
            ref = _numpy_step(model, ref_seq, tok)
            got = model.decode([nat_seq], [tok])[0]
            assert nat_seq.tokens == ref_seq.tokens
            pos = seq.length
            np.testing.assert_allclose(nat_seq.k[:, :, pos], ref_seq.k[:, :, pos], rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(nat_seq.v[:, :, pos], ref_seq.v[:, :, pos], rtol=1e-3, atol=1e-3)
            worst = max(worst, float(np.abs(got - ref).max() / ref.std()))
            agree += int(np.argmax(got) == np.argmax(ref))
        assert worst < MAX_STEP_ERROR, worst
        assert agree >= 23, agree


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_native_step_is_bit_identical_across_isas_and_threads(arch, packages, tiny_tokenizer):
    ids = tiny_tokenizer.encode(PROMPT).ids
    results = []
    for threads in (1, 2):
        with llm.load(packages(arch, "int8"), threads=threads) as model:
            model._native._d.parallel_min_macs = 0  # split every GEMV on the 2-thread pool
            seq, tok = _steps(model, ids, 3)[-1]
            for isa in supported_isas():
                with use_isa(isa):
                    s = copy.deepcopy(seq)
                    results.append((threads, isa, model.decode([s], [tok])[0], s.k.copy()))
    first = results[0]
    for threads, isa, logits, k in results[1:]:
        assert np.array_equal(logits, first[2]), (threads, isa)
        assert np.array_equal(k, first[3]), (threads, isa)


def test_generation_uses_the_native_step_and_matches_numpy_greedy(packages, tiny_tokenizer):
    ids = tiny_tokenizer.encode(PROMPT).ids
    with llm.load(packages("llama", "int8"), threads=1) as model:
        native = model.generate(ids, 16).token_ids
        model._native, kept = None, model._native
        numpy_path = model.generate(ids, 16).token_ids
        model._native = kept
    assert len(native) == 16
    # Free-running: float rounding may flip a near tie late in the run; the start must agree.
    assert native[:8] == numpy_path[:8]


def test_float16_cache_and_batches_take_the_numpy_path(packages, tiny_tokenizer):
    ids = tiny_tokenizer.encode(PROMPT).ids
    with llm.load(packages("llama", "int8"), threads=1, kv_dtype="float16") as model:
        a, b = model.new_sequence(32), model.new_sequence(32)
        model.prefill(a, ids)
        model.prefill(b, ids)
        two = model.decode([a, b], [5, 5])
        assert two.shape == (2, model.config.vocab_size)
        np.testing.assert_array_equal(two[0], two[1])
        one = model.decode([a], [7])  # float16 cache: numpy
        assert one.shape == (1, model.config.vocab_size)


def test_native_step_refuses_a_position_outside_the_cache_and_bad_digits(packages):
    with llm.load(packages("llama", "int8"), threads=1) as model:
        seq = model.new_sequence(4)
        emb = np.zeros(model.config.hidden_size, dtype=np.float32)
        with pytest.raises(errors.ShapeError, match="position 4 outside the cache"):
            model._native.step(emb, 4, seq.k, seq.v, None)
        model._native._d.activation_digits = 3
        with pytest.raises(errors.KernelArgumentError, match="activation_digits must be 1 or 2"):
            model._native.step(emb, 0, seq.k, seq.v, None)
    with pytest.raises(ValueError, match="activation_bits must be 8 or 16"):
        llm.load(packages("llama", "int8"), activation_bits=4)


@pytest.mark.parametrize("digits", [1, 2])
def test_int8_linear_is_the_integer_formula(digits):
    """_Int8Linear against its definition, in int64 and float64: q1 at s = max|x| / 127, the
    remainder q2 at s / 254 (two digits), one GEMM, y = (acc1 * s + acc2 * s / 254) * scale + bias."""
    from edge_runtime.llm.model import _Int8Linear

    rng = np.random.default_rng(digits)
    w = rng.integers(-127, 128, (40, 72)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, 40).astype(np.float32)
    bias = rng.normal(size=40).astype(np.float32)
    x = rng.normal(size=(3, 72)).astype(np.float32)
    x[1, 5] = 40.0  # an outlier channel: one digit loses the small ones
    lin = _Int8Linear(w, scale, bias, digits=digits)
    y = lin(x, None)
    s = np.maximum(np.abs(x).max(axis=1, keepdims=True) * np.float32(1 / 127), np.float32(1e-30))
    q1 = np.rint(x / s)
    want = (q1.astype(np.int64) @ w.T.astype(np.int64)) * s.astype(np.float64)
    if digits == 2:
        s2 = s * np.float32(1 / 254)
        q2 = np.clip(np.rint((x - q1 * s) / s2), -127, 127)
        want = want + (q2.astype(np.int64) @ w.T.astype(np.int64)) * s2.astype(np.float64)
    want = want * scale + bias
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    exact = x.astype(np.float64) @ (w.astype(np.float64) * scale[:, None]).T + bias
    err = np.abs(y - exact).max()
    # one digit: error up to half a step of the outlier's scale; two: about 254x less
    assert err < (0.5 if digits == 1 else 0.01) * np.abs(exact).max(), err
    if digits == 2:
        one = _Int8Linear(w, scale, bias, digits=1)(x, None)
        assert err * 20 < np.abs(one - exact).max()
