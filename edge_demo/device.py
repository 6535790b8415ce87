"""A simulated device: ``edge serve`` and the fleet agent in one process, with its own state directory.

::

    python -m edge_demo.device --fleet demo --device pi4-kitchen --profile raspberrypi-4b \\
        --state-dir DIR --broker mqtt://127.0.0.1:1883 --trust demo.pub --ready-file DIR/ready.json \\
        [--fault-version 2.0.0]

It runs what ``edge serve --fleet ... --device ...`` runs (:mod:`fleet.serve_agent`): the
Open Inference Protocol server (:class:`~edge_runtime.serve.ServerThread`, on a free loopback port)
serving the models committed in ``--state-dir`` (none at first), with the device agent inside
driving the server's models: deployments hot-swap them. Once the server is ready (the agent
connects in the background) it writes ``--ready-file`` (JSON: ``url``, ``pid``, ``device``,
``profile``) and serves until SIGTERM or SIGINT, then stops the agent (which publishes
``offline``) and drains the server. What the demo adds is its simulated profile and loader.

The profile is simulated: it chooses the backend (``edge_runtime.load(profile=...)``), the
batch size and what the agent reports; the kernels run on this machine's CPU.

Fault injection (the demo's failing device). ``--fault-version V`` (or ``EDGE_DEMO_FAULT_VERSION``)
wraps every loaded model whose manifest version is ``V``: its load-time self-test runs normally
(so the hot swap succeeds), and from then on every inference and every self-test probe raises
:class:`~edge_demo.errors.InjectedFaultError`, like a fault that only shows in service
(a driver bug under load). The agent's health window sees the errors and rolls the device back
locally. Other versions are untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_demo.errors import InjectedFaultError

__all__ = ["FAULT_ENV", "FaultyModel", "main", "make_loader"]

log = logging.getLogger("edge.demo.device")

FAULT_ENV = "EDGE_DEMO_FAULT_VERSION"


class FaultyModel:
    """A model that passes its first self-test, then fails every run and self-test (see the module doc)."""

    def __init__(self, model: Any, device: str) -> None:
        self._model = model
        self._device = device
        self._armed = False

    def _fail(self, what: str) -> InjectedFaultError:
        return InjectedFaultError(
            f"injected fault on {self._device}: {what} of version {self._model.version} fails "
            f"(demo --fault-version)"
        )

    def selftest(self, **kwargs: Any) -> Any:
        if self._armed:
            raise self._fail("self-test")
        self._armed = True  # the swap's self-test passes; the fault shows in service
        return self._model.selftest(**kwargs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._armed:
            raise self._fail("inference")
        result: dict[str, np.ndarray] = self._model.run(inputs)
        return result

    def __getattr__(self, name: str) -> Any:  # inputs, outputs, info, close, version, has_selftest ...
        return getattr(self._model, name)


def make_loader(profile: str, threads: int, trust_store: Any, device: str, fault_version: str | None) -> Any:
    """A serve loader: ``edge_runtime.load`` for this simulated profile, with the demo fault if asked;
    language model packages through ``edge_runtime.llm.load`` (checked against the profile's memory)."""

    def load(path: Path) -> Any:
        import edge_runtime
        from edge_runtime.llm.package import is_llm_package

        if is_llm_package(path):  # a language model (edge demo --llm): refused if it does not fit the profile
            from edge_runtime import llm

            language_model = llm.load(path, threads=threads, trust_store=trust_store, profile=profile)
            log.info(
                "loaded language model %s (%s)", language_model.config.name, language_model.weights_format
            )
            return language_model
        model = edge_runtime.load(path, profile=profile, threads=threads, trust_store=trust_store)
        info = model.info()
        log.info(
            "loaded %s %s on %s (%s)", model.name, model.version, info.get("backend"), info.get("reason")
        )
        if fault_version is not None and model.version == fault_version:
            log.warning("version %s carries the injected fault on this device", model.version)
            return FaultyModel(model, device)
        return model

    return load


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_demo.device", description=__doc__.split("\n")[0])
    p.add_argument("--fleet", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--profile", required=True, help="a device profile name (edge profile --list)")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--broker", required=True, help="mqtt://host:port")
    p.add_argument("--trust", type=Path, action="append", default=[], help="trusted .pub (repeatable)")
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per model (default 1)")
    p.add_argument("--telemetry-interval", type=float, default=1.0, metavar="S")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument(
        "--fault-version",
        default=os.environ.get(FAULT_ENV) or None,
        metavar="VERSION",
        help=f"inject a fault into this model version (default ${FAULT_ENV})",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{args.device}] %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    import dataclasses

    from device_profiles import PROFILES
    from edge_runtime.package import TrustStore
    from edge_runtime.serve import BatchingConfig, ServeConfig, ServerThread
    from fleet.agent_options import AgentOptions

    profile = PROFILES[args.profile]
    trust = TrustStore.load(*args.trust) if args.trust else None
    batching = dataclasses.replace(BatchingConfig(), max_batch_size=profile.max_batch_size)
    config = ServeConfig(host="127.0.0.1", port=0, batching=batching, drain_timeout_s=5.0)
    loader = make_loader(args.profile, args.threads, trust, args.device, args.fault_version)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    agent = AgentOptions(
        fleet=args.fleet,
        device=args.device,
        state_dir=args.state_dir,
        broker=args.broker,
        trust=tuple(args.trust),
        tags=tuple(args.tag),
        profile=args.profile,
        telemetry_interval_s=args.telemetry_interval,
    )
    server = ServerThread(config, loader=loader, agent_spec=agent).start()
    try:
        ready = {"url": server.url, "pid": os.getpid(), "device": args.device, "profile": args.profile}
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready))
        os.replace(tmp, args.ready_file)
        log.info("device %s (%s) serving on %s", args.device, args.profile, server.url)
        while not stop.wait(0.5):
            pass
        log.info("stopping")
    finally:
        server.stop(timeout=30)  # the agent first (it publishes "offline"), then the drain
    return 0


if __name__ == "__main__":
    sys.exit(main())
