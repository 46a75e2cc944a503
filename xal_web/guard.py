"""The annotator's defences below the routes: response headers, host names, load, slow clients.

* :class:`SecurityHeaders` (around the whole app, so 404s, 405s and even a 500 carry them): a
  Content-Security-Policy without inline scripts, ``nosniff``, ``Referrer-Policy: same-origin``
  (same-origin requests keep their ``Origin``; with ``no-referrer`` Chromium posted the login form
  with ``Origin: null``), ``X-Frame-Options: DENY``;
* :class:`HostCheck`: only the host names the server was started for (loopback names, the listen
  host, ``--allowed-host``; on a wildcard listen also this machine's names and any IP address): a
  DNS-rebinding page, whose requests name its own domain, is refused;
* :class:`InFlightLimit`: at most so many requests being answered at once (503 beyond), so
  memory stays bounded whatever a client sends;
* :func:`guarded_h11`: uvicorn's h11 protocol with a deadline for a request's head (from the
  connection's start, or the end of the previous response) and a cap on connections waiting for
  one (the oldest is dropped): idle or byte-by-byte clients cannot hold the server. Bodies have
  their own deadline where the app reads them; a connection answered before its body arrived
  must deliver the rest within the head deadline.
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from collections.abc import Iterable

import h11
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["SECURITY_HEADERS", "HostCheck", "InFlightLimit", "SecurityHeaders", "guarded_h11", "host_name",
           "json_refusal"]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


async def json_refusal(send: Send, status: int, reason: str, extra: Iterable[tuple[str, str]] = ()) -> None:
    """A JSON ``{"error": reason}`` response with the security headers, straight on the ASGI channel."""
    body = json.dumps({"error": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    headers += [(name.lower().encode(), value.encode()) for name, value in (*SECURITY_HEADERS.items(), *extra)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, lower case, without port or trailing dot (``[::1]`` kept whole)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") <= 1 else host


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class HostCheck:
    """Refuses (400) a request whose ``Host`` is not one of ``allowed`` (names as :func:`host_name`
    gives). With ``any_address`` (a wildcard listen) an IP address is accepted too: a DNS-rebinding
    page always names its own domain, and a page whose origin is this IP and port is this server's."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str], *, any_address: bool = False) -> None:
        self.app = app
        self.allowed = frozenset(host_name(name) for name in allowed)
        self.any_address = any_address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = host_name(Headers(scope=scope).get("host", ""))
            if host not in self.allowed and not (self.any_address and _ip_literal(host)):
                shown = host[:80] or "(none)"
                await json_refusal(send, 400, f"host {shown!r} is not a name this annotator serves "
                                              f"({', '.join(sorted(self.allowed))}); if it is this machine's name, "
                                              "start the annotator with --allowed-host " + shown)
                return
        await self.app(scope, receive, send)


class InFlightLimit:
    """At most ``limit`` HTTP requests being answered at once; beyond, 503 with ``Retry-After``."""

    def __init__(self, app: ASGIApp, limit: int = 64) -> None:
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await json_refusal(send, 503, f"the annotator is answering {self.limit} requests already; try again",
                               [("Retry-After", "1")])
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def guarded_h11(head_timeout: float = 10.0, max_waiting: int = 128) -> type[H11Protocol]:
    """An h11 protocol class whose connections must send a whole request head within
    ``head_timeout`` seconds (from the connection, or from the end of the previous response), and
    of which at most ``max_waiting`` may wait for one (a new one drops the oldest)."""
    waiting: OrderedDict[H11Protocol, None] = OrderedDict()

    class GuardedH11(H11Protocol):
        _deadline = None  # the timer that drops the connection
        _waiting_for = None  # "head": a request head; "rest": the body of a request already answered

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await("head")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            state = self.conn.their_state
            if self._waiting_for == "head" and state is not h11.IDLE:
                self._stop_waiting()
            elif self._waiting_for == "rest" and state is h11.IDLE:  # the body is in; the next request's head now
                self._await("head")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE:
                self._await("head")
            elif self.conn.their_state is h11.SEND_BODY:  # answered before its body came (401, 413, 429, a GET's
                self._await("rest")  # body): the rest must come within the deadline too, else the connection goes

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _await(self, what: str) -> None:
            self._stop_waiting()
            self._waiting_for = what
            self._deadline = self.loop.call_later(head_timeout, self._drop)
            waiting[self] = None
            while len(waiting) > max_waiting:
                oldest, _ = waiting.popitem(last=False)
                oldest._drop()

        def _stop_waiting(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._waiting_for = None
            waiting.pop(self, None)

        def _drop(self) -> None:
            self._stop_waiting()
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11
