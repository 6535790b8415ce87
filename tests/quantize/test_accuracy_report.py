"""The float vs INT8 report on cases whose numbers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.errors import DatasetError
from edge_runtime.quantize import AccuracyReport, evaluate, format_table


def test_known_numbers_over_two_batches() -> None:
    labels = np.array([0, 1, 1, 0])
    report = AccuracyReport(["logits", "embedding"], data="hand-made", labels=labels)
    # batch 1: both pick classes 0, 1; INT8 off by 0.5 on one element
    report.update(
        {"logits": np.array([[2.0, 0.0], [0.0, 1.0]]), "embedding": np.array([[1.0, 0.0, 0.0]] * 2)},
        {"logits": np.array([[2.0, 0.5], [0.0, 1.0]]), "embedding": np.array([[1.0, 0.0, 0.0]] * 2)},
    )
    # batch 2: float picks 1 then 0; INT8 picks 0 then 0 (one disagreement); off by 1.0 twice
    report.update(
        {"logits": np.array([[0.0, 1.0], [1.0, 0.0]]), "embedding": np.array([[0.0, 1.0, 0.0]] * 2)},
        {"logits": np.array([[1.0, 0.0], [1.0, 0.0]]), "embedding": np.array([[0.0, 0.0, 1.0]] * 2)},
    )
    d = report.to_dict()
    assert d["data"] == "hand-made" and d["samples"] == 4
    logits = d["outputs"]["logits"]
    assert logits["max_abs_error"] == 1.0
    assert logits["mean_abs_error"] == pytest.approx((0.5 + 1.0 + 1.0) / 8)
    assert logits["top1_agreement"] == 0.75
    dot, nf, nq = 4.0 + 1.0 + 0.0 + 1.0, 4 + 1 + 1 + 1, 4.25 + 1 + 1 + 1
    assert logits["cosine_similarity"] == pytest.approx(dot / math.sqrt(nf * nq))
    # labels [0, 1, 1, 0]: float right 4/4, INT8 right on 0, 1, -, 0 = 3/4
    assert d["float_accuracy"] == 1.0 and d["int8_accuracy"] == 0.75 and d["accuracy_output"] == "logits"
    emb = d["outputs"]["embedding"]
    assert "top1_agreement" in emb  # [N, 3] looks like classes; it is reported, labels are not scored on it
    assert emb["cosine_similarity"] == pytest.approx(0.5)
    table = format_table(report)
    assert "logits" in table and "75.00%" in table and "float 100.00%, INT8 75.00%" in table


def test_non_classification_output_and_identical_outputs() -> None:
    x = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    report = evaluate(
        lambda f: {"y": f["x"]}, lambda f: {"y": f["x"]}, [{"x": x}], ["y"], show_progress=False
    )
    d = report.to_dict()["outputs"]["y"]
    assert d == {"max_abs_error": 0.0, "mean_abs_error": 0.0, "cosine_similarity": pytest.approx(1.0)}
    zero = evaluate(
        lambda f: {"y": 0 * f["x"]}, lambda f: {"y": 0 * f["x"]}, [{"x": x}], ["y"], show_progress=False
    )
    assert zero.to_dict()["outputs"]["y"]["cosine_similarity"] == 1.0


def test_label_count_must_match_the_samples() -> None:
    batches = [{"x": np.eye(3)}]
    with pytest.raises(DatasetError, match="2 labels for 3"):
        evaluate(lambda f: {"y": f["x"]}, lambda f: {"y": f["x"]}, batches, ["y"], labels=np.array([0, 1]),
                 show_progress=False)  # fmt: skip
    with pytest.raises(DatasetError, match="4 labels for 3 evaluated samples"):
        evaluate(lambda f: {"y": f["x"]}, lambda f: {"y": f["x"]}, batches, ["y"], labels=np.arange(4),
                 show_progress=False)  # fmt: skip


def test_progress_without_tqdm_writes_one_stderr_line(monkeypatch, capsys) -> None:
    import sys
    import time

    from edge_runtime.quantize._progress import progress

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    clock = iter(range(100))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    assert list(progress(range(3), "calibrating", total=3)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "calibrating: 3/3 batches" in err and err.endswith("\n")
    assert list(progress(range(3), "quiet", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
