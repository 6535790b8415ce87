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
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from fleet.errors import AuthError

__all__ = [
    "DEFAULT_STATE_DIR",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "TOKEN_FILE_NAME",
    "bearer_matches",
    "client_token",
    "manager_token",
    "read_token_file",
]

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGE_FLEET_TOKEN"
TOKEN_FILE_ENV = "EDGE_FLEET_TOKEN_FILE"
TOKEN_FILE_NAME = "api-token"
DEFAULT_STATE_DIR = Path("/var/lib/edge-fleet")
_MIN_LENGTH = 16  # a shorter token is refused: it would be guessable


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
    if token_file is not None:
        return read_token_file(token_file), str(token_file)
    env = os.environ.get(TOKEN_ENV)
    if env:
        _check(env.strip(), f"${TOKEN_ENV}")
        return env.strip(), f"${TOKEN_ENV}"
    path = Path(state_dir) / TOKEN_FILE_NAME
    if path.exists():
        return read_token_file(path), str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL: never overwrite a file created meanwhile; 0600 from the start, not chmod-ed after.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    log.warning(
        "generated the HTTP API token in %s (mode 0600); clients read it with --token-file %s or $%s",
        path,
        path,
        TOKEN_ENV,
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
