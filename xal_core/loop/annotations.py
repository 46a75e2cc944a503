"""What an annotator gives back for one item: a label and, when drawn, an ROI.

An expert's answer is the most expensive datum in the system, so it is a small immutable value
with a lossless text/bytes form that the ledger stores and compares: two answers are the same
answer exactly when their label and ROI are equal (annotator and time are bookkeeping).

ROIs keep the pool store's distinction (docs/data.md): ``None`` = nobody drew it (unknown),
``BoxRoi(())`` = drawn and known to be empty ("no finding"), else boxes or a bit-packed mask.
Box convention (docs/contract.md): ``(x_min, y_min, x_max, y_max)`` in pixels of the ROI frame, pixel
centres decide membership. Masks are packed in NumPy ``packbits`` order, row by row (``Roi``'s).

This module imports neither torch nor NumPy at load time, so a process that only reads or writes
the ledger starts fast; the tensor conversions import them when called.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from xal_core.scoring import Roi

__all__ = ["Annotation", "BoxRoi", "MaskRoi", "AnnotatedRoi", "utc_now", "roi_batch", "roi_drawn", "roi_to_json"]


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string with a ``+00:00`` offset (second resolution)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class BoxRoi:
    """An ROI as a union of axis-aligned boxes; ``boxes=()`` = known empty (no finding).

    Attributes:
        boxes: ``((x_min, y_min, x_max, y_max), ...)`` as floats, in pixels of the ROI frame.
    """

    boxes: tuple[tuple[float, float, float, float], ...] = ()

    def __post_init__(self) -> None:
        boxes = []
        for number, box in enumerate(self.boxes):
            values = tuple(box)
            if len(values) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise ValueError(f"box {number}: expected 4 numbers (x_min, y_min, x_max, y_max), got {box!r}")
            x_min, y_min, x_max, y_max = (float(v) for v in values)
            if not all(math.isfinite(v) for v in (x_min, y_min, x_max, y_max)):
                raise ValueError(f"box {number}: coordinates must be finite, got {box!r}")
            if x_max < x_min or y_max < y_min:
                raise ValueError(f"box {number}: expected x_min <= x_max and y_min <= y_max, got {box!r}")
            boxes.append((x_min, y_min, x_max, y_max))
        object.__setattr__(self, "boxes", tuple(boxes))

    @classmethod
    def from_json(cls, text: str) -> BoxRoi:
        """Parse ``[[x0, y0, x1, y1], ...]`` (``[]`` = known empty); ``ValueError`` says what is wrong."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON ({error.msg} at character {error.pos})") from None
        if not isinstance(value, list) or not all(isinstance(box, list) for box in value):
            raise ValueError("expected a JSON list of boxes [[x_min, y_min, x_max, y_max], ...]")
        return cls(tuple(tuple(box) for box in value))  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps([list(box) for box in self.boxes], separators=(",", ":"))

    def to_mask(self, size: tuple[int, int]) -> torch.Tensor:
        """Bool ``[H, W]`` by the pixel-centre rule; ``ValueError`` for a box entirely outside the frame."""
        import torch

        from xal_core.scoring import Roi

        boxes = torch.tensor(self.boxes, dtype=torch.float64).reshape(-1, 4)
        return Roi.from_boxes([boxes], size=size).to_masks()[0]


@dataclass(frozen=True)
class MaskRoi:
    """An ROI as a bit-packed mask ``H × ceil(W / 8)`` bytes (NumPy ``packbits`` order, row major).

    Build it with :meth:`from_mask`. Padding bits past ``width`` are zero (``from_mask`` ensures it),
    so equal masks have equal bytes.
    """

    packed: bytes
    height: int
    width: int

    def __post_init__(self) -> None:
        if not isinstance(self.packed, bytes):
            object.__setattr__(self, "packed", bytes(self.packed))
        if self.height < 1 or self.width < 1:
            raise ValueError(f"mask ROI: the frame must be at least 1×1, got {self.height}×{self.width}")
        expected = self.height * math.ceil(self.width / 8)
        if len(self.packed) != expected:
            raise ValueError(f"mask ROI: {len(self.packed)} bytes do not hold a {self.height}×{self.width} mask "
                             f"({expected} bytes packed)")

    @classmethod
    def from_mask(cls, mask: torch.Tensor | np.ndarray) -> MaskRoi:
        """From a bool (or 0/1) ``[H, W]`` mask."""
        import numpy as np

        array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        if array.ndim != 2:
            raise ValueError(f"mask ROI: expected shape [H, W], got {array.shape}")
        if array.dtype != np.bool_:
            if not np.isin(array, (0, 1)).all():
                raise ValueError("mask ROI: values other than 0 and 1")
            array = array.astype(bool)
        return cls(np.packbits(array, axis=-1).tobytes(), int(array.shape[0]), int(array.shape[1]))

    def to_mask(self) -> torch.Tensor:
        """Bool ``[H, W]``."""
        import numpy as np
        import torch

        packed = np.frombuffer(self.packed, dtype=np.uint8).reshape(self.height, -1)
        return torch.from_numpy(np.unpackbits(packed, axis=-1, count=self.width).view(np.bool_).copy())


