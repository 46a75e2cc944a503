"""The scoring service over a real socket: a server subprocess, clients over gRPC.

One client is generated in the test from ``protos/xal/v1/scoring.proto`` alone (the wire contract,
independent of xal's own client and codec); the others use ``xal_service.client.ScoringClient``.
"""

from __future__ import annotations

import importlib
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc

from tests.service import server_process
from xal_core.scoring import Roi, cam_alignment, dual_score, uncertainty
from xal_service.client import ScoringClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = server_process.start(tmp_path_factory.mktemp("state"), "--max-message-mb", "4")
    yield running
    assert running.stop() == 0, (running.state / "stdout.log").read_text()


@pytest.fixture(scope="module")
def client(server):
    with ScoringClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def wire(tmp_path_factory):
    """Stubs generated here from the proto file alone, imported as their own package."""
    out = tmp_path_factory.mktemp("wire")
    args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main(args + [str(ROOT / "protos" / "xal" / "v1" / "scoring.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("xal.v1.scoring_pb2")
        pb_grpc = importlib.import_module("xal.v1.scoring_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb, pb_grpc


def _inputs(batch=6, channels=24, grid=(5, 7), frame=(37, 29), seed=0, roi_kind="mask"):
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(batch, channels, *grid, generator=generator) + 0.05
    weights = torch.randn(batch, channels, generator=generator)
    logits = 3 * torch.randn(batch, 4, generator=generator)
    if roi_kind == "mask":
        roi = Roi.from_masks(torch.rand(batch, *frame, generator=generator) < 0.3, known=[True] * (batch - 1) + [False])
    else:
        boxes = [torch.tensor([[2.5, 3.0, 20.0, 30.5], [10.0, 1.0, 28.0, 12.0]])] * (batch - 2) + [torch.zeros(0, 4), None]
        roi = Roi.from_boxes(boxes, size=frame)
    return logits, features, weights, roi


def _expected(logits, features, weights, roi, **strategy):
    alignment = cam_alignment(features, weights, roi, threshold=strategy.get("threshold", 0.5))
    u = uncertainty(logits, strategy.get("uncertainty", "entropy"))
    fused = dual_score(
        u, alignment, weight=strategy.get("weight", 0.5), method=strategy.get("fusion", "weighted"),
        missing_roi=strategy.get("missing_roi", "uncertainty_only"),
    )
    return alignment, u, fused


def _close(got: np.ndarray, want: torch.Tensor, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(got, want.numpy().astype(got.dtype), atol=atol, rtol=0, equal_nan=True)


# ------------------------------------------------------------------------------- the wire contract
@pytest.mark.parametrize("roi_kind", ["mask", "boxes"])
def test_score_batch_from_a_stub_generated_from_the_proto(server, wire, roi_kind):
    pb, pb_grpc = wire
    logits, features, weights, roi = _inputs(roi_kind=roi_kind, seed=3)
    raw = lambda t, dtype: pb.Tensor(  # noqa: E731 - raw little-endian bytes, as the proto says
        dtype=dtype, shape=list(t.shape), data=t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
    )
    height, width = roi.size
    if roi_kind == "mask":
        packed = np.packbits(roi.masks.numpy(), axis=-1)
        roi_message = pb.RoiBatch(height=height, width=width, masks=pb.PackedMasks(
            packed=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=list(packed.shape), data=packed.tobytes()),
            known=roi.known.tolist()))
    else:
        roi_message = pb.RoiBatch(height=height, width=width, boxes=pb.Boxes(
            boxes=raw(roi.boxes.float(), pb.DTYPE_FLOAT32), counts=raw(roi.counts, pb.DTYPE_INT64)))
    request = pb.ScoreBatchRequest(
        ids=[100 + i for i in range(6)],
        logits=raw(logits, pb.DTYPE_FLOAT32), features=raw(features, pb.DTYPE_FLOAT32),
        cam_weights=raw(weights, pb.DTYPE_FLOAT32), roi=roi_message,
        parameters=pb.ScoringParameters(uncertainty=pb.UNCERTAINTY_MARGIN, weight=0.3, threshold=0.4),
    )
    with grpc.insecure_channel(server.target) as channel:
        reply = pb_grpc.ScoringStub(channel).ScoreBatch(request, timeout=60)
    alignment, u, fused = _expected(logits, features, weights, roi, uncertainty="margin", weight=0.3, threshold=0.4)
    assert list(reply.ids) == [100 + i for i in range(6)]
    _close(np.array(reply.dice, dtype=np.float32), alignment.dice)
    _close(np.array(reply.soft_dice, dtype=np.float32), alignment.soft_dice)
    _close(np.array(reply.roi_energy, dtype=np.float32), alignment.roi_energy)
    _close(np.array(reply.pointing_hit, dtype=np.float32), alignment.pointing_hit)
    _close(np.array(reply.uncertainty, dtype=np.float32), u)
    _close(np.array(reply.score), fused.score)
    assert math.isnan(reply.dice[5])  # unknown ROI


@pytest.mark.parametrize("fusion", ["weighted", "rank"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_client_score_batch_equals_library(client, fusion, dtype):
    logits, features, weights, roi = _inputs(batch=9, seed=5)
    features = features.to(dtype)
    got = client.score_batch(logits, features, weights, roi, fusion=fusion, missing_roi="exclude")
    alignment, u, fused = _expected(logits, features, weights, roi, fusion=fusion, missing_roi="exclude")
    for name in ("dice", "soft_dice", "roi_energy", "pointing_hit"):
        _close(got[name], getattr(alignment, name))
    _close(got["uncertainty"], u)
    _close(got["score"], fused.score)
    assert got["excluded"].tolist() == fused.excluded.tolist()


def test_nan_item_is_flagged_and_ranked_last(client):
    logits, features, weights, roi = _inputs(batch=5, seed=8)
    features[2, 0, 1, 1] = float("nan")
    logits[4, 1] = float("inf")
    got = client.score_batch(logits, features, weights, roi)
    assert got["invalid"].tolist() == [False, False, True, False, True]
    assert np.isneginf(got["score"][[2, 4]]).all() and np.isfinite(got["score"][[0, 1, 3]]).all()
    assert np.isnan(got["dice"][2])


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "xal.v1.Scoring"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"xal.v1.Scoring", "grpc.health.v1.Health"} <= names


# ------------------------------------------------------------------------------------- bad input
def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_malformed_tensors_are_invalid_argument_naming_the_field(server, wire):
    pb, pb_grpc = wire
    logits, features, weights, roi = _inputs(batch=3)
    good = dict(
        logits=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 4], data=logits.numpy().tobytes()),
        features=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=list(features.shape), data=features.numpy().tobytes()),
        cam_weights=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 24], data=weights.numpy().tobytes()),
        roi=pb.RoiBatch(height=37, width=29, masks=pb.PackedMasks(packed=pb.Tensor(
            dtype=pb.DTYPE_UINT8, shape=[3, 37, 4], data=np.packbits(roi.masks.numpy(), axis=-1).tobytes()))),
    )
    cases = {
        "features.data": dict(features=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=list(features.shape), data=b"\0" * 12)),
        "features.dtype": dict(features=pb.Tensor(dtype=pb.DTYPE_INT32, shape=list(features.shape),
                                                  data=features.numpy().tobytes())),
        "features.shape": dict(features=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 24, 35],
                                                  data=features.numpy().tobytes())),
        "cam_weights.shape": dict(cam_weights=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 23],
                                                        data=weights[:, :23].numpy().tobytes())),
        "roi.masks.packed.shape": dict(roi=pb.RoiBatch(height=37, width=29, masks=pb.PackedMasks(
            packed=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[3, 37, 3], data=b"\0" * 333)))),
        "roi: set either masks or boxes": dict(roi=pb.RoiBatch(height=37, width=29)),
        "parameters.threshold": dict(parameters=pb.ScoringParameters(threshold=1.5)),
        "parameters.weight": dict(parameters=pb.ScoringParameters(weight=-0.1)),
        "parameters.weight: λ must be in [0, 1], got nan": dict(parameters=pb.ScoringParameters(weight=float("nan"))),
        "logits: missing": dict(logits=pb.Tensor()),
    }
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ScoringStub(channel)
        for field, change in cases.items():
            request = pb.ScoreBatchRequest(**{**good, **change})
            code, details = _status(lambda request=request: stub.ScoreBatch(request, timeout=30))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, code, details)
            assert field in details, (field, details)
        # the same request, repaired, still scores: nothing above hurt the server
        assert len(stub.ScoreBatch(pb.ScoreBatchRequest(**good), timeout=30).dice) == 3


