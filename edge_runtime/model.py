"""The on-device Python API: :func:`load` a model, :meth:`Model.run` it.

``load`` opens a signed ``.edgepkg`` through :mod:`edge_runtime.package`, a
package extracted by the model store (``models/<name>/<sha256>/`` or its
``current`` link), or, for convenience, a bare ``.onnx`` / ``.tflite`` file;
it picks a backend and records why, and returns a :class:`Model`::

    import edge_runtime

    with edge_runtime.load("mnist.edgepkg", trust_store=TrustStore.load("/etc/edge/trust")) as model:
        print(model.info()["reason"])
        logits = model.run({"image": batch})["logits"]

Backend selection with ``backend="auto"`` walks the device profile's
preferred order (``device_profiles``), then the other registered backends,
and takes the first one that is installed, applies (e.g. its execution
providers exist) and runs an artifact the package carries; each one skipped
is recorded with its reason in :meth:`Model.info`.

Inputs are checked against the manifest (or, for bare files, the model's own
metadata) before any backend sees them: a dimension named like ``"batch"``
takes any size, the same name in two inputs must have the same size, and
everything else must match exactly, dtype included (no silent casts).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import numpy as np

from edge_runtime._version import __version__
from edge_runtime.backends import BACKENDS, Artifact, Backend, OpenOptions, Session, get_backend
from edge_runtime.errors import (
    BackendUnavailableError,
    IntegrityError,
    ModelInputError,
    PackageError,
    PackageFormatError,
    SelfTestError,
    SignatureError,
    UnsupportedOperatorError,
)
from edge_runtime.package import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Limits,
    Manifest,
    Package,
    TensorSpec,
    TrustStore,
    file_sha256,
    load_selftest,
    open_package,
    open_regular_file,
    parse_manifest_bytes,
)
from edge_runtime.package._manifest import check_member_path
from edge_runtime.package._signing import parse_signature

if TYPE_CHECKING:
    from device_profiles import BackendPreference, Profile

__all__ = ["Model", "OutputCheck", "SelfTestResult", "format_spec", "load"]

# Artifact kinds a backend may run; "selftest" and unknown kinds are data, not models.
RUNNABLE_KINDS = ("native-plan", "onnx-qdq", "onnx", "tflite")
_ZIP_MAGIC = b"PK\x03\x04"
_TFLITE_MAGIC = b"TFL3"  # the flatbuffer file identifier, at byte offset 4


def format_spec(spec: TensorSpec) -> str:
    """``float32 [batch, 1, 8, 8]``: how specs appear in messages and listings."""
    return f"{spec.dtype} [{', '.join(str(d) for d in spec.shape)}]"


def _format_array(arr: np.ndarray) -> str:
    return f"{arr.dtype.name} [{', '.join(str(d) for d in arr.shape)}]"


# --- input validation ---


def _validate(specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
    """Feeds by name, each a contiguous array matching its spec; ModelInputError otherwise."""
    if not isinstance(inputs, Mapping):
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise ModelInputError(
                f"the model has {len(specs)} inputs ({names}); pass a dict of arrays by name"
            )
        inputs = {specs[0].name: inputs}

    by_name = {s.name: s for s in specs}
    unknown = sorted(set(inputs) - set(by_name))
    if unknown:
        expected = ", ".join(f"{s.name} ({format_spec(s)})" for s in specs)
        raise ModelInputError(
            f"unknown input(s) {', '.join(map(repr, unknown))}; the model's inputs are {expected}"
        )
    missing = [s for s in specs if s.name not in inputs]
    if missing:
        listed = ", ".join(f"'{s.name}' ({format_spec(s)})" for s in missing)
        raise ModelInputError(f"missing input(s) {listed}")

    bound: dict[str, tuple[int, str]] = {}  # named dimension -> (size, input that set it)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = np.asarray(inputs[spec.name])
        problem = _mismatch(spec, arr, bound)
        if problem:
            raise ModelInputError(
                f"input '{spec.name}': expected {format_spec(spec)}, got {_format_array(arr)} ({problem})"
            )
        feeds[spec.name] = np.ascontiguousarray(arr)
    return feeds


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, which numpy computes anew each time (several microseconds: a tiny
    model's whole inference is a few times that)."""
    return dtype.name


