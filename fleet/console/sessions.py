"""Console sign-in: an API token exchanged for a signed session cookie, and its CSRF token.

The operator pastes the operator or viewer token into the sign-in form; the manager answers with a
cookie ``edge_console`` (``HttpOnly``, ``SameSite=Strict``, ``Path=/``; ``Secure`` when the request
came over HTTPS, directly or through a proxy that says ``X-Forwarded-Proto: https``). The token
itself is never stored in the browser and never appears in a URL.

Sessions are stateless: the cookie is ``role.expires.id.mac`` where ``mac`` is an HMAC-SHA256 under
a key derived from both API tokens, so several manager instances with the same tokens accept each
other's sessions, and rotating either token ends every session. Sign-out adds the session's id to
a (bounded, in-memory) revocation list of this instance until the session would have expired.

CSRF: every request that changes something (any method but GET/HEAD) made with the cookie must carry
``X-CSRF-Token``: an HMAC of the session id under the same key, which the page receives from
``GET /console/session`` (readable only by a same-origin script). A cross-site form can neither read
it nor set the header, and ``SameSite=Strict`` keeps the cookie off cross-site requests anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fleet.auth import Role, role_of

__all__ = ["COOKIE", "CSRF_HEADER", "LIFETIME_S", "ConsoleSessions", "Session"]

COOKIE = "edge_console"
CSRF_HEADER = "X-CSRF-Token"
LIFETIME_S = 12 * 3600
_MAX_REVOKED = 10000


@dataclass(frozen=True)
class Session:
    role: Role
    sid: str
    expires: int
    csrf: str

    @property
    def actor(self) -> str:
        """How the audit log names whoever acts through this session."""
        return f"console {self.role} session {self.sid[:8]}"


class ConsoleSessions:
    """Issues and checks console sessions for one manager's operator (and optional viewer) token."""

    def __init__(
        self, operator_token: str, viewer_token: str | None = None, lifetime_s: int = LIFETIME_S
    ) -> None:
        self.operator_token, self.viewer_token = operator_token, viewer_token
        self.lifetime_s = lifetime_s
        material = b"edge-fleet-console\0" + operator_token.encode() + b"\0" + (viewer_token or "").encode()
        self._key = hashlib.sha256(material).digest()
        self._revoked: dict[str, float] = {}

    def _mac(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sign_in(self, token: str) -> tuple[str, Session] | None:
        """A new session (the cookie value and the session) for a valid token; None otherwise."""
        role = role_of(f"Bearer {token}", self.operator_token, self.viewer_token)
        if role is None:
            return None
        sid = secrets.token_urlsafe(18)
        expires = int(time.time()) + self.lifetime_s
        payload = f"{role.value}.{expires}.{sid}"
        return f"{payload}.{self._mac(payload)}", self._session(role, sid, expires)

    def _session(self, role: Role, sid: str, expires: int) -> Session:
        return Session(role, sid, expires, self._mac(f"csrf\0{sid}"))

    def check(self, cookie: str | None) -> Session | None:
        """The session a cookie value carries, if it is ours, unexpired and not signed out."""
        if not cookie or len(cookie) > 512:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        role_text, _, rest = payload.partition(".")
        expires_text, _, sid = rest.partition(".")
        try:
            role, expires = Role(role_text), int(expires_text)
        except ValueError:
            return None
        if expires < time.time() or sid in self._revoked:
            return None
        return self._session(role, sid, expires)

    def csrf_ok(self, session: Session, header: str | None) -> bool:
        return bool(header) and hmac.compare_digest(str(header).encode(), session.csrf.encode())

    def revoke(self, session: Session) -> None:
        now = time.time()
        if len(self._revoked) >= _MAX_REVOKED:
            for sid in [s for s, until in self._revoked.items() if until < now]:
                del self._revoked[sid]
            if len(self._revoked) >= _MAX_REVOKED:
                del self._revoked[next(iter(self._revoked))]
        self._revoked[session.sid] = session.expires

    def from_request(self, request: Any) -> Session | None:
        return self.check(request.cookies.get(COOKIE))
