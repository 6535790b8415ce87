"""Hostile manifests: deep nesting, huge integers, non-finite numbers, FIFOs; read and write paths.

Each case reproduces an attack from the hardening issue and checks that it ends in a typed
refusal (PackageFormatError, a ValueError) through ``open_package``, ``edge_runtime.load``,
``edge verify`` / ``edge inspect`` and the writer (``write_package``, what ``edge pack`` calls).
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pkg_helpers import base_artifacts, base_manifest, write_valid

import edge_runtime
from edge_runtime.errors import EdgeRuntimeError, PackageFormatError
from edge_runtime.package import TrustStore, open_package, write_package
from edge_runtime.package._json import JsonLimits, json_depth, loads_bounded
from edge_runtime.package._manifest import MANIFEST_JSON_LIMITS, decode_manifest_json
from edge_runtime.package._signing import make_signature


def _signed_with_manifest_text(tmp_path: Path, key: Ed25519PrivateKey, text: bytes) -> Path:
    """A package whose manifest bytes are ``text``, validly signed by ``key`` (hashes kept right)."""
    good = write_valid(tmp_path / "good.edgepkg", tmp_path, key).path
    with zipfile.ZipFile(good) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    entries["manifest.json"] = text
    entries["manifest.sig"] = make_signature(text, key)
    out = tmp_path / "hostile.edgepkg"
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data)
    return out


def _manifest_text_with_metrics(tmp_path: Path, key: Ed25519PrivateKey, metrics_json: str) -> bytes:
    good = write_valid(tmp_path / "base.edgepkg", tmp_path, key).path
    with zipfile.ZipFile(good) as zf:
        doc = json.loads(zf.read("manifest.json"))
    doc["metrics"] = {"placeholder": 0}
    text = json.dumps(doc, indent=2, sort_keys=True)
    return text.replace('{\n    "placeholder": 0\n  }', metrics_json).encode()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def trust(key: Ed25519PrivateKey) -> TrustStore:
    return TrustStore([key.public_key()])


HOSTILE_METRICS = {
    "deep": ('{"x": ' + "[" * 1100 + "]" * 1100 + "}", "nested"),
    "huge-int": ('{"x": ' + "7" * 5000 + "}", "integer of 5000 characters"),
    "inf-literal": ('{"x": 1e400}', "not finite"),
    "infinity": ('{"x": Infinity}', "Infinity"),
    "nan": ('{"x": NaN}', "NaN"),
    "long-float": ('{"x": 0.' + "1" * 200 + "}", "characters"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_METRICS))
def test_signed_hostile_manifest_is_a_typed_refusal(
    tmp_path: Path, key: Ed25519PrivateKey, trust: TrustStore, case: str
) -> None:
    metrics, message = HOSTILE_METRICS[case]
    pkg = _signed_with_manifest_text(tmp_path, key, _manifest_text_with_metrics(tmp_path, key, metrics))
    with pytest.raises(PackageFormatError, match=message) as info:
        open_package(pkg, trust_store=trust)
    assert isinstance(info.value, ValueError)


def test_signed_hostile_manifest_through_load(
    tmp_path: Path, key: Ed25519PrivateKey, trust: TrustStore
) -> None:
    import edge_runtime

    metrics, _ = HOSTILE_METRICS["deep"]
    pkg = _signed_with_manifest_text(tmp_path, key, _manifest_text_with_metrics(tmp_path, key, metrics))
    with pytest.raises(PackageFormatError):
        edge_runtime.load(pkg, trust_store=trust)


@pytest.mark.parametrize("case", ["deep", "huge-int", "inf-literal"])
def test_cli_verify_and_inspect_refuse_with_exit_1(
    tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    from edge_runtime.cli import main

    metrics, _ = HOSTILE_METRICS[case]
    pkg = _signed_with_manifest_text(tmp_path, key, _manifest_text_with_metrics(tmp_path, key, metrics))
    assert main(["verify", str(pkg)]) == 1
    assert main(["inspect", str(pkg), "--json"]) == 1
    out = capsys.readouterr().out
    assert "Infinity" not in out  # nothing half-printed


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"x": float("inf")}, "not a finite number"),
        ({"x": float("nan")}, "not a finite number"),
        ({"x": 10**5000}, "more than 64 characters"),
        ({"x": [[[[[]]]]]}, None),  # fine: shallow
    ],
)
def test_writer_refuses_what_the_reader_would(tmp_path: Path, metrics: dict, message: str | None) -> None:
    manifest = base_manifest(metrics=metrics)
    out = tmp_path / "m.edgepkg"
    if message is None:
        write_package(out, manifest, base_artifacts(tmp_path))
        with open_package(out) as pkg:
            assert pkg.manifest.metrics == metrics
        return
    with pytest.raises(PackageFormatError, match=message):
        write_package(out, manifest, base_artifacts(tmp_path))
    assert not out.exists()


@pytest.mark.parametrize("value", [10**64 - 1, -(10**63) + 1, 10**64, -(10**63)])
def test_writer_and_reader_agree_on_integer_size(tmp_path: Path, value: int) -> None:
    """64 characters at most: 64 digits, or a minus sign and 63."""
    fits = len(str(value)) <= 64
    manifest = base_manifest(metrics={"x": value})
    text = json.dumps(manifest).encode()
    if fits:
        write_package(tmp_path / "m.edgepkg", manifest, base_artifacts(tmp_path))
        assert decode_manifest_json(text)["metrics"]["x"] == value
    else:
        with pytest.raises(PackageFormatError):
            write_package(tmp_path / "m.edgepkg", manifest, base_artifacts(tmp_path))
        with pytest.raises(PackageFormatError):
            decode_manifest_json(text)


def test_writer_refuses_deep_nesting_without_recursion(tmp_path: Path) -> None:
    deep: list = []
    for _ in range(100_000):  # deeper than Python's recursion limit: the check must not recurse
        deep = [deep]
    with pytest.raises(PackageFormatError, match="nested more than 64"):
        write_package(tmp_path / "m.edgepkg", base_manifest(metrics={"x": deep}), base_artifacts(tmp_path))


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"x": ' + "9" * 5000 + "}", "integer of 5000"),
        ('{"x": 1e400}', "not finite"),
        ('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested"),
        ('{"x": 1, "x": 2}', "twice"),
    ],
)
def test_pack_input_decoder_refuses_hostile_text(text: str, message: str) -> None:
    """``decode_manifest_json``: the bounded reader for a hand-written ``edge pack --manifest`` file."""
    with pytest.raises(PackageFormatError, match=message):
        decode_manifest_json(text)


def test_limits_hold_on_a_realistic_manifest() -> None:
    doc = base_manifest()
    assert decode_manifest_json(json.dumps(doc)) == doc
    assert json_depth(json.dumps(doc).encode()) <= MANIFEST_JSON_LIMITS.max_depth


@pytest.mark.parametrize(
    "text, depth",
    [
        (b"[]", 1),
        (b'{"a": [[1], [2, [3]]]}', 4),
        (b'{"a": "[[[[[[[["}', 1),  # brackets inside strings do not count
        (b'{"a": "\\"[[[[", "b": [1]}', 2),  # nor after an escaped quote
        (b"1", 0),
    ],
)
def test_json_depth_skips_strings(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


def test_value_count_is_bounded_before_decoding() -> None:
    limits = JsonLimits(max_values=1000)
    with pytest.raises(ValueError, match="over the limit of 1000"):
        loads_bounded(b"[" + b"0," * 5000 + b"0]", limits, ValueError)
    assert loads_bounded(b"[" + b"0," * 10 + b"0]", limits, ValueError) == [0] * 11


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", ["model.edgepkg", "model.onnx", "model"])
def test_fifo_is_refused_without_blocking(tmp_path: Path, name: str) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    done = threading.Event()
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            open_package(fifo) if name.endswith(".edgepkg") else edge_runtime.load(fifo)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)
        done.set()

    threading.Thread(target=attempt, daemon=True).start()
    if not done.wait(10):
        # Unblock the reader so that the thread ends, then fail.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("open_package blocked on a FIFO")
    assert len(errors) == 1 and isinstance(errors[0], PackageFormatError), errors
    assert isinstance(errors[0], EdgeRuntimeError)
    assert "not a regular file" in str(errors[0])
