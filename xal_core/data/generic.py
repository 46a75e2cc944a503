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

A folder with a ``dicomweb.json`` may name DICOMweb instances instead of files: ``image`` =
``dicomweb:STUDY_UID/SERIES_UID/SOP_UID`` (the item id is the part after ``dicomweb:``), fetched
over WADO-RS and decoded like a ``.dcm`` (``dicomweb.DicomWebImages``; ``xal ingest dicomweb+…
--dataset-out DIR`` writes such a folder).

Paths in ``labels.csv`` (images and masks) must stay inside the folder: an absolute path, ``..``
out of it or a symlink whose target lies outside is refused for that row (``guards.py``). Images
larger than ``max_pixels`` (default ``guards.DEFAULT_MAX_PIXELS``) are refused from their header.
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

from xal_core.scoring import Roi

from .dicom import read_dicom
from .dicomweb import FOLDER_CONFIG, REFERENCE, DicomWebImages, InstanceRef
from .guards import DEFAULT_MAX_PIXELS, check_pixels, contained_path, pixel_limit
from .item import IndexedDataset, Item, ItemError, Skip, check_boxes, resize_image, resize_mask, scale_boxes
from .png import read_png

__all__ = ["GenericFolder", "read_plain_image"]

SPLITS = ("pool", "val", "test")


@dataclass(frozen=True)
class _Record:
    line: int
    name: str  # the image path relative to the folder (the item id)
    image: Path
    slice: int | None
    label: int
    roi: Path | np.ndarray | None  # mask path, boxes [M, 4], or unknown


def read_plain_image(path: Path, slice_index: int | None = None, *,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A 2D float32 array from ``.dcm``, ``.nii``/``.nii.gz`` or ``.png`` (min-max to [0, 1] for the last two).

    An image (or NIfTI slice) above ``max_pixels`` is refused from its header, before decoding.
    """
    name = path.name.lower()
    if name.endswith(".dcm"):
        return read_dicom(path, max_pixels=max_pixels).pixels
    if name.endswith((".nii", ".nii.gz")):
        values = _nifti_slice(path, slice_index, max_pixels)
    elif name.endswith(".png"):
        values = read_png(path, max_pixels)
    else:
        raise ItemError(str(path), "unsupported image type (expected .dcm, .nii, .nii.gz or .png)")
    return _unit_range(path, values)


def _nifti_slice(path: Path, slice_index: int | None, max_pixels: int) -> np.ndarray:
    try:
        volume = nib.load(path)
        shape = volume.shape
        if len(shape) not in (2, 3):
            raise ItemError(str(path), f"expected a 2D or 3D NIfTI, got shape {shape}")
        check_pixels(path, shape[:2], max_pixels)
        if len(shape) == 2:
            values = np.asarray(volume.dataobj, dtype=np.float64)
        else:
            z = shape[2] // 2 if slice_index is None else slice_index
            if not 0 <= z < shape[2]:
                raise ItemError(str(path), f"slice {z} outside 0..{shape[2] - 1}")
            values = np.asarray(volume.dataobj[:, :, z], dtype=np.float64)
    except ItemError:
        raise
    except Exception as error:  # nibabel raises many types for a broken file
        raise ItemError(str(path), f"corrupt or truncated NIfTI ({type(error).__name__}: {error})") from None
    return values.T  # rows = second voxel axis, as in the BraTS adapter


def _unit_range(path: Path, values: np.ndarray) -> np.ndarray:
    """Min-max to float32 ``[0, 1]`` with one float32 copy (no float64 temporaries).

    Why it matters: the former pipeline made float64 copies (2.8 GB peak measured with a 12 000²
    PNG); this one holds the stored array plus one float32 copy (~5 bytes a pixel for 8-bit PNGs).
    """
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ItemError(str(path), "non-finite pixel values")
    low, high = float(values.min()), float(values.max())
    out = values.astype(np.float32)
    if high <= low:
        out.fill(0.0)
        return out
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)  # float32 rounding may step just past 1
    return out


class GenericFolder(IndexedDataset):
    kind = "generic"

    def __init__(self, root: Path, size: tuple[int, int], *, split: str = "pool",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        max_pixels = pixel_limit(max_pixels)
        table = root / "labels.csv"
        if not table.is_file():
            raise ValueError(f"{root}: not a generic dataset root: missing labels.csv")
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"image", "label"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{table}: missing columns {sorted(missing)}")
            rows = list(enumerate(reader, start=2))
        classes = tuple(sorted({(row["label"] or "").strip() for _, row in rows} - {""}))  # None: a short row
        super().__init__(size, classes, "boxes", {"split": split, "max_pixels": max_pixels})
        self.root = root
        self.max_pixels = max_pixels
        self._dicomweb = DicomWebImages.of_folder(root)  # None: a folder of files only
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
        name = (row["image"] or "").strip()
        reference = self._reference(name)
        image = reference or contained_path(self.root, name, "image")
        if reference is None and not image.is_file():
            raise ValueError(f"image file {image} is missing")
        label = (row["label"] or "").strip()
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
            roi = contained_path(self.root, roi_text, "ROI mask")
            if not roi.is_file():
                raise ValueError(f"ROI mask file {roi} is missing")
        identifier = name.removeprefix(REFERENCE) if reference is not None else str(image.relative_to(self.root))
        return _Record(line, identifier, image, slice_index, classes.index(label), roi)

    def _reference(self, name: str) -> Path | None:
        """``dicomweb:STUDY/SERIES/SOP`` (checked) as an opaque path, or ``None`` for a file."""
        if not name.startswith(REFERENCE):
            return None
        if self._dicomweb is None:
            raise ValueError(f"{name}: a DICOMweb image needs {FOLDER_CONFIG} in the folder (the service's URL)")
        InstanceRef.from_id(name.removeprefix(REFERENCE))
        return Path(name)

    def use_source_cache(self, folder: Path, max_bytes: int) -> None:
        if self._dicomweb is not None:
            self._dicomweb.use_cache(folder, max_bytes)

    def record_id(self, record: _Record) -> str:
        return record.name + ("" if record.slice is None else f"#{record.slice}")

    def native_pixels(self, record: _Record) -> np.ndarray:
        if self._dicomweb is not None and str(record.image).startswith(REFERENCE):
            return self._dicomweb.pixels(record.name, self.max_pixels)
        return read_plain_image(record.image, record.slice, max_pixels=self.max_pixels)

    def load(self, record: _Record) -> Item:
        pixels = self.native_pixels(record)
        shape = (int(pixels.shape[0]), int(pixels.shape[1]))
        roi: torch.Tensor | None = None
        if isinstance(record.roi, Path):
            mask = read_plain_image(record.roi, record.slice, max_pixels=self.max_pixels) > 0
            if mask.shape != pixels.shape:
                raise ItemError(str(record.roi), f"mask shape {mask.shape} differs from image shape {pixels.shape}")
            roi = resize_mask(mask, self.size)
        elif record.roi is not None:
            roi = scale_boxes(check_boxes(record.roi, shape, str(record.image)), shape, self.size)
            if self.roi_format == "mask":
                roi = Roi.from_boxes([roi], size=self.size).to_masks()[0]
        identifier = self.record_id(record)
        meta = {"path": str(record.image), "line": record.line, "source_shape": list(shape),
                "split": self.options["split"]}
        return Item(identifier, resize_image(pixels, self.size), roi, record.label, meta)
