"""``python -m edge_runtime.serve serve|swap ...``: the serving commands without the rest of ``edge``."""

from __future__ import annotations

import argparse
import logging
import sys

from edge_runtime.cli import run_command
from edge_runtime.serve.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime.serve")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_command(args, args.command)  # typed errors of the hosted agent too: one line


if __name__ == "__main__":
    sys.exit(main())
