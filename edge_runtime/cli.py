"""The ``edge`` command: subcommands grouped by who uses them.

Every command returns an exit code: 0 on success, 1 when the work failed
(the reason on one line of stderr), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from edge_runtime._version import __version__
from edge_runtime.errors import EdgeRuntimeError

__all__ = ["COMMANDS_GROUP", "CommandGroup", "build_parser", "command_groups", "main", "run_command"]

COMMANDS_GROUP = "edge_runtime.cli"  # the entry-point group other packages add commands through


@dataclass(frozen=True)
class CommandGroup:
    """Subcommands a package adds to ``edge`` and the roots of the typed errors they raise.

    A package exposes one (``fleet.cli.COMMANDS``) and names it in pyproject.toml under
    ``[project.entry-points."edge_runtime.cli"]``; ``edge`` turns each of those errors into one
    line on stderr and exit code 1 (``-v`` shows the traceback). ``order`` sorts the groups in
    ``edge --help``.
    """

    register: Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]
    errors: tuple[type[BaseException], ...]
    order: int = 50


@functools.cache
def command_groups() -> tuple[CommandGroup, ...]:
    """The runtime's own commands, then each installed package's (by ``order``)."""
    from device_profiles import DeviceProfileError

    groups = [CommandGroup(_register_runtime, (EdgeRuntimeError, DeviceProfileError), order=0)]
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            groups.append(ep.load())
        except ImportError as exc:  # an extra that is not installed: its commands are missing
            logging.getLogger("edge").debug("commands %s (%s) unavailable: %s", ep.name, ep.value, exc)
    return tuple(sorted(groups, key=lambda g: g.order))


# Kinds guessed from the file name when `edge pack --artifact` gives none.
_KIND_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite", ".npz": "selftest"}
_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,31}$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge",
        description="Edge inference runtime: quantize, package, serve and roll out INT8 models.",
    )
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in command_groups():  # the runtime's commands, then the fleet's, the trainer's, the demo's
        group.register(sub)
    return parser


def _register_runtime(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The device runtime's own commands."""
    # --- the device ---
    isa = sub.add_parser("isa", help="show the CPU features and the kernel path in use")
    isa.set_defaults(func=_cmd_isa)

    profile = sub.add_parser(
        "profile",
        help="show the detected device profile and why it was chosen",
        description="Detect the board (Raspberry Pi, Jetson, generic x86-64/arm64) and print its profile.",
    )
    profile.add_argument("--root", type=Path, default=Path("/"), help="read /proc, /sys and /etc below DIR")
    profile.add_argument("--json", action="store_true", help="print JSON instead of text")
    profile.add_argument("--list", action="store_true", help="list the known profiles instead")
    profile.set_defaults(func=_cmd_profile)

    # --- models ---
    from edge_runtime.quantize.cli import register as register_quantize

    register_quantize(sub)
    from edge_runtime.llm.cli import register as register_llm

    register_llm(sub)

    # --- packages ---
    keygen = sub.add_parser(
        "keygen",
        help="create an Ed25519 signing key pair",
        description="Write PREFIX.key (private, mode 0600: keep it off devices) and PREFIX.pub "
        "(copy it into each device's trust directory).",
    )
    keygen.add_argument("prefix", metavar="PREFIX", help="output path without extension")
    keygen.set_defaults(func=_cmd_keygen)

    pack = sub.add_parser(
        "pack",
        help="build a model package (.edgepkg) from a manifest and artifacts",
        description="Build a package. The manifest JSON gives name, version, inputs, outputs and so on; "
        "sizes and sha256 are computed. Each artifact is stored under its file name.",
    )
    pack.add_argument(
        "--manifest", type=Path, required=True, metavar="M.json", help="manifest fields as JSON"
    )
    pack.add_argument(
        "--artifact",
        action="append",
        required=True,
        metavar="PATH[:KIND]",
        help="a file to include, with its kind (onnx, native-plan, onnx-qdq, tflite, selftest); "
        "the kind may be omitted for .onnx, .tflite and .npz files or when the manifest lists it. Repeatable",
    )
    pack.add_argument("--out", type=Path, required=True, metavar="X.edgepkg", help="package to write")
    pack.add_argument("--sign", type=Path, metavar="KEY", help="private key (PEM) to sign with")
    pack.add_argument("--no-compress", action="store_true", help="store artifacts uncompressed")
    pack.set_defaults(func=_cmd_pack)

    verify = sub.add_parser(
        "verify",
        help="check a package's structure, hashes and signature",
        description="Exit 0 when the package is intact (and, with --trust, signed by a trusted key); "
        "otherwise exit 1 and print the reason.",
    )
    verify.add_argument("package", type=Path, metavar="X.edgepkg", help="the package to check")
    verify.add_argument(
        "--trust",
        action="append",
        type=Path,
        default=[],
        metavar="DIR_OR_PUB",
        help="trusted public key, or directory of *.pub keys; repeatable. Without it the signature is not checked",
    )
    verify.set_defaults(func=_cmd_verify)

    inspect = sub.add_parser(
        "inspect",
        help="summarise a package's manifest",
        description="Print name, version, inputs, outputs, artifacts and signer. Hashes are not checked "
        "(use edge verify).",
    )
    inspect.add_argument("package", type=Path, metavar="X.edgepkg", help="the package to summarise")
    inspect.add_argument("--json", action="store_true", help="print the manifest and package facts as JSON")
    inspect.set_defaults(func=_cmd_inspect)

    to_tflite = sub.add_parser(
        "to-tflite",
        help="convert a float ONNX convnet, or (--int8) a quantized package's plan, to a .tflite",
        description="Convert MODEL.onnx (Conv, depthwise Conv, Gemm, Add, Relu, Clip(0,6), pools, global "
        "average pool, Flatten, with batch norm folded) to a float32 .tflite for LiteRT / tflite-runtime. "
        "With --int8, MODEL is a package made by edge quantize (or a serialized native plan) and the "
        ".tflite is fully quantized from its INT8 plan: the same int8 per-channel weights, int32 biases, "
        "scales and zero points (uint8 activations as int8 with zero point - 128), float32 in and out. "
        "The .tflite keeps the NCHW input and the output names; an operator or plan step it cannot "
        "convert is named in the error. Pack it with edge pack MODEL.tflite:tflite.",
    )
    to_tflite.add_argument(
        "model", type=Path, metavar="MODEL",
        help="the float ONNX model; with --int8 a quantized package (.edgepkg) or a native plan file",
    )  # fmt: skip
    to_tflite.add_argument(
        "--int8", action="store_true",
        help="write a fully quantized int8 .tflite from the package's native INT8 plan, so that LiteRT "
        "(XNNPACK's qs8 kernels) runs exactly this quantization",
    )  # fmt: skip
    to_tflite.add_argument(
        "--out", "-o", type=Path, required=True, metavar="OUT.tflite", help="the .tflite file to write"
    )
    to_tflite.set_defaults(func=_cmd_to_tflite)

    # --- running models ---
    run = sub.add_parser(
        "run",
        help="run a model on .npy inputs",
        description="Load MODEL (.edgepkg, or a bare .onnx / .tflite), feed it .npy arrays, print a "
        "summary of each output and, with --out, write each output as DIR/<name>.npy.",
    )
    run.add_argument("model", type=Path, metavar="MODEL", help="a package (.edgepkg), .onnx or .tflite")
    run.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="an input array by name; for a single-input model NAME= may be left out. Repeatable",
    )
    run.add_argument("--out", type=Path, metavar="DIR", help="write each output to DIR/<name>.npy")
    run.add_argument("--json", action="store_true", help="print the model info and output summary as JSON")
    _add_load_arguments(run)
    run.set_defaults(func=_cmd_run)

    bench = sub.add_parser(
        "bench",
        help="measure cold start, latency, throughput and peak memory",
        description="Load MODEL, time the first result (cold start), warm up, then time runs on random "
        "inputs generated from the model's specs (seeded). Latency p50/p90/p99 in ms, throughput in "
        "samples/s, peak RSS of the process.",
    )
    bench.add_argument("model", type=Path, metavar="MODEL", help="a package (.edgepkg), .onnx or .tflite")
    bench.add_argument("--batch", type=_positive_int, default=1, metavar="B", help="batch size (default 1)")
    bench.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=N",
        help="size of another named dynamic dimension (e.g. seq=128). Repeatable",
    )
    bench.add_argument(
        "--warmup", type=_non_negative_int, default=5, metavar="W", help="untimed runs (default 5)"
    )
    amount = bench.add_mutually_exclusive_group()
    amount.add_argument(
        "--iterations", "-n", type=_positive_int, metavar="N", help="timed runs (default 100)"
    )
    amount.add_argument("--seconds", type=float, metavar="S", help="run for S seconds instead")
    bench.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_load_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    # --- serving ---
    from edge_runtime.serve.cli import register as register_serve

    register_serve(sub)


