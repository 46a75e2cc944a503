"""What every dataset adapter yields: one ``Item`` per 2D image, in the output frame.

Adapters read very different sources (NIfTI volumes, DICOM + CSV, PNG folders) but the pool store
and the trainer only ever see this one shape, so the resampling to the model's resolution and the
matching rescaling of the ROI live here, once.

Errors: an adapter that cannot build one item raises :class:`ItemError` naming the file and the
reason; ``xal ingest`` turns it into a line of the ingest report and goes on. Problems found while
*indexing* (a CSV row with an unknown id, an unparseable box) are collected in ``dataset.skipped``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Item", "ItemError", "Skip", "Dataset", "IndexedDataset", "resize_image", "resize_mask", "scale_boxes", "check_boxes"]


class ItemError(Exception):
    """One item cannot be built; ``path`` and ``reason`` go to the ingest report."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Skip:
    """An item left out of a dataset, with why (one line of the ingest report)."""

    path: str
    reason: str


@dataclass(frozen=True, eq=False)
class Item:
    """One image ready for the pool.

    Attributes:
        id: stable string id (case and slice for volumes, image id for X-rays).
        image: float32 ``[C, H, W]`` in the output frame, values roughly in ``[0, 1]``.
        roi: bool ``[H, W]`` mask or float ``[M, 4]`` boxes ``(x_min, y_min, x_max, y_max)`` in output
            pixels (``[0, 4]`` = known empty), or ``None`` where nobody drew it (unknown).
        label: class index into ``dataset.classes``.
        meta: source details (path, original size, split, ...), JSON-serialisable.
        prior: bool ``[H, W]`` anatomy mask that needs no expert (the lung fields of a chest X-ray,
            the brain of an MRI slice), or ``None`` where the source has none. With the pool's ROI
            source ``anatomy`` the scorer reads this instead of ``roi`` (docs/data.md, "ROI sources").
    """

    id: str
    image: torch.Tensor
    roi: torch.Tensor | None
    label: int
    meta: dict[str, Any] = field(default_factory=dict)
    prior: torch.Tensor | None = None


class Dataset(Protocol):
    """What ``open_dataset`` returns: sized, indexable, with class names and skipped items."""

    classes: tuple[str, ...]
    size: tuple[int, int]
    skipped: list[Skip]
    roi_format: str  # "mask" or "boxes"
    channels: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Item: ...

    def __iter__(self) -> Iterator[Item]: ...

    def describe(self) -> dict[str, Any]: ...


def resize_image(image: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[H0, W0]`` or ``[C, H0, W0]`` → float32 ``[C, H, W]``, bilinear with antialiasing.

    Antialiasing matters: X-rays are ~3000 px and the model sees 224 px or less; plain bilinear
    would alias fine texture into the pool.
    """
    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32)) if not isinstance(image, torch.Tensor) else image
    tensor = tensor.to(torch.float32)
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tuple(tensor.shape[1:]) == tuple(size):
        return tensor.contiguous()
    out = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].contiguous()


def resize_mask(mask: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bool ``[H0, W0]`` → bool ``[H, W]`` by pixel-centre sampling (nearest neighbour).

    Nearest keeps a mask binary; a lesion smaller than one output pixel may vanish, which the model
    could not see at that resolution either.
    """
    tensor = torch.as_tensor(np.asarray(mask)).to(torch.uint8)
    if tuple(tensor.shape) == tuple(size):
        return tensor.bool()
    out = F.interpolate(tensor[None, None].float(), size=size, mode="nearest-exact")
    return out[0, 0] > 0.5


def scale_boxes(boxes: np.ndarray, source: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Boxes in source pixels → float32 ``[M, 4]`` in output pixels (image resized to ``size``)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sy, sx = size[0] / source[0], size[1] / source[1]
    return torch.as_tensor(boxes * np.array([sx, sy, sx, sy]), dtype=torch.float32)


def check_boxes(boxes: np.ndarray, shape: tuple[int, int], path: str) -> np.ndarray:
    """Reject boxes that are not finite, inverted, or outside the image (raises :class:`ItemError`).

    A box may touch the border; one that extends past it by more than a pixel means the annotation
    does not belong to this image (wrong id or wrong resolution), so the item is skipped.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = shape
    for box in boxes:
        x0, y0, x1, y1 = box
        if not np.isfinite(box).all():
            raise ItemError(path, f"box {box.tolist()} has non-finite coordinates")
        if x1 < x0 or y1 < y0:
            raise ItemError(path, f"box {box.tolist()} is inverted (max < min)")
        if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
            raise ItemError(path, f"box {box.tolist()} lies outside the {height}×{width} image")
    return np.clip(boxes, 0, [width, height, width, height])


class IndexedDataset:
    """Shared plumbing of the adapters: length, iteration, description for the manifest.

    Subclasses fill ``self.records`` at open time (cheap: listings and CSVs, no pixel data) and
    implement ``load(record) -> Item``; pixels are read only when an item is asked for.
    """

    kind = "base"
    channels = 1

    def __init__(self, size: tuple[int, int], classes: tuple[str, ...], roi_format: str, options: dict[str, Any]):
        if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"size: expected (H, W) with positive integers, got {size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.classes = tuple(classes)
        self.roi_format = roi_format
        self.options = dict(options)
        self.records: list[Any] = []
        self.skipped: list[Skip] = []
        self._by_id: dict[str, Any] | None = None  # source id → record, built on the first source_image

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Item:
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        return self.load(self.records[index])

    def __iter__(self) -> Iterator[Item]:
        for index in range(len(self)):
            yield self[index]

    def load(self, record: Any) -> Item:
        raise NotImplementedError

    # ------------------------------------------------------------------ back to the source
    def record_id(self, record: Any) -> str:
        """The item id ``load(record)`` gives (what the pool store keeps as the source id)."""
        raise NotImplementedError

    def native_pixels(self, record: Any) -> np.ndarray:
        """The record's image as its file holds it, before resizing: ``[H0, W0]`` or ``[C, H0, W0]``."""
        raise NotImplementedError

    def source_image(self, source_id: str) -> np.ndarray | None:
        """The item's image at its source's own resolution, for a person to look at (the browser
        annotator); ``None`` when this adapter cannot go back to a file (generated data) or the id
        is not one of its records. Reading is guarded like ingest (paths, pixel counts)."""
        if type(self).native_pixels is IndexedDataset.native_pixels:
            return None
        record = self.record_for(source_id)
        return None if record is None else np.asarray(self.native_pixels(record), dtype=np.float32)

    def record_for(self, source_id: str) -> Any | None:
        """The record whose item id is ``source_id`` (``None`` if none is): the annotator's viewer
        reads a DICOM record's own file through it, for its modality values and windows. Generated
        data, whose records have no source id, have none."""
        if type(self).record_id is IndexedDataset.record_id:
            return None
        if self._by_id is None:
            self._by_id = {self.record_id(record): record for record in self.records}
        return self._by_id.get(source_id)

    def describe(self) -> dict[str, Any]:
        """Everything needed to reproduce the preprocessing (written into the pool manifest)."""
        return {"kind": self.kind, "size": list(self.size), "classes": list(self.classes),
                "roi_format": self.roi_format, "options": {k: _plain(v) for k, v in self.options.items()}}


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)
