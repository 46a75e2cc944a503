"""The ``xal.v1.Scoring`` method table for the asyncio server, with deserializers that never raise.

Why not the generated ``add_ScoringServicer_to_server``: its deserializers are ``Message.FromString``,
and gRPC turns an exception raised while deserializing into ``INTERNAL`` before any handler runs.
A malformed body is the client's error, so here a body protobuf cannot parse becomes a
:class:`MalformedRequest` value; the servicer answers it with ``INVALID_ARGUMENT``.

``ScoreBatch`` has neither deserializer nor serializer: grpc.aio runs both on the event loop, and a
``ScoreBatch`` request is megabytes. Its handler gets the received bytes and returns the reply's
bytes, and a worker thread parses them (``codec.parse_score_batch_request``, wrapped the same way),
scores and serializes the reply (``codec.encode_score_batch_response``) in one hop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..wire import scoring_pb2 as pb

__all__ = ["MalformedRequest", "method_handlers", "METHODS", "RAW_METHODS", "SERVICE_NAME"]

SERVICE = pb.DESCRIPTOR.services_by_name["Scoring"]
SERVICE_NAME = SERVICE.full_name
METHODS = tuple(method.name for method in SERVICE.methods)
RAW_METHODS = frozenset({"ScoreBatch"})  # handlers that take and return serialized messages


@dataclass(frozen=True)
class MalformedRequest:
    """A request body that is not a valid message of ``type_name``."""

    type_name: str
    reason: str

    def message(self) -> str:
        return f"request: not a valid xal.v1.{self.type_name} message ({self.reason})"


def tolerant(parse: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    """``parse``, with a protobuf decode error returned as a :class:`MalformedRequest`."""

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except (DecodeError, ValueError, RuntimeError) as error:  # the upb parser raises DecodeError
            return MalformedRequest(type_name, str(error).splitlines()[0] if str(error) else type(error).__name__)

    return deserialize


def method_handlers(servicer: object) -> grpc.GenericRpcHandler:
    """A generic handler mapping every method of the service to ``servicer.<Method>``."""
    handlers = {}
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        if method.name in RAW_METHODS:  # bytes in, bytes out: the servicer parses and serializes off the loop
            kwargs = dict(request_deserializer=None, response_serializer=None)
        else:
            kwargs = dict(request_deserializer=tolerant(request_type.FromString, method.input_type.name),
                          response_serializer=response_type.SerializeToString)
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour, **kwargs)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(behaviour, **kwargs)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(behaviour, **kwargs)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, **kwargs)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