# --- the device ---


def _cmd_isa(args: argparse.Namespace) -> int:
    from edge_runtime import kernels

    print(f"active:    {kernels.get_isa()}")
    print(f"detected:  {kernels.detect_isa()}")
    print(f"supported: {', '.join(kernels.supported_isas())}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from device_profiles import PROFILES, detect_profile

    if args.list:
        if args.json:
            print(json.dumps({name: p.to_dict() for name, p in PROFILES.items()}, indent=2))
        else:
            for name, p in PROFILES.items():
                print(f"{name:18} {p.description}")
        return 0
    profile = detect_profile(args.root)
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2))
        return 0
    rows = [
        ("profile", f"{profile.name} ({profile.description})"),
        ("soc", profile.soc),
        ("cpu", f"{profile.cpu_cores} x {profile.cpu_core}"),
        ("kernel isa", profile.kernel_isa),
        ("memory", f"{profile.memory_mb} MiB"),
        (
            "bandwidth",
            f"{profile.memory_bandwidth_gbs:g} GB/s (spec peak, not measured; edge llm fits)"
            if profile.memory_bandwidth_gbs
            else "unknown",
        ),
        ("backends", " > ".join(str(b) for b in profile.backends)),
        ("threads", str(profile.threads)),
        ("max batch", str(profile.max_batch_size)),
        ("thermal", ", ".join(profile.thermal_zones) or "hottest zone"),
        ("throttling", profile.throttle_source or "none"),
    ]
    for key, value in rows:
        print(f"{key + ':':12} {value}")
    print("why:")
    for reason in profile.reasons:
        print(f"  - {reason}")
    return 0


