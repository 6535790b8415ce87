"""``edge serve`` and ``edge swap``: the serving commands, registered into the main ``edge`` parser.

::

    edge serve --model digits=digits.edgepkg --port 8000 --max-batch-size 16
    edge serve --model digits=digits.edgepkg --grpc 127.0.0.1:8001   # and the gRPC API (tritonclient.grpc)
    edge serve --config /etc/edge/serve.toml          # flags given as well override the file
    edge serve --install-service [--prefix DIR]       # write the systemd unit, print systemctl commands
    edge swap digits digits-1.3.edgepkg [--url URL]   # hot-swap a model of a running server
    edge serve --model digits=/var/lib/edge/models/digits/current   # a model store entry
    edge serve --fleet home --device pi4 --broker mqtts://broker:8883 --trust /etc/edge/trust
                                                      # with the fleet agent (OTA) in the process
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge_runtime.serve.batcher import BatchingConfig
from edge_runtime.serve.config import ModelConfig, ServeConfig, load_config
from edge_runtime.serve.errors import ServeConfigError
from edge_runtime.serve.hosting import AgentSpec, serve_plugins
from edge_runtime.serve.llm_limits import LLMLimits

__all__ = ["agent_from_args", "config_from_args", "register"]

log = logging.getLogger(__name__)

_BATCHING_FLAGS = {
    "max_batch_size": "max_batch_size",
    "max_queue_delay_us": "max_queue_delay_us",
    "preferred_batch_sizes": "preferred_batch_sizes",
    "max_queue_size": "max_queue_size",
    "latency_target_us": "latency_target_us",
    "batch_workers": "workers",
    "pad_to_preferred": "pad_to_preferred",
}
_LLM_FLAGS = ("max_sequences", "max_queue", "max_context", "prefill_tokens")  # --llm-max-sequences ...


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``serve`` and ``swap`` to the ``edge`` command."""
    serve = subparsers.add_parser(
        "serve",
        help="serve models over HTTP and gRPC (Open Inference Protocol / KServe v2) with dynamic batching",
        description="Serve model packages over the Open Inference Protocol (KServe v2 REST, and gRPC "
        "with --grpc) with "
        "dynamic batching, hot swap, Prometheus metrics and systemd integration. See docs/serving.md.",
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML (or .json) serving config")
    serve.add_argument(
        "--model", action="append", default=[], metavar="NAME=PATH", help="serve PATH as NAME (repeatable)"
    )
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8000; 0 picks a free one)")
    serve.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        help="also serve the Open Inference Protocol's gRPC API (KServe v2 / Triton "
        "inference.GRPCInferenceService, what tritonclient.grpc speaks) on HOST:PORT, e.g. "
        "127.0.0.1:8001 (Triton's gRPC port); 0 as the port picks a free one; 'off' turns off one a "
        "config enables (default off; needs the grpc extra: pip install 'edge-runtime[grpc]')",
    )
    serve.add_argument("--backend", help="auto, native, onnxruntime or tflite")
    serve.add_argument("--threads", type=int, help="intra-op threads per model (default: the profile's)")
    serve.add_argument("--trust-dir", type=Path, help="refuse packages not signed by a key in DIR")
    serve.add_argument(
        "--drain-timeout", type=float, dest="drain_timeout_s", help="seconds to drain on SIGTERM"
    )
    serve.add_argument("--no-repository-api", action="store_true", help="disable POST /v2/repository/...")
    serve.add_argument(
        "--keep-versions",
        type=int,
        metavar="N",
        help="versions of each model kept loaded after a swap, the current one included (default 1); "
        "older ones answer /v2/models/NAME/versions/VERSION/...",
    )
    batching = serve.add_argument_group("dynamic batching (applies to every model)")
    batching.add_argument("--max-batch-size", type=int, help="rows per model run; 1 turns batching off")
    batching.add_argument(
        "--max-queue-delay-us",
        type=int,
        help="longest wait to fill a batch (default 0: a batch is what queued while the worker was busy)",
    )
    batching.add_argument("--preferred-batch-sizes", type=_sizes, metavar="N,N", help="e.g. 4,8")
    batching.add_argument(
        "--pad-to-preferred", action="store_true", default=None, help="pad batches to a preferred size"
    )
    batching.add_argument("--max-queue-size", type=int, help="queued requests before answering 503")
    batching.add_argument("--latency-target-us", type=int, help="dispatch early to meet this latency")
    batching.add_argument("--batch-workers", type=int, help="batches computed at once per model")
    llm = serve.add_argument_group(
        "language models (continuous batching; applies to every LLM package, see docs/llm.md)"
    )
    llm.add_argument(
        "--llm-max-sequences", type=int, metavar="N", help="generations decoding together (default 8)"
    )
    llm.add_argument(
        "--llm-max-queue",
        type=int,
        metavar="N",
        help="generations waiting for a slot before 503 (default 64)",
    )
    llm.add_argument(
        "--llm-max-context",
        type=int,
        metavar="TOKENS",
        help="prompt + max_tokens of one request, over it 400 (default 0: the model's context)",
    )
    llm.add_argument(
        "--llm-prefill-tokens",
        type=int,
        metavar="N",
        help="prompt tokens per forward pass beside the running generations (default 128)",
    )
    for plugin in serve_plugins():  # the fleet agent's options, when the fleet is installed
        plugin.add_arguments(serve)
    service = serve.add_argument_group("systemd")
    service.add_argument(
        "--install-service", action="store_true", help="write the systemd unit for this install and exit"
    )
    service.add_argument(
        "--prefix", type=Path, default=Path("/"), help="install the unit below DIR (default /)"
    )
    serve.set_defaults(func=_cmd_serve)

    swap = subparsers.add_parser(
        "swap",
        help="hot-swap a model of a running server to a new package",
        description="Ask a running `edge serve` to load PACKAGE as NAME beside the running version, "
        "self-test it and switch; on failure the old version keeps serving and the reason is printed.",
    )
    swap.add_argument("name", metavar="NAME", help="the served model's name")
    swap.add_argument(
        "package", metavar="PACKAGE", type=Path, help="the package to swap to (a path the server can read)"
    )
    swap.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    swap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default %(default)s)")
    swap.set_defaults(func=_cmd_swap)


