"""The .edgepkg writer and reader: round trip, determinism, and every way a package can be bad."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pkg_helpers import base_artifacts, base_manifest, write_valid

from edge_runtime.errors import (
    IntegrityError,
    PackageFormatError,
    PackageTooLargeError,
    SignatureError,
)
from edge_runtime.package import (
    Limits,
    Manifest,
    TrustStore,
    generate_keypair,
    key_id,
    load_private_key,
    load_selftest,
    open_package,
    parse_manifest_bytes,
    write_package,
)
from edge_runtime.package._signing import make_signature


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def entries_of(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def rezip(dst: Path, entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Path:
    """Write raw zip entries, bypassing the package writer, to build hostile archives."""
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            kind = stat.S_IFLNK if name in symlinks else stat.S_IFREG
            info.external_attr = (kind | 0o644) << 16
            zf.writestr(info, data)
    return dst


def with_manifest(entries: dict[str, bytes], **changes: object) -> dict[str, bytes]:
    manifest = json.loads(entries["manifest.json"])
    manifest.update(changes)
    return {**entries, "manifest.json": json.dumps(manifest).encode()}


# --- round trip and determinism ---


def test_round_trip_keeps_manifest_and_artifacts(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    info = write_valid(tmp_path / "m.edgepkg", tmp_path, key)
    expected = base_artifacts(tmp_path)
    with open_package(info.path, TrustStore([key.public_key()])) as pkg:
        assert pkg.signer == key_id(key) == info.signer
        assert pkg.sha256 == info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
        m = pkg.manifest
        assert (m.name, m.version, m.schema_version) == ("mnist-cnn", "1.2.0", 1)
        assert m.inputs[0].shape == ("batch", 1, 28, 28)
        assert m.inputs[0].preprocessing is not None and m.inputs[0].preprocessing.std == (0.3081,)
        assert m.quantization == {"weights": "int8-per-channel", "scales": [0.5, 0.25]}
        assert m.sparsity is not None and m.sparsity.layers == ("fc1",)
        assert pkg.read_artifact("model.onnx") == expected["model.onnx"]
        assert pkg.read_artifact("native-plan") == Path(expected["plan/model.plan"]).read_bytes()  # by kind
        inputs, outputs = load_selftest(pkg.read_artifact("selftest"))
        np.testing.assert_array_equal(outputs["logits"], np.arange(10, dtype=np.float32)[None])
        assert inputs["image"].shape == (1, 1, 28, 28)
        dest = pkg.extract(tmp_path / "out" / "v1")
    assert (dest / "plan/model.plan").read_bytes() == Path(expected["plan/model.plan"]).read_bytes()
    assert (dest / "manifest.json").read_bytes() == entries_of(info.path)["manifest.json"]
    assert (dest / "manifest.sig").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["v1"]  # no temp dir left


def test_manifest_dict_round_trips_through_json() -> None:
    entries = [{"path": "a.onnx", "kind": "onnx", "size": 1, "sha256": "ab" * 32}]
    manifest = Manifest.from_dict({**base_manifest(artifacts=entries, selftest=None), "schema_version": 1})
    assert parse_manifest_bytes(manifest.to_json_bytes()) == manifest


@pytest.mark.parametrize("compress", [True, False])
def test_writer_is_byte_for_byte_deterministic(
    tmp_path: Path, key: Ed25519PrivateKey, compress: bool
) -> None:
    a = write_valid(tmp_path / "a.edgepkg", tmp_path, key, compress=compress)
    b = write_valid(tmp_path / "b.edgepkg", tmp_path, key, compress=compress)
    assert a.path.read_bytes() == b.path.read_bytes()
    # artifacts sorted by path, manifest and signature last
    assert list(entries_of(a.path)) == [
        "model.onnx",
        "plan/model.plan",
        "selftest.npz",
        "manifest.json",
        "manifest.sig",
    ]


def test_writer_fills_created_from_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    manifest = base_manifest()
    del manifest["created"]
    info = write_package(tmp_path / "m.edgepkg", manifest, base_artifacts(tmp_path))
    assert info.manifest.created == "2023-11-14T22:13:20Z"


def test_writer_leaves_no_file_on_failure(tmp_path: Path) -> None:
    artifacts = base_artifacts(tmp_path)
    artifacts["plan/model.plan"] = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError):
        write_package(tmp_path / "m.edgepkg", base_manifest(), artifacts)
    assert not any(p.name.endswith(".edgepkg") or p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_writer_refuses_stale_hash_and_unlisted_content(tmp_path: Path) -> None:
    manifest = base_manifest()
    manifest["artifacts"][0]["sha256"] = "0" * 64
    with pytest.raises(IntegrityError, match="model.onnx has sha256"):
        write_package(tmp_path / "m.edgepkg", manifest, base_artifacts(tmp_path))
    with pytest.raises(PackageFormatError, match="does not list"):
        write_package(
            tmp_path / "m.edgepkg", base_manifest(), {**base_artifacts(tmp_path), "extra.bin": b"x"}
        )
    with pytest.raises(PackageFormatError, match="no content"):
        artifacts = base_artifacts(tmp_path)
        del artifacts["model.onnx"]
        write_package(tmp_path / "m.edgepkg", base_manifest(), artifacts)


# --- structure ---


@pytest.mark.parametrize("keep", [0.5, 0.9, -22])
def test_truncated_zip_is_a_format_error(tmp_path: Path, keep: float) -> None:
    data = write_valid(tmp_path / "m.edgepkg", tmp_path).path.read_bytes()
    cut = int(len(data) * keep) if keep > 0 else len(data) + int(keep)
    (tmp_path / "cut.edgepkg").write_bytes(data[:cut])
    with pytest.raises(PackageFormatError, match="not a readable zip"):
        open_package(tmp_path / "cut.edgepkg")


def test_not_a_zip_and_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "junk.edgepkg").write_bytes(b"hello" * 100)
    with pytest.raises(PackageFormatError):
        open_package(tmp_path / "junk.edgepkg")
    rezip(tmp_path / "empty.edgepkg", {"model.onnx": b"x"})
    with pytest.raises(PackageFormatError, match="no manifest.json"):
        open_package(tmp_path / "empty.edgepkg")


@pytest.mark.parametrize(
    "bad_json, message",
    [
        (b"{not json", "not valid JSON"),
        (b'{"a": 1, "a": 2}', "twice"),
        (b'{"schema_version": 1, "x": NaN}', "NaN"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_manifest_json(tmp_path: Path, bad_json: bytes, message: str) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    rezip(tmp_path / "bad.edgepkg", {**entries, "manifest.json": bad_json})
    with pytest.raises(PackageFormatError, match=message):
        open_package(tmp_path / "bad.edgepkg")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "../evil"}, "name"),
        ({"inputs": []}, "at least one"),
        ({"outputs": [{"name": "y", "dtype": "float64", "shape": [1]}]}, "dtype"),
        ({"outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}]}, "shape"),
        ({"created": "2024-05-01T12:00:00+02:00"}, "UTC"),
        ({"quantisation": {}}, "unknown field"),
        ({"sparsity": {"pattern": "1:4"}}, "not supported"),
        ({"version": ""}, "version"),
    ],
)
def test_invalid_manifest_fields_are_named(tmp_path: Path, change: dict, message: str) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    rezip(tmp_path / "bad.edgepkg", with_manifest(entries, **change))
    with pytest.raises(PackageFormatError, match=message):
        open_package(tmp_path / "bad.edgepkg")


def test_missing_required_field(tmp_path: Path) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    manifest = json.loads(entries["manifest.json"])
    del manifest["outputs"]
    rezip(tmp_path / "bad.edgepkg", {**entries, "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(PackageFormatError, match="required field 'outputs'"):
        open_package(tmp_path / "bad.edgepkg")


@pytest.mark.parametrize("version", [2, 0])
def test_unknown_schema_version_names_readable_versions(tmp_path: Path, version: int) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    rezip(tmp_path / "new.edgepkg", with_manifest(entries, schema_version=version))
    with pytest.raises(PackageFormatError, match=r"schema_version .* reads version\(s\) 1"):
        open_package(tmp_path / "new.edgepkg")
    with pytest.raises(PackageFormatError, match="reads version"):
        write_package(tmp_path / "x.edgepkg", base_manifest(schema_version=version), base_artifacts(tmp_path))


@pytest.mark.parametrize("evil", ["../x", "/etc/passwd", "a/../../x", "a\\..\\x", "./x", "a//b", ".hidden"])
def test_escaping_entry_paths_are_refused(tmp_path: Path, evil: str) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    rezip(tmp_path / "evil.edgepkg", {**entries, evil: b"pwned"})
    with pytest.raises(PackageFormatError):
        open_package(tmp_path / "evil.edgepkg")


def test_manifest_listing_an_escaping_path_is_refused(tmp_path: Path) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    manifest = json.loads(entries["manifest.json"])
    manifest["artifacts"][0]["path"] = "../model.onnx"
    rezip(tmp_path / "evil.edgepkg", {**entries, "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(PackageFormatError, match="'..' component"):
        open_package(tmp_path / "evil.edgepkg")


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    rezip(tmp_path / "link.edgepkg", {**entries, "model.onnx": b"/etc/shadow"}, symlinks=("model.onnx",))
    with pytest.raises(PackageFormatError, match="symlink"):
        open_package(tmp_path / "link.edgepkg")


def test_unlisted_and_missing_artifacts(tmp_path: Path) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    rezip(tmp_path / "extra.edgepkg", {**entries, "payload.sh": b"#!/bin/sh"})
    with pytest.raises(PackageFormatError, match="payload.sh .*does not list"):
        open_package(tmp_path / "extra.edgepkg")
    del entries["model.onnx"]
    rezip(tmp_path / "missing.edgepkg", entries)
    with pytest.raises(PackageFormatError, match="model.onnx are listed .* but missing"):
        open_package(tmp_path / "missing.edgepkg")


# --- integrity ---


def test_flipped_byte_in_an_artifact(tmp_path: Path) -> None:
    info = write_valid(tmp_path / "m.edgepkg", tmp_path, compress=False)
    data = bytearray(info.path.read_bytes())
    with zipfile.ZipFile(info.path) as zf:
        entry = zf.getinfo("plan/model.plan")
    # Local header: 30 fixed bytes, then the name and the extra field, then the stored data.
    offset = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra) + 100
    data[offset] ^= 0x01
    bad = tmp_path / "flipped.edgepkg"
    bad.write_bytes(bytes(data))
    with open_package(bad) as pkg:  # structure is fine: the flip shows when the bytes are read
        assert pkg.read_artifact("model.onnx")
        with pytest.raises(IntegrityError, match="plan/model.plan"):
            pkg.read_artifact("plan/model.plan")
        with pytest.raises(IntegrityError):
            pkg.verify()
        with pytest.raises(IntegrityError):
            pkg.extract(tmp_path / "out" / "v")
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-extracted, no temp dir


def test_flipped_byte_in_a_compressed_artifact(tmp_path: Path) -> None:
    info = write_valid(tmp_path / "m.edgepkg", tmp_path, compress=True)
    data = bytearray(info.path.read_bytes())
    with zipfile.ZipFile(info.path) as zf:
        entry = zf.getinfo("plan/model.plan")
    offset = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra) + 5
    data[offset] ^= 0xFF
    (tmp_path / "flipped.edgepkg").write_bytes(bytes(data))
    with open_package(tmp_path / "flipped.edgepkg") as pkg, pytest.raises(IntegrityError):
        pkg.verify()


def test_wrong_hash_or_size_in_manifest(tmp_path: Path) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path).path)
    manifest = json.loads(entries["manifest.json"])
    manifest["artifacts"][0]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    rezip(tmp_path / "hash.edgepkg", {**entries, "manifest.json": json.dumps(manifest).encode()})
    with open_package(tmp_path / "hash.edgepkg") as pkg, pytest.raises(IntegrityError, match="model.onnx"):
        pkg.read_artifact("model.onnx")

    manifest["artifacts"][0]["size"] += 1
    rezip(tmp_path / "size.edgepkg", {**entries, "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(IntegrityError, match="bytes, the manifest says"):
        open_package(tmp_path / "size.edgepkg")


# --- limits (zip bombs) ---


def test_zip_bomb_over_total_limit(tmp_path: Path) -> None:
    manifest = base_manifest(artifacts=[{"path": "zeros.bin", "kind": "native-plan"}], selftest=None)
    info = write_package(tmp_path / "bomb.edgepkg", manifest, {"zeros.bin": bytes(4 << 20)})
    assert info.size < 64 << 10  # 4 MiB of zeros compresses to a few KiB
    with pytest.raises(PackageTooLargeError, match="expands to"):
        open_package(info.path, limits=Limits(max_total_bytes=1 << 20, max_artifact_bytes=8 << 20))
    with pytest.raises(PackageTooLargeError, match="zeros.bin"):
        open_package(info.path, limits=Limits(max_artifact_bytes=1 << 20))


@pytest.mark.parametrize(
    "limits, message",
    [
        (Limits(max_package_bytes=100), "over the limit of 100"),
        (Limits(max_manifest_bytes=100), "manifest.json"),
        (Limits(max_entries=2), "entries"),
    ],
)
def test_other_limits(tmp_path: Path, limits: Limits, message: str) -> None:
    info = write_valid(tmp_path / "m.edgepkg", tmp_path)
    with pytest.raises(PackageTooLargeError, match=message):
        open_package(info.path, limits=limits)


# --- signatures ---


def test_unsigned_accepted_without_trust_store_refused_with_one(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    info = write_valid(tmp_path / "m.edgepkg", tmp_path)
    with open_package(info.path) as pkg:
        assert pkg.signer is None and pkg.signature is None
    with pytest.raises(SignatureError, match="not signed"):
        open_package(info.path, TrustStore([key.public_key()]))


def test_signed_without_trust_store_is_not_reported_as_verified(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    info = write_valid(tmp_path / "m.edgepkg", tmp_path, key)
    with open_package(info.path) as pkg:
        assert pkg.signer is None
        assert (
            pkg.signature is not None and pkg.signature.key_id == key_id(key) and not pkg.signature.verified
        )


def test_manifest_changed_after_signing(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path, key).path)
    tampered = with_manifest(entries, version="6.6.6")
    rezip(tmp_path / "t.edgepkg", tampered)
    with pytest.raises(SignatureError, match="bad signature"):
        open_package(tmp_path / "t.edgepkg", TrustStore([key.public_key()]))


def test_unknown_signer_and_malformed_signature(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path, key).path)
    other = TrustStore([Ed25519PrivateKey.generate().public_key()])
    with pytest.raises(SignatureError, match=f"signed by key {key_id(key)}, which is not in the trust store"):
        open_package(tmp_path / "m.edgepkg", other)
    rezip(tmp_path / "junk.edgepkg", {**entries, "manifest.sig": b"not a signature"})
    with pytest.raises(SignatureError, match="malformed"):
        open_package(tmp_path / "junk.edgepkg", TrustStore([key.public_key()]))


def test_signature_claiming_a_trusted_key_id_but_made_by_another_key(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    entries = entries_of(write_valid(tmp_path / "m.edgepkg", tmp_path, key).path)
    forged = json.loads(make_signature(entries["manifest.json"], Ed25519PrivateKey.generate()))
    forged["key_id"] = key_id(key)
    rezip(tmp_path / "f.edgepkg", {**entries, "manifest.sig": json.dumps(forged).encode()})
    with pytest.raises(SignatureError, match="bad signature"):
        open_package(tmp_path / "f.edgepkg", TrustStore([key.public_key()]))


def test_key_rotation(tmp_path: Path) -> None:
    old, new = generate_keypair(tmp_path / "keys" / "old"), generate_keypair(tmp_path / "keys" / "new")
    trust = TrustStore.load(tmp_path / "keys")
    assert len(trust) == 2
    by_old = write_valid(tmp_path / "a.edgepkg", tmp_path, load_private_key(old[0]))
    by_new = write_valid(tmp_path / "b.edgepkg", tmp_path, load_private_key(new[0]))
    for info in (by_old, by_new):
        with open_package(info.path, trust) as pkg:
            assert pkg.signer == info.signer
    trust.remove(by_old.signer)
    with pytest.raises(SignatureError, match="not in the trust store"):
        open_package(by_old.path, trust)
    with open_package(by_new.path, trust) as pkg:
        assert pkg.signer == by_new.signer


def test_generate_keypair_is_private_and_never_overwrites(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "fleet")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert TrustStore.load(pub_path).key_ids == (key_id(load_private_key(key_path)),)
    before = key_path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "fleet")
    assert key_path.read_bytes() == before


def test_trust_store_load_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignatureError, match="no \\*.pub"):
        TrustStore.load(tmp_path / "empty")
    with pytest.raises(SignatureError, match="does not exist"):
        TrustStore.load(tmp_path / "nope.pub")
    (tmp_path / "bad.pub").write_text("hello")
    with pytest.raises(SignatureError, match="not a PEM"):
        TrustStore.load(tmp_path / "bad.pub")


# --- requirements ---


def test_requirements_unmet() -> None:
    req = Manifest.from_dict(
        {
            **base_manifest(
                artifacts=[{"path": "a", "kind": "onnx", "size": 0, "sha256": "0" * 64}], selftest=None
            ),
            "schema_version": 1,
            "requirements": {"min_runtime_version": "0.3", "isas": ["neondot"]},
        }
    ).requirements
    assert req.unmet("0.3.0", isa="neondot") == []
    assert req.unmet("0.4.0.dev1") == []
    reasons = req.unmet("0.2.9", isa="neon", profile="raspberrypi-4b")
    assert len(reasons) == 2 and "upgrade" in reasons[0] and "neon" in reasons[1]