# --- packages ---


def _cmd_keygen(args: argparse.Namespace) -> int:
    from edge_runtime.package import generate_keypair, key_id, load_public_key

    key_path, pub_path = generate_keypair(args.prefix)
    print(f"private key: {key_path} (mode 0600; keep it off devices)")
    print(f"public key:  {pub_path} (key id {key_id(load_public_key(pub_path))})")
    return 0


def _cmd_to_tflite(args: argparse.Namespace) -> int:
    if args.int8:
        from edge_runtime.backends.tflite_int8 import load_plan, plan_to_tflite_int8

        data = plan_to_tflite_int8(load_plan(args.model))
    else:
        from edge_runtime.backends.tflite_convert import convert_onnx_to_tflite

        data = convert_onnx_to_tflite(args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(data) / 1e6:.1f} MB)")
    return 0


def _parse_artifact_arg(spec: str) -> tuple[Path, str | None]:
    """``PATH[:KIND]``; a colon is read as a kind separator only if what follows looks like a kind."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and _KIND_RE.match(tail):
        return Path(head), tail
    return Path(spec), None


def _cmd_pack(args: argparse.Namespace) -> int:
    from edge_runtime.errors import PackageFormatError
    from edge_runtime.package import decode_manifest_json, load_private_key, write_package

    manifest: dict[str, Any] = decode_manifest_json(args.manifest.read_bytes())  # bounded: depth, numbers
    if not isinstance(manifest, dict):
        raise PackageFormatError(f"{args.manifest} must hold a JSON object")
    listed = {a.get("path"): a for a in manifest.get("artifacts", []) if isinstance(a, dict)}

    entries: list[dict[str, Any]] = []
    contents: dict[str, Path] = {}
    for spec in args.artifact:
        path, kind = _parse_artifact_arg(spec)
        name = path.name
        if not path.is_file():
            raise FileNotFoundError(f"artifact {path} does not exist")
        listed_kind = listed.get(name, {}).get("kind")
        if kind and listed_kind and kind != listed_kind:
            raise PackageFormatError(
                f"{name}: --artifact says kind {kind!r}, the manifest says {listed_kind!r}"
            )
        kind = kind or listed_kind or _KIND_BY_SUFFIX.get(path.suffix)
        if kind is None:
            raise PackageFormatError(f"cannot tell the kind of {path}; write --artifact {path}:KIND")
        if name in contents:
            raise PackageFormatError(f"two artifacts are named {name}; rename one")
        contents[name] = path
        entries.append({**listed.get(name, {}), "path": name, "kind": kind})
    manifest["artifacts"] = entries

    key = load_private_key(args.sign) if args.sign else None
    info = write_package(args.out, manifest, contents, signing_key=key, compress=not args.no_compress)
    signed = f"signed by {info.signer}" if info.signer else "UNSIGNED"
    print(f"{info.path}: {info.manifest.name} {info.manifest.version}, {info.size} bytes, {signed}")
    print(f"sha256 {info.sha256}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from edge_runtime.package import TrustStore, open_package

    trust = TrustStore.load(*args.trust) if args.trust else None
    with open_package(args.package, trust_store=trust) as pkg:
        pkg.verify()
        m = pkg.manifest
        if pkg.signer:
            trust_note = f"signed by trusted key {pkg.signer}"
        elif pkg.signature is not None:
            trust_note = f"signature by {pkg.signature.key_id} NOT checked (no --trust)"
        else:
            trust_note = "unsigned (no --trust given, so accepted)"
        print(f"OK {args.package}: {m.name} {m.version}, {len(m.artifacts)} artifact(s) intact, {trust_note}")
        print(f"sha256 {pkg.sha256}")
    return 0


def _shape(shape: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edge_runtime.package import open_package

    with open_package(args.package) as pkg:
        m = pkg.manifest
        claimed = pkg.signature.key_id if pkg.signature is not None else None
        partition = _plan_partition(pkg)
        if args.json:
            facts = {
                "path": str(pkg.path),
                "sha256": pkg.sha256,
                "size": pkg.size,
                "signed_by_claimed": claimed,
            }
            out = {"package": facts, "manifest": m.to_dict()}
            if partition is not None:
                out["partition"] = partition
            print(json.dumps(out, indent=2, sort_keys=True))
            return 0
        print(f"{m.name} {m.version}  (schema {m.schema_version}, created {m.created})")
        print(f"package:   {pkg.path}, {pkg.size} bytes, sha256 {pkg.sha256}")
        print(
            f"signature: {f'key {claimed} (not verified; use edge verify --trust)' if claimed else 'unsigned'}"
        )
        for title, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
            print(f"{title}:")
            for t in specs:
                pre = ""
                if t.preprocessing is not None:
                    pre = "  " + ", ".join(f"{k}={v}" for k, v in t.preprocessing.to_dict().items())
                print(f"  {t.name:16} {t.dtype:8} {_shape(t.shape)}{pre}")
        print("artifacts:")
        for a in m.artifacts:
            print(f"  {a.path:24} {a.kind:12} {a.size:>12} bytes  sha256 {a.sha256[:16]}...")
        if m.sparsity is not None:
            print(f"sparsity:  {m.sparsity.pattern} on {len(m.sparsity.layers)} layer(s)")
        req = m.requirements
        if req.min_runtime_version or req.isas or req.profiles:
            print(
                f"requires:  runtime >= {req.min_runtime_version or 'any'}; "
                f"isas {', '.join(req.isas) or 'any'}; profiles {', '.join(req.profiles) or 'any'}"
            )
        if m.selftest is not None:
            print(f"selftest:  {m.selftest.artifact} (atol {m.selftest.atol}, rtol {m.selftest.rtol})")
        if partition is not None:
            for line in _partition_lines(partition):
                print(line)
    return 0


def _plan_partition(pkg: Any) -> dict[str, Any] | None:
    """Which nodes of the package's native plan run where (None without a readable plan)."""
    if not any(a.kind == "native-plan" for a in pkg.manifest.artifacts):
        return None
    from edge_runtime.plan.partition import partition_report
    from edge_runtime.plan.quantized_plan import QuantizedPlan

    try:
        plan = QuantizedPlan.from_bytes(pkg.read_artifact("native-plan"))
    except Exception:  # noqa: BLE001 - inspect summarises; edge verify/run report a bad plan
        return None
    report = partition_report(plan)
    # Without loading, a foreign segment's engine is onnxruntime where installed, else the reference.
    engine = "float (onnxruntime, else the reference executor)"
    report["nodes"] = {k: (engine if v == "float" else v) for k, v in report["nodes"].items()}
    report["counts"] = {(engine if k == "float" else k): v for k, v in report["counts"].items()}
    for segment in report["segments"]:
        segment["engine"] = engine
    return report


