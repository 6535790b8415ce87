"""Calibration and evaluation data for a model's inputs, read lazily in batches.

Sources (:func:`load_data`):

- a folder of images (PNG, JPEG, BMP; read with Pillow): resized to the model's
  input height and width, laid out NCHW float32, scaled to [0, 1] and then
  normalized as ``(x - mean) / std`` per channel (:class:`ImageOptions`);
- a ``.npy`` file (a model with one input) or a ``.npz`` file (arrays named by
  input name, or a single array for a one-input model; an extra array named
  ``labels`` holds class labels for the accuracy report);
- a Python callable, given as ``"package.module:function"`` or
  ``"path/to/file.py:function"``, called without arguments and returning an
  iterable of feed dicts (input name -> array) or, for a one-input model, arrays;
- in the Python API also arrays, dicts of arrays and lists of those directly.

Every array is either a batch of samples (the input's rank, samples along axis
0) or a single sample (one axis less). Arrays are checked against the model's
inputs as they are read, and a :class:`~edge_runtime.errors.DatasetError` says
which input, what arrived and what was expected.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import DatasetError
from edge_runtime.graph.ir import Dim, ValueInfo

__all__ = [
    "IMAGE_SUFFIXES",
    "DataSource",
    "Dataset",
    "Feed",
    "ImageOptions",
    "load_data",
    "load_labels",
]

Feed = dict[str, np.ndarray]
DataSource = str | Path | Callable[[], Iterable[Any]] | np.ndarray | Mapping[str, Any] | Sequence[Any]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
LABELS_KEY = "labels"  # the .npz array the accuracy report reads labels from
_CALLABLE_RE = re.compile(r"^(?P<module>[^:]+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class ImageOptions:
    """How image files become an NCHW float32 tensor.

    Pixels are scaled to [0, 1], then ``(x - mean[c]) / std[c]``; ``mean`` and
    ``std`` have one value for all channels or one per channel. ``size``
    (height, width) is needed only when the model's height or width is dynamic.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.mean or not self.std:
            raise DatasetError("image mean and std need at least one value each")
        if any(not (math.isfinite(s) and s > 0) for s in self.std):
            raise DatasetError(f"image std {list(self.std)} must be positive")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise DatasetError(f"image size {self.size} must be (height, width), both >= 1")

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std as float32 [channels, 1, 1] arrays; DatasetError for a wrong length."""
        out = []
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise DatasetError(
                    f"image {what} has {len(values)} values; the model's input has {channels} channel(s): "
                    f"give 1 or {channels} values"
                )
            out.append(np.broadcast_to(np.asarray(values, np.float32), (channels,)).reshape(channels, 1, 1))
        return out[0], out[1]


class Dataset:
    """Batches of feeds (input name -> array) for a model's inputs; iterable more than once.

    ``batch_size`` is the number of samples per batch (a model with a fixed
    batch dimension imposes its own). ``max_samples`` caps the samples read.
    ``len()`` is the number of batches when the source says how many samples
    it holds (a callable's iterable may not).
    """

    def __init__(
        self,
        inputs: Sequence[ValueInfo],
        chunks: Callable[[], Iterator[Feed]],
        *,
        description: str,
        batch_size: int = 1,
        max_samples: int | None = None,
        num_samples: int | None = None,
        labels: np.ndarray | None = None,
        image_options: ImageOptions | None = None,
    ) -> None:
        if batch_size < 1:
            raise DatasetError(f"batch size must be >= 1, got {batch_size}")
        if max_samples is not None and max_samples < 1:
            raise DatasetError(f"max samples must be >= 1, got {max_samples}")
        self.inputs = tuple(inputs)
        self.description = description
        self.image_options = image_options
        self.max_samples = max_samples
        # fixed_batch: the model's first dimension is a number, so every batch holds exactly that many.
        self.batch_size, self.fixed_batch = _effective_batch_size(self.inputs, batch_size)
        self._chunks = chunks
        if num_samples is not None and max_samples is not None:
            num_samples = min(num_samples, max_samples)
        self.num_samples = num_samples
        if labels is not None and max_samples is not None:
            labels = labels[:max_samples]
        self.labels = labels

    def __iter__(self) -> Iterator[Feed]:
        return _rebatch(
            self._chunks(),
            [v.name for v in self.inputs],
            self.batch_size,
            self.max_samples,
            drop_last=self.fixed_batch,
            where=self.description,
        )

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError(f"{self.description}: the number of samples is not known before reading them")
        if self.fixed_batch:
            return self.num_samples // self.batch_size
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def first(self, count: int) -> Feed:
        """The first ``count`` samples (fewer if the data holds fewer) as one feed."""
        taken = _rebatch(
            self._chunks(),
            [v.name for v in self.inputs],
            count,
            count,
            drop_last=False,
            where=self.description,
        )
        feed = next(taken, None)
        if feed is None:
            raise DatasetError(f"{self.description} holds no samples")
        return feed

    def __repr__(self) -> str:
        return f"Dataset({self.description}, batch_size={self.batch_size}, samples={self.num_samples})"


def load_data(
    source: DataSource,
    inputs: Sequence[ValueInfo],
    *,
    batch_size: int = 1,
    max_samples: int | None = None,
    image_options: ImageOptions | None = None,
) -> Dataset:
    """A :class:`Dataset` for a model with these ``inputs`` (``Graph.inputs``) from ``source``.

    Raises DatasetError for a source that cannot be read or whose arrays do not
    fit the inputs (some only when the batches are read), FileNotFoundError for
    a missing path.
    """
    inputs = tuple(inputs)
    if not inputs:
        raise DatasetError("the model has no inputs to feed")
    common = {"batch_size": batch_size, "max_samples": max_samples}
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return _image_folder(path, inputs, image_options or ImageOptions(), **common)
        if path.suffix == ".npy" and path.is_file():
            return _npy(path, inputs, **common)
        if path.suffix == ".npz" and path.is_file():
            return _npz(path, inputs, **common)
        match = _CALLABLE_RE.match(str(source))
        if match and not path.exists():
            fn = _import_callable(match["module"], match["function"])
            return _from_callable(fn, inputs, f"{source}()", **common)
        if not path.exists():
            raise FileNotFoundError(f"calibration data {source} does not exist")
        raise DatasetError(
            f"cannot read data from {source}: expected a folder of images ({', '.join(IMAGE_SUFFIXES)}), "
            f"a .npy or .npz file, or a Python callable 'module:function'"
        )
    if callable(source):
        name = getattr(source, "__qualname__", repr(source))
        return _from_callable(source, inputs, f"{name}()", **common)
    if isinstance(source, (np.ndarray, Mapping)):
        items = [source]
    elif isinstance(source, Sequence):
        items = list(source)
    else:
        raise DatasetError(f"unsupported data source of type {type(source).__name__}")
    chunks = [_to_feed(item, inputs, f"item {i} of the data") for i, item in enumerate(items)]
    total = sum(_count(chunk) for chunk in chunks)
    return Dataset(inputs, lambda: iter(chunks), description="in-memory arrays", num_samples=total, **common)


def load_labels(path: str | Path) -> np.ndarray:
    """Class labels, one integer per sample: a ``.npy`` array, or a text file with one per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    try:
        if path.suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        else:
            labels = np.array([int(line) for line in path.read_text().split() if line.strip()])
    except ValueError as exc:
        raise DatasetError(f"labels {path}: expected integers, one per sample ({exc})") from None
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"labels {path} have dtype {labels.dtype}; expected integer class indices")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------
# checking arrays against the model's inputs


