"""The manager's HTTP API token: where it comes from, how it is stored, how it is checked.

One shared bearer token per manager. The manager takes, in order:

1. ``--token-file PATH`` (the first line of the file);
2. ``$EDGE_FLEET_TOKEN``;
3. ``<state-dir>/api-token``, generated on first start (32 random bytes, URL-safe base64) and
   written with mode 0600; the manager logs the path, never the token.

Clients (``edge fleet ...``, ``edge train push``) take ``--token-file``, then ``$EDGE_FLEET_TOKEN``,
then ``$EDGE_FLEET_TOKEN_FILE``, then the default state directory's ``api-token`` when it is
readable (an operator on the manager's host). Requests carry ``Authorization: Bearer <token>``;
the manager compares it with :func:`hmac.compare_digest` (constant time).

Two roles (:class:`Role`): the token above is the **operator**'s (every route); a second,
read-only **viewer** token (``GET`` routes only: ``403`` on actions) comes from
``--viewer-token-file``, else ``$EDGE_FLEET_VIEWER_TOKEN``, else ``<state-dir>/viewer-token``,
generated beside ``api-token`` the same way (:func:`viewer_token`). The console
(:mod:`fleet.console`) exchanges either token for a session cookie of the same role.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from enum import Enum
from pathlib import Path

from fleet.errors import AuthError

__all__ = [
    "DEFAULT_STATE_DIR",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "TOKEN_FILE_NAME",
    "VIEWER_TOKEN_ENV",
    "VIEWER_TOKEN_FILE_NAME",
    "Role",
    "bearer_matches",
    "client_token",
    "manager_token",
    "read_token_file",
    "role_of",
    "viewer_token",
]

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGE_FLEET_TOKEN"
TOKEN_FILE_ENV = "EDGE_FLEET_TOKEN_FILE"
TOKEN_FILE_NAME = "api-token"
VIEWER_TOKEN_ENV = "EDGE_FLEET_VIEWER_TOKEN"
VIEWER_TOKEN_FILE_NAME = "viewer-token"
DEFAULT_STATE_DIR = Path("/var/lib/edge-fleet")
_MIN_LENGTH = 16  # a shorter token is refused: it would be guessable


class Role(str, Enum):
    """What a token (or a console session made from one) may do."""

    VIEWER = "viewer"  # GET routes only
    OPERATOR = "operator"  # everything: uploads, deployments, pause, resume, abort

    def __str__(self) -> str:
        return str(self.value)

    @property
    def can_act(self) -> bool:
        return self is Role.OPERATOR


def read_token_file(path: Path) -> str:
    """The token in ``path`` (its first line, stripped); AuthError when unreadable or too short."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AuthError(f"cannot read the API token file {path}: {exc.strerror or exc}") from exc
    token = lines[0].strip() if lines else ""
    _check(token, str(path))
    return token


def _check(token: str, source: str) -> None:
    if len(token) < _MIN_LENGTH:
        raise AuthError(f"the API token from {source} is shorter than {_MIN_LENGTH} characters")


def manager_token(state_dir: Path, token_file: Path | None = None) -> tuple[str, str]:
    """The manager's token and a description of where it came from (for the start-up log line).

    Generates ``<state_dir>/api-token`` (mode 0600) when neither a file nor the environment gives one.
    """
    return _token(Path(state_dir) / TOKEN_FILE_NAME, token_file, TOKEN_ENV, "HTTP API token")


def viewer_token(state_dir: Path, token_file: Path | None = None) -> tuple[str, str]:
    """The read-only viewer token and where it came from: ``token_file``, $EDGE_FLEET_VIEWER_TOKEN,
    else ``<state_dir>/viewer-token`` (generated with mode 0600 like ``api-token``)."""
    return _token(
        Path(state_dir) / VIEWER_TOKEN_FILE_NAME, token_file, VIEWER_TOKEN_ENV, "read-only viewer token"
    )


def _token(stored: Path, token_file: Path | None, env_name: str, what: str) -> tuple[str, str]:
    """``token_file``, else ``$env_name``, else ``stored`` (generated when missing)."""
    if token_file is not None:
        return read_token_file(token_file), str(token_file)
    env = os.environ.get(env_name)
    if env:
        _check(env.strip(), f"${env_name}")
        return env.strip(), f"${env_name}"
    return _stored_or_generated(stored, what, env_name)


def _stored_or_generated(path: Path, what: str, env: str) -> tuple[str, str]:
    if path.exists():
        return read_token_file(path), str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL: never overwrite a file created meanwhile; 0600 from the start, not chmod-ed after.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    log.warning(
        "generated the %s in %s (mode 0600); clients read it with --token-file %s or $%s",
        what,
        path,
        path,
        env,
    )
    return token, f"{path} (generated)"


def client_token(token_file: Path | None = None, state_dir: Path | None = None) -> str | None:
    """The token a client sends: ``token_file``, $EDGE_FLEET_TOKEN, $EDGE_FLEET_TOKEN_FILE, or the
    manager's generated file under ``state_dir`` (default /var/lib/edge-fleet) if readable; else None."""
    if token_file is not None:
        return read_token_file(token_file)
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env.strip()
    env_file = os.environ.get(TOKEN_FILE_ENV)
    if env_file:
        return read_token_file(Path(env_file))
    default = Path(state_dir or DEFAULT_STATE_DIR) / TOKEN_FILE_NAME
    if default.is_file() and os.access(default, os.R_OK):
        return read_token_file(default)
    return None


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``, compared in constant time."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def role_of(authorization: str | None, operator: str, viewer: str | None = None) -> Role | None:
    """The role an ``Authorization`` header's bearer token has (None: neither token).

    Both comparisons always run (constant time, whichever token matches)."""
    is_operator = bearer_matches(authorization, operator)
    is_viewer = bool(viewer) and bearer_matches(authorization, viewer or "")
    if is_operator:
        return Role.OPERATOR
    return Role.VIEWER if is_viewer else None
