"""The backend interface: what :func:`edge_runtime.load` needs from an inference engine.

A :class:`Backend` is a stateless factory registered once per engine. It says
whether it can run here (:meth:`Backend.available`) and which artifact kinds
it reads (:attr:`Backend.kinds`); :meth:`Backend.open` turns one artifact into
a :class:`Session`, which runs feeds that :class:`edge_runtime.Model` has
already validated against the model's interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np

    from device_profiles import BackendPreference, Profile
    from edge_runtime.package import Manifest, TensorSpec

__all__ = ["Artifact", "Backend", "OpenOptions", "Session"]


@dataclass(frozen=True)
class Artifact:
    """One model file handed to a backend: verified bytes, never a path to re-read."""

    path: str  # the name in the package, or the file name of a bare model
    kind: str  # "onnx", "onnx-qdq", "tflite", "native-plan"
    data: bytes

    def __repr__(self) -> str:
        return f"Artifact({self.path!r}, kind={self.kind!r}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class OpenOptions:
    """How to open a session. ``providers`` come from the profile entry being tried, if any."""

    threads: int
    profile: Profile | None = None
    manifest: Manifest | None = None
    providers: tuple[str, ...] = ()


class Session(ABC):
    """One loaded model on one backend.

    ``inputs`` and ``outputs`` are what the engine itself reports (names,
    dtypes, shapes with ``"?"`` or a name for dynamic dimensions).
    ``concurrent`` tells whether :meth:`run` may be entered from several
    threads at once; a session that is not concurrent must serialise
    callers itself, so :meth:`run` is always safe to call from any thread.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    concurrent: bool

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for feeds that match :attr:`inputs` (already checked by the caller)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able facts for :meth:`edge_runtime.Model.info`: engine, version, providers, threads."""

    def close(self) -> None:  # optional hook: most sessions need nothing
        """Release engine resources; further :meth:`run` calls are not allowed."""


class Backend(ABC):
    """An inference engine the runtime can load models on.

    Subclasses set :attr:`name` and :attr:`kinds` and are registered in
    :data:`edge_runtime.backends.BACKENDS`.
    """

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]  # artifact kinds it runs, preferred first

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """``(True, what will be used)`` or ``(False, why not)``; cheap and without side effects."""

    def accepts(self, preference: BackendPreference) -> tuple[bool, str]:
        """Whether a profile's backend entry applies here (e.g. its providers exist); ``(ok, why)``."""
        return True, ""

    @abstractmethod
    def open(self, artifact: Artifact, options: OpenOptions) -> Session:
        """Load ``artifact``. Raises UnsupportedOperatorError, GraphError or BackendUnavailableError."""