def _partition_lines(report: dict[str, Any]) -> list[str]:
    share = report["native_mac_share"]
    counts = ", ".join(f"{n} {where}" for where, n in report["counts"].items())
    lines = [
        f"native plan: {len(report['nodes'])} node(s): {counts}"
        + ("" if share is None else f"; {share:.1%} of MACs on native kernels")
    ]
    for segment in report["segments"]:
        names = segment["nodes"]
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        lines.append(f"  in {segment['engine']}: {shown}")
    return lines


# --- running models ---


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto (default: from the device profile and the package), native, onnxruntime or tflite",
    )
    parser.add_argument(
        "--profile",
        default="auto",
        metavar="NAME",
        help="device profile to select the backend with (default: detect this device; see edge profile --list)",
    )
    parser.add_argument("--threads", type=_positive_int, metavar="N", help="threads (default: the profile's)")
    parser.add_argument(
        "--artifact",
        metavar="PATH_OR_KIND",
        help="run this artifact of the package (e.g. onnx for the float model) instead of the preferred one",
    )
    parser.add_argument(
        "--trust",
        action="append",
        type=Path,
        default=[],
        metavar="DIR_OR_PUB",
        help="require a package signed by this key (or a key in this directory); repeatable",
    )


def _load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from edge_runtime.package import TrustStore

    return {
        "backend": args.backend,
        "profile": args.profile,
        "threads": args.threads,
        "trust_store": TrustStore.load(*args.trust) if args.trust else None,
        "artifact": args.artifact,
    }