def _mismatch(spec: TensorSpec, arr: np.ndarray, bound: dict[str, tuple[int, str]]) -> str | None:
    """What is wrong with ``arr`` for ``spec`` (None: nothing); binds named dimensions in ``bound``."""
    if _dtype_name(arr.dtype) != spec.dtype:
        return f"dtype {arr.dtype.name} instead of {spec.dtype}; convert with .astype"
    if arr.ndim != len(spec.shape):
        return f"rank {arr.ndim} instead of {len(spec.shape)}"
    for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
        if isinstance(want, int):
            if want != got:
                return f"dimension {axis} is {got}, must be {want}"
        elif want != "?":  # "?" is an anonymous dynamic dimension: nothing to agree with
            size, where = bound.setdefault(want, (got, spec.name))
            if size != got:
                return f"{want} is {got} here but {size} in input '{where}'"
    return None


# --- self-test results ---


@dataclass(frozen=True)
class OutputCheck:
    """One output of a self-test run compared with its expected values."""

    name: str
    passed: bool
    max_abs_error: float
    mismatched: int  # elements outside atol + rtol * |expected|
    size: int
    detail: str = ""


@dataclass(frozen=True)
class SelfTestResult:
    """What :meth:`Model.selftest` found; ``passed`` only if every output is within tolerance."""

    passed: bool
    atol: float
    rtol: float
    checks: tuple[OutputCheck, ...]
    seconds: float

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        parts = []
        for c in self.checks:
            line = f"{c.name}: max |error| {c.max_abs_error:.3g}, {c.mismatched}/{c.size} outside tolerance"
            parts.append(line + (f" ({c.detail})" if c.detail else ""))
        return f"self-test {verdict} (atol {self.atol}, rtol {self.rtol}): " + "; ".join(parts)