def _describe(info: ValueInfo) -> str:
    dims = "?" if info.shape is None else ", ".join(str(d) for d in info.shape)
    return f"{info.dtype or 'any dtype'} [{dims}]"


def _cast(array: np.ndarray, info: ValueInfo, where: str) -> np.ndarray:
    """``array`` in the input's dtype when the conversion keeps its meaning, else DatasetError."""
    want = info.dtype
    if want is None or array.dtype == want:
        return array
    have_kind, want_kind = array.dtype.kind, want.kind
    if want_kind == "f" and have_kind == "f":
        return array.astype(want)  # float64 data for a float32 model: the usual numpy default
    if want_kind in "iu" and have_kind in "iu" and np.can_cast(array.dtype, want, casting="same_kind"):
        return array.astype(want)
    hint = " (normalize the data to floats first)" if want_kind == "f" and have_kind in "iub" else ""
    raise DatasetError(
        f"{where}: input {info.name!r} got dtype {array.dtype}; the model expects {_describe(info)}{hint}"
    )


def _check_array(value: Any, info: ValueInfo, where: str) -> np.ndarray:
    """Samples along axis 0 (a single sample gains that axis), checked against ``info``."""
    array = _cast(np.asarray(value), info, where)
    if info.shape is None:
        return array if array.ndim else array.reshape(1)
    rank = len(info.shape)
    if rank == 0:
        raise DatasetError(f"{where}: input {info.name!r} is a scalar; batched data cannot feed it")
    given = tuple(array.shape)
    if array.ndim == rank - 1:
        array = array[np.newaxis]
    sample = tuple(info.shape[1:])
    ok = array.ndim == rank and all(not isinstance(d, int) or d == s for d, s in zip(sample, array.shape[1:]))
    if not ok:
        pattern = ", ".join(str(d) for d in sample)
        raise DatasetError(
            f"{where}: input {info.name!r} got shape {given}; the model expects "
            f"{_describe(info)}, so samples of shape (N, {pattern}) or one sample of shape ({pattern})"
        )
    return array


