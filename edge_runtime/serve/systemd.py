"""The systemd unit of ``edge serve``, and ``edge serve --install-service``.

The unit text lives here (so that it ships in the wheel); ``deploy/systemd/edge-serve.service``
is this template rendered with the default ExecStart, and a test keeps the two equal.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

__all__ = ["DEFAULT_EXEC_START", "UNIT_NAME", "exec_start_for_this_install", "install_service", "render_unit"]

UNIT_NAME = "edge-serve.service"
DEFAULT_EXEC_START = "/opt/edge/venv/bin/edge serve --config /etc/edge/serve.toml"

_TEMPLATE = """# edge serve under systemd: Open Inference Protocol over HTTP, with sd_notify and a watchdog.
# Install with `edge serve --install-service` (fills ExecStart for this install), or copy this file
# to /etc/systemd/system/ and adjust ExecStart. See docs/serving.md, "Running under systemd".
#
# With the fleet agent in the process (OTA updates; docs/serving.md, "One process per device"), add a
# [fleet] table to the config (or --fleet/--device/--broker/--trust ... to ExecStart). Its state and
# model store default to $STATE_DIRECTORY (/var/lib/edge below): models committed there serve at
# start. Keep the MQTT password out of the config and the command line: $EDGE_MQTT_PASSWORD, or a
# root-only file handed over as a credential (uncomment LoadCredential= below and set
# password_file = "/run/credentials/edge-serve.service/mqtt-password" in [fleet]).
[Unit]
Description=Edge inference server (Open Inference Protocol over HTTP)
Documentation=https://github.com/edge-runtime/edge-runtime/blob/main/docs/serving.md
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
#LoadCredential=mqtt-password:/etc/edge/mqtt-password
Restart=on-failure
RestartSec=2s
# The server pets the watchdog at half this period from its event loop.
WatchdogSec=30s
# Loading and self-testing models happens before READY=1.
TimeoutStartSec=180s
# SIGTERM stops the fleet agent (if any, a few seconds), then drains in-flight requests
# (server.drain_timeout_s, default 30 s) before exiting 0.
TimeoutStopSec=45s
KillMode=mixed

# A user created on the fly; models and state live in /var/lib/edge (StateDirectory).
DynamicUser=yes
User=edge
Group=edge
StateDirectory=edge
ConfigurationDirectory=edge
# The native backend caches packed weights so that a restart loads without repacking.
CacheDirectory=edge
Environment=EDGE_CACHE_DIR=/var/cache/edge
Environment=PYTHONUNBUFFERED=1

# Hardening.
NoNewPrivileges=yes
ProtectSystem=strict
# The install (ExecStart's venv) must live outside /home, e.g. /opt/edge/venv.
ProtectHome=yes
PrivateTmp=yes
# Temperature is read from /sys/class/thermal, which PrivateDevices leaves readable.
PrivateDevices=yes
# On a Raspberry Pi whose kernel lacks the firmware's sysfs get_throttled, throttling is read with
# vcgencmd through /dev/vchiq: replace PrivateDevices=yes by the three lines below.
#PrivateDevices=no
#DeviceAllow=/dev/vchiq rw
#SupplementaryGroups=video
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# A fleet agent that finds its broker by zeroconf (no broker configured) lists the network
# interfaces over netlink: then append AF_NETLINK.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# The native kernels are a compiled cffi extension (API mode, no ffi.callback) and onnxruntime's CPU
# provider does not generate code, so no writable-executable memory is needed.
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def render_unit(exec_start: str = DEFAULT_EXEC_START) -> str:
    """The unit file text with this ``ExecStart``."""
    if "\n" in exec_start:
        raise ValueError("ExecStart must be one line")
    return _TEMPLATE.format(exec_start=exec_start)


def exec_start_for_this_install(config: str | os.PathLike[str] = "/etc/edge/serve.toml") -> str:
    """``<this install's edge> serve --config <config>``: the console script beside this Python."""
    script = Path(sys.executable).with_name("edge")
    if script.is_file():
        command = [str(script.absolute())]
    elif shutil.which("edge"):
        command = [str(Path(shutil.which("edge") or "edge").absolute())]
    else:
        command = [str(Path(sys.executable).absolute()), "-m", "edge_runtime.cli"]
    return shlex.join([*command, "serve", "--config", str(config)])


def install_service(
    prefix: str | os.PathLike[str] = "/", config: str | os.PathLike[str] = "/etc/edge/serve.toml"
) -> Path:
    """Write the unit to ``<prefix>/etc/systemd/system/edge-serve.service``; returns its path."""
    target = Path(prefix) / "etc/systemd/system" / UNIT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{UNIT_NAME}.tmp")
    tmp.write_text(render_unit(exec_start_for_this_install(config)))
    tmp.chmod(0o644)
    os.replace(tmp, target)
    return target
