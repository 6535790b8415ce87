"""The ``edge`` command: subcommands grouped by who uses them."""

from __future__ import annotations

import argparse
import logging
import sys

from edge_runtime._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge",
        description="Edge inference runtime: quantize, package, serve and roll out INT8 models.",
    )
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    isa = sub.add_parser("isa", help="show the CPU features and the kernel path in use")
    isa.set_defaults(func=_cmd_isa)
    return parser


def _cmd_isa(args: argparse.Namespace) -> int:
    from edge_runtime import kernels

    print(f"active:    {kernels.get_isa()}")
    print(f"detected:  {kernels.detect_isa()}")
    print(f"supported: {', '.join(kernels.supported_isas())}")
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
