"""Wire messages ↔ tensors, with the checks that turn a malformed request into INVALID_ARGUMENT.

Every problem names the field it was found in (``features.shape``, ``roi.boxes.counts[3]``...), so
that a client in any language can tell what to fix. Nothing here trusts a byte count or a shape.

The feature maps of a ``ScoreBatchRequest`` are megabytes (64 × 512 × 7 × 7 float32 = 6.4 MB), and
protobuf copies a ``bytes`` field on every parse, every read and every write. So ``ScoreBatch``
moves them without protobuf on both sides, in plain protobuf wire format (any client may still send
an ordinary message): :func:`encode_score_batch_request` writes the request with the features'
bytes appended straight from the array (one copy), and :func:`parse_score_batch_request` (the
server's deserializer) parses everything else with protobuf and hands the features on as a view
into the received bytes (no copy at all).
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from xal_core.scoring import Roi
from xal_core.scoring.parameters import (
    DEFAULT_FUSION,
    DEFAULT_MISSING_ROI,
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
    THRESHOLD_RANGE,
    WEIGHT_RANGE,
    ScoringConfig,
    threshold_in_range,
    weight_in_range,
)

from .errors import invalid_argument
from .wire import scoring_pb2 as pb

__all__ = [
    "decode_tensor", "fill_tensor", "decode_roi", "fill_roi", "roi_clipped",
    "decode_parameters", "encode_parameters", "ScoreBatchWire", "parse_score_batch_request",
    "encode_score_batch_request", "encode_score_batch_response",
]

_DTYPES: dict[int, tuple[torch.dtype, np.dtype | None]] = {
    pb.DTYPE_FLOAT16: (torch.float16, np.dtype("<f2")),
    pb.DTYPE_BFLOAT16: (torch.bfloat16, None),  # NumPy has no bfloat16: read as little-endian uint16
    pb.DTYPE_FLOAT32: (torch.float32, np.dtype("<f4")),
    pb.DTYPE_FLOAT64: (torch.float64, np.dtype("<f8")),
    pb.DTYPE_UINT8: (torch.uint8, np.dtype("u1")),
    pb.DTYPE_INT32: (torch.int32, np.dtype("<i4")),
    pb.DTYPE_INT64: (torch.int64, np.dtype("<i8")),
}
_TORCH_TO_WIRE = {torch_dtype: wire for wire, (torch_dtype, _) in _DTYPES.items()}
FLOATS = (pb.DTYPE_FLOAT16, pb.DTYPE_BFLOAT16, pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT64)
INTEGERS = (pb.DTYPE_INT32, pb.DTYPE_INT64)
MAX_DIM = 1 << 31


def decode_tensor(
    message: pb.Tensor, field: str, *, dtypes: tuple[int, ...], ndim: int, data: bytes | memoryview | None = None
) -> torch.Tensor:
    """A CPU tensor from a ``Tensor`` message; INVALID_ARGUMENT naming ``field`` when it is malformed.

    ``data``, when given, replaces ``message.data`` (the bytes :func:`parse_score_batch_request`
    kept out of the message). The tensor is a view of those bytes whenever they are in native byte
    order (no copy): they belong to this request alone, and scoring only reads its inputs.
    """
    if data is None:
        data = message.data  # protobuf hands out a fresh bytes object on every access: read it once
    if not message.ByteSize() and not len(data):
        raise invalid_argument(f"{field}: missing")
    if message.dtype not in dtypes:
        allowed = ", ".join(pb.DType.Name(d) for d in dtypes)
        raise invalid_argument(f"{field}.dtype: {pb.DType.Name(message.dtype) if message.dtype in pb.DType.values() else message.dtype} is not one of {allowed}")
    shape = list(message.shape)
    if len(shape) != ndim:
        raise invalid_argument(f"{field}.shape: expected {ndim} dimensions, got {shape}")
    if any(d < 0 or d >= MAX_DIM for d in shape):
        raise invalid_argument(f"{field}.shape: dimensions must be in [0, 2^31), got {shape}")
    torch_dtype, numpy_dtype = _DTYPES[message.dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    expected = math.prod(shape) * itemsize
    if len(data) != expected:
        raise invalid_argument(f"{field}.data: {len(data)} bytes, shape {shape} of {pb.DType.Name(message.dtype)} needs {expected}")
    if numpy_dtype is None:  # bfloat16: NumPy has none, so read little-endian int16 and view it
        array = np.frombuffer(data, dtype="<i2")
        return _from_numpy(array if array.dtype.isnative else array.astype(np.int16)).view(torch.bfloat16).reshape(shape)
    array = np.frombuffer(data, dtype=numpy_dtype)
    return _from_numpy(array if array.dtype.isnative else array.astype(numpy_dtype.newbyteorder("="))).reshape(shape)


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)


# torch.from_numpy warns, once per process, that a read-only array (a view of received bytes) gives a
# writable tensor. These arrays are private to one request and the scorer never writes to its
# inputs, so the warning says nothing here: it is spent at import, where no other thread can race a
# filter change.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    _from_numpy(np.frombuffer(bytes(4), dtype=np.float32))


def fill_tensor(message: pb.Tensor, tensor: torch.Tensor | np.ndarray) -> None:
    """Write ``tensor`` into ``message`` in place: building a request field by field spares the
    copy that passing a finished sub-message to a constructor makes (megabytes for features)."""
    wire_dtype, shape, array = _wire_array(tensor)
    message.dtype = wire_dtype
    message.shape[:] = shape
    message.data = array.tobytes()


def _wire_array(tensor: torch.Tensor | np.ndarray) -> tuple[int, list[int], np.ndarray]:
    """The wire dtype, the shape and a C-contiguous little-endian array of ``tensor`` (no copy when
    it already is one)."""
    tensor = torch.as_tensor(tensor).detach().cpu()
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    if tensor.dtype not in _TORCH_TO_WIRE:
        raise ValueError(f"tensor dtype {tensor.dtype} has no wire dtype")
    shape = list(tensor.shape)
    wire_dtype = _TORCH_TO_WIRE[tensor.dtype]
    tensor = tensor.contiguous()
    array = tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return wire_dtype, shape, array


def decode_roi(message: pb.RoiBatch, batch: int, field: str = "roi") -> Roi:
    """A ``Roi`` for ``batch`` images; errors name the offending field and item."""
    if message.height < 1 or message.width < 1:
        raise invalid_argument(f"{field}: height and width must be >= 1, got {message.height}×{message.width}")
    kind = message.WhichOneof("kind")
    try:
        if kind == "masks":
            packed = decode_tensor(message.masks.packed, f"{field}.masks.packed", dtypes=(pb.DTYPE_UINT8,), ndim=3)
            if packed.shape[0] != batch or packed.shape[1] != message.height or packed.shape[2] != math.ceil(message.width / 8):
                raise invalid_argument(
                    f"{field}.masks.packed.shape: expected [{batch}, {message.height}, {math.ceil(message.width / 8)}], got {list(packed.shape)}"
                )
            known = list(message.masks.known) or None
            if known is not None and len(known) != batch:
                raise invalid_argument(f"{field}.masks.known: {len(known)} flags for {batch} images")
            return _roi_from_packed(packed, message.width, known)
        if kind == "boxes":
            boxes = decode_tensor(message.boxes.boxes, f"{field}.boxes.boxes", dtypes=(pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT64), ndim=3)
            counts = decode_tensor(message.boxes.counts, f"{field}.boxes.counts", dtypes=INTEGERS, ndim=1)
            if boxes.shape[0] != batch or boxes.shape[2] != 4:
                raise invalid_argument(f"{field}.boxes.boxes.shape: expected [{batch}, M, 4], got {list(boxes.shape)}")
            if counts.shape[0] != batch:
                raise invalid_argument(f"{field}.boxes.counts.shape: expected [{batch}], got {list(counts.shape)}")
            try:
                roi = Roi.from_padded_boxes(boxes, counts, size=(message.height, message.width))
            except ValueError as error:  # Roi's checks name the item: boxes[3][0]: x_max < x_min ...
                raise invalid_argument(f"{field}.boxes.{error}") from None
            _check_padding_rows(boxes, roi.counts, f"{field}.boxes")
            return roi
    except ValueError as error:
        raise invalid_argument(f"{field}: {error}") from None
    raise invalid_argument(f"{field}: set either masks or boxes")


def _check_padding_rows(boxes: torch.Tensor, counts: torch.Tensor, field: str) -> None:
    """Rows past ``counts[b]`` are padding and must be all zeros: a box written there is not used, so
    a client that sent one most likely sent a wrong count (or NaN-padded, which protobuf clients in
    other languages must not do either: the rule is one, zeros)."""
    if boxes.shape[1] == 0:
        return
    padding = torch.arange(boxes.shape[1])[None, :] >= counts.clamp_min(0)[:, None]
    bad = padding & (boxes != 0).any(-1)  # NaN != 0 too
    if bool(bad.any()):
        image, row = (int(v) for v in bad.nonzero()[0])
        values = tuple(float(v) for v in boxes[image, row].tolist())
        raise invalid_argument(
            f"{field}.boxes[{image}][{row}]: a padding row (past counts[{image}] = {int(counts[image])}) must be all "
            f"zeros, got {values}; boxes there are not used: is counts[{image}] right?")


def roi_clipped(roi: Roi) -> torch.Tensor:
    """bool ``[B]``: some used box of the item reaches past the ``H×W`` frame (a coordinate below 0,
    ``x_max > W`` or ``y_max > H``); the contract clips it to the frame. All False for masks."""
    if roi.boxes is None:
        return torch.zeros(roi.batch_size, dtype=torch.bool)
    height, width = roi.size
    x_min, y_min, x_max, y_max = roi.boxes.unbind(-1)  # padding rows are zeros here (from_padded_boxes)
    used = torch.arange(roi.boxes.shape[1])[None, :] < roi.counts[:, None]
    past = (x_min < 0) | (y_min < 0) | (x_max > width) | (y_max > height)
    return (past & used).any(-1)


def _roi_from_packed(packed: torch.Tensor, width: int, known: list[bool] | None) -> Roi:
    """``Roi.from_packed_masks(packed, width, known)``, built without its ``masks & known`` pass: a
    broadcast AND over every pixel (3.2 M for 64 images at 224²) costs more than the rest of decoding.
    Unknown images are zeroed on the packed bytes instead (a 32nd of the pixels, and only when some
    image is unknown), which gives the same masks: all False where the ROI is unknown."""
    flags = Roi.known_flags(known, packed.shape[0], packed.device)
    if not bool(flags.all()):
        packed = packed.masked_fill(~flags[:, None, None], 0)
    masks = np.unpackbits(packed.numpy(), axis=-1, count=width).view(np.bool_)
    return Roi(size=(packed.shape[1], width), known=flags, masks=torch.from_numpy(masks))


def fill_roi(message: pb.RoiBatch, roi: Roi) -> None:
    """Write ``roi`` into ``message`` in place (see :func:`fill_tensor`)."""
    message.height, message.width = roi.size
    if roi.masks is not None:
        fill_tensor(message.masks.packed, roi.packed_masks())
        message.masks.known[:] = roi.known.tolist()
    else:
        fill_tensor(message.boxes.boxes, roi.boxes)
        fill_tensor(message.boxes.counts, roi.counts)


# An unset enum on the wire means the library's default (xal_core.scoring.parameters).
_UNCERTAINTY = {
    pb.UNCERTAINTY_UNSPECIFIED: DEFAULT_UNCERTAINTY,
    pb.UNCERTAINTY_ENTROPY: "entropy",
    pb.UNCERTAINTY_MARGIN: "margin",
    pb.UNCERTAINTY_LEAST_CONFIDENCE: "least_confidence",
}
_FUSION = {pb.FUSION_UNSPECIFIED: DEFAULT_FUSION, pb.FUSION_WEIGHTED: "weighted", pb.FUSION_RANK: "rank"}
_MISSING = {
    pb.MISSING_ROI_UNSPECIFIED: DEFAULT_MISSING_ROI,
    pb.MISSING_ROI_UNCERTAINTY_ONLY: "uncertainty_only",
    pb.MISSING_ROI_EXCLUDE: "exclude",
}


def decode_parameters(message: pb.ScoringParameters, field: str = "parameters") -> ScoringConfig:
    """The ``ScoringConfig`` a request asks for; ``INVALID_ARGUMENT`` naming the field otherwise.

    The ranges are ``xal_core.scoring.parameters``' own, checked here first so a bad value is the
    client's error (INVALID_ARGUMENT with the wire's field path), never a server ``ValueError``.
    """
    for value, table, name in (
        (message.uncertainty, _UNCERTAINTY, "uncertainty"),
        (message.fusion, _FUSION, "fusion"),
        (message.missing_roi, _MISSING, "missing_roi"),
    ):
        if value not in table:
            raise invalid_argument(f"{field}.{name}: unknown value {value}")
    weight = message.weight if message.HasField("weight") else DEFAULT_WEIGHT
    threshold = message.threshold if message.HasField("threshold") else DEFAULT_THRESHOLD
    if not weight_in_range(weight):
        raise invalid_argument(f"{field}.weight: λ must be in {WEIGHT_RANGE}, got {weight}")
    if not threshold_in_range(threshold):
        raise invalid_argument(f"{field}.threshold: τ must be in {THRESHOLD_RANGE}, got {threshold}")
    return ScoringConfig(
        uncertainty=_UNCERTAINTY[message.uncertainty],
        weight=weight,
        threshold=threshold,
        fusion=_FUSION[message.fusion],
        missing_roi=_MISSING[message.missing_roi],
    )


def encode_parameters(
    uncertainty: str = DEFAULT_UNCERTAINTY,
    weight: float = DEFAULT_WEIGHT,
    threshold: float = DEFAULT_THRESHOLD,
    fusion: str = DEFAULT_FUSION,
    missing_roi: str = DEFAULT_MISSING_ROI,
) -> pb.ScoringParameters:
    lookup = lambda table, value: next(k for k, v in table.items() if v == value and k != 0)  # noqa: E731
    try:
        return pb.ScoringParameters(
            uncertainty=lookup(_UNCERTAINTY, uncertainty),
            weight=weight,
            threshold=threshold,
            fusion=lookup(_FUSION, fusion),
            missing_roi=lookup(_MISSING, missing_roi),
        )
    except StopIteration:
        raise ValueError(
            f"parameters: unknown uncertainty {uncertainty!r}, fusion {fusion!r} or missing_roi {missing_roi!r}"
        ) from None


# ------------------------------------------------------------------------ ScoreBatch, fast path
# Protobuf wire format (https://protobuf.dev/programming-guides/encoding/): a message is a sequence
# of (key, value) records, key = field_number << 3 | wire_type. The feature maps are field 3 of
# ScoreBatchRequest, a Tensor, whose raw bytes are its field 3.
_FEATURES = 3  # ScoreBatchRequest.features
_DATA = 3  # Tensor.data
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True, eq=False)
class ScoreBatchWire:
    """A received ``ScoreBatchRequest`` whose ``features.data`` stayed out of protobuf.

    ``message`` holds every other field exactly as protobuf parses it (``message.features`` has its
    dtype and shape); ``features_data`` is a read-only view of the feature bytes inside the received
    buffer, or None when the request carried none.
    """

    message: pb.ScoreBatchRequest
    features_data: memoryview | None


class _Malformed(Exception):
    pass


def _varint(buffer: bytes, position: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= end or shift > 63:
            raise _Malformed
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _records(buffer: bytes, position: int, end: int):
    """(field, wire type, record start, value start, value end) for each record in [position, end)."""
    while position < end:
        start = position
        key, position = _varint(buffer, position, end)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise _Malformed
        if wire_type == _VARINT:
            _, position = _varint(buffer, position, end)
            value_start = start
        elif wire_type == _LEN:
            length, value_start = _varint(buffer, position, end)
            position = value_start + length
        elif wire_type in (_I64, _I32):
            value_start = position
            position += 8 if wire_type == _I64 else 4
        else:  # groups: never in this proto; let protobuf judge the message
            raise _Malformed
        if position > end:
            raise _Malformed
        yield field, wire_type, start, value_start, position


def _length_delimited(field: int, payload_length: int) -> bytes:
    return _encode_varint(field << 3 | _LEN) + _encode_varint(payload_length)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_score_batch_request(raw: bytes) -> ScoreBatchWire:
    """The server's deserializer for ``ScoreBatch``: the same message protobuf would parse, with the
    feature bytes kept as a view of ``raw`` instead of being copied into, and then out of, protobuf.

    Every record but ``features.data`` goes through protobuf (with protobuf's rules: a repeated
    embedded message merges, the last ``data`` wins). A buffer this scanner cannot walk is handed to
    protobuf whole, so malformed input fails exactly as it would without the fast path.
    """
    view = memoryview(raw)
    try:
        kept: list[memoryview | bytes] = []
        data: memoryview | None = None
        for field, wire_type, start, value_start, end in _records(raw, 0, len(raw)):
            if field != _FEATURES or wire_type != _LEN:
                kept.append(view[start:end])
                continue
            rest: list[memoryview] = []
            for inner, inner_type, inner_start, inner_value, inner_end in _records(raw, value_start, end):
                if inner == _DATA and inner_type == _LEN:
                    data = view[inner_value:inner_end]
                else:
                    rest.append(view[inner_start:inner_end])
            kept.append(_length_delimited(_FEATURES, sum(len(r) for r in rest)))
            kept.extend(rest)
    except _Malformed:
        return ScoreBatchWire(pb.ScoreBatchRequest.FromString(raw), None)
    return ScoreBatchWire(pb.ScoreBatchRequest.FromString(b"".join(kept)), data)


def encode_score_batch_request(
    logits: torch.Tensor | np.ndarray,
    features: torch.Tensor | np.ndarray,
    cam_weights: torch.Tensor | np.ndarray,
    roi: Roi,
    parameters: pb.ScoringParameters,
    ids: np.ndarray | None = None,
) -> bytes:
    """A serialized ``ScoreBatchRequest``, byte for byte a valid protobuf message, with the feature
    bytes copied once, straight from the array into the result (protobuf would copy them three
    times: into the message, into its serialization, and once more for ``tobytes``)."""
    request = pb.ScoreBatchRequest(parameters=parameters)
    fill_tensor(request.logits, logits)
    fill_tensor(request.cam_weights, cam_weights)
    fill_roi(request.roi, roi)
    if ids is not None:
        request.ids.extend(int(i) for i in np.asarray(ids).reshape(-1))
    wire_dtype, shape, array = _wire_array(features)
    header = pb.Tensor(dtype=wire_dtype, shape=shape).SerializeToString()
    payload = memoryview(array).cast("B") if array.size else b""
    data_record = _length_delimited(_DATA, len(payload))
    return b"".join((
        request.SerializeToString(),
        _length_delimited(_FEATURES, len(header) + len(data_record) + len(payload)),
        header,
        data_record,
        payload,
    ))


# ------------------------------------------------------------------------ ScoreBatch reply, fast path
# The reply's repeated fields are packed (proto3's default): one record per field whose payload is
# the values back to back, fixed-width little-endian for float/double, varints for the integers and
# bools. So each field is written from its array in a handful of NumPy operations, never value by
# value, and the result is the bytes protobuf's SerializeToString would give.
_VARINT_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # 10 groups of 7 bits hold any 64-bit value
_VARINT_LIMITS = np.left_shift(np.uint64(1), _VARINT_SHIFTS[1:])  # 2^7, 2^14, ..., 2^63


def _varints(values: np.ndarray) -> bytes:
    """Protobuf varints of ``values`` (int32/int64: negatives as their 64-bit two's complement, ten
    bytes each, as protobuf writes them; bools: one byte each), concatenated."""
    if values.dtype == np.bool_:
        return values.astype(np.uint8).tobytes()
    unsigned = values.astype(np.int64).view(np.uint64)
    if not unsigned.size:
        return b""
    if int(unsigned.max()) < 0x80:
        return unsigned.astype(np.uint8).tobytes()  # all below 128: one byte each, the value itself
    # bytes per value: 1 + how many of 2^7, 2^14, ... 2^63 it reaches
    used = 1 + np.searchsorted(_VARINT_LIMITS, unsigned, side="right")
    width = int(used.max())
    column = np.arange(width)[None, :]
    groups = (unsigned[:, None] >> _VARINT_SHIFTS[None, :width]) & np.uint64(0x7F)  # low group first
    more = (column < used[:, None] - 1).astype(np.uint64) << np.uint64(7)  # the continuation bit
    return (groups | more).astype(np.uint8)[column < used[:, None]].tobytes()


def _packed(field: int, payload: bytes) -> bytes:
    return _length_delimited(field, len(payload)) + payload if payload else b""


def encode_score_batch_response(
    ids: np.ndarray, score: np.ndarray, uncertainty: np.ndarray, dice: np.ndarray, soft_dice: np.ndarray,
    roi_energy: np.ndarray, pointing_hit: np.ndarray, predicted_class: np.ndarray, invalid: np.ndarray,
    excluded: np.ndarray, roi_clipped: np.ndarray,
) -> bytes:
    """A serialized ``ScoreBatchResponse`` straight from the score arrays (the server's reply to
    ``ScoreBatch``): the same bytes as building the message from the arrays' ``tolist()`` and
    serializing it, without a Python object per value. ``n_invalid`` is counted here."""
    floats = lambda array: np.ascontiguousarray(array, dtype="<f4").tobytes()  # noqa: E731
    invalid = np.asarray(invalid, dtype=np.bool_)
    n_invalid = int(invalid.sum())
    records = [
        _packed(1, _varints(np.asarray(ids, dtype=np.int64))),
        _packed(2, np.ascontiguousarray(score, dtype="<f8").tobytes()),
        _packed(3, floats(uncertainty)),
        _packed(4, floats(dice)),
        _packed(5, floats(soft_dice)),
        _packed(6, floats(roi_energy)),
        _packed(7, floats(pointing_hit)),
        _packed(8, _varints(np.asarray(predicted_class, dtype=np.int64).astype(np.int32))),
        _packed(9, _varints(invalid)),
        _packed(10, _varints(np.asarray(excluded, dtype=np.bool_))),
        _encode_varint(11 << 3 | _VARINT) + _varints(np.array([n_invalid], dtype=np.int64)) if n_invalid else b"",
        _packed(12, _varints(np.asarray(roi_clipped, dtype=np.bool_))),
    ]
    return b"".join(records)
