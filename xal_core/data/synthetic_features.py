"""A synthetic pool of model outputs (logits, feature maps, CAM weights) with ROIs.

It stands in for "an exported model run over a pool of images" so that scoring, ranking and the
service can be exercised and benchmarked without a dataset or a trained model. Every item is
generated from ``(seed, item id)`` alone, so any chunk can be regenerated independently and a pool
of any size streams in constant memory.

Each item belongs to one of four cases, mirroring what matters to the acquisition function:

* ``aligned`` — the CAM's blob sits on the ROI (the model looks where the radiologist looked);
* ``shortcut`` — the blob sits away from the ROI (a spurious cue, e.g. a marker or the border);
* ``no_finding`` — the ROI is known to be empty (an image without a lesion);
* ``unknown_roi`` — nobody drew the ROI.

Logits are independent of the case: a model can be confident and wrong-footed at the same time,
which is exactly what uncertainty alone cannot see.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from xal_core.scoring import Roi

__all__ = ["CASES", "FeatureChunk", "SyntheticFeaturePool"]

CASES: tuple[str, ...] = ("aligned", "shortcut", "no_finding", "unknown_roi")
_CASE_SHARE = torch.tensor([0.55, 0.25, 0.1, 0.1])
BLOCK = 256


@dataclass(frozen=True, eq=False)
class FeatureChunk:
    """One chunk of the pool: everything the scoring function consumes, plus the ground truth case."""

    ids: torch.Tensor  # int64 [b]
    logits: torch.Tensor  # float32 [b, K]
    features: torch.Tensor  # [b, C, h, w]
    cam_weights: torch.Tensor  # float32 [b, C]
    roi: Roi
    case: torch.Tensor  # int64 [b], index into CASES


@dataclass(frozen=True)
class SyntheticFeaturePool:
    """``size`` items of a classifier with ``classes`` outputs and a ``channels×grid×grid`` target layer.

    Args:
        size: number of items.
        channels, grid: the target layer's ``C`` and ``h = w``.
        frame: the ROI frame ``H = W`` (the image resolution the CAM is compared at).
        classes: ``K``.
        seed: the pool's identity; equal seeds give equal pools.
        corrupt: how many items carry NaN features (a broken image in a real pool).
        dtype: dtype of the feature maps (float16 mimics a half-precision model).
    """

    size: int = 10_000
    channels: int = 64
    grid: int = 7
    frame: int = 224
    classes: int = 3
    seed: int = 0
    corrupt: int = 3
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for name in ("size", "channels", "grid", "frame", "classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.classes < 2:
            raise ValueError(f"classes: must be >= 2, got {self.classes}")
        if not 0 <= self.corrupt <= self.size:
            raise ValueError(f"corrupt: must be in [0, size], got {self.corrupt}")

    def corrupt_ids(self) -> torch.Tensor:
        """The ids of the items whose features are NaN (spread over the pool, deterministic)."""
        generator = torch.Generator().manual_seed(self.seed * 7919 + 17)
        return torch.randperm(self.size, generator=generator)[: self.corrupt].sort().values

    def chunks(self, chunk_size: int = 512) -> Iterator[FeatureChunk]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
        for start in range(0, self.size, chunk_size):
            yield self.chunk(start, min(start + chunk_size, self.size))

    def chunk(self, start: int, stop: int) -> FeatureChunk:
        """Items ``[start, stop)``; the same items always get the same tensors, whatever the chunking."""
        if not 0 <= start < stop <= self.size:
            raise ValueError(f"chunk: [{start}, {stop}) is not inside the pool of {self.size}")
        first, last = start // BLOCK, (stop - 1) // BLOCK
        blocks = [self._block(index) for index in range(first, last + 1)]
        offset = first * BLOCK
        part = slice(start - offset, stop - offset)
        if len(blocks) == 1:
            whole = blocks[0]
        else:
            cat = lambda name: torch.cat([getattr(b, name) for b in blocks])  # noqa: E731
            boxes = torch.cat([b.roi.boxes for b in blocks])
            counts = torch.cat([b.roi.counts for b in blocks])
            whole = FeatureChunk(
                cat("ids"), cat("logits"), cat("features"), cat("cam_weights"),
                Roi.from_padded_boxes(boxes, counts, size=(self.frame, self.frame)), cat("case"),
            )
        return FeatureChunk(
            whole.ids[part], whole.logits[part], whole.features[part], whole.cam_weights[part],
            whole.roi[part], whole.case[part],
        )

    def _block(self, index: int) -> FeatureChunk:
        start, stop = index * BLOCK, min((index + 1) * BLOCK, self.size)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % (2**63))
        ids = torch.arange(start, stop, dtype=torch.int64)
        b = stop - start
        case = torch.multinomial(_CASE_SHARE, b, replacement=True, generator=generator)

        # ROI: one or two boxes in the frame, as radiologists draw them.
        frame = float(self.frame)
        size = frame * (0.12 + 0.25 * torch.rand(b, 2, 2, generator=generator))
        corner = (frame - size) * torch.rand(b, 2, 2, generator=generator)
        boxes = torch.cat([corner, corner + size], dim=2)  # [b, 2, 4] = x0, y0, x1, y1
        n_boxes = 1 + (torch.rand(b, generator=generator) < 0.3).long()
        counts = torch.where(case == CASES.index("no_finding"), 0, n_boxes)
        counts = torch.where(case == CASES.index("unknown_roi"), -1, counts)
        roi = Roi.from_padded_boxes(boxes, counts, size=(self.frame, self.frame))

        # Where the CAM blob sits, in grid units: on the first box, or far from it.
        box_centre = (boxes[:, 0, :2] + boxes[:, 0, 2:]) / 2 / frame  # [b, 2] in [0, 1]
        elsewhere = (box_centre + 0.5) % 1.0
        random_spot = torch.rand(b, 2, generator=generator)
        centre = torch.where((case == CASES.index("aligned"))[:, None], box_centre, elsewhere)
        centre = torch.where((case >= CASES.index("no_finding"))[:, None], random_spot, centre)
        coords = (torch.arange(self.grid) + 0.5) / self.grid
        spread = 0.08 + 0.12 * torch.rand(b, 1, 1, generator=generator)
        dy = coords[None, :, None] - centre[:, 1, None, None]
        dx = coords[None, None, :] - centre[:, 0, None, None]
        blob = torch.exp(-(dx**2 + dy**2) / (2 * spread**2))  # [b, h, w]
        blob = blob.masked_fill_(blob < 1e-6, 0.0)  # no float32 denormals in the tails

        gain = torch.rand(b, self.channels, generator=generator)
        noise = 0.15 * torch.rand(b, self.channels, self.grid, self.grid, generator=generator)
        features = gain[:, :, None, None] * blob[:, None] + noise
        cam_weights = (gain - 0.3 + 0.1 * torch.randn(b, self.channels, generator=generator)) / (self.grid**2)

        sharpness = 0.3 + 5.0 * torch.rand(b, 1, generator=generator)
        logits = sharpness * torch.randn(b, self.classes, generator=generator)

        broken = torch.isin(ids, self.corrupt_ids())
        features[broken] = float("nan")
        return FeatureChunk(
            ids=ids,
            logits=logits,
            features=features.to(self.dtype),
            cam_weights=cam_weights,
            roi=roi,
            case=case,
        )
