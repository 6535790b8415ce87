"""A language model in the fleet: `edge serve` hosting the agent, a real mosquitto, the manager here.

The device's telemetry carries the generation metrics (time to first token, inter-token latency,
queue time, tokens/s: ``models[name].llm``, validated by fleet.protocol), and a rollout's health
window judges them against the previous version (``max_ttft_ratio``, ``min_tokens_per_s_ratio``):
a ratio no version can meet fails the window and the device keeps the old version; a lenient one
commits. The ratios make the outcome certain, never the machine's speed.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("paho.mqtt")
pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "llm"))

from _tiny import TinySpec, train_tokenizer, write_gguf
from fleet_helpers import Mosquitto, seed_device, wait_for, write_key

from fleet.agent_options import AgentOptions
from fleet.manager.rollout import RolloutSpec
from fleet.manager.service import FleetManager, ManagerConfig
from fleet.mqtt import BrokerConfig, make_client
from fleet.protocol import HealthPolicy, ProtocolError, Telemetry, topic

FLEET, DEVICE, NAME = "test", "pi-llm", "chat"


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    from edge_runtime import llm

    tmp = tmp_path_factory.mktemp("llm-fleet")
    key = write_key(tmp / "trust" / "release")
    gguf = tmp / "tiny.gguf"
    write_gguf(gguf, TinySpec(), train_tokenizer())
    out = {"trust": tmp / "trust"}
    for version in ("1.0", "2.0", "3.0"):
        out[version] = llm.convert(
            gguf, tmp / f"chat-{version}.edgepkg", signing_key=key, name=NAME, version=version
        ).path
    return out


def _complete(url: str) -> dict[str, Any]:
    body = json.dumps({"model": NAME, "prompt": "Hello", "max_tokens": 6, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


class _Telemetry:
    """The device's telemetry messages as a subscriber on the broker sees them (parsed, validated)."""

    def __init__(self, broker_url: str) -> None:
        self.messages: list[Telemetry] = []
        self._lock = threading.Lock()
        self.client = make_client("test-telemetry-reader", BrokerConfig(broker_url))
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", BrokerConfig(broker_url).port)
        self.client.subscribe(topic(FLEET, DEVICE, "telemetry"), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(Telemetry.from_dict(json.loads(msg.payload)))

    def llm_windows(self, version: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                t.models[NAME]["llm"]
                for t in self.messages
                if NAME in t.models and t.models[NAME]["version"] == version and "llm" in t.models[NAME]
            ]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _deploy(manager: FleetManager, package: Path, health: HealthPolicy) -> dict[str, Any]:
    sha = manager.packages.add(package)["sha256"]
    deployment = manager.deploy(sha, RolloutSpec(health=health, block_size=65536))
    return wait_for(  # type: ignore[no-any-return]
        lambda: (s := manager.rollouts.status(deployment["id"]))["state"] not in ("running", "paused") and s,
        120,
        "the deployment to finish",
    )


def test_telemetry_carries_generation_metrics_and_the_health_window_judges_them(packages, tmp_path):
    from edge_runtime.serve import ServeConfig, ServerThread

    state = tmp_path / "device"
    seed_device(state, packages["1.0"], packages["trust"])
    broker = Mosquitto(tmp_path / "broker").start()
    manager = FleetManager(
        ManagerConfig(FLEET, tmp_path / "manager", BrokerConfig(broker.url), tick_interval_s=0.2)
    ).start()
    reader = _Telemetry(broker.url)
    options = AgentOptions(
        fleet=FLEET,
        device=DEVICE,
        state_dir=state,
        broker=broker.url,
        trust=(packages["trust"],),
        telemetry_interval_s=0.3,
    )
    try:
        with ServerThread(ServeConfig(port=0, threads=1), agent_spec=options) as server:
            wait_for(
                lambda: any(d["id"] == DEVICE and d["online"] for d in manager.devices()),
                30,
                "the device online",
            )
            for _ in range(3):
                assert _complete(server.url)["model"] == NAME
            # Telemetry: the window's generations with their histograms, as the broker carried them.
            wait_for(
                lambda: sum(w["generations"] for w in reader.llm_windows("1.0")) >= 3, 30, "LLM telemetry"
            )
            windows = reader.llm_windows("1.0")
            assert sum(w["tokens"] for w in windows) >= 3
            for w in windows:
                for key in ("ttft_ms", "itl_ms", "queue_ms", "tokens_per_s"):
                    assert len(w[key]["counts"]) == len(w[key]["le"]) + 1
                assert sum(w["ttft_ms"]["counts"]) == w["generations"]

            # A TTFT ratio no version meets: the window fails on it and 1.0 keeps serving.
            strict = HealthPolicy(
                window_s=0.5, max_latency_ratio=1e6, min_inferences=1, max_ttft_ratio=1e-9, min_generations=1
            )
            failed = _deploy(manager, packages["2.0"], strict)
            assert failed["state"] != "succeeded", failed
            reasons = " ".join(str(d.get("reason")) for d in failed["devices"])
            assert "time to first token" in reasons, failed
            assert _complete(server.url)["model"] == NAME
            assert server.manager.get(NAME).version == "1.0"

            # Lenient ratios: the probes' generations are judged and pass; 3.0 commits.
            lenient = HealthPolicy(
                window_s=0.5,
                max_latency_ratio=1e6,
                min_inferences=1,
                max_ttft_ratio=1e6,
                min_tokens_per_s_ratio=0.0,
                min_generations=1,
            )
            done = _deploy(manager, packages["3.0"], lenient)
            assert done["state"] == "succeeded", done
            assert server.manager.get(NAME).version == "3.0"
            # The health window's probe generations show in 3.0's telemetry without any client traffic.
            wait_for(lambda: reader.llm_windows("3.0"), 30, "3.0's LLM telemetry")
    finally:
        reader.close()
        manager.stop()
        broker.stop()


def test_llm_telemetry_is_validated():
    base = {"device": "d", "stream": "s", "seq": 1, "ts": 1.0, "window_s": 1.0}
    hist = {"le": [10.0, 100.0], "counts": [1, 1, 0]}
    good = {
        "version": "1",
        "inferences": 0,
        "errors": 0,
        "llm": {"generations": 2, "tokens": 9, "ttft_ms": hist},
    }
    t = Telemetry.from_dict({**base, "models": {"m": good}})
    assert t.models["m"]["llm"] == {"generations": 2, "tokens": 9, "ttft_ms": hist}
    for bad, match in (
        ({"generations": -1}, "generations"),
        ({"tokens": 1.5}, "tokens"),
        ({"itl_ms": {"le": [2.0, 1.0], "counts": [0, 0, 0]}}, "increase"),
        ({"queue_ms": {"le": [1.0], "counts": [0]}}, "counts"),
        ({"tokens_per_s": "fast"}, "tokens_per_s"),
    ):
        with pytest.raises(ProtocolError, match=match):
            Telemetry.from_dict({**base, "models": {"m": {**good, "llm": bad}}})
    assert HealthPolicy.from_dict({"max_ttft_ratio": 1.5, "min_generations": 2}).max_ttft_ratio == 1.5
    with pytest.raises(ProtocolError, match="min_tokens_per_s_ratio"):
        HealthPolicy.from_dict({"min_tokens_per_s_ratio": 2})


def test_edge_fleet_deploy_passes_the_llm_health_ratios(monkeypatch):
    import fleet.cli

    sent: list[Any] = []

    def call(_args: Any, method: str, path: str, body: Any = None, data: Any = None) -> Any:
        sent.append(body)
        return {"id": "d1", "state": "running", "devices": []}

    monkeypatch.setattr(fleet.cli, "_call", call)
    argv = [
        "fleet",
        "deploy",
        "abc123",
        "--all",
        "--max-ttft-ratio",
        "1.5",
        "--min-tokens-per-s-ratio",
        "0.8",
    ]
    assert fleet.cli.main(argv) == 0
    health = sent[0]["spec"]["health"]
    assert health["max_ttft_ratio"] == 1.5 and health["min_tokens_per_s_ratio"] == 0.8
    assert HealthPolicy.from_dict(health).max_ttft_ratio == 1.5  # what the device will read
    fleet.cli.main(["fleet", "deploy", "abc123", "--all"])
    assert "max_ttft_ratio" not in sent[1]["spec"]["health"]  # the policy's default applies
