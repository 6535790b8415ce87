"""The on-device model store: install, activate, rollback, gc, and recovery from interruptions."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pkg_helpers import write_valid

from edge_runtime.errors import IntegrityError, ModelNotFoundError, SignatureError, StoreError
from edge_runtime.package import PackageInfo, TrustStore
from edge_runtime.store import ModelStore

NAME = "mnist-cnn"


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state")


def package(tmp_path: Path, version: str, key: Ed25519PrivateKey | None = None) -> PackageInfo:
    work = tmp_path / f"work-{version}"
    work.mkdir(exist_ok=True)
    return write_valid(tmp_path / f"{version}.edgepkg", work, key, version=version)


def link(store: ModelStore, which: str) -> str:
    return os.readlink(store.root / NAME / which)


def test_install_extracts_to_content_address_and_is_idempotent(tmp_path: Path, store: ModelStore) -> None:
    info = package(tmp_path, "1.0")
    model = store.install(info.path)
    assert model.path == store.root / NAME / info.sha256
    assert model.version == "1.0" and model.sha256 == info.sha256
    assert model.artifact_path("onnx").read_bytes().startswith(b"\x08\x07fake-onnx")
    mtime = model.path.stat().st_mtime_ns
    again = store.install(info.path)
    assert again == model and model.path.stat().st_mtime_ns == mtime
    assert store.current(NAME) is None  # install does not activate


def test_install_with_trust_store(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    store = ModelStore(tmp_path / "state", trust_store=TrustStore([key.public_key()]))
    with pytest.raises(SignatureError):
        store.install(package(tmp_path, "1.0").path)
    assert store.versions(NAME) == []
    assert store.install(package(tmp_path, "2.0", key).path).version == "2.0"


def test_activate_rollback_and_previous(tmp_path: Path, store: ModelStore) -> None:
    v1, v2, v3 = (store.install(package(tmp_path, v).path) for v in ("1.0", "2.0", "3.0"))
    store.activate(NAME, v1.sha256)
    assert store.current(NAME) == v1 and store.previous(NAME) is None
    with pytest.raises(ModelNotFoundError, match="no previous"):
        store.rollback(NAME)

    store.activate(NAME, v2.sha256)
    store.activate(NAME, v3.sha256)
    assert (store.current(NAME), store.previous(NAME)) == (v3, v2)
    assert link(store, "current") == v3.sha256  # relative link: the state dir can move

    assert store.rollback(NAME) == v2
    assert (store.current(NAME), store.previous(NAME)) == (v2, v3)
    assert store.rollback(NAME) == v3  # a second rollback undoes the first

    store.activate(NAME, v3.sha256)  # activating the current version changes nothing
    assert store.previous(NAME) == v2


def test_activate_refuses_unknown_versions_and_names(tmp_path: Path, store: ModelStore) -> None:
    store.install(package(tmp_path, "1.0").path)
    with pytest.raises(ModelNotFoundError, match="install it first"):
        store.activate(NAME, "a" * 64)
    with pytest.raises(StoreError, match="not a sha256"):
        store.activate(NAME, "../../etc")
    with pytest.raises(StoreError, match="invalid"):
        store.activate("../x", "a" * 64)


def test_versions_oldest_first_and_gc_keeps_current_and_previous(tmp_path: Path, store: ModelStore) -> None:
    installed = []
    for i, version in enumerate(("1.0", "2.0", "3.0", "4.0", "5.0")):
        model = store.install(package(tmp_path, version).path)
        os.utime(model.path, ns=(10**18 + i, 10**18 + i))  # install order, independent of clock resolution
        installed.append(model)
    assert [m.version for m in store.versions(NAME)] == ["1.0", "2.0", "3.0", "4.0", "5.0"]

    store.activate(NAME, installed[0].sha256)
    store.activate(NAME, installed[1].sha256)  # current 2.0, previous 1.0: the two oldest
    removed = store.gc(NAME, keep=2)
    assert removed == [installed[2].sha256]
    assert [m.version for m in store.versions(NAME)] == ["1.0", "2.0", "4.0", "5.0"]
    assert store.gc(NAME, keep=0) == [installed[3].sha256, installed[4].sha256]
    assert store.current(NAME) == installed[1] and store.previous(NAME) == installed[0]


def test_interrupted_operations_leave_current_intact_and_are_cleaned(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = ModelStore(state)
    v1 = store.install(package(tmp_path, "1.0").path)
    store.activate(NAME, v1.sha256)
    d = store.root / NAME
    # What a process killed mid-install, mid-switch and mid-gc leaves behind:
    half = d / f".tmp-{'b' * 64}-1234abcd"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"half written")
    os.symlink("c" * 64, d / ".tmp-current-5678abcd")
    (d / f".tmp-gc-{'d' * 64}").mkdir()

    assert store.current(NAME) == v1  # readers never look at temp entries
    assert [m.sha256 for m in store.versions(NAME)] == [v1.sha256]

    reopened = ModelStore(state)
    assert sorted(p.name for p in d.iterdir()) == sorted([".lock", "current", v1.sha256])
    assert reopened.current(NAME) == v1


def test_failed_install_leaves_no_version(tmp_path: Path, store: ModelStore) -> None:
    info = package(tmp_path, "1.0")
    data = bytearray(info.path.read_bytes())
    # Corrupt the last artifact's bytes; its check fails during extraction, after the others were written.
    with zipfile.ZipFile(info.path) as zf:
        entry = zf.getinfo("selftest.npz")
    data[entry.header_offset + 30 + len(entry.filename) + len(entry.extra) + 3] ^= 0xFF
    bad = tmp_path / "bad.edgepkg"
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.install(bad)
    assert store.versions(NAME) == []
    assert [p.name for p in (store.root / NAME).iterdir()] == [".lock"]
