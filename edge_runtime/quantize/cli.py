"""The ``edge quantize`` subcommand; :func:`register` adds it to the ``edge`` parser."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from edge_runtime.errors import DatasetError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``quantize`` to the ``edge`` subcommands (sets ``func``)."""
    p = subparsers.add_parser(
        "quantize",
        help="quantize a float ONNX model to a signed INT8 package",
        description="Calibrate, lower to the native INT8 plan, export a QDQ ONNX model, measure float vs "
        "INT8 accuracy and write a package (.edgepkg) with self-test vectors.",
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="the float ONNX model")
    p.add_argument(
        "--calibration",
        required=True,
        metavar="DATA",
        help="calibration data: a folder of images, a .npy/.npz file, or a Python callable module:function",
    )
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.edgepkg", help="package to write")
    p.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="activation calibration (default minmax)")  # fmt: skip
    p.add_argument("--sparsity", choices=("2:4",), help="prune Conv/Gemm weights to 2:4 first")
    p.add_argument(
        "--weight-bits", type=int, choices=(8, 7), metavar="{8,7}",
        help="weight width: 7 ([-63, 63]) lets x86 without VNNI multiply with vpmaddubsw (faster GEMMs and "
        "convolutions), bit-identical on every ISA (default: 7 when this machine's device profile is x86 "
        "without VNNI, else 8; see --profile)",
    )  # fmt: skip
    p.add_argument(
        "--profile", metavar="NAME",
        help="the target device profile (`edge profiles` lists them) when it is not this machine: it picks "
        "the default --weight-bits (7 for generic-x86_64, whose VNNI is known only on the device; 8 on Arm)",
    )  # fmt: skip
    p.add_argument(
        "--eval", metavar="DATA", help="held-out data for the accuracy report (default: calibration)"
    )
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="class labels for top-1 accuracy (.npy, or text with one per line)")  # fmt: skip
    p.add_argument("--sign", type=Path, metavar="KEY", help="private key (PEM) to sign the package with")
    p.add_argument("--name", help="package name (default: the model's file name)")
    p.add_argument("--version", dest="model_version", default="1.0.0", metavar="V", help="package version")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="samples per batch (default 8)")
    p.add_argument("--max-samples", type=int, metavar="N", help="read at most N samples of each data set")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="native threads for evaluation")
    p.add_argument("--mean", metavar="M[,M,M]", help="image mean after scaling pixels to [0, 1] (default 0)")
    p.add_argument("--std", metavar="S[,S,S]", help="image std after scaling pixels to [0, 1] (default 1)")
    p.add_argument("--image-size", metavar="HxW", help="image size for models with a dynamic height/width")
    p.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME:D0xD1x...",
        help="calibrate at this representative input shape (repeatable, e.g. image:1x3x320x320 "
        "--input-shape image:1x3x640x480): the calibration data is resized to each; default: its own shapes",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_quantize)
    return p


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DatasetError(f"--{what} {text!r}: expected numbers separated by commas") from None


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DatasetError(f"--image-size {text!r}: expected HEIGHTxWIDTH, e.g. 224x224") from None
    return h, w


def _command_line(args: argparse.Namespace) -> str:
    """The command as given (options in a fixed order, defaults left out): the package's provenance."""
    words = ["edge", "quantize", str(args.model)]
    flags = {
        "calibration": args.calibration, "out": args.out, "method": args.method, "sparsity": args.sparsity,
        "eval": args.eval, "labels": args.labels, "sign": args.sign, "name": args.name,
        "version": args.model_version, "batch-size": args.batch_size, "max-samples": args.max_samples,
        "threads": args.threads, "mean": args.mean, "std": args.std, "image-size": args.image_size,
        "weight-bits": getattr(args, "weight_bits", None),
    }  # fmt: skip
    for flag, value in flags.items():
        if value is not None:
            words += [f"--{flag}", str(value)]
    for shape in getattr(args, "input_shape", None) or []:
        words += ["--input-shape", str(shape)]
    return shlex.join(words)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from edge_runtime.plan.calibrate import parse_input_shape
    from edge_runtime.quantize.data import ImageOptions
    from edge_runtime.quantize.pipeline import QuantizeOptions, default_weight_bits, quantize_model

    mean, std, size = _floats(args.mean, "mean"), _floats(args.std, "std"), _size(args.image_size)
    image = None
    if mean is not None or std is not None or size is not None:
        image = ImageOptions(mean=mean or (0.0,), std=std or (1.0,), size=size)
    if args.weight_bits is not None:
        weight_bits, why = args.weight_bits, "--weight-bits"
    else:
        target = None
        if args.profile is not None:
            from device_profiles import get_profile

            target = get_profile(args.profile)
        weight_bits, why = default_weight_bits(target)
        why = f"default: {why}"
    # Said before the work starts; on stderr with --json (stdout holds the JSON only).
    print(f"weight bits: {weight_bits} ({why})", file=sys.stderr if args.json else sys.stdout, flush=True)
    options = QuantizeOptions(
        calibration=args.calibration,
        method=args.method,
        sparsity=args.sparsity,
        eval_data=args.eval,
        labels=args.labels,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        threads=args.threads,
        name=args.name,
        version=args.model_version,
        signing_key=args.sign,
        image_options=image,
        progress=not args.quiet,
        command=_command_line(args),
        input_shapes=[parse_input_shape(text) for text in args.input_shape],
        weight_bits=weight_bits,
    )
    result = quantize_model(args.model, args.out, options)
    if args.json:
        print(json.dumps(result.metrics, indent=2, sort_keys=True))
    else:
        info = result.package
        signed = f"signed by {info.signer}" if info.signer else "UNSIGNED"
        print(result.report_table)
        if result.sparse_layers:
            print(f"2:4 sparse layers: {', '.join(result.sparse_layers)}")
        print(f"{info.path}: {info.manifest.name} {info.manifest.version}, {info.size} bytes, {signed}")
        print(f"sha256 {info.sha256}")
    return 0
