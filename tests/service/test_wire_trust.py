"""Issue 26, trust at the wire: a port nobody can share, health and reflection as standard clients
call them, and the bearer scheme read as RFC 7235 says. A real token-protected ``xal serve`` over a
real socket, and real second processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.service import server_process
from xal_core.scoring import Roi
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb

TOKEN = "issue-26-token-for-the-wire-tests-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    running = server_process.start(root / "state", "--token-file", str(token_file))
    yield running
    assert running.stop() == 0, (running.state / "stdout.log").read_text()


def _batch():
    generator = torch.Generator().manual_seed(26)
    roi = Roi.from_masks(torch.rand(2, 16, 16, generator=generator) > 0.5)
    return (torch.randn(2, 3, generator=generator), torch.rand(2, 8, 4, 4, generator=generator),
            torch.rand(2, 8, generator=generator), roi)


# ------------------------------------------------------------------------------ one port, one server
def _bound_port(marker) -> int | None:
    try:
        return int(json.loads(marker.read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):  # not written (yet), or half written
        return None


def test_a_second_server_on_the_port_of_a_running_one_exits_and_the_first_keeps_serving(server, tmp_path):
    """gRPC sets SO_REUSEPORT by default: a second ``xal serve`` without a token, told to listen on
    the port of a running token-protected server, used to start cleanly, and the kernel handed it
    part of the new connections (whose calls then needed no token). It must fail to bind, say so,
    and exit non-zero; every new connection must still reach the first server."""
    second_state = tmp_path / "second"
    second = subprocess.Popen(
        [sys.executable, "-m", "xal_cli.main", "serve", "--listen", f"127.0.0.1:{server.port}", "--state",
         str(second_state)],
        cwd=server_process.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while second.poll() is None and time.monotonic() < deadline:
            if _bound_port(second_state / "server.json") == server.port:
                pytest.fail(f"a second server bound port {server.port}, already held by a running server")
            time.sleep(0.1)
        assert second.poll() is not None, "the second server neither bound nor exited"
    finally:
        if second.poll() is None:
            second.kill()
        stdout, stderr = second.communicate()
    assert second.returncode != 0, (stdout, stderr)
    assert "could not bind" in stderr and "already in use" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    for _ in range(12):  # fresh connections, each of which the kernel could have given to the second
        with ScoringClient(server.target, timeout=30) as anonymous:
            with pytest.raises(grpc.RpcError) as caught:
                anonymous.statistics()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with ScoringClient(server.target, token=TOKEN, timeout=30) as right:
            assert right.score_batch(*_batch())["dice"].shape == (2,)


def test_the_annotator_refuses_a_port_that_is_taken(server):
    """The annotator binds its own socket (SO_REUSEADDR, never SO_REUSEPORT) before uvicorn serves:
    neither the scoring server's port nor another annotator's can be shared."""
    from starlette.applications import Starlette

    from xal_web import AnnotationServer

    with pytest.raises(ValueError, match="cannot bind .Address already in use"):
        AnnotationServer(Starlette(), f"127.0.0.1:{server.port}")
    first = AnnotationServer(Starlette(), "127.0.0.1:0").start()
    try:
        with pytest.raises(ValueError, match="cannot bind .Address already in use"):
            AnnotationServer(Starlette(), f"127.0.0.1:{first.port}")
    finally:
        first.stop()


# ------------------------------------------------------------------------------ health, reflection
def test_health_list_answers_every_service(server):
    """``grpc.health.v1.Health/List`` answered UNIMPLEMENTED, with a traceback in the server's log."""
    log = server.state / "stdout.log"
    before = log.read_text()
    with grpc.insecure_channel(server.target) as channel:  # no token: health is open to probes
        reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    statuses = {name: response.status for name, response in reply.statuses.items()}
    assert statuses == {"": health_pb2.HealthCheckResponse.SERVING,
                        "xal.v1.Scoring": health_pb2.HealthCheckResponse.SERVING}
    after = log.read_text()[len(before):]
    assert "Traceback" not in after and "NotImplementedError" not in after, after


def _reflection_replies(channel: grpc.Channel, version: str, requests, metadata=()):
    """A ``ServerReflectionInfo`` call under ``grpc.reflection.<version>``. v1 and v1alpha are the
    same messages under two package names (identical field numbers), so v1alpha's classes speak v1."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=10, metadata=metadata))


def test_reflection_answers_v1_and_v1alpha_to_a_token_holder(server):
    """Current grpcurl asks ``grpc.reflection.v1`` first; the server answered only v1alpha. Both
    need the token (docs/security.md): without it, UNAUTHENTICATED."""
    bearer = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(server.target) as channel:
        for version in ("v1", "v1alpha"):
            with pytest.raises(grpc.RpcError) as caught:
                _reflection_replies(channel, version, [reflection_pb2.ServerReflectionRequest(list_services="")])
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, version
            listed, described = _reflection_replies(channel, version, [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="xal.v1.Scoring"),
            ], metadata=bearer)
            names = {s.name for s in listed.list_services_response.service}
            assert {"xal.v1.Scoring", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                    "grpc.reflection.v1alpha.ServerReflection"} <= names, (version, names)
            files = described.file_descriptor_response.file_descriptor_proto
            assert files, (version, described)
            from google.protobuf import descriptor_pb2

            proto = descriptor_pb2.FileDescriptorProto.FromString(files[0])
            assert proto.package == "xal.v1" and "Scoring" in [s.name for s in proto.service]
        (v1_self,) = _reflection_replies(channel, "v1", [
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection")],
            metadata=bearer)
        assert v1_self.file_descriptor_response.file_descriptor_proto, v1_self
        # the stub grpcio-reflection ships still works
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10, metadata=bearer)
        assert "xal.v1.Scoring" in {s.name for r in replies for s in r.list_services_response.service}


# ------------------------------------------------------------------------------ the bearer scheme
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(server, scheme):
    """RFC 7235 §2.1: the auth-scheme is a case-insensitive token; the token itself is not."""
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/xal.v1.Scoring/Statistics", request_serializer=pb.StatisticsRequest.SerializeToString,
                                   response_deserializer=pb.StatisticsResponse.FromString)
        assert call(pb.StatisticsRequest(), timeout=10, metadata=(("authorization", f"{scheme} {TOKEN}"),)).uptime_seconds > 0


@pytest.mark.parametrize("presented", [
    f"Bearer {TOKEN.upper()}", f"Basic {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN}x", f"{TOKEN}", "Bearer ", "bearer",
])
def test_anything_but_the_bearer_token_is_refused(server, presented):
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/xal.v1.Scoring/Statistics", request_serializer=pb.StatisticsRequest.SerializeToString,
                                   response_deserializer=pb.StatisticsResponse.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            call(pb.StatisticsRequest(), timeout=10, metadata=(("authorization", presented),))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
