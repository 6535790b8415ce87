"""Loading an LLM package: streamed from the package, one copy of the tied embedding, same logits."""

from __future__ import annotations

import io
import json
import weakref
import zipfile

import numpy as np
import pytest

from edge_runtime import llm
from edge_runtime.errors import IntegrityError
from edge_runtime.kernels import pack_gemm
from edge_runtime.llm import package as llm_package
from edge_runtime.llm.config import LlamaConfig
from edge_runtime.llm.errors import ModelSourceError
from edge_runtime.llm.model import LLM
from edge_runtime.package._archive import Package


def _archive(path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf, np.load(io.BytesIO(zf.read("llm/weights.npz"))) as z:
        return {k: z[k] for k in z.files}


def _config(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("llm/config.json"))


@pytest.mark.parametrize("n,k", [(1, 1), (17, 5), (100, 576), (33, 130)])
def test_packed_rows_read_back_the_weights(n, k):
    q = np.random.default_rng(n * k).integers(-127, 128, (n, k)).astype(np.int8)
    packed = pack_gemm(q)
    assert np.array_equal(packed.rows(np.arange(n)), q)
    ids = np.array([n - 1, 0, n // 2, n - 1])
    assert np.array_equal(packed.rows(ids), q[ids])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_embedding_rows_equal_the_dequantized_table(arch, packages):
    path = packages(arch, "int8")
    store = _archive(path)
    expected = store["embed.q8"].astype(np.float32) * store["embed.s"][:, None]
    with llm.load(path, threads=1) as model:
        # tied (llama): no second copy of the table; the rows come from the packed output layer
        assert (model._embed is None) == model.config.tie_embeddings
        ids = np.arange(model.config.vocab_size)
        assert np.array_equal(model._embed_rows(ids), expected)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("weights", ["int8", "int4", "f16"])
def test_streamed_load_gives_the_logits_of_the_whole_archive(arch, weights, packages):
    path = packages(arch, weights)
    with llm.load(path, threads=1) as model:
        ids = model.tokenize("The capital of France is a city")
        streamed = model.logits(ids)
        # the same weights handed over whole, as a dict
        whole = LLM(
            LlamaConfig.from_dict(_config(path)["architecture"]),
            _archive(path),
            model.tokenizer,
            threads=1,
            weights_format=weights,
        )
        with whole:
            assert np.array_equal(streamed, whole.logits(ids))


def test_load_never_holds_the_archive_whole(packages, monkeypatch):
    """The weights artifact is only streamed, and the archive's arrays are let go as they are packed:
    at most one layer's parts are alive beside what the model keeps."""
    path = packages("qwen2", "int8")  # untied: its embedding table is kept as stored
    real_read = Package.read_artifact

    def read_artifact(self, path_or_kind):
        assert path_or_kind not in ("llm-weights", "llm/weights.npz"), "the weights archive was read whole"
        return real_read(self, path_or_kind)

    monkeypatch.setattr(Package, "read_artifact", read_artifact)
    live = {"bytes": 0, "max": 0}

    def release(n: int) -> None:
        live["bytes"] -= n

    real_arrays = llm_package._npz_arrays

    def counted(chunks, where=""):
        for name, array in real_arrays(chunks, where):
            live["bytes"] += array.nbytes
            live["max"] = max(live["max"], live["bytes"])
            weakref.finalize(array, release, array.nbytes)
            yield name, array
            del array

    monkeypatch.setattr(llm_package, "_npz_arrays", counted)
    store = _archive(path)
    with llm.load(path, threads=1) as model:
        c = model.config
        kept = store["embed.q8"].nbytes  # the token table (untied), and the norms
        kept += sum(a.nbytes for k, a in store.items() if k.endswith("norm") or k == "rope_freqs")
        # in build order, at most one layer's parts wait for the rest of their linear
        largest = max(
            sum(a.nbytes for k, a in store.items() if k.startswith(f"layers.{i}."))
            for i in range(c.num_layers)
        )
        total = sum(a.nbytes for a in store.values())
        assert live["max"] <= kept + largest < total
        assert live["bytes"] <= kept  # after loading: only the token table and the vectors' sources


def test_tampered_weights_are_refused_after_streaming(packages, tmp_path):
    src = packages("llama", "int8")
    bad = tmp_path / "bad.edgepkg"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "llm/weights.npz":
                data = bytearray(data)
                data[len(data) // 2] ^= 0x01  # one bit inside an array: the archive still parses
                data = bytes(data)
            zout.writestr(info, data)
    with pytest.raises(IntegrityError, match="llm/weights.npz"):
        llm.load(bad, threads=1)


def test_a_malformed_weights_archive_is_a_typed_error():
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.ones(64, np.float32))  # deflated members: not what convert writes
    with pytest.raises(ModelSourceError, match="compressed"):
        list(llm_package._npz_arrays(iter([buf.getvalue()]), "x"))
    buf = io.BytesIO()
    np.savez(buf, a=np.ones(64, np.float32))
    with pytest.raises(ModelSourceError, match="cannot be read"):
        list(llm_package._npz_arrays(iter([buf.getvalue()[:100]]), "x"))  # truncated


def test_any_archive_order_builds_the_same_model(packages):
    path = packages("qwen2", "int8")
    store = _archive(path)
    config = LlamaConfig.from_dict(_config(path)["architecture"])
    with llm.load(path, threads=1) as model:
        ids = model.tokenize("The capital of France is a city")
        with LLM(config, reversed(list(store.items())), model.tokenizer, threads=1) as reordered:
            assert np.array_equal(model.logits(ids), reordered.logits(ids))
        del store["layers.1.gate.s"]
        with pytest.raises(ModelSourceError, match=r"layers\.1\.gate\.q8 without its scales"):
            LLM(config, store, model.tokenizer, threads=1)
