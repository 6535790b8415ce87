"""LLM packages: ``edge llm convert`` writes them, :func:`load` runs them.

An LLM package is an ordinary signed ``.edgepkg`` (one writer:
:func:`edge_runtime.package.write_package`) whose artifacts are

==========================  ===============  ==============================================
``llm/config.json``         ``llm-config``   architecture, weight format, chat template
``llm/weights.npz``         ``llm-weights``  the weights (:mod:`edge_runtime.llm.quant`)
``llm/tokenizer.json``      ``llm-tokenizer`` the model's tokenizer (``tokenizers`` JSON)
``selftest.npz``            ``selftest``     ``input.input_ids``, ``expected.tokens`` (greedy)
==========================  ===============  ==============================================

The manifest's interface is ``input_ids [1, tokens]`` -> ``logits [1, tokens,
vocab]`` (what KServe v2 ``infer`` runs); its ``quantization`` says
``{"scheme": "llm", "weights": "int8" | "int4" | "f16", ...}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._version import __version__
from edge_runtime.llm.config import LlamaConfig
from edge_runtime.llm.errors import ModelSourceError, UnsupportedModelError
from edge_runtime.llm.quant import DEFAULT_GROUP, WEIGHT_FORMATS, encode_weights
from edge_runtime.llm.sources import ModelSource, read_source
from edge_runtime.llm.tokenizer import TextTokenizer

__all__ = ["CONFIG_KIND", "FORMAT_VERSION", "SELFTEST_PROMPT", "convert", "is_llm_package", "load"]

CONFIG_KIND, WEIGHTS_KIND, TOKENIZER_KIND = "llm-config", "llm-weights", "llm-tokenizer"
CONFIG_PATH, WEIGHTS_PATH, TOKENIZER_PATH, SELFTEST_PATH = (
    "llm/config.json",
    "llm/weights.npz",
    "llm/tokenizer.json",
    "selftest.npz",
)
FORMAT_VERSION = 1
SELFTEST_PROMPT = "The capital of France is"
SELFTEST_TOKENS = 8
# A self-test token may trail the argmax by this much (logits) before the self-test fails.
SELFTEST_ATOL = 0.05
# SmoothQuant's migration strength (alpha) at conversion; 0 turns smoothing off.
SMOOTHING_ALPHA = 0.7
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


def _package_name(text: str) -> str:
    name = _NAME_RE.sub("-", text).strip("-._")[:128]
    return name or "llm"


def _build_order(name: str) -> tuple[tuple[int, int | str], ...]:
    """A weight's name as a sort key with its layer number as a number."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in name.split("."))


