"""Serving from the model store (a `current` link resolved per load) and several versions at once."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from serve_helpers import (
    expected_logits,
    infer_doc,
    load_linear,
    metric,
    post_json,
    request,
    write_linear,
    write_onnx_package,
)

from edge_runtime.errors import IntegrityError, PackageFormatError, SignatureError
from edge_runtime.package import TrustStore
from edge_runtime.serve import BatchingConfig, ServeConfigError, ServerThread, load_config
from edge_runtime.serve.manager import default_loader, resolve_source
from edge_runtime.store import ModelStore

pytest.importorskip("onnxruntime")

X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path, key: Ed25519PrivateKey) -> ModelStore:
    return ModelStore(tmp_path / "state", trust_store=TrustStore([key.public_key()]))


def _install(store: ModelStore, tmp_path: Path, key: Ed25519PrivateKey, version: str, seed: int):
    pkg = write_onnx_package(tmp_path / f"linear-{version}.edgepkg", version, seed=seed, signing_key=key)
    return store.install(pkg)


def _logits(url: str, x: np.ndarray = X) -> tuple[str, np.ndarray]:
    resp = post_json(url, infer_doc(x))
    assert resp.status == 200, resp.body
    doc = resp.json()
    return doc["model_version"], np.asarray(doc["outputs"][0]["data"], np.float32).reshape(len(x), -1)


# --- edge_runtime.load on an extracted store directory ---


def test_load_reads_a_store_directory_through_the_current_link(store, tmp_path, key):
    import edge_runtime

    installed = _install(store, tmp_path, key, "1.0", seed=1)
    store.activate("linear", installed.sha256)
    trust = TrustStore([key.public_key()])
    link = store.root / "linear" / "current"
    with edge_runtime.load(link, backend="onnxruntime", profile=None, threads=1, trust_store=trust) as model:
        source = model.info()["source"]
        assert source["kind"] == "directory"
        assert source["path"] == str(installed.path.resolve())  # the link was resolved once
        assert source["sha256"] == installed.sha256 and source["signer"] is not None
        assert model.version == "1.0" and model.selftest().passed
        np.testing.assert_allclose(model.run({"x": X})["logits"], expected_logits(X, 1), rtol=1e-5)


def test_load_directory_verifies_like_a_package(store, tmp_path, key):
    import edge_runtime

    installed = _install(store, tmp_path, key, "1.0", seed=1)
    trust = TrustStore([key.public_key()])

    def load(path: Path, trust_store: TrustStore | None = trust) -> None:
        edge_runtime.load(path, backend="onnxruntime", profile=None, trust_store=trust_store).close()

    copy = tmp_path / "copy"
    shutil.copytree(installed.path, copy)
    with open(copy / "model.onnx", "r+b") as f:  # same size, different bytes
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        load(copy)
    (copy / "model.onnx").write_bytes(b"short")
    with pytest.raises(IntegrityError, match="bytes, the manifest says"):
        load(copy)

    unsigned = tmp_path / "unsigned"
    shutil.copytree(installed.path, unsigned)
    (unsigned / "manifest.sig").unlink()
    with pytest.raises(SignatureError, match="not signed"):
        load(unsigned)
    load(unsigned, trust_store=None)  # without a trust store, as for package files

    with pytest.raises(PackageFormatError, match="no manifest.json"):
        load(tmp_path)


# --- serving a store entry ---


def test_serving_the_store_follows_current_on_reload_and_sighup(store, tmp_path, key):
    v1 = _install(store, tmp_path, key, "1.0", seed=1)
    v2 = _install(store, tmp_path, key, "2.0", seed=2)
    store.activate("linear", v1.sha256)
    config_file = tmp_path / "serve.toml"
    config_file.write_text(
        '[server]\nport = 0\n[models.linear]\npath = "state/models/linear/current"\n'
        "[models.linear.batching]\nmax_batch_size = 4\n"
    )
    config = load_config(config_file)
    assert config.models[0].path == tmp_path / "state/models/linear/current"  # not resolved when read
    trust = TrustStore([key.public_key()])
    with ServerThread(config, loader=default_loader("onnxruntime", 1, trust)) as srv:
        url = srv.url + "/v2/models/linear/infer"
        version, logits = _logits(url)
        assert version == "1.0"
        np.testing.assert_allclose(logits, expected_logits(X, 1), rtol=1e-5)
        config_src = request(srv.url + "/v2/models/linear/config").json()["parameters"]["source"]
        assert config_src == str(v1.path.resolve())

        store.activate("linear", v2.sha256)  # the atomic switch; serving is unchanged until a swap
        assert _logits(url)[0] == "1.0"
        results = srv.call(srv.server.reload())  # SIGHUP: the config is the same, the link is not
        assert [(r.name, r.ok, r.version) for r in results] == [("linear", True, "2.0")]
        version, logits = _logits(url)
        assert version == "2.0"
        np.testing.assert_allclose(logits, expected_logits(X, 2), rtol=1e-5)
        assert srv.call(srv.server.reload()) == []  # nothing changed: nothing reloaded

        store.rollback("linear")  # and back, through the admin API without a path (`edge swap`)
        resp = post_json(srv.url + "/v2/repository/models/linear/load", {})
        assert resp.status == 200 and resp.json()["version"] == "1.0", resp.body
        assert _logits(url)[0] == "1.0"


def test_resolve_source_accepts_the_model_directory_and_leaves_files(store, tmp_path, key):
    installed = _install(store, tmp_path, key, "1.0", seed=1)
    store.activate("linear", installed.sha256)
    model_dir = store.root / "linear"
    assert resolve_source(model_dir) == installed.path.resolve()
    assert resolve_source(model_dir / "current") == installed.path.resolve()
    assert resolve_source(installed.path) == installed.path.resolve()
    missing = tmp_path / "missing.edgepkg"
    assert resolve_source(missing) == missing


# --- several versions at once ---


def _swap(srv: ServerThread, path: Path) -> dict:
    resp = post_json(f"{srv.url}/v2/repository/models/linear/load", {"parameters": {"path": str(path)}})
    assert resp.status == 200, resp.body
    return resp.json()


def _unload(srv: ServerThread, version: str | None = None):
    body = {"parameters": {"version": version}} if version else {}
    return post_json(f"{srv.url}/v2/repository/models/linear/unload", body)


def test_kept_versions_answer_versioned_requests(start_server, tmp_path):
    paths = {v: write_linear(tmp_path / f"v{v}.json", v, seed=int(float(v))) for v in ("1.0", "2.0", "3.0")}
    models = []

    def loader(path):
        models.append(load_linear(path))
        return models[-1]

    srv = start_server({"linear": paths["1.0"]}, BatchingConfig(max_batch_size=4), loader, keep_versions=2)
    base = srv.url + "/v2/models/linear"
    result = _swap(srv, paths["2.0"])
    assert result["version"] == "2.0" and result["loaded_versions"] == ["1.0", "2.0"]
    assert request(base).json()["versions"] == ["1.0", "2.0"]
    assert request(base + "/versions/1.0").json()["versions"] == ["1.0", "2.0"]
    for version, seed in (("1.0", 1), ("2.0", 2)):
        got, logits = _logits(f"{base}/versions/{version}/infer")
        assert got == version
        np.testing.assert_allclose(logits, expected_logits(X, seed), rtol=1e-5)
        assert request(f"{base}/versions/{version}/ready").status == 200
    assert _logits(base + "/infer")[0] == "2.0"  # unversioned: the current one
    resp = post_json(base + "/versions/9/infer", infer_doc(X))
    assert resp.status == 404 and "loaded: 1.0, 2.0" in resp.json()["error"]
    index = post_json(srv.url + "/v2/repository/index", {}).json()
    assert [(e["version"], e["state"]) for e in index] == [("1.0", "READY"), ("2.0", "READY")]
    text = request(srv.url + "/metrics").body.decode()
    assert metric(text, "edge_model_current_version", model="linear", version="2.0") == 1
    assert metric(text, "nv_inference_exec_count_total", model="linear", version="1.0") >= 1

    # A third version pushes the oldest out: it is closed once idle, and answers 404.
    assert _swap(srv, paths["3.0"])["loaded_versions"] == ["2.0", "3.0"]
    assert request(base + "/versions/1.0").status == 404
    deadline = time.monotonic() + 5
    while not models[0].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert models[0].closed and not models[1].closed

    # Unloading: a kept version alone, never the current one alone, unknown ones 404.
    assert _unload(srv, "3.0").status == 400
    assert _unload(srv, "7.0").status == 404
    assert _unload(srv, "2.0").status == 200
    assert request(base + "/versions/2.0/ready").status == 404
    assert request(base).json()["versions"] == ["3.0"]
    assert _unload(srv).status == 200
    assert request(base).status == 404


def test_by_default_only_the_current_version_is_loaded(start_server, tmp_path):
    v1 = write_linear(tmp_path / "v1.json", "1.0", seed=1)
    v2 = write_linear(tmp_path / "v2.json", "2.0", seed=2)
    srv = start_server({"linear": v1})
    assert _swap(srv, v2)["loaded_versions"] == ["2.0"]
    assert request(srv.url + "/v2/models/linear/versions/1.0").status == 404
    assert request(srv.url + "/v2/models/linear").json()["versions"] == ["2.0"]
    # Swapping back to a version string that is loaded replaces that instance.
    assert _swap(srv, v1)["loaded_versions"] == ["1.0"]


def test_keep_versions_in_the_config(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(
        '[server]\nkeep_versions = 3\n[models.a]\npath = "a.edgepkg"\n'
        '[models.b]\npath = "b.edgepkg"\nkeep_versions = 2\n'
    )
    config = load_config(path)
    assert config.keep_versions == 3
    assert [m.keep_versions for m in config.models] == [None, 2]
    for bad in ("0", "true", '"2"'):
        path.write_text(f"[server]\nkeep_versions = {bad}\n")
        with pytest.raises(ServeConfigError, match="keep_versions"):
            load_config(path)
    path.write_text('[models.a]\npath = "a"\nkeep_versions = 0\n')
    with pytest.raises(ServeConfigError, match=r"\[models.a\] keep_versions"):
        load_config(path)
