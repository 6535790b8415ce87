"""Calibration / evaluation data loaders: sources, batching, and typed errors saying what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import DatasetError, ModelInputError
from edge_runtime.graph import ValueInfo
from edge_runtime.quantize import ImageOptions, load_data, load_labels

F32 = np.dtype(np.float32)
IMAGE_INPUT = (ValueInfo("x", F32, ("batch", 3, 8, 8)),)
SEQ_INPUT = (ValueInfo("x", F32, ("batch", "seq", 4)),)


def _samples(dataset) -> np.ndarray:
    return np.concatenate([b["x"] for b in dataset])


def test_npy_batches_max_samples_and_float64_cast(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(10, 3, 8, 8))  # float64, as numpy makes it
    np.save(tmp_path / "cal.npy", data)
    ds = load_data(tmp_path / "cal.npy", IMAGE_INPUT, batch_size=4)
    batches = list(ds)
    assert [len(b["x"]) for b in batches] == [4, 4, 2] and len(ds) == 3
    assert batches[0]["x"].dtype == np.float32
    np.testing.assert_allclose(_samples(ds), data.astype(np.float32))
    assert next(iter(ds))["x"].shape == (4, 3, 8, 8)  # iterable again (calibration, then evaluation)
    capped = load_data(tmp_path / "cal.npy", IMAGE_INPUT, batch_size=4, max_samples=5)
    assert [len(b["x"]) for b in capped] == [4, 1] and len(capped) == 2
    assert capped.first(3)["x"].shape == (3, 3, 8, 8)


def test_npz_by_input_name_single_array_and_labels(tmp_path: Path) -> None:
    a = np.ones((2, 5, 4), np.float32)
    b = np.zeros((3, 7, 4), np.float32)
    np.savez(tmp_path / "named.npz", x=a, labels=np.array([1, 2]))
    ds = load_data(tmp_path / "named.npz", SEQ_INPUT, batch_size=2)
    assert _samples(ds).shape == (2, 5, 4)
    np.testing.assert_array_equal(ds.labels, [1, 2])
    np.savez(tmp_path / "single.npz", b)  # arr_0: fine for a one-input model
    assert _samples(load_data(tmp_path / "single.npz", SEQ_INPUT, batch_size=8)).shape == (3, 7, 4)

    two = (ValueInfo("ids", np.dtype(np.int64), ("batch", 3)), ValueInfo("mask", F32, ("batch", 3)))
    np.savez(tmp_path / "two.npz", ids=np.zeros((4, 3), np.int32), mask=np.ones((4, 3), np.float32))
    batch = next(iter(load_data(tmp_path / "two.npz", two, batch_size=4)))
    assert batch["ids"].dtype == np.int64 and batch["mask"].shape == (4, 3)
    np.savez(tmp_path / "bad.npz", ids=np.zeros((4, 3), np.int64))
    with pytest.raises(DatasetError, match=r"inputs are \['ids', 'mask'\].*lacks \['mask'\]"):
        load_data(tmp_path / "bad.npz", two)


def test_image_folder_resized_normalized_nchw(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    for i in range(5):
        pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
        image.fromarray(pixels).save(tmp_path / f"img{i}.png")
    flat = np.full((8, 8, 3), 255, np.uint8)
    (tmp_path / "sub").mkdir()
    image.fromarray(flat).save(tmp_path / "sub" / "white.jpg")
    opts = ImageOptions(mean=(0.5, 0.5, 0.5), std=(0.25,))
    ds = load_data(tmp_path, IMAGE_INPUT, batch_size=4, image_options=opts)
    x = _samples(ds)
    assert x.shape == (6, 3, 8, 8) and x.dtype == np.float32 and len(ds) == 2
    np.testing.assert_allclose(x[-1], (1.0 - 0.5) / 0.25, atol=1e-2)  # white JPEG in sub/ sorts last
    assert x.min() >= -2.0 - 1e-6 and x.max() <= 2.0 + 1e-6
    assert ds.image_options == opts

    dynamic = (ValueInfo("x", F32, ("batch", 3, "h", "w")),)
    with pytest.raises(DatasetError, match="dynamic.*--image-size"):
        load_data(tmp_path, dynamic)
    sized = load_data(tmp_path, dynamic, image_options=ImageOptions(size=(6, 5)))
    assert _samples(sized).shape == (6, 3, 6, 5)
    gray = (ValueInfo("x", F32, ("batch", 1, 4, 4)),)
    assert _samples(load_data(tmp_path, gray)).shape == (6, 1, 4, 4)
    with pytest.raises(DatasetError, match="mean has 2 values.*3 channel"):
        list(load_data(tmp_path, IMAGE_INPUT, image_options=ImageOptions(mean=(0.1, 0.2))))


def test_callable_sources(tmp_path: Path) -> None:
    script = tmp_path / "make_data.py"
    script.write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    for i in range(3):\n"
        "        yield {'x': np.full((2, 5, 4), i, np.float32)}\n"
        "def rows():\n"
        "    return [np.zeros((5, 4), np.float32)] * 5\n"
    )
    ds = load_data(f"{script}:batches", SEQ_INPUT, batch_size=4)
    assert [len(b["x"]) for b in ds] == [4, 2]
    assert [len(b["x"]) for b in ds] == [4, 2]  # the callable is called again: re-iterable
    with pytest.raises(TypeError):
        len(ds)  # a generator does not say how many samples it holds
    assert _samples(load_data(f"{script}:rows", SEQ_INPUT, batch_size=2)).shape == (5, 5, 4)
    assert _samples(load_data(lambda: [np.ones((1, 5, 4))], SEQ_INPUT)).shape == (1, 5, 4)
    with pytest.raises(DatasetError, match="has no callable 'nope'"):
        load_data(f"{script}:nope", SEQ_INPUT)
    with pytest.raises(DatasetError, match="cannot import"):
        load_data("no_such_module_xyz:fn", SEQ_INPUT)


def test_mismatches_are_typed_and_say_what_was_expected(tmp_path: Path) -> None:
    np.save(tmp_path / "wrong_shape.npy", np.zeros((4, 3, 9, 8), np.float32))
    with pytest.raises(
        DatasetError, match=r"shape \(4, 3, 9, 8\).*float32 \[batch, 3, 8, 8\].*\(N, 3, 8, 8\)"
    ):
        load_data(tmp_path / "wrong_shape.npy", IMAGE_INPUT)
    np.save(tmp_path / "uint8.npy", np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(ModelInputError, match="dtype uint8.*expects float32.*normalize"):
        load_data(tmp_path / "uint8.npy", IMAGE_INPUT)
    with pytest.raises(DatasetError, match=r"got shape \(2, 5, 3\).*\(N, seq, 4\)"):
        list(load_data(lambda: [{"x": np.zeros((2, 5, 3), np.float32)}], SEQ_INPUT))
    with pytest.raises(DatasetError, match="unknown \\['y'\\]"):
        list(load_data(lambda: [{"x": np.zeros((5, 4)), "y": 1}], SEQ_INPUT))
    with pytest.raises(DatasetError, match="holds no samples"):
        list(load_data(list, SEQ_INPUT))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="folder of images.*npy or .npz"):
        load_data(tmp_path / "notes.txt", SEQ_INPUT)
    with pytest.raises(FileNotFoundError):
        load_data(tmp_path / "missing.npz", SEQ_INPUT)
    with pytest.raises(DatasetError, match="holds no image files"):
        load_data(tmp_path, IMAGE_INPUT)


def test_fixed_batch_dimension_is_respected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixed = (ValueInfo("x", F32, (2, 4)),)
    ds = load_data(np.zeros((5, 4), np.float32), fixed, batch_size=8)
    assert [len(b["x"]) for b in ds] == [2, 2]  # the fifth sample cannot fill a batch of 2
    assert "fixed at 2" in capsys.readouterr().err


def test_labels_files(tmp_path: Path) -> None:
    np.save(tmp_path / "l.npy", np.array([3, 1, 2]))
    (tmp_path / "l.txt").write_text("3\n1\n2\n")
    np.testing.assert_array_equal(load_labels(tmp_path / "l.npy"), [3, 1, 2])
    np.testing.assert_array_equal(load_labels(tmp_path / "l.txt"), [3, 1, 2])
    (tmp_path / "bad.txt").write_text("cat\n")
    with pytest.raises(DatasetError, match="integers"):
        load_labels(tmp_path / "bad.txt")
