"""The reference models, their data, their ONNX export and the zoo that finds the built files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import onnx

from cloud_trainer.data import DIGITS_SPLIT_FRACTIONS, load_digits_splits, make_synthetic_images
from cloud_trainer.errors import DataSplitError, ExportMismatchError, UnknownModelError
from cloud_trainer.models import (
    DigitsCNN,
    MiniLMEncoder,
    MobileNetV2,
    ResNet18,
    accuracy,
    build_model,
    compare_with_onnxruntime,
    count_parameters,
    export_onnx,
    fit_classifier,
)
from edge_runtime import zoo
from edge_runtime.errors import ModelNotFoundError

# Exact counts of the standard architectures (torchvision's mobilenet_v2 and resnet18 at
# 1000 classes; MiniLM-L6-H384 / all-MiniLM-L6-v2 without its 147,840-parameter pooler).
MOBILENET_V2_PARAMETERS = 3_504_872
RESNET18_PARAMETERS = 11_689_512
MINILM_PARAMETERS = 22_565_376
DIGITS_COUNT = 1797
ONNX_ATOL = 1e-4
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "build_models.py"


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits()


@pytest.fixture(scope="module")
def trained_digits(digits):
    """DigitsCNN after 3 epochs (well under a second): what the accuracy and export tests share."""
    model = DigitsCNN()
    fit_classifier(model, digits.train, epochs=3)
    return model


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder()


# --------------------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("batch", [1, 2])
def test_digits_cnn_maps_8x8_images_to_10_logits(batch):
    model = DigitsCNN().eval()
    (x,) = model.example_inputs(batch)
    assert model(x).shape == (batch, 10)


@pytest.mark.parametrize("cls", [MobileNetV2, ResNet18])
@pytest.mark.parametrize("batch", [1, 2])
def test_image_classifiers_take_small_images(cls, batch):
    model = cls(num_classes=7, image_size=64).eval()
    (x,) = model.example_inputs(batch)
    assert x.shape == (batch, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (batch, 7)


@pytest.mark.parametrize("cls", [MobileNetV2, ResNet18])
def test_image_classifiers_at_224_give_finite_logits(cls):
    model = cls().eval()
    with torch.no_grad():
        logits = model(*model.example_inputs(1))
    assert logits.shape == (1, 1000)
    # Seeded batch-norm statistics must keep activations in a sane range, not blow up or vanish.
    assert torch.isfinite(logits).all() and 1e-3 < float(logits.std()) < 100


@pytest.mark.parametrize("batch", [1, 2])
def test_encoder_returns_last_hidden_state(encoder, batch):
    input_ids, mask = encoder.eval().example_inputs(batch)
    assert input_ids.dtype == mask.dtype == torch.int64 and input_ids.shape == mask.shape == (batch, 128)
    with torch.no_grad():
        assert encoder(input_ids, mask).shape == (batch, 128, 384)


def test_encoder_ignores_padded_tokens(encoder):
    input_ids, mask = encoder.eval().example_inputs(2)
    assert (mask[1] == 0).any(), "the second example sequence must be padded for this test to mean anything"
    changed = input_ids.clone()
    changed[mask == 0] = 7
    with torch.no_grad():
        before, after = encoder(input_ids, mask), encoder(changed, mask)
        unmasked = encoder(changed, torch.ones_like(mask))
    real = mask.bool()
    torch.testing.assert_close(after[real], before[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[real], before[real], atol=1e-3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mobilenet_v2", MOBILENET_V2_PARAMETERS),
        ("resnet18", RESNET18_PARAMETERS),
        ("minilm_encoder", MINILM_PARAMETERS),
    ],
)
def test_parameter_counts_match_the_standard_architectures(name, expected, encoder):
    model = encoder if name == "minilm_encoder" else build_model(name)
    assert count_parameters(model) == expected


def test_build_model_names_the_known_models():
    with pytest.raises(UnknownModelError, match="resnet18"):
        build_model("resnet19")


# --------------------------------------------------------------------------- initialization


def test_initialization_depends_on_the_seed_only():
    torch.manual_seed(1)
    a = ResNet18(seed=3)
    torch.manual_seed(2)  # A different global RNG state must not change the weights.
    b, c = ResNet18(seed=3), ResNet18(seed=4)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_batch_norm_statistics_are_not_the_identity():
    bn = MobileNetV2().features[0].bn
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
    assert float(bn.running_var.min()) > 0


# --------------------------------------------------------------------------- data


def test_digits_split_is_deterministic_disjoint_and_complete(digits):
    again = load_digits_splits()
    other = load_digits_splits(seed=1)
    for name in ("train", "val", "test"):
        split = getattr(digits, name)
        np.testing.assert_array_equal(split.x, getattr(again, name).x)
        np.testing.assert_array_equal(split.y, getattr(again, name).y)
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert split.x.shape[1:] == (1, 8, 8) and split.x.min() >= 0 and split.x.max() <= 1
    assert not np.array_equal(digits.test.y, other.test.y)
    rows = [x.tobytes() for s in (digits.train, digits.val, digits.test) for x in s.x]
    assert len(rows) == DIGITS_COUNT
    # Disjoint: no image of one split appears in another (the digits have no exact duplicates across classes).
    train_rows = {x.tobytes() for x in digits.train.x}
    assert not train_rows & {x.tobytes() for x in digits.test.x}
    assert not train_rows & {x.tobytes() for x in digits.val.x}


def test_digits_split_is_stratified(digits):
    totals = sum(np.bincount(getattr(digits, s).y, minlength=10) for s in ("train", "val", "test"))
    for split, fraction in zip((digits.train, digits.val, digits.test), DIGITS_SPLIT_FRACTIONS, strict=True):
        counts = np.bincount(split.y, minlength=10)
        assert np.all(np.abs(counts - totals * fraction) <= 1), counts


def test_digits_split_refuses_bad_fractions():
    with pytest.raises(DataSplitError):
        load_digits_splits(fractions=(0.8, 0.1, 0.2))


def test_synthetic_images_are_seeded_balanced_and_learnable():
    data = make_synthetic_images(200, image_size=16, seed=5)
    again = make_synthetic_images(200, image_size=16, seed=5)
    assert data.x.shape == (200, 3, 16, 16) and data.x.dtype == np.float32 and data.y.dtype == np.int64
    np.testing.assert_array_equal(data.x, again.x)
    assert np.bincount(data.y).tolist() == [20] * 10
    assert abs(float(data.x.mean())) < 0.1 and 0.8 < float(data.x.std()) < 1.5
    # Nearest class mean (from the first half) classifies the second half: the classes are separable.
    flat = data.x.reshape(200, -1)
    means = np.stack([flat[:100][data.y[:100] == k].mean(axis=0) for k in range(10)])
    predicted = np.argmin(((flat[100:, None, :] - means[None]) ** 2).sum(axis=-1), axis=1)
    assert np.mean(predicted == data.y[100:]) > 0.9


# --------------------------------------------------------------------------- training and export


def test_short_training_beats_90_percent_on_the_test_split(trained_digits, digits):
    assert accuracy(trained_digits, digits.test) > 0.90


def test_training_is_deterministic(digits):
    a, b = DigitsCNN(seed=1), DigitsCNN(seed=1)
    fit_classifier(a, digits.train, epochs=1, seed=2)
    fit_classifier(b, digits.train, epochs=1, seed=2)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_digits_export_matches_torch_on_onnxruntime(trained_digits, digits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(trained_digits, tmp_path / "digits_cnn.onnx")

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert sum(n.op_type == "BatchNormalization" for n in graph.node) == 3  # Folding is left to the runtime.

    assert (
        compare_with_onnxruntime(trained_digits, path, batch_sizes=(1, 5), atol=ONNX_ATOL, rtol=0) < ONNX_ATOL
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": digits.test.x})
    assert np.mean(logits.argmax(axis=1) == digits.test.y) == pytest.approx(
        accuracy(trained_digits, digits.test)
    )


def test_export_check_catches_a_wrong_model(trained_digits, tmp_path):
    pytest.importorskip("onnxruntime")
    path = export_onnx(trained_digits, tmp_path / "digits_cnn.onnx")
    proto = onnx.load(str(path))
    bias = next(init for init in proto.graph.initializer if init.name == "classifier.bias")
    values = onnx.numpy_helper.to_array(bias) + 0.01
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(path))
    with pytest.raises(ExportMismatchError, match="logits"):
        compare_with_onnxruntime(trained_digits, path, atol=ONNX_ATOL, rtol=0)


def test_small_encoder_exports_with_dynamic_batch_and_fixed_sequence(tmp_path):
    pytest.importorskip("onnxruntime")
    model = MiniLMEncoder(vocab_size=1000, layers=2, seq_len=16, max_positions=32)
    path = export_onnx(model, tmp_path / "encoder.onnx")
    graph = onnx.load(str(path)).graph
    for value in (*graph.input, *graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[:2] == ["batch", 16], (value.name, dims)
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert not {"Cast", "Where"} & {n.op_type for n in graph.node}  # The mask becomes a Gather.
    assert compare_with_onnxruntime(model, path, batch_sizes=(1, 3), atol=ONNX_ATOL) < ONNX_ATOL


# --------------------------------------------------------------------------- zoo and the build script


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_models", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zoo_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    monkeypatch.delenv(zoo.CACHE_ENV_VAR)
    assert zoo.cache_dir() == Path.home() / ".cache" / "edge-runtime" / "models"


def test_zoo_says_how_to_build_a_missing_model(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="python bench/build_models.py --only resnet18"):
        zoo.model_path("resnet18")
    with pytest.raises(ModelNotFoundError, match="--only digits_cnn"):
        zoo.load_digits_test()
    with pytest.raises(ModelNotFoundError, match="mobilenet_v2"):
        zoo.model_path("no_such_model")


def test_build_script_fills_the_cache_the_zoo_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))
    build = _load_build_script()
    assert build.main(["--only", "digits_cnn", "--epochs", "3"]) == 0
    assert "test accuracy" in capsys.readouterr().out

    assert zoo.model_path("digits_cnn") == tmp_path / "digits_cnn.onnx"
    meta = zoo.model_metadata("digits_cnn")
    assert meta["accuracy"]["test"] >= build.MIN_DIGITS_TEST_ACCURACY
    assert meta["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert meta["parameters"] == count_parameters(DigitsCNN())
    x, y = zoo.load_digits_test()
    assert x.shape == (360, 1, 8, 8) and y.shape == (360,)

    mtime = zoo.model_path("digits_cnn").stat().st_mtime_ns
    assert build.main(["--only", "digits_cnn"]) == 0
    assert "cached, skipping" in capsys.readouterr().out
    assert zoo.model_path("digits_cnn").stat().st_mtime_ns == mtime
