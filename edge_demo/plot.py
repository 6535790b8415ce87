"""The demo's PNG: latency per device over time (top) and the rollout timeline (bottom).

matplotlib with the Agg backend (no display needed), imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_demo.traffic import Sample
from fleet.protocol import EventState

__all__ = ["TimelineEvent", "write_plot"]

# (t seconds since start, device or "" for the whole fleet, label)
TimelineEvent = tuple[float, str, str]

_STATE_MARKERS = {
    EventState.ACCEPTED: ("o", "tab:gray"),
    EventState.DOWNLOADING: (".", "tab:gray"),
    EventState.VERIFIED: ("s", "tab:blue"),
    EventState.SWAPPED: ("D", "tab:orange"),
    EventState.SUCCEEDED: ("*", "tab:green"),
    EventState.FAILED: ("X", "tab:red"),
    EventState.ROLLED_BACK: ("P", "tab:purple"),
}


def write_plot(
    path: Path,
    devices: Sequence[str],
    samples: Sequence[Sample],
    events: Sequence[TimelineEvent],
    title: str,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {d: colors[i % len(colors)] for i, d in enumerate(devices)}

    # Latency per device: a line over the answered requests, red crosses for the failed ones.
    for device in devices:
        ok = [s for s in samples if s.device == device and s.ok]
        bad = [s for s in samples if s.device == device and not s.ok]
        if ok:
            # Break the line where requests failed, so that a gap is not drawn as a straight segment.
            xs: list[float] = []
            ys: list[float] = []
            for s in (s for s in samples if s.device == device):
                xs.append(s.t)
                ys.append(s.ms if s.ok else float("nan"))
            top.plot(xs, ys, ".-", ms=3, lw=0.6, color=color_of[device], label=device)
        if bad:
            top.plot(
                [s.t for s in bad],
                [s.ms for s in bad],
                "x",
                ms=6,
                color="tab:red",
                label=f"{device}: failed requests",
            )
    top.set_ylabel("request latency (ms, HTTP round trip)")
    top.set_yscale("log")
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="upper left", fontsize=8, ncol=2)
    top.set_title(title)

    # Timeline: one row per device with its deployment events; fleet-wide events as vertical lines.
    rows = {d: i for i, d in enumerate(devices)}
    seen_labels: set[str] = set()
    for t, device, label in events:
        if device == "":
            for ax in (top, bottom):
                ax.axvline(t, color="0.5", ls="--", lw=0.8)
            bottom.annotate(label, (t, len(devices) - 0.4), rotation=90, fontsize=7, va="top", ha="right")
            continue
        state = label.split(" ")[-1]
        marker, color = _STATE_MARKERS.get(state, ("|", "black"))
        legend = label.split(" ")[-1] if state in _STATE_MARKERS else None
        kwargs: dict[str, Any] = {}
        if legend and legend not in seen_labels:
            kwargs["label"] = legend
            seen_labels.add(legend)
        bottom.plot([t], [rows[device]], marker, color=color, ms=8, **kwargs)
        if state in _STATE_MARKERS and EventState(state).terminal:
            text = (
                label.split(" ")[0]
                if state != EventState.FAILED
                else f"{label.split(' ')[0]} failed: rolled back locally"
            )
            bottom.annotate(text, (t, rows[device]), xytext=(4, 7), textcoords="offset points", fontsize=7)
    bottom.set_yticks(range(len(devices)), list(devices))
    bottom.set_ylim(-0.7, len(devices) - 0.3)
    bottom.set_xlabel("seconds since the demo started")
    bottom.set_ylabel("rollout")
    bottom.grid(True, axis="x", alpha=0.3)
    if seen_labels:
        bottom.legend(loc="lower right", fontsize=7, ncol=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
