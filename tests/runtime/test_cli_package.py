"""The package and profile subcommands of ``edge``, through main(argv) and one real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pkg_helpers import base_artifacts, base_manifest

from edge_runtime.cli import main

FIXTURES = Path(__file__).parents[1] / "profiles" / "fixtures"


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, list[str]]:
    """A manifest JSON without artifact entries, and --artifact arguments for three files."""
    manifest = base_manifest()
    del manifest["artifacts"]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    args = []
    for name, content in base_artifacts(tmp_path).items():
        path = tmp_path / "files" / Path(name).name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.read_bytes())
        args += ["--artifact", f"{path}:native-plan" if path.suffix == ".plan" else str(path)]
    return tmp_path / "m.json", args


def pack(tmp_path: Path, inputs: tuple[Path, list[str]], *extra: str) -> Path:
    out = tmp_path / "out.edgepkg"
    assert main(["pack", "--manifest", str(inputs[0]), *inputs[1], "--out", str(out), *extra]) == 0
    return out


def test_keygen_pack_verify_inspect(tmp_path: Path, inputs: tuple[Path, list[str]], capsys) -> None:
    assert main(["keygen", str(tmp_path / "keys" / "release")]) == 0
    out = pack(tmp_path, inputs, "--sign", str(tmp_path / "keys" / "release.key"))
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert {a["path"]: a["kind"] for a in manifest["artifacts"]} == {
        "model.onnx": "onnx",
        "model.plan": "native-plan",
        "selftest.npz": "selftest",
    }
    capsys.readouterr()

    assert main(["verify", str(out), "--trust", str(tmp_path / "keys")]) == 0
    assert "signed by trusted key" in capsys.readouterr().out

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "mnist-cnn 1.2.0" in text
        and "model.plan" in text
        and "native-plan" in text
        and "not verified" in text
    )

    assert main(["inspect", str(out), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["manifest"]["name"] == "mnist-cnn" and len(facts["package"]["sha256"]) == 64


def test_verify_fails_with_one_line_reason(tmp_path: Path, inputs: tuple[Path, list[str]], capsys) -> None:
    main(["keygen", str(tmp_path / "k")])
    out = pack(tmp_path, inputs)  # unsigned
    capsys.readouterr()
    assert main(["verify", str(out), "--trust", str(tmp_path / "k.pub")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge verify: error:") and "not signed" in err and "\n" not in err

    out.write_bytes(out.read_bytes()[:-30])
    assert main(["verify", str(out)]) == 1
    assert "not a readable zip" in capsys.readouterr().err


def test_pack_needs_a_kind_it_cannot_guess(tmp_path: Path, inputs: tuple[Path, list[str]], capsys) -> None:
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"x")
    code = main(
        ["pack", "--manifest", str(inputs[0]), "--artifact", str(blob), "--out", str(tmp_path / "o.edgepkg")]
    )
    assert code == 1
    assert "weights.bin:KIND" in capsys.readouterr().err
    assert not (tmp_path / "o.edgepkg").exists()


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert main(["keygen", str(tmp_path / "k")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_profile_text_and_json(capsys) -> None:
    assert main(["profile", "--root", str(FIXTURES / "raspberrypi-5")]) == 0
    text = capsys.readouterr().out
    assert "raspberrypi-5" in text and "neondot" in text and "why:" in text
    assert main(["profile", "--root", str(FIXTURES / "jetson-nano"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "jetson-nano" and data["kernel_isa"] == "neon" and data["reasons"]


def test_edge_verify_as_a_subprocess(tmp_path: Path, inputs: tuple[Path, list[str]]) -> None:
    out = pack(tmp_path, inputs)
    ok = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "verify", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("OK ")
    missing = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "verify", str(tmp_path / "nope.edgepkg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1 and "No such file" in missing.stderr
