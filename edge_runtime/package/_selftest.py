"""Self-test vectors: the ``.npz`` artifact a package carries to check itself after install.

Layout: one array per input named ``input.<name>`` and one per output named
``expected.<name>``. Written with fixed zip metadata (``numpy.savez`` stamps
the current time) so that packages stay byte-for-byte reproducible, and read
with ``allow_pickle=False`` so that vectors cannot carry code.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from typing import TYPE_CHECKING

from edge_runtime.errors import PackageFormatError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["load_selftest", "make_selftest"]

_INPUT, _EXPECTED = "input.", "expected."


def make_selftest(inputs: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> bytes:
    """The ``.npz`` bytes holding these input and expected-output arrays."""
    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for prefix, arrays in ((_INPUT, inputs), (_EXPECTED, expected)):
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{prefix}{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w") as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()


def load_selftest(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(inputs, expected)`` from the ``.npz`` bytes; PackageFormatError if they are not self-test vectors."""
    import numpy as np

    inputs: dict[str, np.ndarray] = {}
    expected: dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for key in npz.files:
                if key.startswith(_INPUT):
                    inputs[key[len(_INPUT) :]] = npz[key]
                elif key.startswith(_EXPECTED):
                    expected[key[len(_EXPECTED) :]] = npz[key]
                else:
                    raise PackageFormatError(
                        f"self-test array {key!r} is neither input.<name> nor expected.<name>"
                    )
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise PackageFormatError(f"self-test vectors are not a readable .npz ({exc})") from None
    if not inputs or not expected:
        raise PackageFormatError(
            "self-test vectors need at least one input.<name> and one expected.<name> array"
        )
    return inputs, expected
