"""Anatomy priors from a folder of masks: an ROI the scorer can read that needs no expert.

A deployment gets an anatomy mask for every unlabelled image from something other than the expert:
a lung-segmentation model's output for chest X-rays, a brain-extraction tool for MRI. ``xal ingest
--prior-masks DIR`` takes such output as one PNG per item, ``DIR/<item id>.png`` (an item id with
``/`` names subfolders, as ``case_012/z077.png``), any size (resized to the pool's frame by nearest
neighbour), nonzero = inside. An item without a file has no prior (unknown for the scorer under the
``anatomy`` ROI source, never an empty one). Adapters that know a rule (BraTS: the brain's nonzero
voxels; the generated benchmarks: their organ region) set ``Item.prior`` themselves; a folder given
here replaces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .guards import contained_path
from .item import Dataset, Item, ItemError, resize_mask

__all__ = ["WithPriorMasks"]


class WithPriorMasks:
    """``dataset`` with each item's ``prior`` read from ``folder`` (module docstring)."""

    def __init__(self, dataset: Dataset, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"--prior-masks {self.folder}: not a folder")
        self.dataset = dataset

    def __getattr__(self, name: str) -> Any:  # classes, size, roi_format, skipped, channels, …
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Item]:
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> Item:
        item = self.dataset[index]
        try:
            path = contained_path(self.folder, f"{item.id}.png", "prior mask")
        except ValueError as error:
            raise ItemError(item.id, str(error)) from None
        if not path.is_file():
            return Item(item.id, item.image, item.roi, item.label, item.meta, prior=None)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as picture:
                mask = np.asarray(picture.convert("L")) > 0
        except (OSError, UnidentifiedImageError) as error:
            raise ItemError(str(path), f"prior mask unreadable ({error})") from None
        return Item(item.id, item.image, item.roi, item.label, item.meta, prior=resize_mask(mask, tuple(self.size)))

    def describe(self) -> dict[str, Any]:
        return {**self.dataset.describe(), "prior_masks": str(self.folder.resolve())}
