"""``edge train fit|export|push``: the trainer's command line.

``edge`` (``edge_runtime.cli``) calls :func:`register` with its subparsers; the same
commands run standalone as ``python -m cloud_trainer.cli train ...``, which is also the
entry point for ``torchrun``, SLURM and Kubernetes (see ``deploy/``)::

    edge train fit --config cloud_trainer/configs/digits.yaml [-- --trainer.max_epochs 5 ...]
    edge train export runs/digits/checkpoints/last.ckpt --out digits.edgepkg [--sign key.pem]
    edge train push digits.edgepkg --fleet http://manager:8080

``fit`` follows LightningCLI conventions: a YAML file with ``trainer``, ``model`` and
``data`` sections (callbacks and their settings under ``trainer.callbacks``), and any
option overridden after a ``--`` as ``--section.key value``. It resumes from the newest
``last.ckpt``/``on_exception.ckpt`` in the ModelCheckpoint directory unless told
``--ckpt-path none`` (or given a path), which is what makes ``torchrun --max-restarts``
recover a run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cloud_trainer.errors import TrainerError
from edge_runtime.cli import CommandGroup

__all__ = ["COMMANDS", "fit", "main", "register"]


def register(subparsers: Any) -> None:
    """Add ``train`` (with ``fit``, ``export``, ``push``) to an argparse subparsers object."""
    train = subparsers.add_parser("train", help="train, export and publish models (needs the trainer extra)")
    commands = train.add_subparsers(dest="train_command", required=True)

    p = commands.add_parser(
        "fit", help="train with a LightningCLI YAML config; resumes from the last checkpoint"
    )
    p.add_argument("--config", required=True, help="YAML with trainer/model/data sections")
    p.add_argument(
        "--ckpt-path", default="auto", help="'auto' (resume if a last checkpoint exists), 'none', or a path"
    )
    p.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="LightningCLI overrides, e.g. --trainer.max_epochs 3"
    )
    p.set_defaults(func=_cmd_fit)

    p = commands.add_parser(
        "export", help="checkpoint -> signed model package (float ONNX, QAT params, native plan)"
    )
    p.add_argument("checkpoint", help="the Lightning checkpoint (.ckpt) to export")
    p.add_argument("--out", required=True, help="the .edgepkg to write")
    p.add_argument("--sign", default=None, help="Ed25519 private key (PEM) to sign the manifest with")
    p.add_argument("--name", default=None, help="the package's model name (default: the model's)")
    p.add_argument(
        "--version", default="1.0.0", dest="package_version", help="the package's version (default 1.0.0)"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="threads of the native self-test and checks (default 1)"
    )
    p.set_defaults(func=_cmd_export)

    p = commands.add_parser("push", help="upload a package to the fleet manager (POST /api/v1/packages)")
    p.add_argument("package", help="the .edgepkg to upload")
    p.add_argument("--fleet", required=True, help="the manager's base URL, e.g. http://manager:8080")
    p.add_argument("--token", default=None, help="bearer token (default: $EDGE_FLEET_TOKEN)")
    p.set_defaults(func=_cmd_push)


def _fresh_store_per_attempt() -> None:
    """Under torchrun, give each restart attempt its own rendezvous store for the process group.

    With torchrun's shared agent store, a restarted gloo group can read the addresses that
    the previous attempt's ranks published (seen with torch 2.13): a rank that starts later
    than its peer (rank 0 loading a checkpoint) then makes the peer connect to a dead port
    ("Gloo connectFullMesh failed ... Connection refused"). Rank 0 hosts a new TCPStore on
    ``MASTER_PORT + 1 + attempt`` instead, so that port range must be reachable between nodes.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or "MASTER_PORT" not in os.environ or os.environ.get("EDGE_TRAIN_AGENT_STORE") == "1":
        return
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "False"
    os.environ["MASTER_PORT"] = str(int(os.environ["MASTER_PORT"]) + 1 + int(attempt))


def fit(config: str | Path, overrides: list[str] | None = None, ckpt_path: str = "auto") -> Any:
    """Run ``trainer.fit`` from a LightningCLI config; returns the trainer."""
    from pytorch_lightning import LightningDataModule
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    from cloud_trainer.lightning import EdgeModule, resume_checkpoint

    _fresh_store_per_attempt()
    cli = LightningCLI(
        EdgeModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["--config", str(config), *(overrides or [])],
        run=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )
    resume: str | None
    if ckpt_path == "auto":
        dirs = [cb.dirpath for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        found = next((p for p in (resume_checkpoint(d) for d in dirs) if p is not None), None)
        resume = str(found) if found else None
        if resume and cli.trainer.is_global_zero:
            print(f"resuming from {resume}", file=sys.stderr)
    else:
        resume = None if ckpt_path == "none" else ckpt_path
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    return cli.trainer


def _cmd_fit(args: argparse.Namespace) -> int:
    overrides = [a for a in args.overrides if a != "--"]
    fit(args.config, overrides, args.ckpt_path)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from cloud_trainer.export import export_package

    result = export_package(
        args.checkpoint,
        args.out,
        signing_key=args.sign,
        name=args.name,
        version=args.package_version,
        threads=args.threads,
    )
    print(f"{result.path}  sha256 {result.sha256}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from cloud_trainer.push import main_push

    return main_push(args.package, args.fleet, args.token)


def main(argv: list[str] | None = None) -> int:
    """``python -m cloud_trainer.cli train ...``; typed trainer errors become one line and exit code 1."""
    parser = argparse.ArgumentParser(prog="edge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


COMMANDS = CommandGroup(register, (TrainerError,), order=20)
