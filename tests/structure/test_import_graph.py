"""The import graph of the top packages is a DAG (DESIGN.md section 2):

    device_profiles  <-  edge_runtime  <-  fleet, cloud_trainer  <-  edge_demo

Every import statement counts, those inside functions too: a lazy import is still an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What each top package may import of ours (itself aside).
ALLOWED = {
    "device_profiles": set(),
    "edge_runtime": {"device_profiles"},
    "fleet": {"device_profiles", "edge_runtime"},
    "cloud_trainer": {"device_profiles", "edge_runtime"},
    "edge_demo": {"device_profiles", "edge_runtime", "fleet", "cloud_trainer"},
}
# Third-party packages the device runtime must not import (the trainer's extra).
TRAINER_ONLY = {"torch", "pytorch_lightning", "lightning"}


def imported_top_packages(path: Path) -> dict[str, int]:
    """Top-level package name -> first line importing it, for every import in ``path``."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def back_edges(package: str) -> list[str]:
    ours = set(ALLOWED)
    allowed = ALLOWED[package] | {package}
    problems = []
    for path in sorted((REPO / package).rglob("*.py")):
        for top, line in imported_top_packages(path).items():
            where = f"{path.relative_to(REPO)}:{line} imports {top}"
            if top in ours and top not in allowed:
                problems.append(where)
            if package in ("device_profiles", "edge_runtime") and top in TRAINER_ONLY:
                problems.append(where)
    return problems


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_back_edge_in_the_import_graph(package: str) -> None:
    assert back_edges(package) == []


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from fleet.agent import Agent\n    import torch.nn\n")
    assert imported_top_packages(module) == {"fleet": 2, "torch": 3}


def test_test_modules_have_unique_names() -> None:
    """pytest imports test files by their bare names (tests/ has no __init__.py): two files with one
    name in different folders stop the whole run at collection."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.name in seen and path.name not in ("conftest.py", "__init__.py"):
            clashes.append(f"{seen[path.name].relative_to(REPO)} and {path.relative_to(REPO)}")
        seen.setdefault(path.name, path)
    assert clashes == []
