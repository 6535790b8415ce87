"""The house rules of native/, checked on the sources (no build needed).

- A kernel file is named for the one function it defines (native/README.md, "Naming").
- Kernel names follow the grammar, and the tiled ones match native/kernels.json.
- Every function declared in native/ is defined; no kernel name is made by token pasting.
- sources.txt lists every library source; every path native/README.md names exists.
- The generated C test shapes are up to date with native/kernels.json.
"""

from __future__ import annotations

import re
from pathlib import Path

import kernel_spec
import pytest

ROOT = kernel_spec.ROOT
NATIVE = ROOT / "native"
ISAS = [
    line.split()[0]
    for line in (NATIVE / "isa_flags.txt").read_text().splitlines()
    if re.match(r"[a-z]", line)
]
KERNEL_FILES = sorted(NATIVE.glob("src/*/*__*.c"))

# edge_<activation>_<weights>_<op>_<requant>_ukernel_<MR>x<NR>c<KR>__<isa>, the optional parts optional.
GRAMMAR = re.compile(
    r"edge_(?P<act>q8|f32)(_(?P<weights>qc8w24|qc8w|qc7w|q8|f32))?_(?P<op>[a-z0-9]+)(_(?P<requant>rndnu))?"
    r"_ukernel(_(?P<tile>((?P<mr>\d+)x)?(?P<nr>\d+)c(?P<kr>\d*)))?__(?P<isa>[a-z0-9]+)"
)
# A function definition at file scope: return type, name, parameters, then the body;
# internal if static (or a static inline macro such as EDGE_Q8_DWCONV_INLINE).
DEFINITION = re.compile(
    r"^(?P<static>(static|[A-Z0-9_]+_INLINE)\b[^;{}()]*?)?[A-Za-z_][\w \t*]*?\b(?P<name>\w+)\s*\([^;{}]*\)\s*\{",
    re.MULTILINE,
)
DECLARATION = re.compile(r"^[A-Za-z_][\w \t*]*?\b(?P<name>edge_\w+)\s*\([^;{}]*\)\s*;", re.MULTILINE)


def code(path: Path) -> str:
    """The file without comments."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", path.read_text(), flags=re.DOTALL)


def exported_definitions(path: Path) -> list[str]:
    return [m["name"] for m in DEFINITION.finditer(code(path)) if not m["static"]]


def rel(path: Path) -> str:
    return str(path.relative_to(NATIVE))


@pytest.mark.parametrize("path", KERNEL_FILES, ids=rel)
def test_kernel_file_defines_the_function_it_is_named_for(path: Path) -> None:
    assert exported_definitions(path) == [path.stem], f"{rel(path)} must define exactly {path.stem}()"


@pytest.mark.parametrize("path", KERNEL_FILES, ids=rel)
def test_kernel_name_follows_the_grammar(path: Path) -> None:
    match = GRAMMAR.fullmatch(path.stem)
    assert match, f"{path.stem} does not follow native/README.md's naming grammar"
    assert match["isa"] in ISAS, f"{path.stem}: ISA {match['isa']} is not in isa_flags.txt"


def test_the_check_catches_a_mismatch(tmp_path: Path) -> None:
    wrong = tmp_path / "edge_q8_qc8w_dwconv_rndnu_ukernel_16c__avx2.c"
    wrong.write_text(
        "static int helper(void) { return 0; }\n"
        "void edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__avx2(size_t n,\n    const uint8_t* x) {\n}\n"
    )
    assert exported_definitions(wrong) == ["edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__avx2"] != [wrong.stem]


def test_kernels_json_lists_every_tiled_kernel_with_its_tile() -> None:
    on_disk = {p.stem: p for p in KERNEL_FILES if GRAMMAR.fullmatch(p.stem)["tile"]}
    in_spec = {k["name"]: k for k in kernel_spec.KERNELS}
    assert sorted(in_spec) == sorted(on_disk), "native/kernels.json and the tiled kernel files differ"
    for name, kernel in in_spec.items():
        match = GRAMMAR.fullmatch(name)
        assert on_disk[name].parent.name == kernel["family"], name
        assert match["isa"] == kernel["isa"], name
        assert match["tile"] == kernel_spec.generator.tile(kernel), f"{name}: tile differs from mr/nr/kr"


def test_generated_test_shapes_are_up_to_date() -> None:
    assert kernel_spec.generator.stale() == [], "run: python native/tests/gen_kernel_tests.py"


def test_every_declared_function_is_defined() -> None:
    files = [p for p in NATIVE.rglob("*") if p.suffix in (".c", ".h")]
    declared, defined = set(), set()
    for path in files:
        text = code(path)
        declared |= {m["name"] for m in DECLARATION.finditer(text)}
        defined |= {m["name"] for m in DEFINITION.finditer(text)}
    assert sorted(declared - defined) == [], "declared in native/ but defined nowhere"


def test_no_kernel_name_is_made_by_token_pasting() -> None:
    """grep must find every kernel's declaration and definition by its name."""
    pasted = [
        rel(p) for p in NATIVE.rglob("*") if p.suffix in (".c", ".h") and re.search(r"ukernel\w*##", code(p))
    ]
    assert pasted == []


def test_sources_txt_lists_every_library_source() -> None:
    listed = [line.split("#", 1)[0].strip() for line in (NATIVE / "sources.txt").read_text().splitlines()]
    listed = [line for line in listed if line]
    assert len(listed) == len(set(listed)), "a source is listed twice"
    assert [p for p in listed if not (NATIVE / p).is_file()] == []
    library = {rel(p) for p in NATIVE.glob("src/*/*.c") if p.parent.name != "reference"}
    assert sorted(library - set(listed)) == [], "compiled by neither build"


def test_every_path_in_the_readme_exists() -> None:
    tokens = re.split(r"[\s`()\"',;:=]+", (NATIVE / "README.md").read_text())
    paths = {
        tok.rstrip(".") for tok in tokens if re.fullmatch(r"[\w./-]+(\.(c|h|txt|py|json|cmake|md)\.?|/)", tok)
    }
    assert "src/dispatch/" in paths  # the check sees the README's paths
    bases = (NATIVE, ROOT, NATIVE / "include")
    missing = [p for p in sorted(paths) if not any((base / p).exists() for base in bases)]
    assert missing == [], "native/README.md names paths that do not exist"