def _read_inputs(specs: list[str]) -> dict[str | None, Any]:
    """``NAME=FILE.npy`` (or ``FILE.npy``, keyed None) -> arrays; ModelInputError for a bad file."""
    import numpy as np

    from edge_runtime.errors import ModelInputError

    arrays: dict[str | None, Any] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        key, path = (name, Path(file)) if sep else (None, Path(spec))
        if key in arrays:
            raise ModelInputError(f"--input {spec}: input {key or '(unnamed)'} is given twice")
        try:
            arrays[key] = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ModelInputError(f"--input {spec}: {path} is not a .npy array ({exc})") from None
    return arrays


def _output_file_name(name: str) -> str:
    # Output names are ONNX tensor names ("logits", "dense/BiasAdd:0"): keep them file-safe.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".npy"


def _summary(arr: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {"dtype": arr.dtype.name, "shape": list(arr.shape)}
    if arr.size and arr.dtype.kind in "biuf":
        facts.update(min=float(arr.min()), max=float(arr.max()), mean=float(arr.mean()))
    return facts


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from edge_runtime import load
    from edge_runtime.errors import ModelInputError

    given = _read_inputs(args.input)
    with load(args.model, **_load_kwargs(args)) as model:
        if None in given:
            if len(given) > 1 or len(model.inputs) != 1:
                names = ", ".join(s.name for s in model.inputs)
                raise ModelInputError(f"the model has inputs {names}: name each one, --input NAME=FILE.npy")
            inputs: Any = given[None]
        else:
            inputs = given
        outputs = model.run(inputs)
        info = model.info()

    written: dict[str, str] = {}
    if args.out is not None:
        files = {name: _output_file_name(name) for name in outputs}
        if len(set(files.values())) != len(files):
            raise ModelInputError(f"output names {', '.join(outputs)} map to clashing file names")
        args.out.mkdir(parents=True, exist_ok=True)
        for name, arr in outputs.items():
            target = args.out / files[name]
            np.save(target, arr, allow_pickle=False)
            written[name] = str(target)

    if args.json:
        summary = {name: {**_summary(arr), "file": written.get(name)} for name, arr in outputs.items()}
        print(json.dumps({"info": info, "outputs": summary}, indent=2, sort_keys=True))
        return 0
    src, version = info["source"], f" {info['version']}" if info["version"] else ""
    print(f"model:   {info['name']}{version} ({src['kind']}, sha256 {src['sha256'][:16]}...)")
    print(f"backend: {info['backend']} ({info['reason']})")
    for name, arr in outputs.items():
        facts = _summary(arr)
        stats = ""
        if "min" in facts:
            stats = f"  min {facts['min']:.4g}  max {facts['max']:.4g}  mean {facts['mean']:.4g}"
        where = f"  -> {written[name]}" if name in written else ""
        print(f"  {name:16} {arr.dtype.name:8} {_shape(arr.shape)}{stats}{where}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edge_runtime.benchmark import benchmark
    from edge_runtime.errors import ModelInputError

    dims: dict[str, int] = {}
    for spec in args.dim:
        name, sep, size = spec.partition("=")
        if not sep or not size.isdigit() or int(size) < 1:
            raise ModelInputError(f"--dim {spec}: expected NAME=N with N >= 1")
        dims[name] = int(size)
    result = benchmark(
        args.model,
        **_load_kwargs(args),
        batch=args.batch,
        dims=dims,
        warmup=args.warmup,
        iterations=args.iterations,
        seconds=args.seconds,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return 0
    lat = result.latency_ms
    print(f"model:       {result.model} on {result.backend} (threads {result.threads}, batch {result.batch})")
    print(f"why:         {result.reason}")
    print(
        f"cold start:  {result.cold_start_ms:.2f} ms "
        f"(load {result.load_ms:.2f} ms + first run {result.first_run_ms:.2f} ms)"
    )
    print(
        f"latency:     p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f} ms  p99 {lat['p99']:.3f} ms  "
        f"({result.iterations} runs after {result.warmup} warm-up)"
    )
    print(f"throughput:  {result.throughput:.1f} samples/s")
    print(f"peak RSS:    {result.peak_rss_mib:.1f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args, f"edge {args.command}")


def run_command(args: argparse.Namespace, name: str) -> int:
    """Run a parsed command; a typed error of any package (or an OSError) is one line and exit 1."""
    expected = tuple(root for group in command_groups() for root in group.errors)
    try:
        return int(args.func(args) or 0)
    except (*expected, OSError) as exc:
        # Expected failures (a bad package, a missing file, an unknown id): one line, no traceback.
        if args.verbose:
            logging.getLogger("edge").exception("%s failed", name)
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."


if __name__ == "__main__":
    sys.exit(main())