def _compare(name: str, actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    if actual.shape != expected.shape:
        return OutputCheck(
            name, False, float("inf"), expected.size, expected.size,
            detail=f"shape {list(actual.shape)} instead of {list(expected.shape)}",
        )  # fmt: skip
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    close = np.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    diff = np.abs(a - e)
    max_err = float(np.nanmax(diff)) if diff.size else 0.0
    mismatched = int(close.size - np.count_nonzero(close))
    return OutputCheck(name, mismatched == 0, max_err, mismatched, int(close.size))


# --- the model ---


@final
class Model:
    """A model loaded on one backend. Get one from :func:`load`.

    ``run`` may be called from several threads at once: onnxruntime and native
    sessions run concurrently, TFLite sessions serialise callers with a lock (see
    ``info()["session"]["thread_safety"]``). Close it (or use ``with``) to
    free the backend's memory.
    """

    def __init__(
        self,
        session: Session,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        info: dict[str, Any],
        manifest: Manifest | None,
        selftest_vectors: bytes | None,
    ) -> None:
        self._session: Session | None = session
        self._close_lock = threading.Lock()
        self.inputs = inputs
        self.outputs = outputs
        self.manifest = manifest
        self._info = info
        self._selftest_vectors = selftest_vectors

    @property
    def name(self) -> str:
        return str(self._info["name"])

    @property
    def version(self) -> str | None:
        version: str | None = self._info["version"]
        return version

    @property
    def backend(self) -> str:
        return str(self._info["backend"])

    @property
    def closed(self) -> bool:
        return self._session is None

    def run(self, inputs: Mapping[str, Any] | np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name. ``inputs``: arrays by input name, or one array for a single-input model.

        Raises ModelInputError naming the input and what was expected when a
        name, dtype or shape does not match :attr:`inputs`.
        """
        session = self._session  # a local reference: close() may run meanwhile
        if session is None:
            raise ValueError(f"model {self.name!r} is closed")
        results = session.run(_validate(self.inputs, inputs))
        return {spec.name: results[spec.name] for spec in self.outputs}

    def info(self) -> dict[str, Any]:
        """JSON-able facts about the loaded model.

        Keys: ``name``, ``version`` (None for a bare file), ``source`` (kind
        ``package``/``directory``/``onnx``/``tflite``, path, sha256 of the
        package file (for a directory: its store name when that is a sha256),
        verified signer), ``backend`` and ``reason`` (why it was chosen), ``skipped``
        (backends passed over and why), ``artifact`` (path, kind),
        ``profile``, ``kernel_isa``, ``machine``, ``threads``, ``warnings``,
        ``runtime_version``, ``session`` (the backend's own description:
        engine, execution providers, thread safety) and ``partition``: on the native
        backend, which graph nodes run where (``nodes``: node -> ``native``,
        ``native-float``, ``onnxruntime`` or ``reference``; ``segments``: the foreign
        ones) and ``native_mac_share``, the share of multiply-accumulates on the native
        kernels (:func:`edge_runtime.plan.partition.partition_report`); None on the others,
        which run the whole graph.
        """
        source = self._info["source"]
        if callable(source.get("sha256")):
            source["sha256"] = source["sha256"]()
        info = copy.deepcopy(self._info)
        info["partition"] = None
        if self._session is not None:
            info["session"] = self._session.describe()
            info["partition"] = info["session"].pop("partition", None)
        return info

    @property
    def has_selftest(self) -> bool:
        return self._selftest_vectors is not None

    def selftest(self, *, raise_on_failure: bool = False) -> SelfTestResult:
        """Run the package's self-test vectors and compare with their tolerances.

        Raises SelfTestError when the model carries no vectors, when the
        vectors do not fit the model, or (with ``raise_on_failure``) when an
        output is out of tolerance; otherwise returns the result.
        """
        if self._selftest_vectors is None or self.manifest is None or self.manifest.selftest is None:
            raise SelfTestError(f"model {self.name!r} carries no self-test vectors")
        spec = self.manifest.selftest
        inputs, expected = load_selftest(self._selftest_vectors)
        start = time.perf_counter()
        try:
            outputs = self.run(inputs)
        except ModelInputError as exc:
            raise SelfTestError(f"the self-test vectors do not fit model {self.name!r}: {exc}") from None
        seconds = time.perf_counter() - start
        unknown = sorted(set(expected) - set(outputs))
        if unknown:
            raise SelfTestError(
                f"the self-test expects output(s) {', '.join(unknown)}, which model {self.name!r} "
                f"does not produce (it has {', '.join(outputs)})"
            )
        checks = tuple(
            _compare(name, outputs[name], expected[name], spec.atol, spec.rtol) for name in sorted(expected)
        )
        result = SelfTestResult(all(c.passed for c in checks), spec.atol, spec.rtol, checks, seconds)
        if raise_on_failure and not result.passed:
            raise SelfTestError(f"model {self.name!r}: {result.summary()}")
        return result

    def close(self) -> None:
        """Free the backend session; ``run`` raises ValueError afterwards. Idempotent."""
        with self._close_lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        version = f" {self.version}" if self.version else ""
        state = "closed" if self.closed else f"on {self.backend}"
        return f"<Model {self.name}{version} {state}>"


# --- extracted packages (the model store's version directories) ---

_SHA256_DIR = re.compile(r"^[0-9a-f]{64}$")


class ExtractedPackage:
    """A package extracted to a directory (``manifest.json``, ``manifest.sig``, artifacts), read
    with the same checks as a package file: the signature against ``trust_store`` when one is
    given, and each artifact's size and sha256 against the manifest as it is read.

    This is what :class:`~edge_runtime.store.ModelStore` installs as ``models/<name>/<sha256>/``;
    the directory name, when it is a sha256, is the package file's (its content address).
    ``directory`` should be resolved (no ``current`` link in it), so that every read is of one version.
    """

    def __init__(self, directory: Path, trust_store: TrustStore | None, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self.directory = directory
        manifest_file = directory / MANIFEST_NAME
        if not manifest_file.is_file():
            raise PackageFormatError(
                f"{directory} has no {MANIFEST_NAME}: not an extracted package (a model store version directory)"
            )
        if manifest_file.stat().st_size > limits.max_manifest_bytes:
            raise PackageFormatError(
                f"{manifest_file} is over the limit of {limits.max_manifest_bytes} bytes"
            )
        self._limits = limits
        manifest_bytes = manifest_file.read_bytes()
        signature_file = directory / SIGNATURE_NAME
        signature = parse_signature(signature_file.read_bytes()) if signature_file.is_file() else None
        if trust_store is not None:
            if signature is None:
                raise SignatureError(
                    f"{directory} is not signed ({SIGNATURE_NAME} missing), but a trust store is configured"
                )
            signature = trust_store.verify(manifest_bytes, signature)
        self.manifest = parse_manifest_bytes(manifest_bytes)
        self.signer = signature.key_id if signature is not None and signature.verified else None
        self.sha256 = directory.name if _SHA256_DIR.match(directory.name) else None

    def read_artifact(self, path_or_kind: str) -> bytes:
        """The bytes of one artifact; IntegrityError when its size or sha256 differ from the manifest."""
        entry = self.manifest.artifact(path_or_kind)
        file = self.directory / check_member_path(entry.path)
        if file.is_symlink() or not file.resolve().is_relative_to(self.directory):
            raise PackageFormatError(
                f"artifact {entry.path} of {self.directory} is a link; only files are read"
            )
        try:
            size = file.stat().st_size
            if size != entry.size or size > self._limits.max_artifact_bytes:
                raise IntegrityError(
                    f"artifact {file} has {size} bytes, the manifest says {entry.size}; reinstall the package"
                )
            with open_regular_file(file) as f:
                data = f.read()
        except FileNotFoundError:
            raise IntegrityError(f"artifact {file} is missing; reinstall the package") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise IntegrityError(
                f"artifact {file} does not match the manifest (sha256 {digest[:16]}... vs "
                f"{entry.sha256[:16]}...); reinstall the package"
            )
        return data


# --- loading ---


@dataclass(frozen=True)
class _Opened:
    session: Session
    backend: str
    artifact: Artifact
    reason: str
    skipped: tuple[tuple[str, str], ...]


def _resolve_profile(profile: str | Profile | None) -> Profile | None:
    if profile is None or not isinstance(profile, str):
        return profile
    from device_profiles import detect_profile, get_profile

    return detect_profile() if profile == "auto" else get_profile(profile)


def _resolve_threads(threads: int | None, profile: Profile | None) -> int:
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        return threads
    if profile is not None and profile.threads > 0:
        return profile.threads
    return os.cpu_count() or 1


def _file_kind(path: Path) -> str:
    """The kind of model file: "package", "onnx" or "tflite", from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    by_suffix = {".edgepkg": "package", ".onnx": "onnx", ".tflite": "tflite"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    with open_regular_file(path) as f:  # a FIFO or device is refused, never waited on
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC):
        return "package"
    if head[4:8] == _TFLITE_MAGIC:
        return "tflite"
    raise PackageFormatError(f"{path} is neither an .edgepkg nor an .onnx or .tflite model")


def _candidates(backend: str, profile: Profile | None) -> list[tuple[str, BackendPreference | None]]:
    """``(backend name, profile entry or None)`` in the order to try them."""
    if backend != "auto":
        get_backend(backend)  # an unknown name fails here, listing the known ones
        entries = [p for p in profile.backends if p.backend == backend] if profile else []
        return [(backend, p) for p in entries] + [(backend, None)]
    entries = list(profile.backends) if profile else []
    listed = {p.backend for p in entries}
    return [(p.backend, p) for p in entries] + [(name, None) for name in BACKENDS if name not in listed]


def _pick_artifact(
    backend: Backend, listed: list[tuple[str, str]], wanted: str | None
) -> tuple[str, str] | None:
    """The (path, kind) this backend should run: ``wanted`` (a path or kind) or its preferred kind."""
    if wanted is not None:
        listed = [(p, k) for p, k in listed if wanted in (p, k)]
    for kind in backend.kinds:
        for path, k in listed:
            if k == kind:
                return path, k
    return None


def _open_best(
    listed: list[tuple[str, str]],
    read: Callable[[str], bytes],
    backend: str,
    wanted_artifact: str | None,
    profile: Profile | None,
    threads: int,
    manifest: Manifest | None,
) -> _Opened:
    explicit = backend != "auto"
    holds = ", ".join(f"{p} ({k})" for p, k in listed) or "no runnable artifact"
    if wanted_artifact is not None and not any(wanted_artifact in entry for entry in listed):
        raise BackendUnavailableError(
            f"no artifact with path or kind {wanted_artifact!r}; the model holds {holds}"
        )
    skipped: list[tuple[str, str]] = []
    cache: dict[str, bytes] = {}

    for name, preference in _candidates(backend, profile):
        label = str(preference) if preference is not None else name  # "onnxruntime[CUDA...]"
        impl = BACKENDS.get(name)
        if impl is None:
            skipped.append((label, "no backend of this name is registered"))
            continue
        ok, why = impl.available()
        if not ok:
            if explicit:
                raise BackendUnavailableError(why)
            skipped.append((label, why))
            continue
        if preference is not None:
            ok, why = impl.accepts(preference)
            if not ok:
                skipped.append((label, why))
                continue
        choice = _pick_artifact(impl, listed, wanted_artifact)
        if choice is None:
            asked = f" and artifact {wanted_artifact!r} was asked for" if wanted_artifact else ""
            why = f"it runs {', '.join(impl.kinds)}{asked}; the model holds {holds}"
            if explicit:
                raise BackendUnavailableError(f"backend {name!r} cannot run this model: {why}")
            skipped.append((label, why))
            continue
        path, kind = choice
        if path not in cache:
            cache[path] = read(path)
        artifact = Artifact(path, kind, cache[path])
        options = OpenOptions(
            threads=threads,
            profile=profile,
            manifest=manifest,
            providers=preference.providers if preference is not None else (),
        )
        try:
            session = impl.open(artifact, options)
        except (UnsupportedOperatorError, BackendUnavailableError) as exc:
            # The native backend refuses graphs with operators it lacks: the next backend gets them.
            if explicit:
                raise
            skipped.append((label, f"{name} backend refused: {exc}"))
            continue
        return _Opened(
            session,
            name,
            artifact,
            _reason(backend, profile, skipped, name, preference, artifact),
            tuple(skipped),
        )

    details = "; ".join(f"{n}: {why}" for n, why in skipped)
    raise BackendUnavailableError(f"no backend can run this model ({holds}): {details}")


def _reason(
    backend: str,
    profile: Profile | None,
    skipped: list[tuple[str, str]],
    chosen: str,
    preference: BackendPreference | None,
    artifact: Artifact,
) -> str:
    """One sentence for ``info()["reason"]``: who asked for what, what was skipped, what runs."""
    if backend != "auto":
        parts = [f"backend {backend} requested"]
    elif profile is not None:
        order = " > ".join(str(p) for p in profile.backends)
        parts = [f"profile {profile.name} prefers {order}"]
    else:
        parts = [f"no device profile; trying backends in registry order ({', '.join(BACKENDS)})"]
    parts += [f"{name} skipped: {why}" for name, why in skipped]
    using = f"using {chosen} on {artifact.path} ({artifact.kind})"
    if preference is not None and preference.providers:
        using += f" asking for {', '.join(preference.providers)}"
    if backend == "auto" and profile is not None and preference is None:
        using += ", a fallback outside the profile's order"
    return "; ".join(parts + [using])


def _check_interface(manifest: Manifest, session: Session, artifact: Artifact) -> None:
    """The manifest's inputs and outputs must be the model's, with the same dtypes and ranks."""
    for what, declared, actual in (
        ("input", manifest.inputs, session.inputs),
        ("output", manifest.outputs, session.outputs),
    ):
        by_name = {t.name: t for t in actual}
        for spec in declared:
            got = by_name.get(spec.name)
            if got is None:
                raise PackageFormatError(
                    f"manifest {what} {spec.name!r} is not an {what} of {artifact.path} "
                    f"(its {what}s are {', '.join(by_name)})"
                )
            if got.dtype != spec.dtype or (got.shape and len(got.shape) != len(spec.shape)):
                raise PackageFormatError(
                    f"manifest {what} {spec.name!r} is {format_spec(spec)}, "
                    f"but {artifact.path} has {format_spec(got)}"
                )
    undeclared = sorted({t.name for t in session.inputs} - {t.name for t in manifest.inputs})
    if undeclared:
        raise PackageFormatError(
            f"{artifact.path} has input(s) {', '.join(undeclared)} that the manifest does not declare"
        )


def load(
    path: str | os.PathLike[str],
    backend: str = "auto",
    profile: str | Profile | None = "auto",
    threads: int | None = None,
    trust_store: TrustStore | None = None,
    *,
    artifact: str | None = None,
) -> Model:
    """Load a model package (or a bare ``.onnx`` / ``.tflite`` file) on a backend.

    ``path`` is a ``.edgepkg`` file, a directory the model store extracted a
    package into (``models/<name>/<sha256>``, or the ``current`` link, which
    is resolved once), or a bare model file.

    - ``backend``: ``"auto"`` or a name in :data:`edge_runtime.backends.BACKENDS`
      (``"native"``, ``"onnxruntime"``, ``"tflite"``). A named backend that
      cannot run the model raises instead of falling back.
    - ``profile``: ``"auto"`` (detect this device), a profile name such as
      ``"raspberrypi-4b"``, a :class:`device_profiles.Profile`, or None (no
      profile: backends in registry order, CPU only).
    - ``threads``: intra-op threads; default the profile's, else one per CPU.
    - ``trust_store``: when given, the package must be signed by a trusted
      key, and bare model files (which cannot be signed) are refused.
    - ``artifact``: run this artifact (a path or kind in the package) rather
      than the backend's preferred one, e.g. ``"onnx"`` to run the float model.

    Raises the package reader's errors (PackageError subclasses),
    BackendUnavailableError, UnsupportedOperatorError or GraphError.
    """
    model_path = Path(path)
    resolved = _resolve_profile(profile)
    nthreads = _resolve_threads(threads, resolved)
    warnings: list[str] = []
    opener: AbstractContextManager[Package | ExtractedPackage]
    if model_path.is_dir():
        # Resolved once: a store's `current` link switched during the load cannot mix two versions.
        model_path = model_path.resolve()
        kind = "directory"
        opener = nullcontext(ExtractedPackage(model_path, trust_store))
    else:
        kind = _file_kind(model_path)
        if kind == "package":
            opener = open_package(model_path, trust_store=trust_store)

    if kind in ("package", "directory"):
        with opener as pkg:
            manifest = pkg.manifest
            _check_requirements(manifest, resolved, warnings)
            listed = [(a.path, a.kind) for a in manifest.artifacts if a.kind in RUNNABLE_KINDS]
            opened = _open_best(listed, pkg.read_artifact, backend, artifact, resolved, nthreads, manifest)
            try:
                _check_interface(manifest, opened.session, opened.artifact)
                vectors = pkg.read_artifact(manifest.selftest.artifact) if manifest.selftest else None
            except BaseException:
                opened.session.close()
                raise
            name, version = manifest.name, manifest.version
            source: dict[str, Any] = {
                "kind": kind,
                "path": str(model_path),
                # Hashing a large package file costs ~1 ms per MiB: done when info() is first read.
                "sha256": functools.partial(file_sha256, model_path) if kind == "package" else pkg.sha256,
                "signer": pkg.signer,
            }
        inputs, outputs = manifest.inputs, manifest.outputs
    else:
        if trust_store is not None:
            raise SignatureError(
                f"{model_path} is a bare {kind} file, which cannot carry a signature, but a trust store "
                "is configured; load a signed .edgepkg instead"
            )
        with open_regular_file(model_path) as f:
            data = f.read()
        opened = _open_best(
            [(model_path.name, kind)], lambda _: data, backend, artifact, resolved, nthreads, None
        )
        manifest, vectors = None, None
        name, version = model_path.stem, None
        source = {
            "kind": kind,
            "path": str(model_path),
            "sha256": hashlib.sha256(data).hexdigest(),
            "signer": None,
        }
        inputs, outputs = opened.session.inputs, opened.session.outputs

    info: dict[str, Any] = {
        "name": name,
        "version": version,
        "source": source,
        "backend": opened.backend,
        "reason": opened.reason,
        "skipped": [{"backend": name, "reason": why} for name, why in opened.skipped],
        "artifact": {"path": opened.artifact.path, "kind": opened.artifact.kind},
        "profile": resolved.name if resolved is not None else None,
        "kernel_isa": resolved.kernel_isa if resolved is not None else None,
        "machine": platform.machine(),
        "threads": nthreads,
        "warnings": warnings,
        "runtime_version": __version__,
    }
    return Model(opened.session, inputs, outputs, info, manifest, vectors)


def _check_requirements(manifest: Manifest, profile: Profile | None, warnings: list[str]) -> None:
    """Refuse a package for a newer runtime; note (not refuse) one built for another ISA or board.

    An ISA or profile requirement describes the native plan it was built
    with; onnxruntime and TFLite artifacts still run, so it is a warning.
    """
    req = manifest.requirements
    too_old = req.unmet(__version__)
    if too_old:
        raise PackageError(
            f"package {manifest.name} {manifest.version} cannot run here: {'; '.join(too_old)}"
        )
    if profile is not None:
        warnings.extend(req.unmet(__version__, isa=profile.kernel_isa, profile=profile.name))
