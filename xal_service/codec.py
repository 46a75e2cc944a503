"""Wire messages ↔ tensors, with the checks that turn a malformed request into INVALID_ARGUMENT.

Every problem names the field it was found in (``features.shape``, ``roi.boxes.counts[3]``...), so
that a client in any language can tell what to fix. Nothing here trusts a byte count or a shape.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from xal_core.acquisition import ScoringConfig
from xal_core.scoring import Roi

from .errors import invalid_argument
from .wire import scoring_pb2 as pb

__all__ = [
    "decode_tensor", "encode_tensor", "fill_tensor", "decode_roi", "encode_roi", "fill_roi",
    "decode_strategy", "encode_strategy",
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


def decode_tensor(message: pb.Tensor, field: str, *, dtypes: tuple[int, ...], ndim: int) -> torch.Tensor:
    """A CPU tensor from a ``Tensor`` message; INVALID_ARGUMENT naming ``field`` when it is malformed."""
    if not message.ByteSize():
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
    data = message.data  # protobuf hands out a fresh bytes object on every access: read it once
    if len(data) != expected:
        raise invalid_argument(f"{field}.data: {len(data)} bytes, shape {shape} of {pb.DType.Name(message.dtype)} needs {expected}")
    if numpy_dtype is None:  # bfloat16
        raw = np.frombuffer(data, dtype="<i2").astype(np.int16)  # the one copy: writable, native order
        return torch.from_numpy(raw).view(torch.bfloat16).reshape(shape)
    array = np.frombuffer(data, dtype=numpy_dtype).astype(numpy_dtype.newbyteorder("="))  # the one copy
    return torch.from_numpy(array).reshape(shape)


def encode_tensor(tensor: torch.Tensor | np.ndarray) -> pb.Tensor:
    """A ``Tensor`` message (raw little-endian bytes) from a tensor or array."""
    message = pb.Tensor()
    fill_tensor(message, tensor)
    return message


def fill_tensor(message: pb.Tensor, tensor: torch.Tensor | np.ndarray) -> None:
    """Write ``tensor`` into ``message`` in place: building a request field by field spares the
    copy that passing a finished sub-message to a constructor makes (megabytes for features)."""
    tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    if tensor.dtype not in _TORCH_TO_WIRE:
        raise ValueError(f"tensor dtype {tensor.dtype} has no wire dtype")
    array = tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    message.dtype = _TORCH_TO_WIRE[tensor.dtype]
    message.shape[:] = list(tensor.shape)
    message.data = array.tobytes()


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
            return Roi.from_packed_masks(packed, message.width, known)
        if kind == "boxes":
            boxes = decode_tensor(message.boxes.boxes, f"{field}.boxes.boxes", dtypes=(pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT64), ndim=3)
            counts = decode_tensor(message.boxes.counts, f"{field}.boxes.counts", dtypes=INTEGERS, ndim=1)
            if boxes.shape[0] != batch or boxes.shape[2] != 4:
                raise invalid_argument(f"{field}.boxes.boxes.shape: expected [{batch}, M, 4], got {list(boxes.shape)}")
            return Roi.from_padded_boxes(boxes, counts, size=(message.height, message.width))
    except ValueError as error:  # Roi's own checks name the item: boxes[3][0]: x_max < x_min ...
        raise invalid_argument(f"{field}: {error}") from None
    raise invalid_argument(f"{field}: set either masks or boxes")


def encode_roi(roi: Roi) -> pb.RoiBatch:
    message = pb.RoiBatch()
    fill_roi(message, roi)
    return message


def fill_roi(message: pb.RoiBatch, roi: Roi) -> None:
    """Write ``roi`` into ``message`` in place (see :func:`fill_tensor`)."""
    message.height, message.width = roi.size
    if roi.masks is not None:
        fill_tensor(message.masks.packed, roi.packed_masks())
        message.masks.known[:] = roi.known.tolist()
    else:
        fill_tensor(message.boxes.boxes, roi.boxes)
        fill_tensor(message.boxes.counts, roi.counts)


_UNCERTAINTY = {
    pb.UNCERTAINTY_UNSPECIFIED: "entropy",
    pb.UNCERTAINTY_ENTROPY: "entropy",
    pb.UNCERTAINTY_MARGIN: "margin",
    pb.UNCERTAINTY_LEAST_CONFIDENCE: "least_confidence",
}
_FUSION = {pb.FUSION_UNSPECIFIED: "weighted", pb.FUSION_WEIGHTED: "weighted", pb.FUSION_RANK: "rank"}
_MISSING = {
    pb.MISSING_ROI_UNSPECIFIED: "uncertainty_only",
    pb.MISSING_ROI_UNCERTAINTY_ONLY: "uncertainty_only",
    pb.MISSING_ROI_EXCLUDE: "exclude",
}


def decode_strategy(message: pb.Strategy, field: str = "strategy") -> ScoringConfig:
    for value, table, name in (
        (message.uncertainty, _UNCERTAINTY, "uncertainty"),
        (message.fusion, _FUSION, "fusion"),
        (message.missing_roi, _MISSING, "missing_roi"),
    ):
        if value not in table:
            raise invalid_argument(f"{field}.{name}: unknown value {value}")
    weight = message.weight if message.HasField("weight") else 0.5
    threshold = message.threshold if message.HasField("threshold") else 0.5
    if not 0.0 <= weight <= 1.0:
        raise invalid_argument(f"{field}.weight: λ must be in [0, 1], got {weight}")
    if not 0.0 < threshold <= 1.0:
        raise invalid_argument(f"{field}.threshold: τ must be in (0, 1], got {threshold}")
    return ScoringConfig(
        uncertainty=_UNCERTAINTY[message.uncertainty],
        weight=weight,
        threshold=threshold,
        fusion=_FUSION[message.fusion],
        missing_roi=_MISSING[message.missing_roi],
    )


def encode_strategy(
    uncertainty: str = "entropy",
    weight: float = 0.5,
    threshold: float = 0.5,
    fusion: str = "weighted",
    missing_roi: str = "uncertainty_only",
) -> pb.Strategy:
    lookup = lambda table, value: next(k for k, v in table.items() if v == value and k != 0)  # noqa: E731
    try:
        return pb.Strategy(
            uncertainty=lookup(_UNCERTAINTY, uncertainty),
            weight=weight,
            threshold=threshold,
            fusion=lookup(_FUSION, fusion),
            missing_roi=lookup(_MISSING, missing_roi),
        )
    except StopIteration:
        raise ValueError(
            f"strategy: unknown uncertainty {uncertainty!r}, fusion {fusion!r} or missing_roi {missing_roi!r}"
        ) from None
