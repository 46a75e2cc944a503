"""Issue 15, items 3 and 10 (malformed protobuf): small requests never buy large allocations, and a body
that is not protobuf is the client's error. A real ``xal serve`` over a real socket."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from tests.service import server_process
from tests.service.faults import error_of, rss_mb
from xal_service import codec
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb


def _box_request(width: int, *, height: int = 1, batch: int = 1, grid: tuple[int, int] = (1, 1)) -> bytes:
    """A tiny ScoreBatch whose box ROI declares a ``height × width`` frame (the issue's 293 bytes)."""
    message = pb.ScoreBatchRequest(parameters=pb.ScoringParameters())
    codec.fill_tensor(message.logits, torch.zeros(batch, 2))
    codec.fill_tensor(message.features, torch.ones(batch, 1, *grid))
    codec.fill_tensor(message.cam_weights, torch.ones(batch, 1))
    message.roi.height, message.roi.width = height, width
    codec.fill_tensor(message.roi.boxes.boxes, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]] * batch))
    codec.fill_tensor(message.roi.boxes.counts, torch.ones(batch, dtype=torch.int32))
    return message.SerializeToString()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = server_process.start(tmp_path_factory.mktemp("requests") / "state")
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def raw(server):
    """Calls with caller-made bytes: ``raw(method, body)``."""
    channel = grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)])

    def call(method: str, body: bytes):
        return channel.unary_unary(f"/xal.v1.Scoring/{method}")(body, timeout=60)

    yield call
    channel.close()


