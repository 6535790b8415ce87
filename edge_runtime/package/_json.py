"""JSON decoding with limits: nesting depth, value count, number size, finite numbers only.

``json.loads`` alone lets hostile input cost more than its size suggests: deep
nesting ends in a RecursionError, a 5,000-digit integer in an untyped
ValueError (or quadratic time below Python's digit limit), ``NaN``,
``Infinity`` and ``1e400`` decode to floats that are not valid JSON when
written back, and a body of ``0,0,0,...`` expands to tens of bytes of Python
objects per byte. :func:`loads_bounded` checks the cheap things on the raw
bytes first, without recursion and without building objects (commas and
brackets counted; the nesting depth scanned outside strings), then decodes with
hooks that refuse oversized numbers and non-finite values. Every refusal is the exception the caller's
``error`` factory builds, so that each reader raises its own typed error.

Used by the manifest reader and writer (``_manifest.py``) and by the serving
layer's request parser (``edge_runtime.serve.protocol``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError

__all__ = ["JsonLimits", "check_json_value", "json_depth", "loads_bounded"]


@dataclass(frozen=True)
class JsonLimits:
    """Bounds on one JSON document.

    ``max_values`` bounds the values (numbers, strings, containers) a document
    may hold, estimated from above on the raw bytes (commas plus opening
    brackets plus one) so that a refusal costs no decoding. ``check_numbers``
    decodes every number through a Python hook (``max_number_chars``, finite
    floats); a reader of large numeric bodies may switch it off and rely on
    Python's own 4,300-digit integer limit (still a typed refusal) instead.
    ``yield_gil``: decode numbers through Python functions even so (same values),
    because json's C scanner never lets other threads run otherwise: a large body
    decoded on a worker thread would stall the event loop for its whole decode.
    """

    max_depth: int = 64
    max_number_chars: int = 64
    max_values: int | None = None
    check_numbers: bool = True
    yield_gil: bool = False


_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_DELTA = np.zeros(256, np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1
_SCAN_CHUNK = 1 << 20


def json_depth(data: bytes, stop_above: int | None = None) -> int:
    """The deepest bracket nesting of JSON bytes, strings skipped; no recursion.

    Scans in 1 MiB chunks with numpy (a prefix sum of +1/-1 per bracket), so the
    cost is linear and the extra memory bounded whatever the input. Unbalanced
    or unterminated input gives some number: decoding reports it afterwards.
    ``stop_above``: return as soon as the depth exceeds it.
    """
    if b'"' in data:
        data = _STRING_RE.sub(b"", data)
    opens = data.count(b"[") + data.count(b"{")
    if opens <= 1:
        return opens
    arr = np.frombuffer(data, np.uint8)
    depth = peak = 0
    for start in range(0, arr.size, _SCAN_CHUNK):
        levels = np.cumsum(_DELTA[arr[start : start + _SCAN_CHUNK]], dtype=np.int64)
        levels += depth
        peak = max(peak, int(levels.max()))
        depth = int(levels[-1])
        if stop_above is not None and peak > stop_above:
            break
    return peak


def _int_yielding(text: str) -> int:
    # A Python frame: the interpreter may hand the GIL to another thread here.
    return int(text)


def _float_yielding(text: str) -> float:
    return float(text)


class _Refused(Exception):
    """Raised by the decoding hooks; turned into the caller's error type."""


def loads_bounded(
    data: bytes | bytearray | memoryview,
    limits: JsonLimits,
    error: Callable[[str], Exception],
    what: str = "JSON",
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
    too_large: Callable[[str], Exception] | None = None,
) -> Any:
    """Decode UTF-8 JSON within ``limits``; anything else raises ``error(message)``.

    Never raises RecursionError, an untyped ValueError or a JSONDecodeError:
    each becomes ``error(...)`` with a message that starts with ``what``.
    ``NaN``, ``Infinity`` and ``-Infinity`` are always refused (they are not
    JSON); with ``check_numbers`` so are numbers that decode to a non-finite
    float (``1e400``) and number literals over ``max_number_chars``.
    ``too_large`` (default ``error``) builds the refusal for ``max_values``.
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    opens = raw.count(b"[") + raw.count(b"{")
    if limits.max_values is not None and len(raw) >= limits.max_values:  # shorter: fewer values
        values = raw.count(b",") + opens + 1  # an upper bound on the values (strings included)
        if values > limits.max_values:
            raise (too_large or error)(
                f"{what} holds up to {values} values, over the limit of {limits.max_values}"
            )
    # Fewer opening brackets than the limit (strings included) cannot nest deeper: no scan needed.
    depth = json_depth(raw, stop_above=limits.max_depth) if opens > limits.max_depth else opens
    if depth > limits.max_depth:
        raise error(f"{what} is nested {depth}+ levels deep, over the limit of {limits.max_depth}")

    def reject_constant(name: str) -> Any:
        raise _Refused(f"{what} contains {name}, which is not valid JSON (only finite numbers are)")

    hooks: dict[str, Any] = {"parse_constant": reject_constant, "object_pairs_hook": object_pairs_hook}
    if limits.check_numbers:
        max_chars = limits.max_number_chars

        def parse_int(text: str) -> int:
            if len(text) > max_chars:
                raise _Refused(
                    f"{what} has an integer of {len(text)} characters, over the limit of {max_chars}"
                )
            return int(text)

        def parse_float(text: str) -> float:
            if len(text) > max_chars:
                raise _Refused(
                    f"{what} has a number of {len(text)} characters, over the limit of {max_chars}"
                )
            value = float(text)
            if not math.isfinite(value):
                raise _Refused(f"{what} has the number {text}, which is not finite as a double")
            return value

        hooks["parse_int"] = parse_int
        hooks["parse_float"] = parse_float
    elif limits.yield_gil:
        hooks["parse_int"] = _int_yielding
        hooks["parse_float"] = _float_yielding
    try:
        return json.loads(raw.decode("utf-8"), **hooks)
    except _Refused as exc:
        raise error(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None
    except EdgeRuntimeError:  # a typed refusal from object_pairs_hook
        raise
    except RecursionError:  # the depth scan should have caught it: a last line of defence
        raise error(f"{what} is nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer over Python's 4,300-digit limit
        raise error(f"{what} cannot be decoded: {exc}") from None


def check_json_value(
    value: Any, limits: JsonLimits, error: Callable[[str], Exception], where: str, depth: int = 1
) -> None:
    """Refuse what :func:`loads_bounded` would refuse in an already decoded value; no recursion.

    For the write path: a dict built in Python (or by another JSON parser) must
    not carry depth, integers or non-finite floats that the reader refuses.
    Checks depth, integer size (in decimal digits) and finite floats; other
    types are left to the JSON encoder. ``depth``: the nesting level of
    ``value`` itself when it is a container (1 at the top of a document).
    """
    max_digits = limits.max_number_chars
    # The reader counts the literal's characters: a minus sign takes one of them.
    upper, lower = 10**max_digits, -(10 ** (max_digits - 1))
    stack: list[tuple[Any, int, str]] = [(value, depth, where)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not lower < item < upper:
                raise error(f"{path} is an integer of more than {max_digits} characters (digits and sign)")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise error(f"{path} is {item}, which is not a finite number (NaN and Infinity are not JSON)")
            continue
        if isinstance(item, (dict, list, tuple)):
            if depth > limits.max_depth:
                raise error(f"{path} is nested more than {limits.max_depth} levels deep")
            if isinstance(item, dict):
                stack.extend((v, depth + 1, f"{path}.{k}") for k, v in item.items())
            else:
                stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(item))
