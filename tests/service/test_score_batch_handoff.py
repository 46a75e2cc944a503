"""``ScoreBatch`` off the event loop: bytes in, bytes out on the loop, everything else on one worker
thread; the reply written from the score arrays must be byte for byte protobuf's, and a batch is
split across the scoring threads only while they have room."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import grpc
import numpy as np
import pytest
import torch

from xal_core.acquisition import ScoringConfig, score_batch
from xal_core.scoring import Roi
from xal_service import codec
from xal_service.client import ScoringClient
from xal_service.errors import RequestError
from xal_service.server import servicer as servicer_module
from xal_service.server.handlers import method_handlers
from xal_service.server.serve import ServerConfig, start_server
from xal_service.server.servicer import ScoringServicer
from xal_service.server.statistics import Statistics
from xal_service.wire import scoring_pb2 as pb


def _protobuf_reply(ids, score, floats, predicted, invalid, excluded, clipped) -> bytes:
    return pb.ScoreBatchResponse(
        ids=ids.tolist(), score=score.tolist(), uncertainty=floats[0].tolist(), dice=floats[1].tolist(),
        soft_dice=floats[2].tolist(), roi_energy=floats[3].tolist(), pointing_hit=floats[4].tolist(),
        predicted_class=predicted.tolist(), invalid=invalid.tolist(), excluded=excluded.tolist(),
        n_invalid=int(invalid.sum()), roi_clipped=clipped.tolist(),
    ).SerializeToString()


@pytest.mark.parametrize("case", ["arange", "negative", "wide", "edges", "empty", "one"])
def test_reply_bytes_are_protobufs_own(case):
    rng = np.random.default_rng(len(case))
    ids = {
        "arange": np.arange(64),
        "negative": rng.integers(-(2**63), 2**63 - 1, size=40, dtype=np.int64),
        "wide": rng.integers(0, 2**40, size=50, dtype=np.int64) >> rng.integers(0, 40, size=50),
        "edges": np.array([0, 127, 128, 16383, 16384, -1, 2**63 - 1, -(2**63), 2**53 + 1, 2**56 - 1, 2**56]),
        "empty": np.zeros(0, dtype=np.int64),
        "one": np.array([300]),
    }[case].astype(np.int64)
    n = len(ids)
    score = rng.standard_normal(n)
    score[::5], score[1::7] = np.nan, -np.inf
    floats = [rng.standard_normal(n).astype(np.float32) for _ in range(5)]
    floats[1][::3] = np.nan
    predicted = rng.integers(-3 if case == "negative" else 0, 1000, size=n)
    invalid, excluded, clipped = (rng.random(n) < 0.3 for _ in range(3))
    raw = codec.encode_score_batch_response(ids, score, *floats, predicted, invalid, excluded, clipped)
    assert raw == _protobuf_reply(ids, score, floats, predicted, invalid, excluded, clipped)
    parsed = pb.ScoreBatchResponse.FromString(raw)
    assert list(parsed.ids) == ids.tolist() and parsed.n_invalid == int(invalid.sum())


def test_score_batch_is_registered_as_bytes_in_bytes_out():
    handler = method_handlers(object.__new__(ScoringServicer)).service(
        type("Details", (), {"method": "/xal.v1.Scoring/ScoreBatch", "invocation_metadata": ()})())
    assert handler.request_deserializer is None and handler.response_serializer is None
    other = method_handlers(object.__new__(ScoringServicer)).service(
        type("Details", (), {"method": "/xal.v1.Scoring/ListJobs", "invocation_metadata": ()})())
    assert other.request_deserializer is not None and other.response_serializer is not None


def _inputs(batch=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    roi = Roi.from_masks(torch.rand(batch, 20, 24, generator=generator) < 0.3)
    return (torch.randn(batch, 3, generator=generator), torch.rand(batch, 6, 5, 6, generator=generator),
            torch.randn(batch, 6, generator=generator), roi)


def test_the_worker_thread_answers_raw_bytes_with_the_librarys_scores():
    logits, features, weights, roi = _inputs()
    ids = torch.arange(1000, 1040)
    raw = codec.encode_score_batch_request(logits, features, weights, roi, codec.encode_parameters(), ids=ids.numpy())
    servicer = ScoringServicer(Statistics(), None, None, None, lambda serving: None)
    reply, items = servicer._score_batch(raw)
    assert items == 40
    want = score_batch(ids, logits, features, weights, roi, ScoringConfig())
    got = pb.ScoreBatchResponse.FromString(reply)
    assert list(got.ids) == want.ids.tolist()
    np.testing.assert_array_equal(np.asarray(got.score), want.score.numpy())
    np.testing.assert_array_equal(np.asarray(got.dice, dtype=np.float32), want.dice.numpy())
    with pytest.raises(RequestError) as malformed:
        servicer._score_batch(b"\x0a\xff\xff")  # a record longer than the buffer
    assert malformed.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.value.message.startswith("request: not a valid xal.v1.ScoreBatchRequest")


@pytest.mark.parametrize(("in_flight", "threads", "pool_parts", "inline", "dtype"), [
    (1, 2, 1, True, torch.float32),    # alone: one part here, one on a scoring thread
    (1, 3, 2, True, torch.float32),
    (2, 3, 2, False, torch.float32),   # one other batch: two threads left over, both on the pool
    (2, 2, 1, False, torch.float32),   # as many batches as threads: whole, on one scoring thread
    (9, 2, 1, False, torch.float32),
    (1, 2, 2, False, torch.float16),   # features the kernel widens: every part on the pool (measured faster)
    (1, 2, 2, False, torch.bfloat16),
])
def test_a_batch_is_split_only_while_the_scoring_threads_have_room(in_flight, threads, pool_parts, inline, dtype):
    logits, features, weights, roi = _inputs(batch=64)
    features = features.to(dtype)
    ids = torch.arange(64)
    config = ScoringConfig()
    with ThreadPoolExecutor(threads) as pool:
        servicer = ScoringServicer(Statistics(), None, None, None, lambda serving: None, scoring_pool=pool,
                                   scoring_threads=threads)
        servicer._batches_in_flight = in_flight
        where = []
        with mock.patch("xal_service.server.servicer.torch.get_num_threads", return_value=1), \
             mock.patch("xal_service.server.servicer.score_batch",
                        side_effect=lambda *a: (where.append(threading.current_thread()), score_batch(*a))[1]):
            got = servicer._score(ids, logits, features, weights, roi, config)
    here = [thread for thread in where if thread is threading.current_thread()]
    assert len(here) == int(inline) and len(where) - len(here) == pool_parts
    want = score_batch(ids, logits, features, weights, roi, config)
    assert torch.equal(got.ids, want.ids) and torch.allclose(got.score, want.score, equal_nan=True)


def test_parse_score_and_reply_run_off_the_event_loop(tmp_path):
    seen: dict[str, set[str]] = {"parse": set(), "reply": set()}
    parse, encode = servicer_module._parse_score_batch, codec.encode_score_batch_response

    def parse_noting(raw):
        seen["parse"].add(threading.current_thread().name)
        return parse(raw)

    def encode_noting(**arrays):
        seen["reply"].add(threading.current_thread().name)
        return encode(**arrays)

    server = start_server(ServerConfig(listen="127.0.0.1:0", state=tmp_path / "state"))
    try:
        with mock.patch.object(servicer_module, "_parse_score_batch", parse_noting), \
             mock.patch.object(servicer_module.codec, "encode_score_batch_response", encode_noting), \
             ScoringClient(f"127.0.0.1:{server.port}") as client:
            for _ in range(3):
                assert client.score_batch(*_inputs(batch=8))["score"].shape == (8,)
    finally:
        server.stop()
    for step, threads in seen.items():
        assert threads and all(name.startswith("xal-rpc") for name in threads), (step, threads)
