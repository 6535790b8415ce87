"""The fleet console: a web page served by ``edge fleet serve`` at ``/`` of its HTTP address.

Static files only (``static/``: HTML, CSS, plain ES modules, uPlot vendored with its licence), no
build step and nothing fetched at run time. :mod:`fleet.console.sessions` exchanges an API token
for a session cookie and checks its CSRF token; :mod:`fleet.console.api` holds the routes
(:func:`fleet.manager.http.create_app` adds them); :mod:`fleet.console.views` computes what the
pages show. See docs/console.md.
"""

from __future__ import annotations

from fleet.console.sessions import COOKIE, CSRF_HEADER, ConsoleSessions, Session

__all__ = ["COOKIE", "CSRF_HEADER", "ConsoleSessions", "Session"]
