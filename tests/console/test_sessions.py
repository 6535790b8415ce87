"""Console sessions and token roles, without a browser: signed cookies, CSRF, expiry, revocation,
the viewer token's file, and the roles the API gives each token."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleet.auth import Role, role_of, viewer_token
from fleet.console.sessions import ConsoleSessions

OPERATOR, VIEWER = "o" * 32, "v" * 32


def test_sign_in_gives_each_token_its_role() -> None:
    sessions = ConsoleSessions(OPERATOR, VIEWER)
    cookie, session = sessions.sign_in(OPERATOR) or ("", None)
    assert session is not None and session.role is Role.OPERATOR and session.role.can_act
    assert OPERATOR not in cookie
    assert sessions.check(cookie) == session
    _, viewer = sessions.sign_in(VIEWER) or ("", None)
    assert viewer is not None and viewer.role is Role.VIEWER and not viewer.role.can_act
    assert sessions.sign_in("x" * 32) is None
    assert sessions.sign_in("") is None
    assert ConsoleSessions(OPERATOR).sign_in(VIEWER) is None  # no viewer token configured


def test_a_tampered_expired_or_revoked_cookie_is_refused() -> None:
    sessions = ConsoleSessions(OPERATOR, VIEWER)
    cookie, session = sessions.sign_in(VIEWER) or ("", None)
    assert session is not None
    role, expires, sid, mac = cookie.split(".")
    assert sessions.check(f"operator.{expires}.{sid}.{mac}") is None  # a viewer cannot promote itself
    assert sessions.check(f"{role}.{int(expires) + 999}.{sid}.{mac}") is None
    assert sessions.check(cookie[:-2]) is None
    assert sessions.check("x" * 600) is None
    # Another manager's tokens: another key.
    assert ConsoleSessions("p" * 32, VIEWER).check(cookie) is None
    short = ConsoleSessions(OPERATOR, VIEWER, lifetime_s=-1)
    expired, _ = short.sign_in(OPERATOR) or ("", None)
    assert short.check(expired) is None
    sessions.revoke(session)
    assert sessions.check(cookie) is None


def test_csrf_token_is_per_session() -> None:
    sessions = ConsoleSessions(OPERATOR, VIEWER)
    _, a = sessions.sign_in(OPERATOR) or ("", None)
    _, b = sessions.sign_in(OPERATOR) or ("", None)
    assert a is not None and b is not None and a.csrf != b.csrf
    assert sessions.csrf_ok(a, a.csrf)
    assert not sessions.csrf_ok(a, b.csrf)
    assert not sessions.csrf_ok(a, None)
    assert not sessions.csrf_ok(a, "")


def test_role_of_bearer_tokens() -> None:
    assert role_of(f"Bearer {OPERATOR}", OPERATOR, VIEWER) is Role.OPERATOR
    assert role_of(f"Bearer {VIEWER}", OPERATOR, VIEWER) is Role.VIEWER
    assert role_of(f"Bearer {VIEWER}", OPERATOR, None) is None
    assert role_of("Bearer nope", OPERATOR, VIEWER) is None
    assert role_of(None, OPERATOR, VIEWER) is None


def test_viewer_token_generated_beside_the_api_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_FLEET_VIEWER_TOKEN", raising=False)
    token, source = viewer_token(tmp_path)
    path = tmp_path / "viewer-token"
    assert source == f"{path} (generated)" and len(token) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert viewer_token(tmp_path) == (token, str(path))
    monkeypatch.setenv("EDGE_FLEET_VIEWER_TOKEN", VIEWER)
    assert viewer_token(tmp_path)[0] == VIEWER
