"""Bearer-token authentication as an asyncio server interceptor that refuses at the headers.

The token is compared in constant time (``hmac.compare_digest``) so that response timing leaks
nothing about it. The scheme name is matched case-insensitively (RFC 7235 §2.1: ``bearer``,
``BEARER`` and ``Bearer`` are the same scheme), the token exactly. Health checks stay open: load
balancers probe them without credentials; everything else, server reflection included, needs the
token.

Why the refusal is a *request-streaming* handler whatever the method: gRPC hands a unary handler
its request only once the whole message has arrived, so a refusing unary handler would wait for a
message a hostile client never sends, and a handful of such calls would hold the server's
workers. A streaming handler runs as soon as the headers are in; this one aborts with
``UNAUTHENTICATED`` at once, without reading a byte of the body, and the call costs the server
nothing more.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc
import grpc.aio

from xal_core.access import read_token  # re-exported: the service's callers import it from here

__all__ = ["TokenInterceptor", "bearer_credentials", "read_token", "OPEN_METHODS"]

OPEN_METHODS = ("/grpc.health.v1.Health/",)
_DENIED = "missing or wrong 'authorization: Bearer <token>' metadata"


async def _deny(request_iterator, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)


_DENY_HANDLER = grpc.stream_stream_rpc_method_handler(_deny)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with ``authorization: Bearer <token>`` (health checks always)."""

    def __init__(self, token: str, on_refused: Callable[[str, grpc.StatusCode], None] | None = None) -> None:
        """``on_refused(method, code)`` is told of every call refused here (the metrics count them)."""
        self._expected = token.encode("utf-8")
        self._on_refused = on_refused

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        if handler_call_details.method.startswith(OPEN_METHODS):
            return await continuation(handler_call_details)
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value if isinstance(value, str) else value.decode("latin-1")
        if hmac.compare_digest(bearer_credentials(presented).encode("utf-8", "replace"), self._expected):
            return await continuation(handler_call_details)
        if self._on_refused is not None:
            self._on_refused(handler_call_details.method, grpc.StatusCode.UNAUTHENTICATED)
        return _DENY_HANDLER


def bearer_credentials(authorization: str) -> str:
    """The token of an ``authorization`` value ``<scheme> <token>`` whose scheme is ``Bearer`` in any
    case (RFC 7235: ``credentials = auth-scheme 1*SP token68``); "" for any other value."""
    scheme, space, credentials = authorization.partition(" ")
    if not space or scheme.lower() != "bearer":
        return ""
    return credentials.lstrip(" ")
