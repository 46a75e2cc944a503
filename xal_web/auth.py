"""Who may use the annotator: a login form that trades the token for an HTTP-only cookie.

Without a token the page is open, and the server binds to loopback only (``server``). With one,
every request but the login form and the static files needs the session cookie:

* the cookie holds an HMAC of the token, not the token, compared in constant time; it is
  ``HttpOnly`` (scripts cannot read it) and ``SameSite=Strict`` (another site's page cannot make
  the browser send it), and the token never appears in a URL;
* state-changing requests must also be ``application/json`` and, when the browser names an
  ``Origin``, come from this server's own origin: an HTML form elsewhere can send neither.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

__all__ = ["COOKIE", "Gate"]

COOKIE = "xal_annotate_session"


class Gate:
    """Checks requests against the token (``None``: everything is allowed)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._session = None if token is None else \
            hmac.new(token.encode(), b"xal-annotate-session-v1", hashlib.sha256).hexdigest()

    @property
    def open(self) -> bool:
        return self.token is None

    def session_value(self) -> str:
        assert self._session is not None
        return self._session

    def token_matches(self, presented: str) -> bool:
        return self.token is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def allows(self, request: Request) -> bool:
        if self._session is None:
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self._session.encode())

    @staticmethod
    def same_origin(request: Request) -> bool:
        """No ``Origin`` header (same-origin GET, non-browser client) or this server's own."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        host = request.headers.get("host", "")
        return origin in (f"http://{host}", f"https://{host}")
