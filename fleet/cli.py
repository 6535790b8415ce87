"""``edge agent`` and ``edge fleet ...``: registered into the ``edge`` command by :func:`register`.

Also runnable on its own: ``python -m fleet.cli agent ...`` / ``python -m fleet.cli fleet devices``.
Exit codes follow ``edge``: 0 success, 1 the work failed (reason on stderr), 2 usage error.

Secrets never need to be on a command line: MQTT passwords come from ``--password-file`` or
``$EDGE_MQTT_PASSWORD``, the HTTP API token from ``--token-file``, ``$EDGE_FLEET_TOKEN`` or the
manager's generated ``<state-dir>/api-token`` (:mod:`fleet.auth`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_runtime.cli import CommandGroup
from fleet.agent_options import PASSWORD_ENV, add_arguments, options_from_args
from fleet.errors import AgentOptionsError, FleetError, ProtocolError

__all__ = ["COMMANDS", "device_rows", "main", "register"]

DEFAULT_API = os.environ.get("EDGE_FLEET_API", "http://127.0.0.1:8480")
DEFAULT_MANAGER_STATE = Path("/var/lib/edge-fleet")


def _fleet_id(text: str) -> str:
    from fleet.protocol import check_id

    try:
        return check_id(text, "fleet")
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_port(text: str) -> str:
    port = text.rpartition(":")[2]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:8480), got {text!r}")
    return text


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected http://host:port or https://host:port, got {text!r}")
    return text


def _password(args: argparse.Namespace) -> str | None:
    """The manager's MQTT password: ``--password-file``'s first line, else $EDGE_MQTT_PASSWORD."""
    if args.password_file is not None:
        try:
            lines = args.password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SystemExit(f"edge: cannot read the password file {args.password_file}: {exc}") from None
        return lines[0].strip() if lines else ""
    return os.environ.get(PASSWORD_ENV)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``agent`` and ``fleet`` to the ``edge`` command's subparsers."""
    agent = subparsers.add_parser(
        "agent",
        help="run the device agent: status, telemetry and OTA updates over MQTT",
        description="Connect to the fleet's broker (given, or found by zeroconf), report, and apply "
        "deployments: download, verify, self-test, swap, watch health, commit or roll back.",
    )
    add_arguments(agent, "agent options", "also the [fleet] table of edge serve's config file")
    agent.add_argument(
        "--password", help=f"the MQTT password; prefer --password-file or ${PASSWORD_ENV} (ps shows this)"
    )
    agent.set_defaults(func=_cmd_agent)

    fleet = subparsers.add_parser("fleet", help="the fleet manager and its client commands")
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)

    serve = fsub.add_parser(
        "serve",
        help="run the fleet manager",
        description="Run the fleet manager: it keeps devices, packages, deployments and telemetry in "
        "STATE_DIR, drives rollouts over the MQTT broker and answers the HTTP API. See docs/fleet.md.",
    )
    serve.add_argument("--fleet", required=True, type=_fleet_id, metavar="ID", help="the fleet's id")
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_MANAGER_STATE,
        metavar="DIR",
        help="the manager's database, package store and API token (default %(default)s); one manager "
        "per directory",
    )
    serve.add_argument(
        "--broker",
        metavar="URL",
        help="the broker, mqtt[s]://[user@]host:port (default: start an embedded broker on this machine)",
    )
    serve.add_argument(
        "--broker-port", type=int, default=1883, metavar="PORT", help="embedded broker port (default 1883)"
    )
    serve.add_argument("--username", help="MQTT user (default: the URL's, else 'manager' with a password)")
    serve.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help=f"a file whose first line is the MQTT password (default: ${PASSWORD_ENV}, else the URL's)",
    )
    serve.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="HTTP API token file (default: $EDGE_FLEET_TOKEN, else STATE_DIR/api-token, generated)",
    )
    serve.add_argument(
        "--viewer-token-file",
        type=Path,
        metavar="FILE",
        help="read-only viewer token file for the API and the console (default: $EDGE_FLEET_VIEWER_TOKEN, "
        "else STATE_DIR/viewer-token, generated)",
    )
    serve.add_argument(
        "--max-upload-mib", type=float, default=512, metavar="MIB", help="largest package upload (512)"
    )
    serve.add_argument(
        "--retention-days",
        type=float,
        default=30,
        metavar="DAYS",
        help="how long telemetry and events are kept (default 30; 0: forever)",
    )
    serve.add_argument(
        "--ca-file", metavar="PEM", help="CA certificate (PEM) that signed the broker's, for mqtts://"
    )
    serve.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        metavar="KEY_OR_DIR",
        help="a trusted public key (.pub) or a directory of them; with any, uploaded packages must be "
        "signed by one. Repeatable",
    )
    serve.add_argument(
        "--database",
        metavar="URL",
        help="postgresql://USER@HOST:PORT/DB: keep the state in PostgreSQL, shared by several manager "
        "instances of the fleet (each with its own --state-dir and --http, the same --token-file); "
        "default: STATE_DIR/fleet.sqlite, one manager. See docs/scaling.md",
    )
    serve.add_argument(
        "--package-store",
        type=Path,
        metavar="DIR",
        help="keep package files in this directory (shared by every instance); default: "
        "STATE_DIR/packages with SQLite, the database itself with --database postgresql://",
    )
    serve.add_argument(
        "--http",
        default="127.0.0.1:8480",
        type=_host_port,
        metavar="HOST:PORT",
        help="where the HTTP API listens (default %(default)s)",
    )
    serve.add_argument(
        "--advertise", action="store_true", help="announce the manager and its broker with zeroconf (DNS-SD)"
    )
    serve.set_defaults(func=_cmd_serve)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = fsub.add_parser(name, help=help)
        p.add_argument(
            "--api",
            default=DEFAULT_API,
            type=_http_url,
            metavar="URL",
            help=f"the manager's HTTP API (default {DEFAULT_API}, or $EDGE_FLEET_API)",
        )
        p.add_argument(
            "--token-file",
            type=Path,
            help="API token file (default: $EDGE_FLEET_TOKEN, $EDGE_FLEET_TOKEN_FILE, STATE_DIR/api-token)",
        )
        p.add_argument(
            "--state-dir",
            type=Path,
            default=DEFAULT_MANAGER_STATE,
            help="the local manager's state directory, for its api-token (default %(default)s)",
        )
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = client("devices", "list devices with a summary of their CPU, memory, temperature, throttling")
    p.add_argument("--since", type=float, default=300.0, metavar="S", help="resource window (default 300)")
    p.set_defaults(func=_cmd_devices)
    p = client("packages", "list packages, or add one")
    p.add_argument(
        "action", nargs="?", choices=("list", "add"), default="list", help="list (default) or add FILE"
    )
    p.add_argument("file", nargs="?", type=Path, metavar="FILE", help="add: an .edgepkg to upload")
    p.set_defaults(func=_cmd_packages)
    p = client("deploy", "start a deployment")
    p.add_argument("package", help="the package's sha256 (or a prefix of 8+ hex digits)")
    p.add_argument("--device", action="append", default=[], metavar="ID", help="target a device. Repeatable")
    p.add_argument("--tag", action="append", default=[], help="target the devices with a tag. Repeatable")
    p.add_argument(
        "--profile", action="append", default=[], help="target the devices of a profile. Repeatable"
    )
    p.add_argument("--group", action="append", default=[], help="target the devices of a group. Repeatable")
    p.add_argument(
        "--all",
        action="store_true",
        help="target every device of the fleet (required when no --device/--tag/--profile/--group is given)",
    )
    p.add_argument("--canary", type=float, help="first wave's fraction, e.g. 0.1")
    p.add_argument("--waves", help="cumulative fractions, e.g. 0.1,0.5,1")
    p.add_argument("--rate", type=float, default=0.0, help="device starts per minute (0: no limit)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-device timeout, seconds")
    p.add_argument("--max-failures", type=int, metavar="N", help="abort after this many failed devices")
    p.add_argument(
        "--max-failure-rate", type=float, metavar="F", help="abort when this fraction of devices failed"
    )
    p.add_argument(
        "--min-executed",
        type=int,
        default=1,
        metavar="N",
        help="devices that must have finished before --max-failure-rate is judged (default 1)",
    )
    p.add_argument(
        "--supersede",
        action="store_true",
        help="take over devices that a running deployment of the same model is still updating",
    )
    p.add_argument(
        "--allow-downgrade", action="store_true", help="let devices install a lower version than theirs"
    )
    p.add_argument(
        "--max-error-rate", type=float, metavar="F", help="abort when the new version's error rate exceeds F"
    )
    p.add_argument(
        "--max-latency-ratio",
        type=float,
        metavar="R",
        help="abort when the new version's p95 latency exceeds R times the previous version's",
    )
    p.add_argument("--health-window", type=float, default=10.0, help="device-side health window, s")
    p.add_argument(
        "--max-ttft-ratio",
        type=float,
        metavar="R",
        help="language models: a device's health window fails when the new version's p95 time to first "
        "token exceeds R times the previous version's (default 2; docs/llm.md)",
    )
    p.add_argument(
        "--min-tokens-per-s-ratio",
        type=float,
        metavar="R",
        help="language models: a device's health window fails when the new version's median decode "
        "tokens/s is under R times the previous version's (default 0.5; 0 turns it off)",
    )
    p.add_argument(
        "--watch",
        type=float,
        default=60.0,
        metavar="S",
        help="with --max-error-rate/--max-latency-ratio: soak each finished wave this long",
    )
    p.set_defaults(func=_cmd_deploy)
    p = client("rollout", "status, pause, resume or abort a deployment")
    p.add_argument(
        "action",
        choices=("status", "pause", "resume", "abort"),
        help="show a deployment (or all), or pause, resume or abort one",
    )
    p.add_argument("id", nargs="?", help="deployment id (status: all when omitted)")
    p.set_defaults(func=_cmd_rollout)
    p = client("telemetry", "per-model summary of recent telemetry")
    p.add_argument(
        "--since", type=float, default=3600.0, metavar="S", help="the last S seconds (default 3600)"
    )
    p.set_defaults(func=_cmd_telemetry)


