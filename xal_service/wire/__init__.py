"""Generated protobuf/gRPC stubs of ``protos/xal/v1/scoring.proto`` (``python protos/generate.py``).

Do not edit by hand; ``tests/service/test_wire_stubs.py`` checks they match the proto.
"""

from . import scoring_pb2, scoring_pb2_grpc

__all__ = ["scoring_pb2", "scoring_pb2_grpc"]
