"""The trainer's fake quantization is edge_runtime.numerics, bit for bit, and 2:4 masks are prune_2_4's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_lightning")

from cloud_trainer import fake_quant
from cloud_trainer.qat import (
    QuantConvBnAct,
    activation_params_by_module,
    prepare_qat,
    set_qat_state,
    to_float,
)
from cloud_trainer.sparsity import MIN_SPARSE_K, TwoFourSparsity, is_2_4, mask_2_4, reduction_rows
from edge_runtime import numerics


def _weights(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, size=shape).astype(np.float32)
    # Exact ties of the rounding: w / scale lands on k + 0.5 for some entries of channel 0.
    scale = np.float32(np.abs(w[0]).max() / np.float32(127))
    flat = w[0].reshape(-1)
    flat[1:4] = np.array([2.5, -3.5, 0.5], dtype=np.float32) * scale
    w[1] = 0.0  # an all-zero channel gets the floor scale
    return w


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (10, 256), (4, 1, 3, 3)])
def test_weight_fake_quant_matches_the_spec_bit_for_bit(shape: tuple[int, ...], bits: int) -> None:
    w = _weights(0, shape)
    want = numerics.quantize_weights(w, axis=0, bits=bits)
    values, scales = fake_quant.quantize_weight(torch.from_numpy(w), bits=bits)
    np.testing.assert_array_equal(scales.numpy(), want.scales)
    np.testing.assert_array_equal(values.numpy(), want.values)
    assert int(values.abs().max()) == numerics.weight_qmax(bits)
    np.testing.assert_array_equal(
        fake_quant.fake_quantize_weight(torch.from_numpy(w), bits=bits).numpy(), want.dequantize()
    )


def test_qat_for_7_bit_weights_trains_the_deployed_values() -> None:
    from cloud_trainer.errors import QATError
    from cloud_trainer.models import DigitsCNN
    from cloud_trainer.qat import qat_weight_bits

    model = prepare_qat(DigitsCNN(), weight_bits=7)
    assert qat_weight_bits(model) == 7
    set_qat_state(model, enabled=True, bn_frozen=True)
    x = torch.rand(4, 1, 8, 8)
    model.train()
    model(x)  # the observers see data
    linear = model.classifier.linear
    seen = {}
    model.classifier.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    model.eval()
    with torch.no_grad():
        out = model(x)
        want = numerics.quantize_weights(linear.weight.numpy(), axis=0, bits=7).dequantize()
        y = torch.nn.functional.linear(seen["x"], torch.from_numpy(want), linear.bias)
    expected = fake_quant.fake_quantize_activation(y, model.classifier.observer.quant_params())
    assert torch.equal(out, expected)
    assert qat_weight_bits(prepare_qat(DigitsCNN())) == 8
    with pytest.raises(QATError, match="weight_bits=6"):
        prepare_qat(DigitsCNN(), weight_bits=6)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_activation_fake_quant_matches_the_spec_bit_for_bit(dtype: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 2.0, size=(4, 16, 5, 5)).astype(np.float32)
    params = numerics.activation_params(-1.3, 4.7, dtype)  # values outside saturate
    x.reshape(-1)[:3] = np.array([1.5, 2.5, -0.5], dtype=np.float32) * np.float32(params.scale)  # ties
    got = fake_quant.fake_quantize_activation(torch.from_numpy(x), params).numpy()
    np.testing.assert_array_equal(got, numerics.fake_quantize(x, params))


def test_observer_params_come_from_the_spec() -> None:
    obs = fake_quant.EMAObserver(momentum=0.5)
    obs.observe(torch.tensor([-1.0, 3.0]))
    obs.observe(torch.tensor([0.5, 5.0]))
    assert obs.quant_params() == numerics.activation_params(-0.25, 4.0)
    obs.frozen.fill_(True)
    obs.observe(torch.tensor([-100.0, 100.0]))
    assert obs.quant_params() == numerics.activation_params(-0.25, 4.0)


def test_straight_through_gradient_is_clipped_to_the_range() -> None:
    params = numerics.activation_params(0.0, 1.0)
    x = torch.tensor([-0.5, 0.3, 0.7, 1.5], requires_grad=True)
    fake_quant.fake_quantize_activation(x, params).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    w = torch.randn(3, 4, requires_grad=True)
    fake_quant.fake_quantize_weight(w).sum().backward()
    assert torch.equal(w.grad, torch.ones(3, 4))


def test_frozen_conv_block_computes_the_folded_deployed_arithmetic() -> None:
    from cloud_trainer.models import DigitsCNN

    model = prepare_qat(DigitsCNN())
    set_qat_state(model, enabled=True)
    model.train()
    x = torch.rand(16, 1, 8, 8)
    model(x)  # observers see data
    set_qat_state(model, bn_frozen=True, observers_frozen=True)
    block = model.features.block1
    assert isinstance(block, QuantConvBnAct)
    w_fold, b_fold = block.folded()
    # The runtime's folding (edge_runtime.graph.passes.fold_batch_norm) in numpy float64.
    bn = block.bn
    k = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    want_w = (block.conv.weight.detach().double().numpy() * k.reshape(-1, 1, 1, 1)).astype(np.float32)
    want_b = (bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * k).astype(np.float32)
    np.testing.assert_array_equal(w_fold.detach().numpy(), want_w)
    np.testing.assert_array_equal(b_fold.detach().numpy(), want_b)
    # In train mode with batch norm frozen, the block equals its eval output.
    with torch.no_grad():
        train_out = block(x)
        block.eval()
        assert torch.equal(train_out, block(x))
    params = activation_params_by_module(model)
    assert set(params) == {"<input>", "features.block1", "features.block2", "features.block3", "classifier"}
    plain = to_float(model)
    assert not any(isinstance(m, QuantConvBnAct) for m in plain.modules())
    assert set(plain.state_dict()) == set(DigitsCNN().state_dict())


def test_mask_2_4_is_the_runtime_pruning_in_the_kernels_order() -> None:
    from edge_runtime.kernels.sparse import prune_2_4

    rng = np.random.default_rng(2)
    w = rng.normal(size=(8, 16, 3, 3)).astype(np.float32)
    w[0, :4, 0, 0] = [1.0, -1.0, 1.0, 0.5]  # ties go to the lower index
    mask = mask_2_4(torch.from_numpy(w))
    rows = reduction_rows(torch.from_numpy(w)).numpy()
    np.testing.assert_array_equal(reduction_rows(mask).numpy(), prune_2_4(rows) != 0)
    assert is_2_4(torch.from_numpy(w) * mask) and not is_2_4(torch.from_numpy(w))
    linear = rng.normal(size=(5, 30)).astype(np.float32)  # K not a multiple of 4
    np.testing.assert_array_equal(mask_2_4(torch.from_numpy(linear)).numpy(), prune_2_4(linear) != 0)


def test_sparsity_threshold_is_the_runtime_one() -> None:
    from edge_runtime.quantize.pipeline import MIN_SPARSE_K as RUNTIME_MIN_SPARSE_K

    assert MIN_SPARSE_K == RUNTIME_MIN_SPARSE_K


def test_sparsity_callback_state_round_trips() -> None:
    cb = TwoFourSparsity(start_epoch=2)
    cb.masks = {"features.block2.conv": torch.ones(32, 16, 3, 3, dtype=torch.bool)}
    other = TwoFourSparsity()
    other.load_state_dict(cb.state_dict())
    assert other.start_epoch == 2 and torch.equal(
        other.masks["features.block2.conv"], cb.masks["features.block2.conv"]
    )
