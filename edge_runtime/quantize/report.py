"""Accuracy of the INT8 model against the float model, per output.

For every output: the largest and the mean absolute difference, and the cosine
similarity of the two outputs (all samples flattened together). For a
classification output (shape [N, classes]): how often both pick the same class
(top-1 agreement) and, when labels are given, the top-1 accuracy of each.
Accumulated batch by batch, so memory does not grow with the data.

The dict form (:meth:`AccuracyReport.to_dict`) goes into the package manifest's
``metrics``::

    {"data": "digits.npz", "samples": 300, "float_accuracy": 0.93, "int8_accuracy": 0.93,
     "outputs": {"logits": {"max_abs_error": 0.21, "mean_abs_error": 0.03,
                            "cosine_similarity": 0.9991, "top1_agreement": 0.99}}}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.errors import DatasetError
from edge_runtime.quantize._progress import progress

__all__ = ["AccuracyReport", "OutputStats", "evaluate", "format_table"]

RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def _is_classification(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] >= 2


@dataclass
class OutputStats:
    """Running sums for one output."""

    name: str
    count: int = 0
    abs_sum: float = 0.0
    abs_max: float = 0.0
    dot: float = 0.0
    norm_float: float = 0.0
    norm_int8: float = 0.0
    samples: int = 0
    classification: bool = True
    agree: int = 0
    correct_float: int = 0
    correct_int8: int = 0
    labelled: int = 0

    def update(self, reference: np.ndarray, quantized: np.ndarray, labels: np.ndarray | None) -> None:
        f = np.asarray(reference, dtype=np.float64)
        q = np.asarray(quantized, dtype=np.float64)
        if f.shape != q.shape:
            raise DatasetError(f"output {self.name!r}: float shape {f.shape} but INT8 shape {q.shape}")
        diff = np.abs(f - q)
        self.count += diff.size
        self.abs_sum += float(diff.sum())
        self.abs_max = max(self.abs_max, float(diff.max(initial=0.0)))
        self.dot += float(np.sum(f * q))
        self.norm_float += float(np.sum(f * f))
        self.norm_int8 += float(np.sum(q * q))
        self.classification = self.classification and _is_classification(f)
        if not self.classification:
            return
        top_f, top_q = f.argmax(axis=1), q.argmax(axis=1)
        self.samples += len(f)
        self.agree += int(np.sum(top_f == top_q))
        if labels is not None:
            self.labelled += len(labels)
            self.correct_float += int(np.sum(top_f == labels))
            self.correct_int8 += int(np.sum(top_q == labels))

    def to_dict(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        denom = math.sqrt(self.norm_float * self.norm_int8)
        # Two all-zero outputs are identical; one all-zero output shares no direction with the other.
        cosine = self.dot / denom if denom else (1.0 if self.norm_float == self.norm_int8 else 0.0)
        out = {
            "max_abs_error": self.abs_max,
            "mean_abs_error": self.abs_sum / self.count,
            "cosine_similarity": cosine,
        }
        if self.classification and self.samples:
            out["top1_agreement"] = self.agree / self.samples
        return out


@dataclass
class AccuracyReport:
    """Float vs INT8 on one data set; feed it batches with :meth:`update`."""

    output_names: Sequence[str]
    data: str = ""
    labels: np.ndarray | None = None
    stats: dict[str, OutputStats] = field(init=False)
    samples: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.stats = {name: OutputStats(name) for name in self.output_names}
        if self.labels is not None:
            self.labels = np.asarray(self.labels).reshape(-1).astype(np.int64)

    @property
    def labelled_output(self) -> str | None:
        """The output labels are scored on: the first classification output."""
        for name, s in self.stats.items():
            if s.classification and s.count:
                return name
        return None

    def update(self, reference: Mapping[str, np.ndarray], quantized: Mapping[str, np.ndarray]) -> None:
        """Add one batch: the float outputs and the INT8 outputs, by output name."""
        for name in self.stats:
            if name not in reference or name not in quantized:
                raise DatasetError(f"output {name!r} is missing from the float or the INT8 outputs")
        first = np.asarray(reference[self.output_names[0]])
        batch = len(first) if first.ndim else 1
        labels = None
        if self.labels is not None:
            labels = self.labels[self.samples : self.samples + batch]
            if len(labels) != batch:
                raise DatasetError(
                    f"{len(self.labels)} labels for {self.samples + batch} samples or more ({self.data or 'data'})"
                )
        first_classifier = True
        for name, s in self.stats.items():
            is_cls = s.classification and _is_classification(np.asarray(reference[name]))
            s.update(reference[name], quantized[name], labels if is_cls and first_classifier else None)
            first_classifier = first_classifier and not is_cls
        self.samples += batch

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"data": self.data, "samples": self.samples}
        scored = self.labelled_output
        if scored is not None and self.stats[scored].labelled:
            s = self.stats[scored]
            out["float_accuracy"] = s.correct_float / s.labelled
            out["int8_accuracy"] = s.correct_int8 / s.labelled
            out["accuracy_output"] = scored
        out["outputs"] = {name: s.to_dict() for name, s in self.stats.items()}
        return out


def evaluate(
    reference: RunFn,
    quantized: RunFn,
    batches: Iterable[Mapping[str, np.ndarray]],
    output_names: Sequence[str],
    *,
    data: str = "",
    labels: np.ndarray | None = None,
    show_progress: bool = True,
) -> AccuracyReport:
    """Run both models on every batch and compare their outputs (see :class:`AccuracyReport`)."""
    report = AccuracyReport(output_names, data=data, labels=labels)
    try:
        total: int | None = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None  # a generator, or a data set that does not know its size
    for feeds in progress(batches, "evaluating float vs INT8", total, enabled=show_progress):
        report.update(reference(feeds), quantized(feeds))
    if report.samples == 0:
        raise DatasetError(f"no evaluation data in {data or 'the data set'}")
    if labels is not None and len(report.labels) != report.samples:  # type: ignore[arg-type]
        raise DatasetError(
            f"{len(report.labels)} labels for {report.samples} evaluated samples ({data})"  # type: ignore[arg-type]
        )
    return report


def format_table(report: AccuracyReport | Mapping[str, Any]) -> str:
    """The report as a small text table, one row per output."""
    d = report.to_dict() if isinstance(report, AccuracyReport) else report
    header = f"{'output':24} {'max |err|':>10} {'mean |err|':>11} {'cosine':>8} {'top-1 agree':>12}"
    lines = [f"float vs INT8 on {d.get('data') or 'the data'} ({d.get('samples', 0)} samples)", header]
    for name, m in d.get("outputs", {}).items():
        agree = f"{m['top1_agreement']:.2%}" if "top1_agreement" in m else "-"
        lines.append(
            f"{name[:24]:24} {m.get('max_abs_error', math.nan):10.4g} {m.get('mean_abs_error', math.nan):11.4g} "
            f"{m.get('cosine_similarity', math.nan):8.5f} {agree:>12}"
        )
    if "float_accuracy" in d:
        lines.append(
            f"top-1 accuracy ({d['accuracy_output']}): float {d['float_accuracy']:.2%}, "
            f"INT8 {d['int8_accuracy']:.2%}"
        )
    return "\n".join(lines)
