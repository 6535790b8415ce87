"""Fixtures: real servers on free loopback ports (port 0), stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

from serve_helpers import load_linear, write_linear

from edge_runtime.serve import BatchingConfig, ModelConfig, ServeConfig, ServerThread

StartServer = Callable[..., ServerThread]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """``start_server(models={name: path}, batching=..., loader=..., **server_fields)``."""
    started: list[ServerThread] = []

    def start(
        models: dict[str, Path],
        batching: BatchingConfig | None = None,
        loader: Any = load_linear,
        **fields: Any,
    ) -> ServerThread:
        batching = batching or BatchingConfig()
        config = ServeConfig(
            host="127.0.0.1",
            port=0,
            batching=batching,
            drain_timeout_s=10,
            models=tuple(ModelConfig(n, p, batching) for n, p in models.items()),
            **fields,
        )
        srv = ServerThread(config, loader=loader).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def linear_v1(tmp_path: Path) -> Path:
    return write_linear(tmp_path / "linear-1.json", "1.0", seed=1)
