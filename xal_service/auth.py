"""Bearer-token authentication as an asyncio server interceptor that refuses at the headers.

The token is compared in constant time (``hmac.compare_digest``) so that response timing leaks
nothing about it. Health checks stay open: load balancers probe them without credentials.

Why the refusal is a *request-streaming* handler whatever the method: gRPC hands a unary handler
its request only once the whole message has arrived, so a refusing unary handler waits for a
message a hostile client never sends (16 such calls used to hold every worker thread of the old
threaded server, and the token holder's calls timed out behind them). A streaming handler runs as
soon as the headers are in; this one aborts with ``UNAUTHENTICATED`` at once, without reading a
byte of the body, and the call costs the server nothing more.
"""

from __future__ import annotations

import hmac

import grpc
import grpc.aio

from xal_core.access import read_token  # re-exported: the service's callers import it from here

__all__ = ["TokenInterceptor", "read_token", "OPEN_METHODS"]

OPEN_METHODS = ("/grpc.health.v1.Health/",)
_DENIED = "missing or wrong 'authorization: Bearer <token>' metadata"


async def _deny(request_iterator, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)


_DENY_HANDLER = grpc.stream_stream_rpc_method_handler(_deny)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with ``authorization: Bearer <token>`` (health checks always)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        if handler_call_details.method.startswith(OPEN_METHODS):
            return await continuation(handler_call_details)
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value if isinstance(value, str) else value.decode("latin-1")
        if hmac.compare_digest(presented.encode("utf-8", "replace"), self._expected):
            return await continuation(handler_call_details)
        return _DENY_HANDLER