AnnotatedRoi = BoxRoi | MaskRoi | None


def roi_drawn(roi: AnnotatedRoi) -> bool:
    """Whether an answer's ROI cost the expert a drawing: at least one box, or a mask with a pixel.
    A "no finding" answer (a known-empty ROI) and no ROI at all cost none (the ROI cost of a run,
    counted beside its labels)."""
    if roi is None:
        return False
    if isinstance(roi, BoxRoi):
        return len(roi.boxes) > 0
    return any(roi.packed)


@dataclass(frozen=True)
class Annotation:
    """One item's answer from an oracle.

    Attributes:
        item_id: the pool's integer id (row number, ``index``).
        label: class index; ``label_name`` its class name (both kept: a report can be read without
            the pool, and a mismatch between them is visible).
        roi: ``BoxRoi``, ``MaskRoi``, or ``None`` = not drawn (unknown).
        annotator: who answered (``"simulated"``, a person's name or initials, ``"file:sheet.csv"``).
        time: when, ISO 8601 with a UTC offset (``utc_now()`` by default).
    """

    item_id: int
    label: int
    label_name: str
    roi: AnnotatedRoi
    annotator: str
    time: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        for name in ("item_id", "label"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                if hasattr(value, "__index__") and not isinstance(value, bool) and int(value) >= 0:
                    object.__setattr__(self, name, int(value))  # NumPy / torch integer scalars
                    continue
                raise ValueError(f"annotation: {name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.label_name, str) or not self.label_name:
            raise ValueError(f"annotation of item {self.item_id}: label_name must be a non-empty string")
        if not isinstance(self.annotator, str) or not self.annotator:
            raise ValueError(f"annotation of item {self.item_id}: annotator must be a non-empty string")
        if self.roi is not None and not isinstance(self.roi, BoxRoi | MaskRoi):
            raise ValueError(f"annotation of item {self.item_id}: roi must be BoxRoi, MaskRoi or None, "
                             f"got {type(self.roi).__name__}")
        try:
            moment = datetime.fromisoformat(self.time)
        except (TypeError, ValueError):
            raise ValueError(f"annotation of item {self.item_id}: time {self.time!r} is not ISO 8601") from None
        if moment.utcoffset() is None or moment.utcoffset().total_seconds() != 0:
            raise ValueError(f"annotation of item {self.item_id}: time {self.time!r} must be UTC (+00:00)")

    def same_answer(self, other: Annotation) -> bool:
        """Same item, label and ROI (who answered and when do not count)."""
        return (self.item_id, self.label, self.roi) == (other.item_id, other.label, other.roi)


def roi_to_json(roi: AnnotatedRoi) -> dict[str, Any] | None:
    """A JSON-able description (masks as a SHA-256 of their packed bytes), used by exports."""
    import hashlib

    if roi is None:
        return None
    if isinstance(roi, BoxRoi):
        return {"kind": "boxes", "boxes": [list(box) for box in roi.boxes]}
    return {"kind": "mask", "height": roi.height, "width": roi.width,
            "sha256": hashlib.sha256(roi.packed).hexdigest()}


def roi_batch(rois: Sequence[AnnotatedRoi], size: tuple[int, int]) -> Roi:
    """The answers' ROIs as one mask :class:`~xal_core.scoring.Roi` (``None`` → unknown).

    A mask whose frame is not ``size`` is an error (resample before storing, as ingest does).
    """
    import torch

    from xal_core.scoring import Roi

    height, width = size
    masks = torch.zeros(len(rois), height, width, dtype=torch.bool)
    known = []
    for row, roi in enumerate(rois):
        known.append(roi is not None)
        if isinstance(roi, BoxRoi):
            masks[row] = roi.to_mask(size)
        elif isinstance(roi, MaskRoi):
            if (roi.height, roi.width) != (height, width):
                raise ValueError(f"rois[{row}]: mask frame {roi.height}×{roi.width}, expected {height}×{width}")
            masks[row] = roi.to_mask()
    return Roi.from_masks(masks, known=known)
