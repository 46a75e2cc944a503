"""Issue 26, a contract a client in any language can follow: inputs a client cannot have meant are
refused naming the field and item (or accepted and reported), and what the proto promises is what
the server does. A real ``xal serve`` over a real socket; requests built field by field, as a
client generated from ``protos/xal/v1/scoring.proto`` in another language builds them."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from tests.service import server_process
from tests.service.faults import ITEMS, Assets, ChunkGate, error_of, make_assets, place
from xal_core.acquisition import ScoringConfig, score_batch
from xal_core.scoring import Roi
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "protos" / "xal" / "v1" / "scoring.proto"
FRAME = (20, 24)  # H, W


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    state = tmp_path_factory.mktemp("contract") / "state"
    placed = place(assets, state)
    running = server_process.start(state)
    with ScoringClient(running.target, timeout=120) as client:
        client.load_model("m", str(placed.onnx))
        client.register_pool("p", str(placed.pool))
    yield running
    assert running.stop() == 0, (running.state / "stdout.log").read_text()


@pytest.fixture(scope="module")
def client(server):
    with ScoringClient(server.target, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def score(server):
    """``score(request) -> ScoreBatchResponse`` over a plain stub (no xal codec)."""
    channel = grpc.insecure_channel(server.target)
    call = channel.unary_unary("/xal.v1.Scoring/ScoreBatch", request_serializer=pb.ScoreBatchRequest.SerializeToString,
                               response_deserializer=pb.ScoreBatchResponse.FromString)
    yield lambda request: call(request, timeout=60)
    channel.close()


def _tensor(array: np.ndarray, dtype: int) -> pb.Tensor:
    little = {pb.DTYPE_FLOAT32: "<f4", pb.DTYPE_FLOAT64: "<f8", pb.DTYPE_INT32: "<i4", pb.DTYPE_INT64: "<i8"}[dtype]
    array = np.ascontiguousarray(array, dtype=little)
    return pb.Tensor(dtype=dtype, shape=list(array.shape), data=array.tobytes())


def _box_request(boxes: np.ndarray, counts: list[int], ids: list[int] | None = None) -> pb.ScoreBatchRequest:
    batch = boxes.shape[0]
    generator = np.random.default_rng(26)
    return pb.ScoreBatchRequest(
        ids=ids or [],
        logits=_tensor(generator.normal(size=(batch, 3)), pb.DTYPE_FLOAT32),
        features=_tensor(generator.random((batch, 8, 5, 6)) + 0.05, pb.DTYPE_FLOAT32),
        cam_weights=_tensor(generator.normal(size=(batch, 8)), pb.DTYPE_FLOAT32),
        roi=pb.RoiBatch(height=FRAME[0], width=FRAME[1], boxes=pb.Boxes(
            boxes=_tensor(boxes, pb.DTYPE_FLOAT32), counts=_tensor(np.asarray(counts), pb.DTYPE_INT64))),
    )


def _boxes(batch: int, slots: int) -> np.ndarray:
    boxes = np.zeros((batch, slots, 4), dtype=np.float32)
    boxes[:, 0] = [2.0, 3.0, 12.0, 15.0]
    return boxes


# ------------------------------------------------------------------------------- box padding rows
@pytest.mark.parametrize("padding", [float("nan"), 5.0, -1.0, float("inf")])
def test_a_padding_row_that_is_not_zeros_is_refused_naming_it(score, padding):
    """Rows past ``counts[b]`` are padding: a client that wrote boxes there most likely sent a wrong
    count (its boxes were silently dropped). They must be zeros; anything else names the row."""
    boxes = _boxes(3, 3)
    boxes[1, 2, 1] = padding  # image 1 uses one box: row 2 is padding
    code, details = error_of(lambda: score(_box_request(boxes, [1, 1, 1])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("roi.boxes.boxes[1][2]:") and "padding" in details and "counts[1] = 1" in details, details
    boxes = _boxes(3, 3)
    boxes[2, 0] = [1.0, 1.0, 4.0, 4.0]  # counts -1 (unknown) and 0 (known empty): every row is padding
    for count in (-1, 0):
        code, details = error_of(lambda count=count: score(_box_request(boxes, [1, 1, count])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("roi.boxes.boxes[2][0]:"), details
    boxes = _boxes(3, 3)
    boxes[1:] = 0.0  # known empty and unknown: all rows padding, all zeros
    assert len(score(_box_request(boxes, [1, 0, -1])).score) == 3


def test_more_boxes_per_image_than_the_limit_are_refused(score):
    code, details = error_of(lambda: score(_box_request(_boxes(1, 1025), [1])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("roi.boxes.boxes.shape:") and "1024" in details and "--max-boxes" in details, details
    assert len(score(_box_request(_boxes(1, 1024), [1])).score) == 1


# ------------------------------------------------------------------------------- boxes past the frame
def test_boxes_reaching_past_the_frame_are_clipped_and_reported_per_item(score, client):
    """The contract clips a box partly outside the frame; a box in the wrong frame's coordinates
    is clipped too, so the response says which items had a box clipped (``roi_clipped``)."""
    boxes = _boxes(3, 2)
    boxes[0, 1] = [-3.0, 2.0, FRAME[1] + 5.0, 9.0]  # past the left and the right edge
    boxes[2, 0] = [4.0, 10.0, 8.0, FRAME[0] + 0.5]  # past the bottom by half a pixel
    request = _box_request(boxes, [2, 1, 1])
    reply = score(request)
    assert list(reply.roi_clipped) == [True, False, True]
    roi = Roi.from_padded_boxes(torch.from_numpy(boxes), torch.tensor([2, 1, 1]), size=FRAME)
    decoded = [np.frombuffer(getattr(request, name).data, "<f4").reshape(list(getattr(request, name).shape))
               for name in ("logits", "features", "cam_weights")]
    want = score_batch(torch.arange(3), *(torch.from_numpy(a.copy()) for a in decoded), roi, ScoringConfig())
    np.testing.assert_allclose(reply.score, want.score.numpy(), rtol=0, atol=1e-6)
    boxes[1, 0] = [FRAME[1] + 1.0, 2.0, FRAME[1] + 9.0, 9.0]  # wholly outside: refused, as the contract says
    code, details = error_of(lambda: score(_box_request(boxes, [2, 1, 1])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("roi.boxes.boxes[1][0]:"), details
    assert "outside" in details
    logits, features, weights = (torch.from_numpy(a.copy()) for a in decoded)  # the Python client reports it too
    got = client.score_batch(logits, features, weights, roi)
    assert got["roi_clipped"].tolist() == [True, False, True]


# ------------------------------------------------------------------------------- ids and the roi
def test_duplicate_ids_in_one_batch_are_refused_naming_both_positions(score):
    code, details = error_of(lambda: score(_box_request(_boxes(4, 1), [1] * 4, ids=[7, 8, 9, 8])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("ids:") and "8" in details and "1 and 3" in details, details
    assert list(score(_box_request(_boxes(4, 1), [1] * 4, ids=[7, 8, 9, 10])).ids) == [7, 8, 9, 10]


def test_a_request_without_roi_names_the_missing_field(score):
    request = _box_request(_boxes(2, 1), [1, 1])
    request.ClearField("roi")
    code, details = error_of(lambda: score(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("roi: missing"), details
    assert "0×0" not in details


# ------------------------------------------------------------------------------- jobs
def _job(client, **request) -> pb.JobStatus:
    job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", **request)).job_id
    return list(client.watch_job(job_id))[-1]


def test_exclude_ids_that_are_not_pool_items_are_refused(client):
    """An id that is not an item of the pool (ids are 0..N-1) cannot have been labelled from it:
    most likely ids of another pool. Refused, naming the position and the pool's id range."""
    for bad in (ITEMS, -1, 10**9):
        code, details = error_of(lambda bad=bad: client.start_scoring(
            pb.StartScoringRequest(model="m", pool="p", k=5, exclude_ids=[3, 4, bad])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith("exclude_ids[2]:") and str(bad) in details and f"0..{ITEMS - 1}" in details, details


def test_a_ranking_shorter_than_k_says_how_long_it_is_and_why(client):
    excluded = list(range(ITEMS - 10)) + [0, 1]  # all but the last 10 (a repeated id counts once)
    final = _job(client, k=25, exclude_ids=excluded)
    assert final.state == pb.JOB_SUCCEEDED, final
    items = [item for page in client.get_ranking(final.job_id) for item in page.items]
    assert len(items) == 10 and final.ranked == 10, final
    assert "10 of k = 25" in final.ranking_note and f"{ITEMS - 10} left out by exclude_ids" in final.ranking_note, final
    full = _job(client, k=25)
    assert full.ranked == 25 and full.ranking_note == "", full
    listed = {job.job_id: job for job in client.list_jobs().jobs}
    assert listed[final.job_id].ranked == 10 and listed[final.job_id].ranking_note == final.ranking_note


def test_a_reused_idempotency_key_returns_the_job_or_is_refused(client):
    first = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=3, idempotency_key="issue-26"))
    again = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=3, idempotency_key="issue-26"))
    assert again.job_id == first.job_id
    code, details = error_of(lambda: client.start_scoring(
        pb.StartScoringRequest(model="m", pool="p", k=4, idempotency_key="issue-26")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("idempotency_key:"), details


def test_rankings_of_jobs_that_will_never_have_one_say_so(client):
    """GetRanking on a cancelled job said "no ranking yet": it will never have one."""
    jobs = [client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=5)).job_id for _ in range(3)]
    cancelled = client.cancel_job(jobs[2])
    assert cancelled.state == pb.JOB_CANCELLED
    for read in (client.get_ranking, client.get_item_scores):
        code, details = error_of(lambda read=read: list(read(jobs[2])))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "was cancelled" in details and "no ranking yet" not in details and "StartScoring" in details, details
    finished = list(client.watch_job(jobs[0]))
    assert finished[-1].state == pb.JOB_SUCCEEDED  # WatchJob ends at a terminal state
    again = client.cancel_job(jobs[0])  # cancelling a finished job: its status, unchanged, no error
    assert again.state == pb.JOB_SUCCEEDED and again.items_done == ITEMS
    assert client.cancel_job(jobs[2]).state == pb.JOB_CANCELLED


