"""``edge quantize``: any float ONNX model to a signed INT8 model package.

Typical use::

    from edge_runtime.quantize import QuantizeOptions, quantize_model

    result = quantize_model("model.onnx", "model.edgepkg", QuantizeOptions(calibration="images/"))
    print(result.report_table)

The pieces are usable on their own: :func:`load_data` (calibration and
evaluation data), :func:`export_qdq` (our quantization as a QDQ ONNX model for
onnxruntime), :func:`evaluate` / :class:`AccuracyReport` (float vs INT8).
"""

from edge_runtime.quantize.data import Dataset, ImageOptions, load_data, load_labels
from edge_runtime.quantize.pipeline import QuantizeOptions, QuantizeResult, prune_model_2_4, quantize_model
from edge_runtime.quantize.qdq import export_qdq, quantized_weights
from edge_runtime.quantize.report import AccuracyReport, evaluate, format_table

__all__ = [
    "AccuracyReport",
    "Dataset",
    "ImageOptions",
    "QuantizeOptions",
    "QuantizeResult",
    "evaluate",
    "export_qdq",
    "format_table",
    "load_data",
    "load_labels",
    "prune_model_2_4",
    "quantize_model",
    "quantized_weights",
]