# --- the agent and the manager ---


def _cmd_agent(args: argparse.Namespace) -> int:
    from fleet.agent import Agent

    options = options_from_args(args)
    if options is None:
        raise AgentOptionsError("edge agent needs --fleet and --device")
    config = options.agent_config(password=args.password)
    agent = Agent(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: agent.stop(timeout=0))
    agent.run()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from fleet.auth import manager_token, viewer_token
    from fleet.errors import AuthError, ManagerLockedError
    from fleet.manager.http import ApiServer
    from fleet.manager.service import FleetManager, ManagerConfig
    from fleet.mqtt import BrokerConfig

    log = logging.getLogger(__name__)
    try:
        token, token_source = manager_token(args.state_dir, args.token_file)
        viewer, viewer_source = viewer_token(args.state_dir, args.viewer_token_file)
        if viewer == token:
            raise AuthError("the viewer token is the operator's: give the viewer its own token")
    except AuthError as exc:
        raise SystemExit(f"edge fleet serve: {exc}") from None
    config = ManagerConfig(
        args.fleet,
        args.state_dir,
        BrokerConfig(""),
        tuple(args.trust),
        retention_days=args.retention_days,
        database=args.database,
        package_store=args.package_store,
    )
    try:
        manager = FleetManager(config)  # takes the state directory's lock before any broker is started
    except ManagerLockedError as exc:
        raise SystemExit(f"edge fleet serve: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the database: unreachable, refused, or a newer schema
        from fleet.manager.engines import redact_url

        where = redact_url(args.database) if args.database else str(args.state_dir / "fleet.sqlite")
        raise SystemExit(f"edge fleet serve: cannot open the database {where}: {exc}") from None
    embedded = None
    if args.broker:
        password = _password(args)
        has_user = bool(urlsplit(args.broker).username)
        user = args.username or (None if has_user or not password else "manager")
        broker = BrokerConfig(args.broker, user, password, args.ca_file)
    else:
        from fleet.broker import EmbeddedBroker

        embedded = EmbeddedBroker("127.0.0.1", args.broker_port).start()
        broker = BrokerConfig(embedded.url)
    config.broker = broker
    host, _, port = args.http.rpartition(":")
    manager.start()
    api = ApiServer(
        manager,
        host or "127.0.0.1",
        int(port),
        token=token,
        max_upload_bytes=int(args.max_upload_mib * 2**20),
        viewer_token=viewer,
    ).start()
    log.info("HTTP API token: %s (send it as Authorization: Bearer, or use --token-file)", token_source)
    log.info("read-only viewer token: %s; console: %s/ (sign in with either token)", viewer_source, api.url)
    advert = None
    if args.advertise:
        from fleet.discovery import Advertiser

        # Never the URL with the manager's password in it; the fingerprint lets agents pin the broker.
        advert = Advertiser(args.fleet, broker.public_url, api.url, manager.tls_fingerprint or "").start()
    log.info("fleet %s manager: API %s, broker %s", args.fleet, api.url, broker.public_url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    if advert is not None:
        advert.stop()
    api.stop()
    manager.stop()
    if embedded is not None:
        embedded.stop()
    return 0


# --- HTTP client commands ---


def _token(args: argparse.Namespace) -> str | None:
    from fleet.auth import client_token
    from fleet.errors import AuthError

    try:
        return client_token(args.token_file, args.state_dir)
    except AuthError as exc:
        raise SystemExit(f"edge fleet: {exc}") from None


def _call(
    args: argparse.Namespace, method: str, path: str, body: Any = None, data: bytes | None = None
) -> Any:
    api = args.api
    headers: dict[str, str] = {}
    if body is not None:
        data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    token = _token(args)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(api.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["error"]
        except (ValueError, KeyError):
            pass
        hint = ""
        if exc.code == 401:
            hint = " (give the manager's API token: --token-file, $EDGE_FLEET_TOKEN or --state-dir)"
        raise SystemExit(f"edge fleet: {method} {path}: {exc.code} {detail}{hint}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"edge fleet: cannot reach the manager at {api}: {exc.reason}") from None


def _print(args: argparse.Namespace, data: Any, rows: list[str]) -> None:
    print(json.dumps(data, indent=2) if args.json else "\n".join(rows))


def _num(value: Any) -> float | None:
    """A value from the API as a finite number, else None: displays never trust what devices sent."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _cell(value: Any, width: int = 0) -> str:
    """A text cell: '-' for anything but a string; control characters (terminal escapes) blanked."""
    if not isinstance(value, str) or not value:
        return "-"
    text = "".join(c if c.isprintable() else "?" for c in value[:64])
    return text[:width] if width else text


def _resource_cells(r: Any) -> str:
    """CPU mean/max %, peak memory, peak temperature and throttled reports; '-' where unknown."""
    if not isinstance(r, dict) or not r:
        return f"{'-':<11} {'-':<15} {'-':<6} {'-':<5}"
    cpu_mean, cpu_max = _num(r.get("cpu_mean")), _num(r.get("cpu_max"))
    cpu = f"{cpu_mean:.0f}/{cpu_max:.0f}%" if cpu_mean is not None and cpu_max is not None else "-"
    used, total = _num(r.get("mem_used_max")), _num(r.get("mem_total"))
    mem = f"{used / 2**20:.0f}/{total / 2**20:.0f}M" if used is not None and total else "-"
    temp_max = _num(r.get("temperature_max"))
    temp = f"{temp_max:.0f}C" if temp_max is not None else "-"
    throttled, reports = _num(r.get("throttled_reports")), _num(r.get("reports"))
    thr = f"{throttled:.0f}/{reports:.0f}" if throttled is not None and reports is not None else "-"
    return f"{cpu:<11} {mem:<15} {temp:<6} {thr:<5}"


def device_rows(devices: list[dict[str, Any]]) -> list[str]:
    """The table ``edge fleet devices`` prints (resources over the API's window, 5 min by default)."""
    from fleet.protocol import Presence

    header = (
        f"{'DEVICE':<20} {'STATE':<8} {'PROFILE':<18} {'GROUP':<10} {'CPU avg/max':<11} "
        f"{'MEM peak/total':<15} {'TEMP':<6} {'THROT':<5} MODELS"
    )
    rows = [header]
    for d in devices if isinstance(devices, list) else []:
        if not isinstance(d, dict):
            continue
        listed = d.get("models") if isinstance(d.get("models"), dict) else {}
        models = (
            ", ".join(
                f"{_cell(n)}@{_cell(m.get('version') if isinstance(m, dict) else None)}"
                for n, m in listed.items()
            )
            or "-"
        )
        state = Presence.ONLINE if d.get("online") is True else Presence.OFFLINE
        rows.append(
            f"{_cell(d.get('id')):<20} {state:<8} {_cell(d.get('profile')):<18} {_cell(d.get('grp')):<10} "
            f"{_resource_cells(d.get('resources'))} {models}"
        )
    return rows


def _cmd_devices(args: argparse.Namespace) -> int:
    devices = _call(args, "GET", f"/api/v1/devices?since_s={args.since}")
    _print(args, devices, [] if args.json else device_rows(devices))
    return 0


def _cmd_packages(args: argparse.Namespace) -> int:
    if args.action == "add":
        if args.file is None:
            raise SystemExit("edge fleet packages add: give the .edgepkg to upload")
        row = _call(args, "POST", "/api/v1/packages", data=args.file.read_bytes())
        _print(args, row, [f"added {row['name']} {row['version']} {row['sha256']}"])
        return 0
    pkgs = _call(args, "GET", "/api/v1/packages")
    rows = [f"{'SHA256':<14} {'NAME':<20} {'VERSION':<10} {'SIZE':>10} SIGNER"]
    rows += [
        f"{p['sha256'][:12]:<14} {p['name']:<20} {p['version']:<10} {p['size']:>10} {p['signer'] or '-'}"
        for p in pkgs
    ]
    _print(args, pkgs, rows)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    targets: dict[str, Any] = {
        "devices": args.device,
        "tags": args.tag,
        "profiles": args.profile,
        "groups": args.group,
    }
    if args.all and any(targets.values()):
        raise SystemExit(
            "edge fleet deploy: --all targets every device; drop --device/--tag/--profile/--group"
        )
    if args.all:
        targets = {"all": True}
    elif not any(targets.values()):
        raise SystemExit(
            "edge fleet deploy: no target given: name --device, --tag, --profile or --group, "
            "or --all for every device of the fleet"
        )
    spec: dict[str, Any] = {
        "targets": targets,
        "canary": args.canary,
        "waves": [float(w) for w in args.waves.split(",")] if args.waves else [],
        "rate_per_min": args.rate,
        "device_timeout_s": args.timeout,
        "max_failures": args.max_failures,
        "max_failure_rate": args.max_failure_rate,
        "min_executed": args.min_executed,
        "max_error_rate": args.max_error_rate,
        "max_latency_ratio": args.max_latency_ratio,
        "health": {"window_s": args.health_window}
        | {
            key: getattr(args, key)
            for key in ("max_ttft_ratio", "min_tokens_per_s_ratio")
            if getattr(args, key) is not None
        },
        "watch_s": args.watch,
        "allow_downgrade": args.allow_downgrade,
    }
    body = {"package": args.package, "spec": spec, "supersede": args.supersede}
    dep = _call(args, "POST", "/api/v1/deployments", body)
    _print(args, dep, [f"deployment {dep['id']}: {dep['state']}, {len(dep['devices'])} device(s)"])
    return 0


def _status_rows(dep: dict[str, Any]) -> list[str]:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(dep["counts"].items()))
    reason = f" ({dep['reason']})" if dep.get("reason") else ""
    wave = f"wave {min(dep['wave'] + 1, dep['waves'])}/{dep['waves']}"
    rows = [f"{dep['id']}  {dep['model']} {dep['version']}  {dep['state']}{reason}  {wave}  [{counts}]"]
    for d in dep.get("devices", []):
        why = f"  {d['step'] or ''} {d['reason']}" if d.get("reason") else ""
        rows.append(f"  {d['device']:<20} wave {d['wave'] + 1}  {d['state']:<12} {d['phase'] or ''}{why}")
    return rows


def _cmd_rollout(args: argparse.Namespace) -> int:
    if args.action == "status" and not args.id:
        deps = _call(args, "GET", "/api/v1/deployments")
        _print(args, deps, [r for d in deps for r in _status_rows(d)[:1]] or ["no deployments"])
        return 0
    if not args.id:
        raise SystemExit(f"edge fleet rollout {args.action}: give a deployment id")
    if args.action == "status":
        dep = _call(args, "GET", f"/api/v1/deployments/{args.id}")
    else:
        dep = _call(args, "POST", f"/api/v1/deployments/{args.id}/{args.action}")
    _print(args, dep, _status_rows(dep))
    return 0


def _cmd_telemetry(args: argparse.Namespace) -> int:
    s = _call(args, "GET", f"/api/v1/telemetry?since_s={args.since}")
    if args.json or not isinstance(s, dict):
        _print(args, s, [json.dumps(s)])
        return 0

    def whole(value: Any) -> str:
        n = _num(value)
        return f"{n:.0f}" if n is not None else "-"

    rows = [
        f"last {whole(s.get('since_s'))} s: {whole(s.get('messages'))} reports from {whole(s.get('devices'))} device(s)"
    ]
    for m in s.get("models") if isinstance(s.get("models"), list) else []:
        if not isinstance(m, dict):
            continue
        p95, rate = _num(m.get("p95_ms")), _num(m.get("error_rate"))
        rows.append(
            f"  {_cell(m.get('model'))} {_cell(m.get('version'))}: {whole(m.get('inferences'))} inferences, "
            f"{whole(m.get('errors'))} errors ({f'{rate:.2%}' if rate is not None else '-'}), "
            f"p95 {f'{p95:.1f} ms' if p95 is not None else '-'}"
        )
    _print(args, s, rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge")
    parser.add_argument("-v", "--verbose", action="store_true")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


COMMANDS = CommandGroup(register, (FleetError,), order=10)

if __name__ == "__main__":
    sys.exit(main())
