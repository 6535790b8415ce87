"""The TFLite backend: ``.tflite`` artifacts on LiteRT's or tflite-runtime's interpreter.

The interpreter comes from ``ai_edge_litert.interpreter`` (LiteRT, the
maintained package, wheels for current Pythons) or else
``tflite_runtime.interpreter`` (older wheels, still common on Raspberry Pi OS).

A dynamic batch is handled by ``resize_tensor_input`` followed by
``allocate_tensors`` whenever an input's shape changes; the resize is not
strict, so a model exported with a fixed batch of 1 still runs the batch the
manifest promises. Only shapes that passed the model's validation reach here.

Thread safety: a TFLite interpreter holds its tensors in place and is not
thread-safe, so every session serialises ``run`` with a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from edge_runtime.backends._base import Artifact, Backend, OpenOptions, Session
from edge_runtime.errors import BackendUnavailableError, GraphError, ModelInputError
from edge_runtime.package import TensorSpec

__all__ = ["INTERPRETER_MODULES", "TFLiteBackend", "TFLiteSession", "import_interpreter"]

# Tried in this order; the first that imports is used.
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def import_interpreter() -> tuple[ModuleType, str]:
    """``(module, its name)`` of the first interpreter module that imports; BackendUnavailableError otherwise."""
    import importlib

    failures = []
    for name in INTERPRETER_MODULES:
        try:
            return importlib.import_module(name), name
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    raise BackendUnavailableError(
        "no TFLite interpreter is installed (" + "; ".join(failures) + "); pip install ai-edge-litert"
    )


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    # shape_signature marks dynamic dimensions with -1; shape is the currently allocated one.
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple("?" if int(d) < 0 else int(d) for d in dims)
    return TensorSpec(name=detail["name"], dtype=np.dtype(detail["dtype"]).name, shape=shape)


class TFLiteSession(Session):
    """One TFLite interpreter; ``run`` holds a lock for the whole resize-set-invoke-get sequence."""

    concurrent = False

    def __init__(self, interpreter: Any, module_name: str, artifact: Artifact, threads: int) -> None:
        self._interpreter: Any = interpreter
        self._module_name = module_name
        self._artifact = artifact
        self._threads = threads
        self._lock = threading.Lock()
        self._input_details = interpreter.get_input_details()
        self._output_details = interpreter.get_output_details()
        self.inputs = tuple(_spec(d) for d in self._input_details)
        self.outputs = tuple(_spec(d) for d in self._output_details)
        self._allocated = {d["name"]: tuple(int(x) for x in d["shape"]) for d in self._input_details}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            interp = self._interpreter
            if interp is None:
                raise ValueError("the TFLite session is closed")
            resized = False
            for detail in self._input_details:
                shape = tuple(feeds[detail["name"]].shape)
                if shape != self._allocated[detail["name"]]:
                    interp.resize_tensor_input(detail["index"], list(shape), strict=False)
                    self._allocated[detail["name"]] = shape
                    resized = True
            try:
                if resized:
                    interp.allocate_tensors()
                for detail in self._input_details:
                    interp.set_tensor(detail["index"], np.ascontiguousarray(feeds[detail["name"]]))
                interp.invoke()
            except (ValueError, RuntimeError) as exc:
                raise ModelInputError(f"the TFLite interpreter refused the inputs: {exc}") from None
            # get_tensor copies, so results stay valid after the next run reuses the buffers.
            return {d["name"]: interp.get_tensor(d["index"]) for d in self._output_details}

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self._module_name,
            "artifact_kind": self._artifact.kind,
            "num_threads": self._threads,
            "thread_safety": "run() serialised by a lock (a TFLite interpreter is not thread-safe)",
        }

    def close(self) -> None:
        with self._lock:  # waits for a run in flight
            self._interpreter = None


class TFLiteBackend(Backend):
    name = "tflite"
    kinds = ("tflite",)

    def available(self) -> tuple[bool, str]:
        try:
            _, module_name = import_interpreter()
        except BackendUnavailableError as exc:
            return False, str(exc)
        return True, module_name

    def open(self, artifact: Artifact, options: OpenOptions) -> Session:
        module, module_name = import_interpreter()
        try:
            interpreter = module.Interpreter(model_content=artifact.data, num_threads=options.threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise GraphError(f"the TFLite interpreter cannot load {artifact.path}: {exc}") from None
        return TFLiteSession(interpreter, module_name, artifact, options.threads)
