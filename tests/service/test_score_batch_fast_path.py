"""The ScoreBatch fast path: requests written without protobuf and parsed without copying the feature
maps must mean exactly what protobuf says they mean, and a batch split across the scoring threads
must score exactly as the whole batch does."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import grpc
import numpy as np
import pytest
import torch

from xal_core.acquisition import BatchScores, ScoringConfig, score_batch
from xal_core.scoring import Roi
from xal_service import codec
from xal_service.errors import RequestError
from xal_service.server.servicer import ScoringServicer
from xal_service.server.statistics import Statistics
from xal_service.wire import scoring_pb2 as pb


def _inputs(batch=3, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 4, generator=generator)
    features = torch.rand(batch, 6, 3, 5, generator=generator).to(dtype)
    weights = torch.randn(batch, 6, generator=generator)
    roi = Roi.from_masks(torch.rand(batch, 11, 13, generator=generator) < 0.3, known=[True, False, True][:batch])
    return logits, features, weights, roi


def _protobuf_request(logits, features, weights, roi, strategy, ids=None):
    request = pb.ScoreBatchRequest(parameters=strategy)
    codec.fill_tensor(request.logits, logits)
    codec.fill_tensor(request.features, features)
    codec.fill_tensor(request.cam_weights, weights)
    codec.fill_roi(request.roi, roi)
    if ids is not None:
        request.ids.extend(ids)
    return request


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_encoded_request_is_the_protobuf_message(dtype):
    logits, features, weights, roi = _inputs(dtype=dtype)
    strategy = codec.encode_parameters("margin", 0.3, 0.4, "rank", "exclude")
    raw = codec.encode_score_batch_request(logits, features, weights, roi, strategy, ids=np.array([7, 3, 9]))
    assert pb.ScoreBatchRequest.FromString(raw) == _protobuf_request(logits, features, weights, roi, strategy, [7, 3, 9])


def test_non_contiguous_and_numpy_features_encode_like_their_contiguous_copy():
    logits, features, weights, roi = _inputs()
    strided = features.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    strategy = codec.encode_parameters()
    for variant in (strided, features.numpy()):
        raw = codec.encode_score_batch_request(logits, variant, weights, roi, strategy)
        assert raw == codec.encode_score_batch_request(logits, features, weights, roi, strategy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_parse_keeps_features_out_of_protobuf_and_decodes_the_same(dtype):
    logits, features, weights, roi = _inputs(dtype=dtype)
    raw = _protobuf_request(logits, features, weights, roi, codec.encode_parameters()).SerializeToString()
    wire = codec.parse_score_batch_request(raw)
    assert wire.features_data is not None and wire.message.features.data == b""
    assert wire.message.features.dtype == codec._TORCH_TO_WIRE[dtype]
    assert list(wire.message.features.shape) == list(features.shape)
    decoded = codec.decode_tensor(wire.message.features, "features", dtypes=codec.FLOATS, ndim=4, data=wire.features_data)
    assert decoded.dtype == dtype and torch.equal(decoded, features)
    assert decoded.untyped_storage().data_ptr() == np.frombuffer(wire.features_data, np.uint8).ctypes.data  # a view
    # everything else is protobuf's own parse
    plain = pb.ScoreBatchRequest.FromString(raw)
    plain.features.ClearField("data")
    assert wire.message == plain


def test_parse_follows_protobuf_merging_rules():
    """Field order is free, an embedded message may come in several records (they merge) and the last
    ``data`` wins: whatever protobuf makes of a buffer, the fast path makes of it too."""
    logits, features, weights, roi = _inputs()
    first = pb.ScoreBatchRequest(features=pb.Tensor(dtype=pb.DTYPE_FLOAT64, data=b"\x01" * 8))
    second = pb.ScoreBatchRequest(features=pb.Tensor(shape=list(features.shape), data=features.numpy().tobytes()))
    rest = _protobuf_request(logits, torch.zeros(0), weights, roi, codec.encode_parameters())
    rest.ClearField("features")
    third = pb.ScoreBatchRequest(features=pb.Tensor(dtype=pb.DTYPE_FLOAT32))
    raw = first.SerializeToString() + rest.SerializeToString() + second.SerializeToString() + third.SerializeToString()
    wire = codec.parse_score_batch_request(raw)
    plain = pb.ScoreBatchRequest.FromString(raw)
    assert bytes(wire.features_data) == plain.features.data == features.numpy().tobytes()
    plain.features.ClearField("data")
    assert wire.message == plain


def test_parse_of_requests_without_features_or_with_malformed_bytes():
    wire = codec.parse_score_batch_request(pb.ScoreBatchRequest(ids=[1, 2]).SerializeToString())
    assert wire.features_data is None and list(wire.message.ids) == [1, 2]
    with pytest.raises(RequestError) as missing:
        codec.decode_tensor(wire.message.features, "features", dtypes=codec.FLOATS, ndim=4, data=wire.features_data)
    assert missing.value.code == grpc.StatusCode.INVALID_ARGUMENT and "features: missing" in missing.value.message
    good = _protobuf_request(*_inputs(), codec.encode_parameters()).SerializeToString()
    for broken in (good[:-3], b"\x1a\xff\xff\xff\xff\x0f", b"\x00\x01", b"\x1b"):  # truncated, overlong, field 0, group
        try:
            expected = pb.ScoreBatchRequest.FromString(broken)
        except Exception as error:  # noqa: BLE001 - whatever protobuf raises, the fast path raises too
            with pytest.raises(type(error)):
                codec.parse_score_batch_request(broken)
        else:
            assert codec.parse_score_batch_request(broken).message == expected


def test_data_given_apart_from_the_message_is_read_as_little_endian():
    values = np.arange(6, dtype="<f4")
    message = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 3])
    decoded = codec.decode_tensor(message, "x", dtypes=codec.FLOATS, ndim=2, data=memoryview(values.tobytes()))
    assert decoded.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


@pytest.mark.parametrize("known", [None, [True, True, True], [False, True, False]])
def test_decoded_mask_rois_equal_the_library_constructor(known):
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(3, 9, 13, generator=generator) < 0.5
    packed = np.packbits(masks.numpy(), axis=-1)
    packed[..., -1] |= 0b111  # padding bits past W = 13 are set: they must be ignored
    message = pb.RoiBatch(height=9, width=13, masks=pb.PackedMasks(
        packed=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=list(packed.shape), data=packed.tobytes()), known=known or []))
    got = codec.decode_roi(message, 3)
    want = Roi.from_packed_masks(torch.from_numpy(packed), 13, known)
    assert got.size == want.size and torch.equal(got.known, want.known) and torch.equal(got.masks, want.masks)
    assert got.masks.dtype == torch.bool and got.boxes is None and got.counts is None


@pytest.mark.parametrize("roi_kind", ["mask", "boxes"])
def test_a_batch_split_across_scoring_threads_scores_as_the_whole_batch(roi_kind):
    generator = torch.Generator().manual_seed(5)
    batch = 53  # parts of 17, 18 and 18 items
    logits = torch.randn(batch, 3, generator=generator)
    features = torch.rand(batch, 16, 5, 5, generator=generator)
    features[7, 3, 2, 2] = float("nan")  # an invalid item in one part
    weights = torch.randn(batch, 16, generator=generator)
    if roi_kind == "mask":
        roi = Roi.from_masks(torch.rand(batch, 40, 36, generator=generator) < 0.3,
                             known=[i % 9 != 4 for i in range(batch)])
    else:
        boxes = [torch.tensor([[3.0 + i % 7, 2.0, 20.0, 30.0]]) if i % 5 else None for i in range(batch)]
        roi = Roi.from_boxes(boxes, size=(40, 36))
    ids = torch.arange(100, 100 + batch)
    config = ScoringConfig(uncertainty="margin", weight=0.3)
    with ThreadPoolExecutor(3) as pool:
        servicer = ScoringServicer(Statistics(), None, None, None, lambda serving: None, scoring_pool=pool,
                                   scoring_threads=3)
        with mock.patch("xal_service.server.servicer.torch.get_num_threads", return_value=1), \
             mock.patch("xal_service.server.servicer.score_batch", wraps=score_batch) as calls:
            split = servicer._score(ids, logits, features, weights, roi, config)
        assert calls.call_count == 3
    whole = score_batch(ids, logits, features, weights, roi, config)
    for field in dataclasses.fields(BatchScores):
        got, want = getattr(split, field.name), getattr(whole, field.name)
        assert got.dtype == want.dtype and got.shape == want.shape, field.name
        assert torch.equal(got.isnan(), want.isnan()) if got.is_floating_point() else True
        assert torch.equal(torch.nan_to_num(got, nan=7.0), torch.nan_to_num(want, nan=7.0)), field.name
