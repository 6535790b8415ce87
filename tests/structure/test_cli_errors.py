"""Every ``edge`` subcommand given a bad path, id or URL ends with a message and no traceback.

Each case runs the installed ``edge`` script as a user would; expected: a non-zero exit, no
``Traceback`` anywhere, and a line of stderr that says what went wrong (``edge X: ...``,
argparse's ``edge X: error: ...``, or a server's ERROR log line). ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EDGE = Path(sys.executable).with_name("edge")
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback

# (subcommand, arguments): bad files, ids and URLs for every subcommand.
CASES = [
    ("profile", ["--root", "/nonexistent"]),
    ("quantize", ["/missing.onnx", "--calibration", "/missing.npz", "--out", "{tmp}/q.edgepkg"]),
    ("keygen", ["/proc/no-such-dir/key"]),
    ("pack", ["--manifest", "/missing.json", "--artifact", "/missing.onnx", "--out", "{tmp}/p.edgepkg"]),
    ("pack", ["--manifest", "{tmp}/huge-int.json", "--artifact", "{tmp}/a.onnx", "--out", "{tmp}/p.edgepkg"]),
    ("verify", ["/missing.edgepkg"]),
    ("verify", ["{tmp}/not-a-zip.edgepkg"]),
    ("inspect", ["/missing.edgepkg"]),
    ("to-tflite", ["/missing.onnx", "--out", "{tmp}/x.tflite"]),
    ("to-tflite", ["--int8", "{tmp}/not-a-zip.edgepkg", "--out", "{tmp}/x.tflite"]),
    ("run", ["/missing.edgepkg"]),
    ("run", ["{tmp}/not-a-zip.edgepkg"]),
    ("bench", ["/missing.edgepkg"]),
    ("serve", ["--config", "/missing.toml"]),
    ("serve", ["--model", "bad/name=/missing.edgepkg", "--port", "0"]),
    ("serve", ["--model", "m=/missing.edgepkg", "--port", "0"]),
    ("serve", ["--model", "m=/missing.edgepkg", "--port", "0", "--grpc", "8001"]),
    ("serve", ["--fleet", "f", "--device", "bad/id", "--state-dir", "{tmp}/d", "--port", "0"]),
    ("serve", ["--fleet", "f", "--device", "d", "--broker", "notaurl", "--state-dir", "{tmp}/d", "--port", "0"]),
    ("swap", ["m", "/missing.edgepkg", "--url", NOWHERE]),
    ("agent", ["--fleet", "f", "--device", "bad/id", "--state-dir", "{tmp}/a"]),
    ("agent", ["--fleet", "f", "--device", "d", "--broker", "http://x", "--state-dir", "{tmp}/a"]),
    ("agent", ["--fleet", "f", "--device", "d", "--password-file", "/missing", "--state-dir", "{tmp}/a"]),
    ("agent", []),
    ("fleet serve", ["--fleet", "bad/id", "--state-dir", "{tmp}/m"]),
    ("fleet serve", ["--fleet", "f", "--state-dir", "{tmp}/m", "--http", "notaport"]),
    ("fleet serve", ["--fleet", "f", "--state-dir", "{tmp}/m", "--broker", "http://nope", "--http", "127.0.0.1:0"]),
    ("fleet devices", ["--api", "notaurl"]),
    ("fleet devices", ["--api", NOWHERE]),
    ("fleet packages", ["add", "/missing.edgepkg", "--api", NOWHERE]),
    ("fleet deploy", ["abcdef12", "--all", "--api", NOWHERE]),
    ("fleet rollout", ["abort", "no-such-id", "--api", NOWHERE]),
    ("fleet telemetry", ["--api", NOWHERE]),
    ("train fit", ["--config", "/missing.yaml"]),
    ("train export", ["/missing.ckpt", "--out", "{tmp}/t.edgepkg"]),
    ("train push", ["/missing.edgepkg", "--fleet", NOWHERE]),
    ("demo", ["--workdir", "/proc/no-such-dir"]),
]  # fmt: skip


def _run(command: str, args: list[str], tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(EDGE), *extra, *command.split(), *(a.replace("{tmp}", str(tmp)) for a in args)]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[subprocess.CompletedProcess[str]]:
    if not EDGE.is_file():
        pytest.skip("this install has no edge script")
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "not-a-zip.edgepkg").write_bytes(b"not a zip file")
    (tmp / "huge-int.json").write_text('{"name": "m", "version": "1.0", "metrics": {"n": ' + "9" * 5000 + "}}")
    (tmp / "a.onnx").write_bytes(b"not read: the manifest is refused first")
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda case: _run(*case, tmp), CASES))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c} {' '.join(a)}" for c, a in CASES])
def test_a_bad_argument_ends_in_one_message(results: list[subprocess.CompletedProcess[str]], index: int) -> None:
    command, _ = CASES[index]
    result = results[index]
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert "Traceback" not in output, output
    top = command.split()[0]
    said = [
        line
        for line in result.stderr.splitlines()
        if line.startswith((f"edge {top}", "error:")) or " ERROR " in line  # ours, argparse's, a log's
    ]
    assert said, output


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    if not EDGE.is_file():
        pytest.skip("this install has no edge script")
    quiet = _run("verify", ["/missing.edgepkg"], tmp_path)
    loud = _run("verify", ["/missing.edgepkg"], tmp_path, "-v")
    assert "Traceback" not in quiet.stderr and quiet.returncode == 1
    assert "Traceback" in loud.stderr and loud.returncode == 1


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _undocumented(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and (
            not (action.help or "").strip() or action.help == argparse.SUPPRESS
        ):
            found.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return found


def test_help_describes_every_option_of_every_subcommand() -> None:
    from edge_runtime.cli import build_parser

    assert _undocumented(build_parser(), "edge") == []
