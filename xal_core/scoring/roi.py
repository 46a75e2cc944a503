"""The radiologist's region of interest for a batch of images, as masks or as boxes.

An ROI can be *unknown* (nobody drew it: misalignment is NaN) or *known to be empty* (the image
has no finding). The two must never be confused, so ``Roi`` carries an explicit ``known`` flag per
image instead of encoding "unknown" as an empty mask.

Box convention (docs/contract.md): ``(x_min, y_min, x_max, y_max)`` in pixel units of the ROI frame;
pixel ``(y, x)`` is inside when ``x_min <= x + 0.5 < x_max`` and ``y_min <= y + 0.5 < y_max``.
A box partly outside the frame is clipped; one entirely outside it is an error.

Bit-packed masks (the on-disk and wire format) use NumPy's ``packbits`` default order: pixel
``(y, x)`` is bit ``7 - x % 8`` (most significant bit first) of byte ``[y, x // 8]``; padding bits
past ``W`` are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Roi"]


@dataclass(frozen=True, eq=False)
class Roi:
    """ROIs of a batch of ``B`` images in an ``H×W`` frame.

    Build it with :meth:`from_masks`, :meth:`from_packed_masks` or :meth:`from_boxes`, not directly.

    Attributes:
        size: the ROI frame ``(H, W)``; it sets the size the CAM is upsampled to.
        known: bool ``[B]``; False where the ROI is unknown.
        masks: bool ``[B, H, W]`` for mask ROIs, else None. Unknown items are all False.
        boxes: float64 ``[B, M, 4]`` padded boxes for box ROIs, else None.
        counts: int64 ``[B]`` boxes per image for box ROIs (``-1`` = unknown), else None.
    """

    size: tuple[int, int]
    known: torch.Tensor
    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    counts: torch.Tensor | None = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_masks(cls, masks: torch.Tensor, known: torch.Tensor | Sequence[bool] | None = None) -> Roi:
        """ROIs from dense masks.

        Args:
            masks: bool (or 0/1 integer) ``[B, H, W]``.
            known: optional bool ``[B]``; False marks an ROI as unknown (its mask is ignored).
        """
        if not isinstance(masks, torch.Tensor):
            raise ValueError(f"masks: expected a torch.Tensor of shape [B, H, W], got {type(masks).__name__}")
        if masks.dim() != 3:
            raise ValueError(f"masks: expected shape [B, H, W], got {tuple(masks.shape)}")
        if masks.dtype != torch.bool:
            if masks.dtype.is_floating_point or masks.dtype.is_complex:
                raise ValueError(f"masks: expected dtype bool (or 0/1 integers), got {masks.dtype}")
            bad = ((masks != 0) & (masks != 1)).flatten(1).any(1).nonzero()
            if bad.numel():
                raise ValueError(f"masks[{int(bad[0])}]: integer mask holds values other than 0 and 1")
            masks = masks != 0
        batch, height, width = masks.shape
        if height < 1 or width < 1:
            raise ValueError(f"masks: the ROI frame must be at least 1×1, got {height}×{width}")
        known_t = cls.known_flags(known, batch, masks.device)
        masks = masks & known_t[:, None, None]
        return cls(size=(height, width), known=known_t, masks=masks)

    @classmethod
    def from_packed_masks(
        cls,
        packed: torch.Tensor,
        width: int,
        known: torch.Tensor | Sequence[bool] | None = None,
    ) -> Roi:
        """ROIs from bit-packed masks ``uint8 [B, H, ceil(W / 8)]`` (bit order in the module doc)."""
        if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 3:
            got = f"{packed.dtype} {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
            raise ValueError(f"packed: expected uint8 [B, H, ceil(W/8)], got {got}")
        if width < 1 or packed.shape[2] != math.ceil(width / 8):
            raise ValueError(f"packed: last dim {packed.shape[2]} does not hold width {width} (needs {math.ceil(max(width, 1) / 8)})")
        if packed.device.type == "cpu":  # NumPy's unpackbits is several times faster than the torch ops
            masks = torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=width).view(np.bool_))
        else:
            shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
            masks = ((packed[..., None] >> shifts) & 1).flatten(2)[..., :width].bool()
        return cls.from_masks(masks, known)

    @classmethod
    def from_boxes(
        cls,
        boxes: Sequence[torch.Tensor | None],
        size: tuple[int, int],
    ) -> Roi:
        """ROIs as unions of axis-aligned boxes.

        Args:
            boxes: one entry per image: a float tensor ``[M_i, 4]`` of ``(x_min, y_min, x_max, y_max)``
                in pixels, an empty ``[0, 4]`` tensor for an ROI known to be empty, or ``None`` for
                an unknown ROI.
            size: the ROI frame ``(H, W)``.
        """
        height, width = cls._frame(size)
        if isinstance(boxes, torch.Tensor):
            raise ValueError("boxes: expected a list of B tensors [M_i, 4] (None = unknown), got a single tensor")
        items = list(boxes)
        device = next((b.device for b in items if isinstance(b, torch.Tensor)), torch.device("cpu"))
        for index, item in enumerate(items):
            if item is not None:
                cls._check_box_shape(item, index)
        most = max((int(b.shape[0]) for b in items if b is not None), default=0)
        padded = torch.zeros(len(items), max(most, 1), 4, dtype=torch.float64, device=device)
        counts = torch.full((len(items),), -1, dtype=torch.int64, device=device)
        for index, item in enumerate(items):
            if item is not None:
                padded[index, : item.shape[0]] = item.to(device=device, dtype=torch.float64)
                counts[index] = item.shape[0]
        return cls.from_padded_boxes(padded, counts, size=(height, width))

    @classmethod
    def from_padded_boxes(cls, boxes: torch.Tensor, counts: torch.Tensor, size: tuple[int, int]) -> Roi:
        """ROIs from the padded wire layout: ``boxes [B, M, 4]`` plus ``counts [B]`` (``-1`` = unknown).

        Vectorised: this is the path pool stores and the service use for millions of items.
        """
        height, width = cls._frame(size)
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 3 or boxes.shape[2] != 4:
            got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(f"boxes: expected [B, M, 4], got {got}")
        if boxes.dtype.is_complex or boxes.dtype == torch.bool:
            raise ValueError(f"boxes: expected a real dtype, got {boxes.dtype}")
        if not isinstance(counts, torch.Tensor) or counts.shape != boxes.shape[:1] or counts.dtype.is_floating_point:
            got = f"{counts.dtype} {tuple(counts.shape)}" if isinstance(counts, torch.Tensor) else type(counts).__name__
            raise ValueError(f"counts: expected integers of shape [{boxes.shape[0]}], got {got}")
        bad = (counts < -1) | (counts > boxes.shape[1])
        if bad.any():
            index = int(bad.nonzero()[0])
            raise ValueError(f"counts[{index}]: {int(counts[index])} is not -1 (unknown) or 0..{boxes.shape[1]}")
        counts = counts.to(device=boxes.device, dtype=torch.int64)
        padded = boxes.to(torch.float64)
        if padded.shape[1] == 0:
            padded = torch.zeros(boxes.shape[0], 1, 4, dtype=torch.float64, device=boxes.device)
        used = torch.arange(padded.shape[1], device=padded.device)[None, :] < counts[:, None]
        padded = torch.where(used[..., None], padded, 0.0)
        cls._check_box_values(padded, counts, height, width)
        return cls(size=(height, width), known=counts >= 0, boxes=padded, counts=counts)

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return int(self.known.shape[0])

    @property
    def kind(self) -> str:
        """``"mask"`` or ``"boxes"``."""
        return "mask" if self.masks is not None else "boxes"

    @property
    def device(self) -> torch.device:
        return self.known.device

    def to(self, device: torch.device | str) -> Roi:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Roi(self.size, move(self.known), move(self.masks), move(self.boxes), move(self.counts))

    def __getitem__(self, items: slice) -> Roi:
        """A sub-batch (used to score a large batch chunk by chunk)."""
        if not isinstance(items, slice):
            raise TypeError("Roi supports slicing only, e.g. roi[0:64]")
        take = lambda t: None if t is None else t[items]  # noqa: E731
        return Roi(self.size, take(self.known), take(self.masks), take(self.boxes), take(self.counts))

    def box_pixel_ranges(self) -> torch.Tensor:
        """Integer pixel ranges ``[B, M, 4]`` = ``(x_lo, y_lo, x_hi, y_hi)``, half-open, clipped.

        Pixel ``x`` is inside when ``x_lo <= x < x_hi``; from ``x_min <= x + 0.5 < x_max`` this is
        ``x_lo = ceil(x_min - 0.5)`` and ``x_hi = ceil(x_max - 0.5)``. Padding rows (past
        ``counts``) come back as empty ranges ``(0, 0, 0, 0)``.
        """
        if self.boxes is None:
            raise ValueError("box_pixel_ranges: this ROI holds masks, not boxes")
        height, width = self.size
        ranges = torch.ceil(self.boxes - 0.5).to(torch.int64)
        limits = torch.tensor([width, height, width, height], device=ranges.device)
        ranges = ranges.clamp_min(0).minimum(limits)
        slots = torch.arange(self.boxes.shape[1], device=ranges.device)
        used = slots[None, :] < self.counts[:, None]
        return ranges * used[..., None]

    def to_masks(self) -> torch.Tensor:
        """Dense bool masks ``[B, H, W]`` (unknown ROIs are all False)."""
        if self.masks is not None:
            return self.masks
        height, width = self.size
        ranges = self.box_pixel_ranges()
        ys = torch.arange(height, device=ranges.device)
        xs = torch.arange(width, device=ranges.device)
        rows = (ys[None, None, :] >= ranges[..., 1, None]) & (ys[None, None, :] < ranges[..., 3, None])
        cols = (xs[None, None, :] >= ranges[..., 0, None]) & (xs[None, None, :] < ranges[..., 2, None])
        return (rows[..., :, None] & cols[..., None, :]).any(dim=1)

    def packed_masks(self) -> torch.Tensor:
        """Bit-packed masks ``uint8 [B, H, ceil(W / 8)]`` (bit order in the module doc)."""
        masks = self.to_masks()
        if masks.device.type == "cpu":
            return torch.from_numpy(np.packbits(masks.numpy(), axis=-1))
        width = masks.shape[2]
        padded_width = math.ceil(width / 8) * 8
        padded = torch.zeros(*masks.shape[:2], padded_width, dtype=torch.uint8, device=masks.device)
        padded[..., :width] = masks.to(torch.uint8)
        weights = (1 << torch.arange(7, -1, -1, device=masks.device)).to(torch.uint8)
        groups = padded.reshape(masks.shape[0], masks.shape[1], padded_width // 8, 8)
        return (groups * weights).sum(-1, dtype=torch.int64).to(torch.uint8)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _frame(size: tuple[int, int]) -> tuple[int, int]:
        if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"size: expected (H, W) with positive integers, got {size!r}")
        return int(size[0]), int(size[1])

    @staticmethod
    def known_flags(known: torch.Tensor | Sequence[bool] | None, batch: int, device: torch.device) -> torch.Tensor:
        """``known`` as a bool ``[batch]`` tensor (all True when None); ``ValueError`` on a wrong shape."""
        if known is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        flags = torch.as_tensor(known, device=device)
        if flags.shape != (batch,):
            raise ValueError(f"known: expected shape [{batch}], got {tuple(flags.shape)}")
        return flags.bool()

    @staticmethod
    def _check_box_shape(item: object, index: int) -> None:
        if not isinstance(item, torch.Tensor):
            raise ValueError(f"boxes[{index}]: expected a tensor [M, 4] or None, got {type(item).__name__}")
        if item.dim() != 2 or item.shape[1] != 4:
            raise ValueError(f"boxes[{index}]: expected shape [M, 4], got {tuple(item.shape)}")
        if not item.dtype.is_floating_point and item.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8):
            raise ValueError(f"boxes[{index}]: expected a real dtype, got {item.dtype}")

    @staticmethod
    def _check_box_values(padded: torch.Tensor, counts: torch.Tensor, height: int, width: int) -> None:
        """Vectorised value checks; the message names the first offending ``boxes[i][m]``."""
        used = torch.arange(padded.shape[1], device=padded.device)[None, :] < counts[:, None]
        x_min, y_min, x_max, y_max = padded.unbind(-1)
        problems = [
            (~torch.isfinite(padded).all(-1), "coordinates must be finite"),
            (x_max < x_min, "x_max < x_min"),
            (y_max < y_min, "y_max < y_min"),
            ((x_max <= 0) | (y_max <= 0) | (x_min >= width) | (y_min >= height),
             f"the box lies entirely outside the {height}×{width} frame"),
        ]
        for bad, problem in problems:
            hits = (bad & used).nonzero()
            if hits.numel():
                index, row = (int(v) for v in hits[0])
                box = tuple(padded[index, row].tolist())
                raise ValueError(f"boxes[{index}][{row}]: {problem}: (x_min, y_min, x_max, y_max) = {box}")
