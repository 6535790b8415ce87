"""Small data sets that need no download: scikit-learn's digits and seeded synthetic images.

Nothing here fetches anything at run time. The digits (1,797 grey 8x8 images of
handwritten digits, 10 classes) ship inside scikit-learn; the synthetic images are
computed from a seed. Both are plain numpy arrays in the layout the runtime takes
(float32 NCHW, int64 labels), so the same arrays feed torch training, ONNX export
checks and the device-side benchmarks without conversion. This module needs numpy
only (scikit-learn for the digits); no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud_trainer.errors import DataSplitError

__all__ = [
    "DIGITS_SEED",
    "DIGITS_SPLIT_FRACTIONS",
    "DigitsSplits",
    "Split",
    "load_digits_splits",
    "make_synthetic_images",
]

DIGITS_SEED = 0
# Train / validation / test. The test fifth (360 images) is what the zoo ships
# as digits_test.npz and what every accuracy in the docs is measured on.
DIGITS_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
# The digits' pixels are integers 0..16 (counts of set pixels in 4x4 blocks of a 32x32 bitmap).
_DIGITS_MAX_PIXEL = 16.0


@dataclass(frozen=True)
class Split:
    """Images and labels of one split: ``x`` float32 [N, C, H, W], ``y`` int64 [N]."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DigitsSplits:
    """The digits split three ways; the same seed always gives the same images in each."""

    train: Split
    val: Split
    test: Split


def load_digits_splits(
    seed: int = DIGITS_SEED, fractions: tuple[float, float, float] = DIGITS_SPLIT_FRACTIONS
) -> DigitsSplits:
    """The digits as float32 [N, 1, 8, 8] in [0, 1] with int64 labels, split stratified by class.

    Each class is shuffled with its own draw from ``numpy.random.default_rng(seed)`` and cut
    at the given fractions (rounded per class), so every split holds each digit in the same
    proportion as the whole set. The split is computed here rather than with scikit-learn's
    ``train_test_split`` so that it depends on numpy's generator only, not on a library
    version's shuffling. Within a split the images are in a seeded shuffled order.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataSplitError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    from sklearn.datasets import load_digits  # Deferred: the rest of the module needs numpy only.

    digits = load_digits()
    images = (digits.images.astype(np.float32) / _DIGITS_MAX_PIXEL)[:, None, :, :]
    labels = digits.target.astype(np.int64)

    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = round(len(members) * fractions[0])
        n_val = round(len(members) * fractions[1])
        parts[0].append(members[:n_train])
        parts[1].append(members[n_train : n_train + n_val])
        parts[2].append(members[n_train + n_val :])

    splits = []
    for chunks in parts:
        index = rng.permutation(np.concatenate(chunks))
        if len(index) == 0:
            raise DataSplitError(f"fractions {fractions} leave a split empty")
        splits.append(Split(x=np.ascontiguousarray(images[index]), y=labels[index]))
    return DigitsSplits(train=splits[0], val=splits[1], test=splits[2])


def make_synthetic_images(
    n: int,
    *,
    num_classes: int = 10,
    image_size: int = 224,
    channels: int = 3,
    noise: float = 0.5,
    seed: int = 0,
) -> Split:
    """A seeded, learnable image classification set shaped like normalized ImageNet input.

    Why: the MobileNetV2-shaped classifier needs inputs of its real shape for smoke
    training, calibration and benchmarks, and natural images cannot be downloaded here.
    Each class is a fixed smooth pattern, the sum of four random 2-D cosine waves (1 to 4
    periods across the image, a random phase and a per-channel amplitude); an image is its
    class's pattern plus i.i.d. Gaussian noise of standard deviation ``noise``. The patterns
    have unit variance, so the values are roughly zero-mean and unit-variance like an image
    after mean/std normalization. Classes are balanced (label ``i % num_classes``, then
    shuffled). Memory is ``n * channels * image_size**2 * 4`` bytes: 256 images at 224 are
    154 MB.

    Returns float32 [n, channels, image_size, image_size] and int64 labels [n].
    """
    if n <= 0 or num_classes <= 0 or image_size <= 0 or channels <= 0 or noise < 0:
        raise DataSplitError(
            f"n, num_classes, image_size and channels must be positive and noise >= 0: got n={n}, "
            f"num_classes={num_classes}, image_size={image_size}, channels={channels}, noise={noise}"
        )
    rng = np.random.default_rng(seed)
    grid = np.arange(image_size, dtype=np.float32) / image_size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    patterns = np.zeros((num_classes, channels, image_size, image_size), dtype=np.float32)
    waves = 4
    for k in range(num_classes):
        for _ in range(waves):
            fy, fx = rng.integers(1, 5, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.cos(2 * np.pi * (fy * yy + fx * xx) + phase)
            amplitude = rng.normal(0.0, 1.0, size=(channels, 1, 1)).astype(np.float32)
            patterns[k] += amplitude * wave
        patterns[k] /= patterns[k].std() + 1e-6

    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    images = patterns[labels]
    images += noise * rng.standard_normal(size=images.shape, dtype=np.float32)
    return Split(x=images, y=labels)