def _parse_model(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ServeConfigError(f"--model expects NAME=PATH, got {text!r}")
    return name, Path(os.path.abspath(path))  # not resolved: a store `current` link stays a link


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The config file (if any) with the flags given on top."""
    config = load_config(args.config) if args.config else ServeConfig()
    server: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("host", "port", "backend", "threads", "trust_dir", "drain_timeout_s", "keep_versions")
        if getattr(args, key, None) is not None
    }
    if args.grpc is not None:
        server["grpc"] = "" if args.grpc == "off" else args.grpc
    if args.no_repository_api:
        server["repository_api"] = False
    overrides = {
        field: getattr(args, flag)
        for flag, field in _BATCHING_FLAGS.items()
        if getattr(args, flag, None) is not None
    }

    def batching(b: BatchingConfig) -> BatchingConfig:
        return dataclasses.replace(b, **overrides) if overrides else b

    llm_overrides = {
        key: getattr(args, "llm_" + key)
        for key in _LLM_FLAGS
        if getattr(args, "llm_" + key, None) is not None
    }

    def llm(limits: LLMLimits) -> LLMLimits:
        return LLMLimits(**{**limits.to_dict(), **llm_overrides}) if llm_overrides else limits

    models = [dataclasses.replace(m, batching=batching(m.batching), llm=llm(m.llm)) for m in config.models]
    default = batching(config.batching)
    default_llm = llm(config.llm)
    for text in args.model:
        name, path = _parse_model(text)
        models = [m for m in models if m.name != name] + [ModelConfig(name, path, default, llm=default_llm)]
    return config.replace(**server, batching=default, llm=default_llm, models=tuple(models))


def agent_from_args(args: argparse.Namespace) -> AgentSpec | None:
    """The agent a plugin's options ask ``edge serve`` to host (the fleet agent), or None."""
    specs = [spec for plugin in serve_plugins() if (spec := plugin.from_args(args)) is not None]
    if len(specs) > 1:
        raise ServeConfigError("edge serve hosts one agent; the options ask for several")
    return specs[0] if specs else None


def _cmd_serve(args: argparse.Namespace) -> int:
    from edge_runtime.serve.server import serve
    from edge_runtime.serve.systemd import UNIT_NAME, exec_start_for_this_install, install_service

    if args.install_service:
        config = (args.config or Path("/etc/edge/serve.toml")).absolute()
        path = install_service(args.prefix, config)
        print(f"wrote {path}\nExecStart={exec_start_for_this_install(config)}")
        print("now run:")
        print("  sudo systemctl daemon-reload")
        print(f"  sudo systemctl enable --now {UNIT_NAME}")
        print(f"  systemctl status {UNIT_NAME}; journalctl -u {UNIT_NAME} -f")
        if not config.exists():
            print(f"(and write the config {config}: see docs/serving.md)")
        return 0
    config = config_from_args(args)
    agent_spec = agent_from_args(args)
    if not config.models and agent_spec is None:
        print(
            "edge serve: nothing to serve: give --model NAME=PATH, --config FILE or --fleet/--device",
            file=sys.stderr,
        )
        return 2
    return serve(config, agent_spec=agent_spec)


def _cmd_swap(args: argparse.Namespace) -> int:
    url = f"{args.url.rstrip('/')}/v2/repository/models/{args.name}/load"
    body = json.dumps({"parameters": {"path": os.path.abspath(args.package)}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        print(f"edge swap: {detail}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"edge swap: cannot reach {args.url}: {exc.reason}", file=sys.stderr)
        return 1
    print(
        f"{result['name']}: now serving version {result['version']} (was {result['previous_version']}), "
        f"loaded and self-tested in {result['seconds']:.2f}s"
    )
    return 0
