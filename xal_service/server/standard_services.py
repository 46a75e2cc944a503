"""The standard gRPC services next to ``xal.v1.Scoring``: health (``grpc.health.v1``, with ``List``)
and server reflection under both of its names, ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

Why here: grpcio-health-checking's asyncio servicer implements ``Check`` and ``Watch`` but not
``List`` (grpcio-health-checking 1.85: the generated base answers UNIMPLEMENTED and the server logs a
``NotImplementedError`` traceback for every call), and grpcio-reflection ships only ``v1alpha``,
while current tools (grpcurl, Postman, grpcui) ask ``v1`` first. The two reflection versions are the
same protocol under two package names: every message and field number is identical, so the
v1alpha servicer answers v1 calls byte for byte. The v1 file descriptor (v1alpha's, renamed) is
added to the default descriptor pool so that reflection can describe itself under v1 too.

Health needs no token (probes carry none); reflection does, like every other service
(``auth.OPEN_METHODS``).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["HealthService", "REFLECTION_SERVICES", "enable_reflection"]

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICES = (REFLECTION_V1, reflection.SERVICE_NAME)
_V1_FILE = "grpc/reflection/v1/reflection.proto"


class HealthService(health.aio.HealthServicer):
    """grpcio-health-checking's asyncio servicer, with ``List``: every service's status at once."""

    async def List(self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
                   ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status) for name, status in list(self._server_status.items())
        })


def _add_v1_descriptor() -> None:
    """``grpc/reflection/v1/reflection.proto`` in the default pool: v1alpha's file, renamed."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = "grpc.reflection.v1alpha", "grpc.reflection.v1"
    file.name, file.package = _V1_FILE, new
    file.options.Clear()
    file.options.java_package, file.options.java_multiple_files = "io.grpc.reflection.v1", True
    file.options.java_outer_classname = "ServerReflectionProto"
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{old}."):
                field.type_name = f".{new}." + field.type_name[len(old) + 2:]
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{old}.", f".{new}.")
            method.output_type = method.output_type.replace(f".{old}.", f".{new}.")
    pool.AddSerializedFile(file.SerializeToString())


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection for ``service_names`` (and itself) as ``grpc.reflection.v1`` and ``v1alpha``."""
    _add_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer((*service_names, *REFLECTION_SERVICES))
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(tuple(
        grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": method}) for name in REFLECTION_SERVICES))
