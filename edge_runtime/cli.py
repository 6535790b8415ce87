"""The ``edge`` command: subcommands grouped by who uses them.

Every command returns an exit code: 0 on success, 1 when the work failed
(the reason on one line of stderr), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from edge_runtime._version import __version__
from edge_runtime.errors import EdgeRuntimeError

__all__ = ["build_parser", "main"]

# Kinds guessed from the file name when `edge pack --artifact` gives none.
_KIND_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite", ".npz": "selftest"}
_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,31}$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge",
        description="Edge inference runtime: quantize, package, serve and roll out INT8 models.",
    )
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    verify.add_argument("package", type=Path, metavar="X.edgepkg")
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
    inspect.add_argument("package", type=Path, metavar="X.edgepkg")
    inspect.add_argument("--json", action="store_true", help="print the manifest and package facts as JSON")
    inspect.set_defaults(func=_cmd_inspect)
    return parser


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


def _parse_artifact_arg(spec: str) -> tuple[Path, str | None]:
    """``PATH[:KIND]``; a colon is read as a kind separator only if what follows looks like a kind."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and _KIND_RE.match(tail):
        return Path(head), tail
    return Path(spec), None


def _cmd_pack(args: argparse.Namespace) -> int:
    from edge_runtime.errors import PackageFormatError
    from edge_runtime.package import load_private_key, write_package

    try:
        manifest: dict[str, Any] = json.loads(args.manifest.read_text())
    except json.JSONDecodeError as exc:
        raise PackageFormatError(f"{args.manifest} is not valid JSON: {exc}") from None
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
        if args.json:
            facts = {
                "path": str(pkg.path),
                "sha256": pkg.sha256,
                "size": pkg.size,
                "signed_by_claimed": claimed,
            }
            print(json.dumps({"package": facts, "manifest": m.to_dict()}, indent=2, sort_keys=True))
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
    try:
        return int(args.func(args) or 0)
    except (EdgeRuntimeError, OSError) as exc:
        # Expected failures (a bad package, a missing file): one line, no traceback.
        if args.verbose:
            logging.getLogger("edge").exception("edge %s failed", args.command)
        print(f"edge {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
