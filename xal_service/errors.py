"""Request errors carried as gRPC status codes.

Handlers raise ``RequestError``; the servicer turns it into ``context.abort(code, message)``. Any
other exception is a server bug: it becomes INTERNAL for that call only, and the server goes on.
"""

from __future__ import annotations

import grpc

__all__ = ["RequestError", "invalid_argument", "not_found"]


class RequestError(Exception):
    """A request the server refuses, with the status code that says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)