def _selftest_tokens(model: Any, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy tokens (EOS included, not stopping) of the model as packaged."""
    seq = model.new_sequence(len(prompt_ids) + n)
    logits = model.prefill(seq, prompt_ids)
    out = []
    for i in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        if i < n - 1:
            logits = model.decode([seq], [tok])[0]
    return out


def _smoothed(
    config: LlamaConfig, weights: dict[str, np.ndarray], tokenizer: TextTokenizer, alpha: float
) -> dict[str, np.ndarray]:
    """The weights with SmoothQuant factors folded in, from a calibration pass of the float model."""
    from edge_runtime.llm.model import LLM
    from edge_runtime.llm.smooth import CALIBRATION_TEXT, activation_ranges, smooth_weights

    ids = tokenizer.encode(CALIBRATION_TEXT)[: config.max_context]
    as_float = {(k + ".f16" if k in weights and weights[k].ndim == 2 else k): v for k, v in weights.items()}
    model = LLM(config, as_float, tokenizer, threads=1, context=len(ids), weights_format="f16")
    try:
        ranges = activation_ranges(model, ids)
    finally:
        model.close()
    return smooth_weights(config, weights, ranges, alpha)


def convert(
    source: str | os.PathLike[str] | ModelSource,
    out: str | os.PathLike[str],
    *,
    weights: str = "int8",
    group_size: int = DEFAULT_GROUP,
    signing_key: Any = None,
    name: str | None = None,
    version: str = "1",
    selftest_prompt: str = SELFTEST_PROMPT,
    selftest_tokens: int = SELFTEST_TOKENS,
    context: int | None = None,
    smoothing: float = SMOOTHING_ALPHA,
) -> Any:
    """Convert a GGUF file or Hugging Face directory into a signed LLM package; returns its PackageInfo.

    ``weights``: ``int8`` (per output channel, the default), ``int4`` (groups of
    ``group_size``; half the package size) or ``f16`` (a float reference).
    ``context`` caps the context the package declares (default: the model's).
    ``smoothing``: the SmoothQuant migration strength (0 turns it off; see
    :mod:`edge_runtime.llm.smooth`).
    """
    from edge_runtime.llm.model import LLM
    from edge_runtime.package import write_package

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    src = source if isinstance(source, ModelSource) else read_source(source)
    config = src.config
    if context is not None:
        config = LlamaConfig.from_dict(
            {**config.to_dict(), "max_context": int(min(context, config.max_context))}
        )
    tokenizer = TextTokenizer(
        src.tokenizer_json,
        bos_token_id=config.bos_token_id,
        eos_token_ids=config.eos_token_ids,
        add_bos=config.add_bos,
        chat_template=src.chat_template,
        special_tokens=src.special_tokens,
    )
    float_weights = src.weights
    if weights != "f16" and smoothing:
        float_weights = _smoothed(config, src.weights, tokenizer, smoothing)
    store = encode_weights(float_weights, weights, group_size)
    prompt_ids = tokenizer.encode(selftest_prompt)
    model = LLM(
        config, store, tokenizer, threads=1, context=len(prompt_ids) + selftest_tokens, weights_format=weights
    )
    try:
        expected = _selftest_tokens(model, prompt_ids, selftest_tokens)
    finally:
        model.close()
    llm_config = {
        "format_version": FORMAT_VERSION,
        "architecture": config.to_dict(),
        "weights": weights,
        "group_size": group_size,
        "chat_template": src.chat_template,
        "special_tokens": src.special_tokens,
        "selftest": {"prompt": selftest_prompt, "atol": SELFTEST_ATOL},
    }
    pkg_name = _package_name(name or Path(out).stem)
    manifest = {
        "name": pkg_name,
        "version": version,
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [1, "tokens"]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "tokens", config.vocab_size]}],
        "artifacts": [
            {"path": CONFIG_PATH, "kind": CONFIG_KIND},
            {"path": WEIGHTS_PATH, "kind": WEIGHTS_KIND},
            {"path": TOKENIZER_PATH, "kind": TOKENIZER_KIND},
            {"path": SELFTEST_PATH, "kind": "selftest"},
        ],
        "quantization": {
            "scheme": "llm",
            "weights": weights,
            "granularity": {"int8": "per-output-channel", "int4": f"groups of {group_size}", "f16": "none"}[
                weights
            ],
            "activations": "int8, symmetric per row, dynamic" if weights != "f16" else "float32",
            "kv_cache": "float32 (default) or float16",
            "smoothing_alpha": smoothing if weights != "f16" else 0.0,
        },
        "selftest": {"artifact": SELFTEST_PATH, "atol": SELFTEST_ATOL},
        # A runtime without edge_runtime.llm would not know what to do with the llm-* artifacts.
        "requirements": {"min_runtime_version": __version__},
        "metrics": {"parameters": config.parameter_count()},
        "provenance": {
            **{k: v for k, v in src.provenance.items() if v is not None},
            "architecture": config.arch,
            "model_name": config.name,
        },
    }
    with tempfile.TemporaryDirectory(prefix="edge-llm-") as tmp:
        wpath = Path(tmp) / "weights.npz"
        # In build order (layer 2 before layer 10): load packs each linear as its last part streams in.
        np.savez(wpath, **{k: store[k] for k in sorted(store, key=_build_order)})
        sbuf = io.BytesIO()
        np.savez(
            sbuf,
            **{
                "input.input_ids": np.asarray([prompt_ids], dtype=np.int32),
                "expected.tokens": np.asarray([expected], dtype=np.int32),
                "atol": np.float32(SELFTEST_ATOL),
            },
        )
        artifacts = {
            CONFIG_PATH: json.dumps(llm_config, ensure_ascii=False, indent=1).encode(),
            WEIGHTS_PATH: wpath,
            TOKENIZER_PATH: src.tokenizer_json.encode(),
            SELFTEST_PATH: sbuf.getvalue(),
        }
        return write_package(out, manifest, artifacts, signing_key)


def is_llm_package(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a package file or an extracted package directory) holds an LLM."""
    p = Path(path)
    try:
        if p.is_dir():
            doc = json.loads((p / "manifest.json").read_text())
            return any(a.get("kind") == CONFIG_KIND for a in doc.get("artifacts", []))
        from edge_runtime.package import open_package

        with open_package(p) as pkg:
            return any(a.kind == CONFIG_KIND for a in pkg.manifest.artifacts)
    except Exception:  # noqa: BLE001 - not readable as an LLM package: let the normal loader say why
        return False


class _ChunkReader:
    """A forward-only ``read`` over an iterator of byte chunks (what :func:`_npz_arrays` parses)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")
        self.consumed = 0

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf = memoryview(chunk)
                return True
        return False

    def readinto(self, out: memoryview) -> None:
        """Fill ``out`` exactly (EOFError when the stream ends first)."""
        pos = 0
        while pos < len(out):
            if not self._buf and not self._more():
                raise EOFError(f"the stream ended {len(out) - pos} bytes early")
            n = min(len(out) - pos, len(self._buf))
            out[pos : pos + n] = self._buf[:n]
            self._buf = self._buf[n:]
            pos += n
        self.consumed += pos

    def read(self, n: int) -> bytes:
        out = bytearray(n)
        self.readinto(memoryview(out))
        return bytes(out)

    def drain(self) -> None:
        """Read to the end (the chunk iterator checks the artifact's hash there)."""
        self._buf = memoryview(b"")
        for _ in self._chunks:
            pass


_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header
_ZIP64_EXTRA = 0x0001


def _npz_arrays(chunks: Iterator[bytes], where: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` of each member of an uncompressed ``.npz`` (what ``np.savez`` writes), read
    from a stream of its bytes in order: one array in memory at a time, never the archive whole.

    The stream is read to its end after the last member, so an artifact stream's hash check runs;
    a malformed archive raises ModelSourceError (after that check, so a corrupt download is named as
    such by its IntegrityError).
    """
    reader = _ChunkReader(chunks)
    try:
        while True:
            head = reader.read(4)
            if head in (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06"):  # the central directory: done
                break
            fields = _LOCAL_HEADER.unpack(head + reader.read(_LOCAL_HEADER.size - 4))
            sig, _, flags, method, _, _, _, _, usize, name_len, extra_len = fields
            if sig != b"PK\x03\x04":
                raise ValueError(f"no zip member at byte {reader.consumed - _LOCAL_HEADER.size}")
            name = reader.read(name_len).decode("utf-8")
            extra = reader.read(extra_len)
            if method != 0 or flags & 0x08:
                raise ValueError(
                    f"member {name} is compressed or has a data descriptor (np.savez writes neither)"
                )
            if usize == 0xFFFFFFFF:  # zip64: the sizes are in the extra field
                usize = _zip64_size(extra, name)
            start = reader.consumed
            version = np.lib.format.read_magic(reader)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"member {name} is .npy format {version}, not 1.0 or 2.0")
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(reader)
            if dtype.hasobject:
                raise ValueError(f"member {name} holds Python objects")
            array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
            reader.readinto(memoryview(array.reshape(-1, order="A").view(np.uint8)))
            if reader.consumed - start != usize:
                raise ValueError(f"member {name} is {usize} bytes, its array {reader.consumed - start}")
            yield name.removesuffix(".npy"), array
    except (ValueError, EOFError, UnicodeDecodeError, struct.error) as exc:
        reader.drain()
        raise ModelSourceError(f"{where}: the weights archive cannot be read ({exc})") from None
    reader.drain()


def _zip64_size(extra: bytes, name: str) -> int:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == _ZIP64_EXTRA and size >= 8:
            return int(struct.unpack_from("<Q", extra, pos + 4)[0])
        pos += 4 + size
    raise ValueError(f"member {name} has no zip64 size")


@contextlib.contextmanager
def _open_artifacts(path: Path, trust_store: Any) -> Iterator[tuple[Any, dict[str, bytes], Iterator[bytes]]]:
    """``(manifest, {kind: bytes} of the small artifacts, chunks of the weights archive)``.

    The weights are never read whole: their chunks stream (and, from a package file, are hashed
    as they go: IntegrityError from the last chunk when they do not match the manifest).
    """
    from edge_runtime.package import open_package, parse_manifest_bytes

    small = (CONFIG_KIND, TOKENIZER_KIND)
    if path.is_dir():  # a package extracted by the model store (verified when it was extracted)
        manifest = parse_manifest_bytes((path / "manifest.json").read_bytes())
        by_kind = {a.kind: path / a.path for a in manifest.artifacts}
        missing = [k for k in (*small, WEIGHTS_KIND) if k not in by_kind]
        if missing:
            raise ModelSourceError(f"{path} is not a complete LLM package (no {', '.join(missing)} artifact)")
        data = {k: by_kind[k].read_bytes() for k in (*small, "selftest") if k in by_kind}
        with by_kind[WEIGHTS_KIND].open("rb") as f:
            yield manifest, data, iter(lambda: f.read(_CHUNK), b"")
        return
    with open_package(path, trust_store=trust_store) as pkg:
        kinds = {a.kind for a in pkg.manifest.artifacts}
        if CONFIG_KIND not in kinds:
            raise ModelSourceError(
                f"{path} is not an LLM package (no {CONFIG_KIND} artifact); use edge_runtime.load"
            )
        data = {k: pkg.read_artifact(k) for k in small}
        if "selftest" in kinds:
            data["selftest"] = pkg.read_artifact("selftest")
        yield pkg.manifest, data, pkg.stream_artifact(WEIGHTS_KIND)


def load(
    path: str | os.PathLike[str],
    threads: int | None = None,
    *,
    context: int | None = None,
    kv_dtype: str = "float32",
    trust_store: Any = None,
    profile: Any = None,
    activation_bits: int = 16,
) -> Any:
    """Load an LLM package (file, or extracted directory) into an :class:`~edge_runtime.llm.LLM`.

    ``threads``: native GEMM threads (default: up to 4). ``context``: tokens of
    context per sequence (default: the model's); the KV cache it needs is checked
    against the available memory up front. ``trust_store``: refuse packages not
    signed by one of its keys. ``profile`` (a device profile or its name): refuse
    with ContextMemoryError, before the weights are unpacked, when the weights and
    the context's KV cache would not fit its memory (:mod:`edge_runtime.llm.fits`).
    ``activation_bits``: 16 (activations as two int8 digits, the default) or 8 (one digit:
    faster prefill, less accurate; see :class:`edge_runtime.llm.model.LLM`).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    with _open_artifacts(p, trust_store) as (manifest, data, weight_chunks):
        return _load(p, manifest, data, weight_chunks, threads, context, kv_dtype, profile, activation_bits)


def _load(
    p: Path,
    manifest: Any,
    data: dict[str, bytes],
    weight_chunks: Iterator[bytes],
    threads: int | None,
    context: int | None,
    kv_dtype: str,
    profile: Any,
    activation_bits: int,
) -> Any:
    from edge_runtime.llm.model import LLM

    too_old = [r for r in manifest.requirements.unmet(__version__) if r.startswith("needs runtime")]
    if too_old:
        raise UnsupportedModelError(f"{p}: {'; '.join(too_old)}")
    try:
        cfg = json.loads(data[CONFIG_KIND])
        config = LlamaConfig.from_dict(cfg["architecture"])
        fmt = cfg["weights"]
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelSourceError(f"{p}: llm/config.json is malformed ({exc})") from None
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ModelSourceError(
            f"{p}: LLM package format {cfg.get('format_version')} is not {FORMAT_VERSION}; update edge-runtime"
        )
    if profile is not None:
        from device_profiles import get_profile
        from edge_runtime.llm.fits import check_fits

        check_fits(
            config,
            get_profile(profile) if isinstance(profile, str) else profile,
            context,
            np.dtype(kv_dtype).itemsize,
        )
    selftest = None
    if "selftest" in data:
        with np.load(io.BytesIO(data["selftest"]), allow_pickle=False) as z:
            selftest = {k: z[k] for k in z.files}
    tokenizer = TextTokenizer(
        data[TOKENIZER_KIND].decode("utf-8"),
        bos_token_id=config.bos_token_id,
        eos_token_ids=config.eos_token_ids,
        add_bos=config.add_bos,
        chat_template=cfg.get("chat_template"),
        special_tokens=cfg.get("special_tokens") or {},
    )
    # Each array is packed as it streams in (LLM._build): the archive is never held whole.
    arrays = _npz_arrays(weight_chunks, where=str(p))
    model = LLM(
        config,
        arrays,
        tokenizer,
        threads=threads,
        context=context,
        kv_dtype=kv_dtype,
        weights_format=fmt,
        manifest=manifest,
        selftest_vectors=selftest,
        source=str(p),
        activation_bits=activation_bits,
    )
    # LLM._build reads every member, so the stream is at its end: its hash was checked there.
    if next(arrays, None) is not None:
        model.close()
        raise ModelSourceError(f"{p}: the weights archive was not read to its end")
    return model
