"""Makes the shared ONNX-building helpers of tests/graph importable from every test directory.

Test helpers are imported by bare module name (``from graph_testing import ...``); pytest's
default import mode only puts each test file's own directory on ``sys.path``, so the helper
directory is added here once for tests/plan and any other directory that reuses them.
"""

from __future__ import annotations

import sys
from pathlib import Path

_GRAPH_HELPERS = str(Path(__file__).resolve().parent / "graph")
if _GRAPH_HELPERS not in sys.path:
    sys.path.insert(0, _GRAPH_HELPERS)
