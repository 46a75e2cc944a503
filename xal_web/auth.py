"""Who may use the annotator: a login form that trades the token for an expiring HTTP-only cookie.

Without a token the page is open, and the server binds to loopback only (``server``). With one,
every request but the login form and the static files needs the session cookie:

* **the token** must be strong (:func:`token_problem`: at least 32 characters, at least 10
  different ones, none more than a quarter of it, not a short run repeated); it is typed once
  into the login form, never put in a URL, and compared in constant time;
* **sign-in attempts** are limited per client address (:class:`LoginThrottle`): 5 wrong tokens
  are free, then each further one doubles the wait (1 s, 2 s, … at most 15 min) before another is
  even looked at; a refused attempt gets 429 with ``Retry-After``;
* **the cookie** holds ``issued.nonce.HMAC(issued.nonce)`` keyed by the token: it expires 12 hours
  after sign-in (checked on the server from the signed time, and ``Max-Age`` in the browser), each
  sign-in makes a new one, ``POST /logout`` revokes it (until the server restarts: the key is the
  token, so cookies outlive a restart, and so may a revoked one until its expiry) and deletes it;
  it is ``HttpOnly`` (scripts cannot read it) and ``SameSite=Strict`` (another site's page cannot
  make the browser send it);
* **state-changing requests** (answers, sign-in, sign-out) must come from this server's own page
  (:meth:`Gate.same_origin`); answers must also be ``application/json``, which an HTML form
  elsewhere cannot send.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict

from starlette.requests import Request

__all__ = ["COOKIE", "SESSION_SECONDS", "TOKEN_RULE", "Gate", "LoginThrottle", "token_problem"]

COOKIE = "xal_annotate_session"
SESSION_SECONDS = 12 * 3600
MIN_LENGTH, MIN_DISTINCT = 32, 10
TOKEN_RULE = (f"the annotator's token must be at least {MIN_LENGTH} characters with at least {MIN_DISTINCT} "
              "different ones, none of them more than a quarter of the token, and not a short sequence repeated "
              "(make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\")")


def token_problem(token: str) -> str | None:
    """Why ``token`` is too weak to guard expert labels (:data:`TOKEN_RULE`), or None."""
    length = len(token)
    if length < MIN_LENGTH:
        return f"{TOKEN_RULE}; this one has {length} characters"
    counts = Counter(token)
    if len(counts) < MIN_DISTINCT:
        return f"{TOKEN_RULE}; this one has {len(counts)} different characters"
    if max(counts.values()) * 4 > length:
        return f"{TOKEN_RULE}; in this one {max(counts, key=counts.__getitem__)!r} makes up more than a quarter"
    border = [0] * length  # prefix function: the shortest period is length - border[-1]
    for i in range(1, length):
        k = border[i - 1]
        while k and token[i] != token[k]:
            k = border[k - 1]
        border[i] = k + (token[i] == token[k])
    period = length - border[-1]
    if period <= length // 2:
        return f"{TOKEN_RULE}; this one repeats a sequence of {period} characters"
    return None


class Gate:
    """Checks requests against the token (``None``: everything is allowed).

    Raises:
        ValueError: the token is too weak (:func:`token_problem`).
    """

    def __init__(self, token: str | None, *, lifetime: float = SESSION_SECONDS) -> None:
        if token is not None and (problem := token_problem(token)):
            raise ValueError(problem)
        self.token = token
        self.lifetime = lifetime
        self._key = None if token is None else hmac.new(token.encode(), b"xal-annotate-session-v2",
                                                         hashlib.sha256).digest()
        self._revoked: dict[str, float] = {}  # nonce -> when its cookie expires anyway
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.token is None

    def _mac(self, body: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def new_session(self, now: float | None = None) -> str:
        """A fresh cookie value: issued now, a random nonce, their MAC."""
        body = f"{int(time.time() if now is None else now)}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac(body)}"

    def session(self, request: Request, now: float | None = None) -> str | None:
        """The request's valid session cookie (signed, not expired, not revoked), else None."""
        value = request.cookies.get(COOKIE, "")
        parts = value.split(".")
        if self._key is None or len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
            return None
        if not hmac.compare_digest(parts[2].encode(), self._mac(f"{parts[0]}.{parts[1]}").encode()):
            return None
        now = time.time() if now is None else now
        issued = int(parts[0])
        if not issued - 60 <= now < issued + self.lifetime:
            return None
        with self._lock:
            if parts[1] in self._revoked:
                return None
        return value

    def revoke(self, value: str) -> None:
        """Refuse this cookie from now on (sign-out)."""
        issued, nonce, _ = value.split(".")
        now = time.time()
        with self._lock:
            self._revoked = {n: until for n, until in self._revoked.items() if until > now}
            self._revoked[nonce] = int(issued) + self.lifetime

    def token_matches(self, presented: str) -> bool:
        return self.token is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def allows(self, request: Request) -> bool:
        return self._key is None or self.session(request) is not None

    @staticmethod
    def same_origin(request: Request) -> bool:
        """Whether a state-changing request comes from this server's own page.

        * ``Origin`` named: it must be this server's (scheme, host and port, as the ``Host`` header
          says: the host names the server accepts are checked before, ``server.HostCheck``);
        * ``Origin: null`` (a form posted under a ``no-referrer`` policy, a sandboxed frame, a
          ``data:`` page): only with ``Sec-Fetch-Site: same-origin``, which browsers set themselves
          and no page can forge — another site's ``no-referrer`` form sends ``cross-site``;
        * no ``Origin``: a non-browser client (every browser names one on a POST), unless
          ``Sec-Fetch-Site`` says the request comes from another site.
        """
        origin = request.headers.get("origin")
        fetch_site = request.headers.get("sec-fetch-site")
        if origin is None:
            return fetch_site in (None, "same-origin", "none")
        if origin == "null":
            return fetch_site == "same-origin"
        host = request.headers.get("host", "")
        return origin in (f"http://{host}", f"https://{host}")


class LoginThrottle:
    """Wrong tokens per client address: ``free`` of them, then an exponentially growing wait.

    After the n-th wrong token in a row (n > ``free``) the address must wait ``2**(n - free - 1)``
    seconds (at most ``longest``) before its next attempt is even checked; a right token clears
    its record. At most ``addresses`` addresses are remembered (the oldest forgotten first).
    """

    def __init__(self, *, free: int = 5, longest: float = 900.0, addresses: int = 4096) -> None:
        self.free, self.longest, self.addresses = free, longest, addresses
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (failures, blocked until)
        self._lock = threading.Lock()

    def wait(self, address: str, now: float | None = None) -> float:
        """Seconds ``address`` must still wait before an attempt is looked at (0: go ahead)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
        return max(0.0, until - now)

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._failures.pop(address, (0, 0.0))[0] + 1
            wait = 0.0 if failures <= self.free else min(self.longest, 2.0 ** (failures - self.free - 1))
            self._failures[address] = (failures, now + wait)
            while len(self._failures) > self.addresses:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    @staticmethod
    def retry_after(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))