def test_bad_box_names_the_item(client):
    logits, features, weights, _ = _inputs(batch=2)
    roi = Roi.from_boxes([torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.tensor([[1.0, 1.0, 5.0, 5.0]])], size=(37, 29))
    roi.boxes[1, 0, 2] = 0.5  # x_max < x_min, past Roi's own checks, as a hostile client could send
    code, details = _status(lambda: client.score_batch(logits, features, weights, roi))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "boxes[1][0]" in details and "x_max < x_min" in details


def test_oversize_message_is_resource_exhausted(client):
    logits, features, weights, roi = _inputs(batch=2)
    huge = torch.rand(2, 24, 160, 160)  # ~9.8 MB of features, the server takes 4 MB
    code, _ = _status(lambda: client.score_batch(logits, huge, weights, roi))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_names_are_not_found(client):
    for call in (lambda: client.model_metadata("m"), lambda: client.describe_pool("p"), lambda: client.cancel_job("j")):
        code, details = _status(call)
        assert code == grpc.StatusCode.NOT_FOUND and "'" in details
    assert list(client.list_models().models) == [] and list(client.list_jobs().jobs) == []


# -------------------------------------------------------------------------------- many clients
def test_sixteen_concurrent_clients_get_the_library_numbers(server):
    cases = [_inputs(batch=8, seed=100 + i, roi_kind="mask" if i % 2 else "boxes") for i in range(16)]

    def one(case):
        with ScoringClient(server.target, timeout=120) as own:
            return [own.score_batch(*case) for _ in range(3)]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, cases))
    for case, replies in zip(cases, results, strict=True):
        alignment, u, fused = _expected(*case)
        for reply in replies:
            _close(reply["dice"], alignment.dice)
            _close(reply["score"], fused.score)


def test_statistics_count_calls_and_failures(client):
    before = client.statistics().rpcs["ScoreBatch"]
    client.score_batch(*_inputs(batch=4))
    with pytest.raises(grpc.RpcError):
        client.score_batch(*_inputs(batch=4), threshold=0.0)
    after = client.statistics()
    counter = after.rpcs["ScoreBatch"]
    assert counter.count == before.count + 2 and counter.failures == before.failures + 1
    assert counter.items == before.items + 4 and counter.seconds > before.seconds
    assert after.uptime_seconds > 0
    assert client.health() == "SERVING"
