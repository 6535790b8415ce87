"""cffi build of the edge kernels (out-of-line API mode).

The one list of C sources is ``native/sources.txt``; ISA-specific files
(``*__avx2.c``, ``*__neondot.c``, ...) get their flags from
``native/isa_flags.txt`` and are compiled only for their architecture, the same
rules CMakeLists.txt applies. The cdef is the public headers themselves, with
preprocessor lines removed, so sizes and signatures are never repeated in Python.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent
HEADERS = ["edge/common.h", "edge/gemm.h", "edge/conv.h", "edge/ops.h", "edge/plan.h", "edge/decoder.h"]
COMMON_FLAGS = ["-std=c11", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def read_isa_flags() -> dict[str, tuple[str, list[str]]]:
    """Suffix -> (architecture, flags)."""
    table = {}
    for line in (NATIVE / "isa_flags.txt").read_text().splitlines():
        line = line.split("#", 1)[0].split()
        if line:
            table[line[0]] = (line[1], line[2:])
    return table


def read_sources() -> list[tuple[str, list[str]]]:
    """(path relative to the repository root, extra flags) for this machine."""
    isa_flags = read_isa_flags()
    arch = machine()
    sources = []
    for line in (NATIVE / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        flags: list[str] = []
        match = re.search(r"__([a-z0-9]+)\.c$", line)
        if match:
            target_arch, flags = isa_flags[match.group(1)]
            if target_arch not in ("any", arch):
                continue
        sources.append((f"native/{line}", flags))
    return sources


def cdef_text() -> str:
    """The public headers without preprocessor lines and C++ guards."""
    parts = []
    for header in HEADERS:
        text = (NATIVE / "include" / header).read_text()
        text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.DOTALL)
        parts.append("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return "\n".join(parts)


def version() -> str:
    text = (NATIVE.parent / "edge_runtime" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "edge_runtime._edge_kernels",
    '#include "edge_kernels.h"',
    # Only the portable sources here; ISA-specific ones are compiled with their
    # own flags by the build_ext command in setup.py and linked as objects.
    sources=[path for path, flags in read_sources() if not flags],
    include_dirs=["native/include", "native/src"],
    define_macros=[("EDGE_VERSION", f'"{version()}"')],
    extra_compile_args=COMMON_FLAGS,
    libraries=["m", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