def _to_feed(item: Any, inputs: Sequence[ValueInfo], where: str) -> Feed:
    """A validated chunk (input name -> samples) from a dict or, for one input, an array."""
    names = [v.name for v in inputs]
    if isinstance(item, Mapping):
        missing = [n for n in names if n not in item]
        unknown = [k for k in item if k not in names]
        if missing or unknown:
            raise DatasetError(
                f"{where}: the model's inputs are {names}; the data lacks {missing} and has unknown {unknown}"
            )
        feed = {info.name: _check_array(item[info.name], info, where) for info in inputs}
    elif len(inputs) == 1 and not isinstance(item, (str, bytes)):
        feed = {inputs[0].name: _check_array(item, inputs[0], where)}
    else:
        raise DatasetError(
            f"{where}: a {type(item).__name__} cannot feed a model with inputs {names}; "
            f"give dicts keyed by input name"
        )
    counts = {name: len(array) for name, array in feed.items()}
    if len(set(counts.values())) > 1:
        raise DatasetError(f"{where}: inputs hold different numbers of samples {counts}")
    return feed


def _count(feed: Feed) -> int:
    return len(next(iter(feed.values())))


def _effective_batch_size(inputs: Sequence[ValueInfo], requested: int) -> tuple[int, bool]:
    """(batch size, fixed): a model whose first dim is a number takes exactly that many samples."""
    fixed = {v.shape[0] for v in inputs if v.shape and isinstance(v.shape[0], int)}
    if not fixed:
        return requested, False
    if len(fixed) > 1:
        raise DatasetError(f"the model's inputs have different fixed batch sizes {sorted(fixed)}")
    size = fixed.pop()
    if requested not in (1, size):
        print(
            f"note: the model's batch dimension is fixed at {size}; using batches of {size}, not {requested}",
            file=sys.stderr,
        )
    return size, True


def _rebatch(
    chunks: Iterator[Feed],
    names: list[str],
    batch_size: int,
    max_samples: int | None,
    *,
    drop_last: bool,
    where: str,
) -> Iterator[Feed]:
    """Cut validated chunks of any size into batches of ``batch_size`` samples."""
    pending: list[Feed] = []
    buffered = taken = 0
    for chunk in chunks:
        n = _count(chunk)
        if max_samples is not None:
            n = min(n, max_samples - taken)
            chunk = {name: array[:n] for name, array in chunk.items()}
        if n > 0:
            pending.append(chunk)
            buffered += n
            taken += n
        while buffered >= batch_size:
            joined = {name: np.concatenate([c[name] for c in pending]) for name in names}
            yield {name: np.ascontiguousarray(array[:batch_size]) for name, array in joined.items()}
            buffered -= batch_size
            pending = [{name: array[batch_size:] for name, array in joined.items()}] if buffered else []
        if max_samples is not None and taken >= max_samples:
            break
    if buffered and not drop_last:
        yield {name: np.ascontiguousarray(np.concatenate([c[name] for c in pending])) for name in names}
    elif buffered:
        print(
            f"note: {where}: the last {buffered} sample(s) do not fill a batch and are skipped",
            file=sys.stderr,
        )
    if taken == 0:
        raise DatasetError(f"{where} holds no samples")


# ---------------------------------------------------------------------------
# sources


def _npy(path: Path, inputs: tuple[ValueInfo, ...], **common: Any) -> Dataset:
    if len(inputs) != 1:
        raise DatasetError(
            f"{path}: a .npy file feeds one input, the model has {len(inputs)} "
            f"({[v.name for v in inputs]}); use a .npz with one array per input name"
        )
    array = _check_array(_load_npy(path), inputs[0], str(path))
    feed = {inputs[0].name: array}
    return Dataset(inputs, lambda: iter([feed]), description=str(path), num_samples=len(array), **common)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{path} is not a readable .npy array ({exc})") from None


