"""The edge-case shapes of every micro-kernel tile, from native/kernels.json.

The C tests run the same shapes: both come from native/tests/gen_kernel_tests.py,
loaded here by path (it is a script of the C build, not a package).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_GENERATOR = ROOT / "native" / "tests" / "gen_kernel_tests.py"

_spec = importlib.util.spec_from_file_location("gen_kernel_tests", _GENERATOR)
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)

KERNELS = generator.load_spec()


def cases(family: str) -> list[tuple]:
    """(M, N, K, tile) for a GEMM family, (kernel size, channels, tile) for q8-dwconv."""
    return generator.family_cases(KERNELS, family)


def case_id(case: tuple) -> str:
    """A test id naming the tile and the shape: 4x16c4-5x16x4."""
    *shape, tile = case
    return f"{tile}-" + "x".join(map(str, shape))
