"""The package manifest: schema version 1, its validation and its JSON form.

The manifest is the only thing the signature covers, so every artifact's
size and sha256 live here. Validation is strict on purpose: an unknown
top-level field is refused (a typo such as ``quantisation`` would otherwise be
dropped silently), and any change to the schema bumps ``schema_version``.
The format is documented in ``docs/package-format.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from edge_runtime.errors import PackageFormatError
from edge_runtime.package._json import JsonLimits, check_json_value, loads_bounded

__all__ = [
    "ARTIFACT_KINDS",
    "DTYPES",
    "MANIFEST_JSON_LIMITS",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "SIGNATURE_NAME",
    "SUPPORTED_SCHEMA_VERSIONS",
    "ArtifactEntry",
    "Manifest",
    "Preprocessing",
    "Requirements",
    "SelfTest",
    "Sparsity",
    "TensorSpec",
    "check_member_path",
    "check_schema_version",
    "decode_manifest_json",
    "parse_manifest_bytes",
    "utc_now_iso",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"

# Kinds this runtime knows; other kinds matching _KIND_RE are carried as-is so
# that a newer tool can add an artifact an older runtime simply ignores.
ARTIFACT_KINDS = ("onnx", "native-plan", "onnx-qdq", "tflite", "selftest")
DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "int16", "int32", "int64", "bool")
SPARSITY_PATTERNS = ("2:4",)

# Model names become directory names in the model store: keep them boring.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")
_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,31}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DIM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_LAYOUT_RE = re.compile(r"^[A-Z]{1,8}$")
_RUNTIME_VERSION_RE = re.compile(r"^\d+(\.\d+){0,2}$")
_PATH_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_MAX_PATH_CHARS = 255
WEIGHT_BITS = (8, 7)  # quantization.weight_bits: edge_runtime.numerics.WEIGHT_BITS

# What a manifest may hold beyond its byte size (Limits.max_manifest_bytes): nesting depth, the
# characters of one number literal (a 64-digit integer at most) and finite numbers only. Checked on
# the bytes before decoding (no recursion) and again on the dict a writer is given.
MANIFEST_JSON_LIMITS = JsonLimits(max_depth=64, max_number_chars=64)

_TOP_LEVEL_REQUIRED = ("schema_version", "name", "version", "created", "inputs", "outputs", "artifacts")
_TOP_LEVEL_OPTIONAL = ("quantization", "sparsity", "requirements", "selftest", "metrics", "provenance")


def check_member_path(path: object, what: str = "artifact path") -> str:
    """Return ``path`` if it is a safe relative archive path, else raise PackageFormatError.

    Safe means: forward slashes only, no absolute path, no empty, ``.`` or
    ``..`` component, and components made of ``[A-Za-z0-9._-]`` that do not
    start with a dot. This whitelist is what keeps extraction inside its
    directory on every filesystem.
    """
    if not isinstance(path, str) or not path:
        raise PackageFormatError(f"{what} must be a non-empty string, got {path!r}")
    if len(path) > _MAX_PATH_CHARS:
        raise PackageFormatError(f"{what} {path[:40]!r}... is longer than {_MAX_PATH_CHARS} characters")
    if "\\" in path:
        raise PackageFormatError(f"{what} {path!r} contains a backslash; use '/' as separator")
    if path.startswith("/"):
        raise PackageFormatError(f"{what} {path!r} is absolute; paths must be relative to the archive")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise PackageFormatError(f"{what} {path!r} has an empty, '.' or '..' component")
        if not _PATH_COMPONENT_RE.match(part):
            raise PackageFormatError(
                f"{what} {path!r}: each component must match [A-Za-z0-9_][A-Za-z0-9._-]*"
            )
    return path


# --- small typed readers: each raises PackageFormatError naming the field ---


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PackageFormatError(f"manifest {where} must be a JSON object, got {type(value).__name__}")
    return value


def _str(value: Any, where: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise PackageFormatError(f"manifest {where} must be a non-empty string, got {value!r}")
    if pattern is not None and not pattern.fullmatch(value):  # not match: "$" allows a final newline
        raise PackageFormatError(f"manifest {where} {value!r} does not match {pattern.pattern}")
    return value


def _int(value: Any, where: str, minimum: int = 0) -> int:
    # bool is an int in Python but never a valid size or count here.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PackageFormatError(f"manifest {where} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PackageFormatError(f"manifest {where} must be a number, got {value!r}")
    return float(value)


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PackageFormatError(f"manifest {where} must be a JSON array, got {type(value).__name__}")
    return value


def _str_list(value: Any, where: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    return tuple(_str(v, f"{where}[{i}]", pattern) for i, v in enumerate(_list(value, where)))


def _no_unknown_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise PackageFormatError(
            f"manifest {where} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )


def _required(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise PackageFormatError(f"manifest {where} is missing the required field {key!r}")
    return obj[key]


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --- the schema, one dataclass per object ---


@dataclass(frozen=True)
class Preprocessing:
    """How raw input data is turned into the tensor: memory layout and normalisation."""

    layout: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Preprocessing:
        d = _obj(d, where)
        _no_unknown_keys(d, ("layout", "mean", "std"), where)
        layout = _str(d["layout"], f"{where}.layout", _LAYOUT_RE) if "layout" in d else None
        mean = std = None
        if "mean" in d:
            mean = tuple(_float(v, f"{where}.mean[{i}]") for i, v in enumerate(_list(d["mean"], where)))
        if "std" in d:
            std = tuple(_float(v, f"{where}.std[{i}]") for i, v in enumerate(_list(d["std"], where)))
            if any(s <= 0 for s in std):
                raise PackageFormatError(f"manifest {where}.std must be positive, got {list(std)}")
        if mean is not None and std is not None and len(mean) != len(std):
            raise PackageFormatError(f"manifest {where}: mean and std have different lengths")
        return cls(layout=layout, mean=mean, std=std)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "layout": self.layout,
                "mean": list(self.mean) if self.mean is not None else None,
                "std": list(self.std) if self.std is not None else None,
            }
        )


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. Dynamic dimensions are named strings (``"batch"``)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    preprocessing: Preprocessing | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        d = _obj(d, where)
        _no_unknown_keys(d, ("name", "dtype", "shape", "preprocessing"), where)
        name = _str(_required(d, "name", where), f"{where}.name")
        dtype = _str(_required(d, "dtype", where), f"{where}.dtype")
        if dtype not in DTYPES:
            raise PackageFormatError(f"manifest {where}.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        shape: list[int | str] = []
        for i, dim in enumerate(_list(_required(d, "shape", where), f"{where}.shape")):
            if isinstance(dim, str):
                shape.append(_str(dim, f"{where}.shape[{i}]", _DIM_RE))
            else:
                shape.append(_int(dim, f"{where}.shape[{i}]"))
        pre = d.get("preprocessing")
        return cls(
            name=name,
            dtype=dtype,
            shape=tuple(shape),
            preprocessing=Preprocessing.from_dict(pre, f"{where}.preprocessing") if pre is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "name": self.name,
                "dtype": self.dtype,
                "shape": list(self.shape),
                "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            }
        )


@dataclass(frozen=True)
class ArtifactEntry:
    """One file in the archive, with the size and sha256 the signature vouches for."""

    path: str
    kind: str
    size: int
    sha256: str

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ArtifactEntry:
        d = _obj(d, where)
        _no_unknown_keys(d, ("path", "kind", "size", "sha256"), where)
        path = check_member_path(_required(d, "path", where), f"{where}.path")
        if path in (MANIFEST_NAME, SIGNATURE_NAME):
            raise PackageFormatError(f"manifest {where}.path {path!r} is reserved for the package itself")
        return cls(
            path=path,
            kind=_str(_required(d, "kind", where), f"{where}.kind", _KIND_RE),
            size=_int(_required(d, "size", where), f"{where}.size"),
            sha256=_str(_required(d, "sha256", where), f"{where}.sha256", _SHA256_RE),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Sparsity:
    """Structured sparsity the weights carry (only 2:4 along the reduction dimension)."""

    pattern: str
    layers: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Sparsity:
        d = _obj(d, where)
        _no_unknown_keys(d, ("pattern", "layers"), where)
        pattern = _str(_required(d, "pattern", where), f"{where}.pattern")
        if pattern not in SPARSITY_PATTERNS:
            raise PackageFormatError(
                f"manifest {where}.pattern {pattern!r} is not supported; use one of {SPARSITY_PATTERNS}"
            )
        return cls(pattern=pattern, layers=_str_list(d.get("layers", []), f"{where}.layers"))

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "layers": list(self.layers)}


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


@dataclass(frozen=True)
class Requirements:
    """What the package was built for. Empty tuples mean "any"."""

    min_runtime_version: str | None = None
    isas: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Requirements:
        d = _obj(d, where)
        _no_unknown_keys(d, ("min_runtime_version", "isas", "profiles"), where)
        mrv = d.get("min_runtime_version")
        return cls(
            min_runtime_version=_str(mrv, f"{where}.min_runtime_version", _RUNTIME_VERSION_RE)
            if mrv is not None
            else None,
            isas=_str_list(d.get("isas", []), f"{where}.isas", _KIND_RE),
            profiles=_str_list(d.get("profiles", []), f"{where}.profiles", _KIND_RE),
        )

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "min_runtime_version": self.min_runtime_version,
                "isas": list(self.isas),
                "profiles": list(self.profiles),
            }
        )

    def unmet(self, runtime_version: str, isa: str | None = None, profile: str | None = None) -> list[str]:
        """Reasons this runtime, ISA and profile do not meet the requirements (empty: all met).

        ``isa`` and ``profile`` left as None are not checked. A runtime version
        with a suffix (``0.2.0.dev1``) is compared on its numeric prefix.
        """
        reasons = []
        if self.min_runtime_version is not None:
            numeric = re.match(r"^\d+(\.\d+){0,2}", runtime_version)
            have = _version_tuple(numeric.group(0)) if numeric else (0, 0, 0)
            if have < _version_tuple(self.min_runtime_version):
                reasons.append(
                    f"needs runtime >= {self.min_runtime_version}, this is {runtime_version}; upgrade edge-runtime"
                )
        if isa is not None and self.isas and isa not in self.isas:
            reasons.append(f"built for ISA {', '.join(self.isas)}, this device runs {isa}")
        if profile is not None and self.profiles and profile not in self.profiles:
            reasons.append(f"built for profile {', '.join(self.profiles)}, this device is {profile}")
        return reasons


@dataclass(frozen=True)
class SelfTest:
    """Self-test vectors: an ``.npz`` artifact (``input.<name>``, ``expected.<name>``) and tolerances."""

    artifact: str
    atol: float = 0.0
    rtol: float = 0.0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SelfTest:
        d = _obj(d, where)
        _no_unknown_keys(d, ("artifact", "atol", "rtol"), where)
        atol = _float(d.get("atol", 0.0), f"{where}.atol")
        rtol = _float(d.get("rtol", 0.0), f"{where}.rtol")
        if atol < 0 or rtol < 0:
            raise PackageFormatError(f"manifest {where}: atol and rtol must be >= 0")
        return cls(
            artifact=check_member_path(_required(d, "artifact", where), f"{where}.artifact"),
            atol=atol,
            rtol=rtol,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "atol": self.atol, "rtol": self.rtol}


def _parse_created(value: Any) -> str:
    text = _str(value, "created")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PackageFormatError(f"manifest created {text!r} is not an ISO 8601 time") from None
    if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
        raise PackageFormatError(f"manifest created {text!r} must be UTC (end with 'Z' or '+00:00')")
    return text


def utc_now_iso() -> str:
    """The current UTC time in the manifest's format (second resolution, ``Z`` suffix)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. Build one with :meth:`from_dict`; serialise with :meth:`to_json_bytes`.

    ``quantization``, ``metrics`` and ``provenance`` are free-form JSON
    objects: the quantizer and the trainer define their content, the package
    only carries it; except ``quantization.weight_bits``, the width of the weights
    (8, or 7 for [-63, 63]; absent in older manifests: 8), checked here
    (:attr:`weight_bits`).
    """

    name: str
    version: str
    created: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    artifacts: tuple[ArtifactEntry, ...]
    quantization: dict[str, Any] = field(default_factory=dict)
    sparsity: Sparsity | None = None
    requirements: Requirements = field(default_factory=Requirements)
    selftest: SelfTest | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """Validate a decoded manifest; raises PackageFormatError naming the first bad field.

        Also the write path's guard: depth, integer size and finite numbers are checked
        on the whole dict (:data:`MANIFEST_JSON_LIMITS`), so that nothing is written
        that the reader would refuse.
        """
        d = _obj(d, "root")
        check_json_value(d, MANIFEST_JSON_LIMITS, PackageFormatError, "manifest")
        check_schema_version(d)
        _no_unknown_keys(d, _TOP_LEVEL_REQUIRED + _TOP_LEVEL_OPTIONAL, "root")
        for key in _TOP_LEVEL_REQUIRED:
            _required(d, key, "root")

        inputs = tuple(
            TensorSpec.from_dict(t, f"inputs[{i}]") for i, t in enumerate(_list(d["inputs"], "inputs"))
        )
        outputs = tuple(
            TensorSpec.from_dict(t, f"outputs[{i}]") for i, t in enumerate(_list(d["outputs"], "outputs"))
        )
        for where, specs in (("inputs", inputs), ("outputs", outputs)):
            if not specs:
                raise PackageFormatError(f"manifest {where} must list at least one tensor")
            _unique([s.name for s in specs], f"{where} names")

        artifacts = tuple(
            ArtifactEntry.from_dict(a, f"artifacts[{i}]")
            for i, a in enumerate(_list(d["artifacts"], "artifacts"))
        )
        if not artifacts:
            raise PackageFormatError("manifest artifacts must list at least one file")
        _check_artifact_paths([a.path for a in artifacts])

        selftest = SelfTest.from_dict(d["selftest"], "selftest") if d.get("selftest") is not None else None
        if selftest is not None and selftest.artifact not in {a.path for a in artifacts}:
            raise PackageFormatError(
                f"manifest selftest.artifact {selftest.artifact!r} is not listed in artifacts"
            )

        _weight_bits(_obj(d.get("quantization", {}), "quantization"))
        return cls(
            schema_version=d["schema_version"],
            name=_str(d["name"], "name", _NAME_RE),
            version=_str(d["version"], "version", _VERSION_RE),
            created=_parse_created(d["created"]),
            inputs=inputs,
            outputs=outputs,
            artifacts=artifacts,
            quantization=dict(_obj(d.get("quantization", {}), "quantization")),
            sparsity=Sparsity.from_dict(d["sparsity"], "sparsity") if d.get("sparsity") is not None else None,
            requirements=Requirements.from_dict(d.get("requirements", {}), "requirements"),
            selftest=selftest,
            metrics=dict(_obj(d.get("metrics", {}), "metrics")),
            provenance=dict(_obj(d.get("provenance", {}), "provenance")),
        )

    @property
    def weight_bits(self) -> int:
        """``quantization.weight_bits``: 8 or 7; 8 when absent (manifests before it existed)."""
        return _weight_bits(self.quantization)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "schema_version": self.schema_version,
                "name": self.name,
                "version": self.version,
                "created": self.created,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "artifacts": [a.to_dict() for a in self.artifacts],
                "quantization": self.quantization,
                "sparsity": self.sparsity.to_dict() if self.sparsity else None,
                "requirements": self.requirements.to_dict(),
                "selftest": self.selftest.to_dict() if self.selftest else None,
                "metrics": self.metrics,
                "provenance": self.provenance,
            }
        )

    def to_json_bytes(self) -> bytes:
        """Canonical bytes: sorted keys, two-space indent, UTF-8, no NaN. Same manifest, same bytes."""
        try:
            text = json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise PackageFormatError(f"manifest cannot be written as JSON: {exc}") from None
        return (text + "\n").encode("utf-8")

    def artifact(self, path_or_kind: str) -> ArtifactEntry:
        """The entry with this path, else the only entry of this kind; KeyError otherwise."""
        for entry in self.artifacts:
            if entry.path == path_or_kind:
                return entry
        of_kind = [a for a in self.artifacts if a.kind == path_or_kind]
        if len(of_kind) == 1:
            return of_kind[0]
        if len(of_kind) > 1:
            paths = ", ".join(a.path for a in of_kind)
            raise KeyError(
                f"{len(of_kind)} artifacts of kind {path_or_kind!r} ({paths}); ask for one by path"
            )
        listed = ", ".join(f"{a.path} ({a.kind})" for a in self.artifacts)
        raise KeyError(f"no artifact with path or kind {path_or_kind!r}; the package holds {listed}")


def _weight_bits(quantization: Mapping[str, Any]) -> int:
    """``quantization.weight_bits`` of a manifest: 8 (also when absent) or 7."""
    value = quantization.get("weight_bits", 8)
    if isinstance(value, bool) or not isinstance(value, int) or value not in WEIGHT_BITS:
        raise PackageFormatError(f"manifest quantization.weight_bits must be 8 or 7, got {value!r}")
    return value


def _unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise PackageFormatError(f"manifest {what} are not unique: {v!r} appears twice")
        seen.add(v)


def _check_artifact_paths(paths: list[str]) -> None:
    # Case-folded so that a package extracts the same on case-insensitive filesystems.
    _unique([p.casefold() for p in paths], "artifact paths (case-insensitive)")
    folded = {p.casefold() for p in paths}
    for p in paths:
        parts = p.casefold().split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in folded:
                raise PackageFormatError(f"manifest artifact path {p!r} lies under another artifact's path")


def check_schema_version(d: Mapping[str, Any]) -> None:
    """Refuse a manifest whose schema version this runtime cannot read, saying which it can."""
    version = d.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PackageFormatError(f"manifest schema_version must be an integer, got {version!r}")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        readable = ", ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
        hint = "upgrade edge-runtime to read it" if version > max(SUPPORTED_SCHEMA_VERSIONS) else ""
        raise PackageFormatError(
            f"manifest schema_version {version} is not supported; this runtime reads version(s) {readable}"
            + (f"; {hint}" if hint else "")
        )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that disagree on which duplicate wins would see different
    # manifests under one signature: refuse duplicates outright.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PackageFormatError(f"manifest has the key {key!r} twice")
        result[key] = value
    return result


def parse_manifest_bytes(data: bytes) -> Manifest:
    """Decode and validate manifest bytes (UTF-8 JSON within :data:`MANIFEST_JSON_LIMITS`).

    Raises PackageFormatError for anything else: invalid JSON, duplicate keys,
    nesting deeper than the limit, an oversized number, NaN/Infinity or a number
    that is not finite as a double (``1e400``), and every schema error.
    """
    return Manifest.from_dict(decode_manifest_json(data))


def decode_manifest_json(data: bytes | str) -> Any:
    """The JSON value of manifest bytes (or text) within :data:`MANIFEST_JSON_LIMITS`, not validated
    against the schema: what ``edge pack`` reads a hand-written manifest with; PackageFormatError."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return loads_bounded(raw, MANIFEST_JSON_LIMITS, PackageFormatError, "manifest", _no_duplicate_keys)