def _npz(path: Path, inputs: tuple[ValueInfo, ...], **common: Any) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path} is not a readable .npz archive ({exc})") from None
    labels = arrays.pop(LABELS_KEY, None) if LABELS_KEY not in {v.name for v in inputs} else None
    names = [v.name for v in inputs]
    if len(inputs) == 1 and len(arrays) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}
    feed = _to_feed(arrays, inputs, str(path))
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != _count(feed):
            raise DatasetError(f"{path}: {len(labels)} labels for {_count(feed)} samples")
    return Dataset(
        inputs, lambda: iter([feed]), description=str(path), num_samples=_count(feed), labels=labels, **common
    )


def _import_callable(module: str, function: str) -> Callable[[], Iterable[Any]]:
    try:
        if module.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module).stem, module)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {module}")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except (ImportError, OSError) as exc:
        raise DatasetError(
            f"cannot import {module} for the data callable {module}:{function}: {exc}"
        ) from exc
    fn = getattr(mod, function, None)
    if not callable(fn):
        raise DatasetError(f"{module} has no callable {function!r} to produce data")
    return fn


def _from_callable(
    fn: Callable[[], Iterable[Any]], inputs: tuple[ValueInfo, ...], where: str, **common: Any
) -> Dataset:
    def chunks() -> Iterator[Feed]:
        produced = fn()
        if isinstance(produced, (np.ndarray, Mapping)):
            produced = [produced]  # one batch rather than an iterable of rows
        if not isinstance(produced, Iterable):
            raise DatasetError(f"{where} returned {type(produced).__name__}; expected an iterable of feeds")
        for i, item in enumerate(produced):
            yield _to_feed(item, inputs, f"item {i} of {where}")

    return Dataset(inputs, chunks, description=where, **common)


def _image_folder(path: Path, inputs: tuple[ValueInfo, ...], options: ImageOptions, **common: Any) -> Dataset:
    if len(inputs) != 1:
        raise DatasetError(
            f"{path}: an image folder feeds one input, the model has {len(inputs)} ({[v.name for v in inputs]})"
        )
    info = inputs[0]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    if info.dtype is not None and info.dtype.kind != "f":
        raise DatasetError(f"{path}: images feed float inputs; input {info.name!r} is {_describe(info)}")
    channels, height, width = _image_geometry(info, options)
    mean, std = options.per_channel(channels)
    dtype = info.dtype or np.dtype(np.float32)
    per_chunk = 16  # images decoded at a time: bounded memory whatever the folder holds

    def chunks() -> Iterator[Feed]:
        for start in range(0, len(files), per_chunk):
            images = [_read_image(f, channels, height, width) for f in files[start : start + per_chunk]]
            batch = (np.stack(images) - mean) / std
            yield {info.name: batch.astype(dtype)}

    return Dataset(
        inputs,
        chunks,
        description=f"{path} ({len(files)} images)",
        num_samples=len(files),
        image_options=options,
        **common,
    )


def _image_geometry(info: ValueInfo, options: ImageOptions) -> tuple[int, int, int]:
    """(channels, height, width) of an NCHW image input."""
    shape = info.shape
    if shape is None or len(shape) != 4 or shape[1] not in (1, 3):
        raise DatasetError(
            f"images feed an NCHW input with 1 or 3 channels; input {info.name!r} is {_describe(info)}"
        )
    channels = int(shape[1])  # type: ignore[arg-type]
    dims: list[Dim] = list(shape[2:])
    if options.size is not None:
        for i, (model_dim, size) in enumerate(zip(dims, options.size)):
            if isinstance(model_dim, int) and model_dim != size:
                axis = ("height", "width")[i]
                raise DatasetError(
                    f"image size {options.size}: input {info.name!r} has a fixed {axis} of {model_dim}"
                )
        dims = list(options.size)
    if not all(isinstance(d, int) for d in dims):
        raise DatasetError(
            f"input {info.name!r} is {_describe(info)}: its height or width is dynamic; "
            f"give the image size (--image-size HxW)"
        )
    return channels, int(dims[0]), int(dims[1])  # type: ignore[arg-type]


def _read_image(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """One image as float32 [channels, height, width] in [0, 1]."""
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError("reading images needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    return pixels.reshape(height, width, channels).transpose(2, 0, 1)