# ------------------------------------------------------------------------------- models
def test_an_upload_that_is_not_a_model_names_the_chunk_not_a_server_file(client):
    code, details = error_of(lambda: client._stub.LoadModel(
        iter([pb.LoadModelRequest(name="junk", chunk=b"not a model " * 100)]), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("chunk:") and ".part" not in details and "<state>" not in details, details
    assert "junk" not in [m.name for m in client.list_models().models]


def test_the_upload_name_is_the_first_message_s(client, assets):
    """Every message of an upload may repeat the first one's name (ScoringClient does) or leave it
    empty; another name in a later message is refused, not silently ignored."""
    data = assets.onnx.read_bytes()
    half = len(data) // 2
    code, details = error_of(lambda: client._stub.LoadModel(iter([
        pb.LoadModelRequest(name="first", chunk=data[:half]), pb.LoadModelRequest(name="second", chunk=data[half:]),
    ]), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("name:"), details
    assert "'second'" in details and "'first'" in details, details
    names = [m.name for m in client.list_models().models]
    assert "first" not in names and "second" not in names
    info = client._stub.LoadModel(iter([pb.LoadModelRequest(name="first", chunk=data[:half]),
                                        pb.LoadModelRequest(chunk=data[half:])]), timeout=60)
    assert info.name == "first"


def test_the_runtime_string_is_one_the_proto_documents(client):
    documented = re.search(r"string runtime = 3;\s*//(.*)", PROTO.read_text()).group(1)
    examples = re.findall(r'"([^"]+)"', documented)
    assert client.model_metadata("m").runtime in examples, (client.model_metadata("m").runtime, examples)


# ------------------------------------------------------------------------------- statistics
def test_streaming_rpcs_count_the_whole_stream(server, client, assets):
    """``Counter.seconds`` of WatchJob counted the job lookup only; it counts the stream now."""
    gated = server.state / "pools" / "gated"  # under the server's default pool root
    shutil.copytree(assets.pool, gated)
    client.register_pool("gated", str(gated))
    gate = ChunkGate(gated, 3)  # the job waits at chunk 3 until released
    before = client.statistics().rpcs["WatchJob"]
    job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="gated", k=5)).job_id
    watched, first_seen, times = [], threading.Event(), {}

    def watch() -> None:
        times["called"] = time.monotonic()
        for status in client.watch_job(job_id):
            watched.append(status)
            if not first_seen.is_set():
                times["first"] = time.monotonic()
                first_seen.set()
        times["ended"] = time.monotonic()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert first_seen.wait(60), "WatchJob sent no first status"
    time.sleep(1.0)
    released = time.monotonic()
    gate.release()
    watcher.join(timeout=120)
    assert watched and watched[-1].state == pb.JOB_SUCCEEDED, watched
    after = client.statistics().rpcs["WatchJob"]
    assert after.count == before.count + 1
    counted = after.seconds - before.seconds
    # causal bounds, no allowance: the server's stream was open from before the first status reached
    # the client until after the gate opened, and it lived inside the client's call
    assert released - times["first"] <= counted <= times["ended"] - times["called"], (counted, times, released)
