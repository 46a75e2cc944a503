"""Generic adapter: any folder with a ``labels.csv``, for datasets xal has no adapter for.

``labels.csv`` columns:

* ``image`` — path relative to the folder: ``.dcm`` (decoded like the X-ray sets), ``.nii`` /
  ``.nii.gz`` (2D, or 3D with the axial ``slice`` column; without it the middle slice), or ``.png``;
* ``label`` — class name; the classes are the sorted distinct names over all rows (all splits), so
  every split of one folder shares one class order;
* ``roi`` — empty = unknown; a relative path to a mask image (non-zero = inside, same size as the
  image); or a JSON list of boxes ``[[x_min, y_min, x_max, y_max], ...]`` in the image's pixels,
  ``[]`` = known empty;
* ``split`` (optional) — ``pool``, ``val`` or ``test`` (default ``pool``); the ``split`` option
  chooses which rows the dataset holds.

The pool's ROI format is ``boxes`` when every ROI in the split is boxes (or empty/unknown), else
``mask`` (boxes are then rasterised with the pixel-centre rule). NIfTI and PNG intensities are
min-max normalised per image. Rows naming a missing file, an unparseable ROI or an unknown split
are skipped with a report line.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from xal_core.scoring import Roi

from .dicom import read_dicom
from .item import IndexedDataset, Item, ItemError, Skip, check_boxes, resize_image, resize_mask, scale_boxes

__all__ = ["GenericFolder", "read_plain_image"]

SPLITS = ("pool", "val", "test")


@dataclass(frozen=True)
class _Record:
    line: int
    image: Path
    slice: int | None
    label: int
    roi: Path | np.ndarray | None  # mask path, boxes [M, 4], or unknown


def read_plain_image(path: Path, slice_index: int | None = None) -> np.ndarray:
    """A 2D float array from ``.dcm``, ``.nii``/``.nii.gz`` or ``.png`` (min-max to [0, 1] for the last two)."""
    name = path.name.lower()
    if name.endswith(".dcm"):
        return read_dicom(path).pixels
    if name.endswith((".nii", ".nii.gz")):
        try:
            volume = nib.load(path)
            if len(volume.shape) == 2:
                values = np.asarray(volume.dataobj, dtype=np.float64)
            elif len(volume.shape) == 3:
                z = volume.shape[2] // 2 if slice_index is None else slice_index
                if not 0 <= z < volume.shape[2]:
                    raise ItemError(str(path), f"slice {z} outside 0..{volume.shape[2] - 1}")
                values = np.asarray(volume.dataobj[:, :, z], dtype=np.float64)
            else:
                raise ItemError(str(path), f"expected a 2D or 3D NIfTI, got shape {volume.shape}")
        except ItemError:
            raise
        except Exception as error:  # nibabel raises many types for a broken file
            raise ItemError(str(path), f"corrupt or truncated NIfTI ({type(error).__name__}: {error})") from None
        values = values.T  # rows = second voxel axis, as in the BraTS adapter
    elif name.endswith(".png"):
        try:
            with Image.open(path) as image:
                image.load()
                values = np.asarray(image.convert("L") if image.mode not in ("L", "I", "I;16") else image,
                                    dtype=np.float64)
        except (UnidentifiedImageError, OSError) as error:
            raise ItemError(str(path), f"unreadable PNG ({error})") from None
    else:
        raise ItemError(str(path), "unsupported image type (expected .dcm, .nii, .nii.gz or .png)")
    if not np.isfinite(values).all():
        raise ItemError(str(path), "non-finite pixel values")
    low, high = float(values.min()), float(values.max())
    return ((values - low) / (high - low) if high > low else np.zeros_like(values)).astype(np.float32)


class GenericFolder(IndexedDataset):
    kind = "generic"

    def __init__(self, root: Path, size: tuple[int, int], *, split: str = "pool") -> None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        table = root / "labels.csv"
        if not table.is_file():
            raise ValueError(f"{root}: not a generic dataset root: missing labels.csv")
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"image", "label"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{table}: missing columns {sorted(missing)}")
            rows = list(enumerate(reader, start=2))
        classes = tuple(sorted({row["label"].strip() for _, row in rows if row["label"].strip()}))
        super().__init__(size, classes, "boxes", {"split": split})
        self.root = root
        kinds = set()
        for line, row in rows:
            where = f"labels.csv line {line}"
            row_split = (row.get("split") or "pool").strip() or "pool"
            if row_split not in SPLITS:
                self.skipped.append(Skip(where, f"unknown split {row_split!r} (expected one of {SPLITS})"))
                continue
            if row_split != split:
                continue
            try:
                record = self._record(line, row, classes)
            except ValueError as error:
                self.skipped.append(Skip(f"{where} ({row.get('image', '')})", str(error)))
                continue
            kinds.add("mask" if isinstance(record.roi, Path) else "boxes")
            self.records.append(record)
        if "mask" in kinds:
            self.roi_format = "mask"

    def _record(self, line: int, row: dict[str, str], classes: tuple[str, ...]) -> _Record:
        image = self.root / row["image"].strip()
        if not row["image"].strip() or not image.is_file():
            raise ValueError(f"image file {image} is missing")
        label = row["label"].strip()
        if not label:
            raise ValueError("empty label")
        text = (row.get("slice") or "").strip()
        try:
            slice_index = int(text) if text else None
        except ValueError:
            raise ValueError(f"slice {text!r} is not an integer") from None
        roi_text = (row.get("roi") or "").strip()
        roi: Path | np.ndarray | None = None
        if roi_text.startswith("["):
            try:
                boxes = json.loads(roi_text)
                array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
                if len(boxes) and (not all(isinstance(b, list) and len(b) == 4 for b in boxes)):
                    raise ValueError
                if not all(math.isfinite(v) for v in array.ravel()):
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError(f"unparseable ROI boxes {roi_text!r} (expected [[x_min, y_min, x_max, y_max], "
                                 "...])") from None
            roi = array
        elif roi_text:
            roi = self.root / roi_text
            if not roi.is_file():
                raise ValueError(f"ROI mask file {roi} is missing")
        return _Record(line, image, slice_index, classes.index(label), roi)

    def load(self, record: _Record) -> Item:
        pixels = read_plain_image(record.image, record.slice)
        shape = (int(pixels.shape[0]), int(pixels.shape[1]))
        roi: torch.Tensor | None = None
        if isinstance(record.roi, Path):
            mask = read_plain_image(record.roi, record.slice) > 0
            if mask.shape != pixels.shape:
                raise ItemError(str(record.roi), f"mask shape {mask.shape} differs from image shape {pixels.shape}")
            roi = resize_mask(mask, self.size)
        elif record.roi is not None:
            roi = scale_boxes(check_boxes(record.roi, shape, str(record.image)), shape, self.size)
            if self.roi_format == "mask":
                roi = Roi.from_boxes([roi], size=self.size).to_masks()[0]
        identifier = str(record.image.relative_to(self.root)) + ("" if record.slice is None else f"#{record.slice}")
        meta = {"path": str(record.image), "line": record.line, "source_shape": list(shape),
                "split": self.options["split"]}
        return Item(identifier, resize_image(pixels, self.size), roi, record.label, meta)