def test_a_hundred_wide_roi_frames_leave_memory_where_it_was(server, raw):
    """Each request declares a frame ~200 000 pixels wide (each a different width, so each would
    need its own resampling plan): refused before any plan is built, naming the field."""
    assert len(_box_request(200_000)) < 400
    raw("ScoreBatch", _box_request(64))  # warm: the scoring path's own first-call allocations
    before = rss_mb(server.pid)
    for n in range(100):
        code, details = error_of(lambda n=n: raw("ScoreBatch", _box_request(200_000 + 997 * n)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("roi.width:"), details
        assert "--max-roi-side" in details
    after = rss_mb(server.pid)
    assert after - before < 50, (before, after)


def test_extreme_frames_and_grids_are_invalid_argument(raw):
    for width in (20_000_001, 2**31 - 1):
        code, details = error_of(lambda width=width: raw("ScoreBatch", _box_request(width)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("roi.width:"), details
    code, details = error_of(lambda: raw("ScoreBatch", _box_request(16, height=2**31 - 1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("roi.height:"), details
    # a 4096-row CAM grid upsampled to a 4096-wide frame: 4096² floats of scratch from a 16 kB request
    code, details = error_of(lambda: raw("ScoreBatch", _box_request(4096, height=4096, grid=(4096, 1))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("features.shape:"), details
    # 4 096 images × a 4096² box frame: 6.9e10 pixels to visit, declared in some 100 kB
    code, details = error_of(lambda: raw("ScoreBatch", _box_request(4096, height=4096, batch=4096)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("roi.boxes:"), details


def test_frames_within_the_limits_still_score(server):
    with ScoringClient(server.target) as client:
        from xal_core.scoring import Roi

        roi = Roi.from_boxes([torch.tensor([[10.0, 10.0, 900.0, 700.0]])] * 2, size=(1024, 4096))
        scores = client.score_batch(torch.randn(2, 3), torch.rand(2, 8, 7, 7), torch.rand(2, 8), roi)
        assert np.isfinite(scores["dice"]).all()


def test_malformed_protobuf_is_invalid_argument(raw, server):
    garbage = b"\xff\xff\xff\xff\x0f\x0a\x05ab"
    for method in ("ScoreBatch", "ListModels", "StartScoring", "RegisterPool", "Statistics"):
        code, details = error_of(lambda method=method: raw(method, garbage))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("request: not a valid xal.v1."), \
            (method, code, details)
    channel = grpc.insecure_channel(server.target)
    try:
        upload = channel.stream_unary("/xal.v1.Scoring/LoadModel")
        code, details = error_of(lambda: upload(iter([garbage]), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        watch = channel.unary_stream("/xal.v1.Scoring/WatchJob")
        code, details = error_of(lambda: list(watch(garbage, timeout=30)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    finally:
        channel.close()


def test_cached_plans_are_bounded_by_bytes():
    """The scorers' plan caches hold at most a byte budget (a count bound let 64 huge plans stay)."""
    from xal_core.scoring import separable
    from xal_core.scoring.plan_cache import byte_bounded_cache
    from xal_kernels import cpu_alignment

    built = []

    @byte_bounded_cache(max_bytes=10_000)
    def plan(n: int) -> np.ndarray:
        built.append(n)
        return np.zeros(n, dtype=np.uint8)

    plan(4000), plan(4000), plan(5000)
    assert built == [4000, 5000] and plan.cache_bytes() == 9000
    plan(3000)  # over budget: the least recently used (4000) goes
    assert plan.cache_bytes() == 8000
    plan(4000)
    assert built == [4000, 5000, 3000, 4000]
    plan(20_000), plan(20_000)  # larger than the budget: never cached
    assert built[-2:] == [20_000, 20_000] and plan.cache_bytes() <= 10_000
    for cached in (cpu_alignment.resampling_plan, separable.column_plan, separable.row_plan, separable.packed_columns):
        assert hasattr(cached, "cache_bytes"), cached
    cpu_alignment.resampling_plan(7, 7, 4096, 4096)
    assert 0 < cpu_alignment.resampling_plan.cache_bytes() <= 64 << 20


def test_score_batch_calls_beyond_the_in_flight_cap_are_refused_not_queued(tmp_path):
    """Every ScoreBatch call holds its request (up to 64 MiB) until a worker scores it; with no cap a
    flood of calls queued behind the workers without bound. Beyond ``--max-inflight-batches`` a
    call is refused at once with RESOURCE_EXHAUSTED; the ones let in are scored exactly."""
    import threading

    from xal_core.acquisition import score_batch
    from xal_core.scoring import Roi

    server = server_process.start(tmp_path / "state", "--max-inflight-batches", "1", "--workers", "1")
    try:
        generator = torch.Generator().manual_seed(5)
        n = 256
        logits, features = torch.randn(n, 3, generator=generator), torch.rand(n, 256, 7, 7, generator=generator)
        cam_weights = torch.randn(n, 256, generator=generator)
        roi = Roi.from_masks(torch.rand(n, 56, 56, generator=generator) > 0.7)
        want = score_batch(torch.arange(n), logits, features, cam_weights, roi)
        outcomes: list = []

        def flood() -> None:
            start = threading.Barrier(12)

            def client() -> None:
                with ScoringClient(server.target, timeout=120) as scoring:
                    start.wait()
                    try:
                        outcomes.append(scoring.score_batch(logits, features, cam_weights, roi))
                    except grpc.RpcError as error:
                        outcomes.append((error.code(), error.details()))

            threads = [threading.Thread(target=client) for _ in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        # Twelve calls released at once overlap on the server almost always, but a quick server can
        # finish one before the next arrives (1 run in 3 after the ScoreBatch fast path): a refusal
        # needs an overlap, so the flood is repeated until one happens.
        for _ in range(20):
            flood()
            if any(isinstance(o, tuple) for o in outcomes):
                break
        refused = [o for o in outcomes if isinstance(o, tuple)]
        scored = [o for o in outcomes if not isinstance(o, tuple)]
        assert refused and scored, outcomes
        for code, details in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-inflight-batches" in details
        for got in scored:
            np.testing.assert_allclose(got["score"], want.score.numpy(), rtol=1e-6, atol=1e-7)
        with ScoringClient(server.target, timeout=60) as scoring:  # a refused flood leaves the server serving
            assert scoring.health() == "SERVING"
            assert scoring.score_batch(logits, features, cam_weights, roi)["score"].shape == (n,)
    finally:
        assert server.stop() == 0
