"""Comparing package versions for the agent's downgrade guard (semver-ish, documented in docs/fleet.md).

A version is ``[v]RELEASE[-PRERELEASE][+BUILD]``:

- ``RELEASE`` is one or more dot-separated non-negative integers, compared numerically and padded
  with zeros (``1.2`` == ``1.2.0`` < ``1.10``);
- a ``-PRERELEASE`` sorts before its release (``2.0-rc.1`` < ``2.0``); prerelease identifiers are
  compared as in semver (numbers numerically and before words, words as text, a shorter list first);
- ``+BUILD`` is ignored (``1.0+42`` == ``1.0``).

Anything else (``release-7``, ``latest``) is *not comparable*: :func:`compare_versions` returns
None and the caller decides (the agent lets it through with a warning).
"""

from __future__ import annotations

import re

__all__ = ["compare_versions", "parse_version"]

_VERSION = re.compile(r"^[vV]?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]*)?$")

Parsed = tuple[tuple[int, ...], tuple[str, ...] | None]


def parse_version(text: str) -> Parsed | None:
    """(release numbers, prerelease identifiers or None), or None when ``text`` is not semver-ish."""
    m = _VERSION.match(text.strip())
    if m is None:
        return None
    release = tuple(int(x) for x in m.group(1).split("."))
    pre = tuple(m.group(2).split(".")) if m.group(2) else None
    return release, pre


def _cmp(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


def _compare_pre(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> int:
    if a is None or b is None:
        return _cmp(a is None, b is None)  # no prerelease sorts after any prerelease
    for x, y in zip(a, b):
        if x.isdigit() and y.isdigit():
            c = _cmp(int(x), int(y))
        elif x.isdigit() != y.isdigit():
            c = -1 if x.isdigit() else 1
        else:
            c = _cmp(x, y)
        if c:
            return c
    return _cmp(len(a), len(b))


def compare_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as ``a`` is lower than, equal to or higher than ``b``; None if either is not comparable."""
    pa, pb = parse_version(a), parse_version(b)
    if pa is None or pb is None:
        return None
    width = max(len(pa[0]), len(pb[0]))
    ra = pa[0] + (0,) * (width - len(pa[0]))
    rb = pb[0] + (0,) * (width - len(pb[0]))
    return _cmp(ra, rb) or _compare_pre(pa[1], pb[1])
