"""The fused attention step: MatMul(q, k^T) [-> Mul/Div by a scalar] [-> Add mask] ->
Softmax(last axis) -> MatMul(., v) runs as one step (int8 products, float softmax and
mask, probabilities quantized to 8 bits before the product with V); chains that
something else reads halfway are left as separate steps."""

from __future__ import annotations

import numpy as np
import pytest
from native_models import make_model, prepare, rng, value
from onnx import helper

from edge_runtime.graph import reference
from edge_runtime.numerics import fake_quantize
from edge_runtime.plan import NativeSession, calibrate, lower

B, H, S, D = 2, 3, 7, 4


def _attention_model(scale_op: str | None = "Mul", mask: str | None = "input", axis: int = -1,
                     expose_scores: bool = False):  # fmt: skip
    n = helper.make_node
    init: dict[str, np.ndarray] = {"c": np.array(0.5 if scale_op == "Mul" else 2.0, np.float32)}
    nodes = [n("MatMul", ["q", "kt"], ["s0"])]
    last = "s0"
    if scale_op == "Mul":
        nodes.append(n("Mul", ["c", last], ["s1"]))  # constant first: either order is matched
        last = "s1"
    elif scale_op == "Div":
        nodes.append(n("Div", [last, "c"], ["s1"]))
        last = "s1"
    inputs = [value("q", ["batch", H, S, D]), value("kt", ["batch", H, D, S]), value("v", ["batch", H, S, D])]
    if mask is not None:
        if mask == "input":
            inputs.append(value("mask", ["batch", 1, 1, S]))
        else:  # a constant additive mask: causal
            init["mask"] = np.triu(np.full((S, S), -1e4, np.float32), k=1)
        nodes.append(n("Add", [last, "mask"], ["s2"]))
        last = "s2"
    nodes += [n("Softmax", [last], ["p"], axis=axis), n("MatMul", ["p", "v"], ["y"])]
    outputs = [value("y", None)] + ([value("s0", None)] if expose_scores else [])
    return make_model(nodes, inputs, outputs, init, name="attention")


def _feeds(graph, seed: int, padding: bool = True) -> dict[str, np.ndarray]:
    r = rng(seed)
    feeds = {}
    for info in graph.inputs:
        shape = [B if not isinstance(d, int) else d for d in info.shape]
        if info.name == "mask":  # padding: the last two positions of sample 1 masked out
            m = np.zeros(shape, np.float32)
            m[1, ..., -2:] = -1e4 if padding else 0.0
            feeds[info.name] = m
        else:
            feeds[info.name] = (r.standard_normal(shape) * 1.5).astype(np.float32)
    return feeds


def _plan_and_error(model, padding: bool = True) -> tuple[dict, float, float]:
    """(op histogram, max error in output steps, what 8-bit probabilities may add to it)."""
    graph = prepare(model)
    feeds = _feeds(graph, seed=4, padding=padding)
    params = calibrate(graph, [feeds], progress=False)
    plan = lower(graph, params)
    got = NativeSession(plan, cache_dir=False).run(feeds)["y"]
    fq = {k: (fake_quantize(v, params[k]) if k in params else v) for k, v in feeds.items()}
    want = reference.run(graph, fq)["y"]
    assert got.shape == want.shape
    # Each probability is off by at most half of 1/255: summed against |v| over the keys.
    p_bound = S * 0.5 / 255 * float(np.abs(fq["v"]).max()) / params["y"].scale
    return plan.op_histogram(), float(np.abs(got - want).max() / params["y"].scale), p_bound


@pytest.mark.parametrize("scale_op", ["Mul", "Div", None])
@pytest.mark.parametrize("mask", ["input", "input_of_zeros", "constant", None])
def test_attention_chain_runs_as_one_step_within_its_rounding(scale_op, mask) -> None:
    model = _attention_model(scale_op, "input" if mask == "input_of_zeros" else mask)
    hist, error, p_bound = _plan_and_error(model, padding=mask != "input_of_zeros")
    assert hist.get("attention") == 1 and "softmax" not in hist and "matmul" not in hist, hist
    # The output's rounding, the 8-bit probabilities, and the range: the reference sees
    # fake-quantized inputs, whose extreme output may fall a little outside the range
    # calibrated on the float inputs.
    assert error <= 1.5 + p_bound + 1e-3, f"{error:.2f} output steps (allowed {1.5 + p_bound:.2f})"


def test_fused_attention_keeps_a_padding_mask_that_8_bit_scores_lose() -> None:
    """Separate steps quantize the masked scores, whose range (-1e4 .. a few units) leaves
    the unmasked scores a single code: their softmax turns uniform. Fused, they stay float."""
    _, fused, p_bound = _plan_and_error(_attention_model("Mul", "input"))
    _, separate, _ = _plan_and_error(_attention_model("Mul", "input", expose_scores=True))
    assert fused <= 1.5 + p_bound + 1e-3 and separate > 10, (fused, separate)


@pytest.mark.parametrize("variant", ["scores_are_an_output", "softmax_not_on_last_axis"])
def test_chains_read_halfway_or_of_another_shape_stay_separate(variant) -> None:
    model = _attention_model("Mul", None, axis=2) if variant == "softmax_not_on_last_axis" \
        else _attention_model("Mul", None, expose_scores=True)  # fmt: skip
    hist, error, _ = _plan_and_error(model)
    assert "attention" not in hist and hist.get("matmul") == 2 and hist.get("softmax") == 1, hist
    assert error <= 3.0, f"{error:.2f} output steps"
