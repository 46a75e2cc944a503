"""Real chest X-ray annotation tables, read from the ``torchxrayvision`` wheel (no images in it).

Why: the ``cxr-sim`` benchmark (:mod:`xal_core.data.cxr_sim`) draws synthetic images on *real*
annotation geometry, so that box sizes, positions, several boxes per image, reader disagreement and
the view/label confound are the real ones and not invented. The wheel (Apache-2.0, on PyPI) ships
these tables as package data; nothing is downloaded at run time and nothing is copied into this
repository. Install it with ``pip install --no-deps torchxrayvision`` (the ``cxr`` extra): only the
files are read, so none of its dependencies (torchvision, scikit-image, pandas, imageio, ...) is
needed, and the package itself is never imported: ``import torchxrayvision`` (which
``importlib.resources.files`` would do) imports all of them. The folder is found with
``importlib.util.find_spec``, which locates a package without executing it.

The tables (torchxrayvision 1.5.7, measured):

* RSNA Pneumonia (``kaggle_stage_2_train_labels.csv.zip``: 30 227 rows, 26 684 patients, one image
  each; 6 012 positive = 22.5 %, 9 555 boxes, 1-4 per positive image) and its DICOM header table
  (``kaggle_stage_2_train_images_dicom_headers.csv.gz``: ``ViewPosition`` for every patient:
  12 173 AP, 14 511 PA). Pneumonia is 38.3 % of AP images and 9.3 % of PA ones, a real confound.
  Boxes are ``(x, y, width, height)`` in the 1024 × 1024 frame of the Kaggle PNG/DICOMs.
* v7labs lung masks (``semantic_masks_v7labs_lungs.zip``): 517 8-bit grey PNGs (whatever their
  extension) of both lung fields, drawn on the COVID-19 image data collection, 156-5 623 px wide;
  82 are empty and one has no gap between the lungs. They belong to *other* patients than RSNA's
  and VinDr's, so they are used as a set of real lung shapes, not paired with any table row.
* VinDr-CXR (``vinbigdata-train.csv.gz``: 67 914 rows, 15 000 images, exactly 3 readers each out
  of 17; 14 findings + "No finding"; 36 096 boxes). An image is "No finding" for all three readers
  or for none (10 606 images). The table has no image size: see :data:`VINDR_FRAME`.

All loaders return NumPy arrays and tuples (no pandas), are cached per process, and raise
:class:`CxrTablesUnavailable` (an ``ImportError``) naming the extra when the wheel is missing.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "CxrTablesUnavailable", "EXTRA_HINT", "RSNA_FRAME", "VINDR_FRAME", "VIEWS", "LungShapes", "RsnaTable",
    "VindrTable", "available", "data_file", "load_lung_shapes", "load_rsna", "load_vindr",
]

EXTRA_HINT = "install xal[cxr] (torchxrayvision) for the cxr-sim benchmark"
VIEWS = ("PA", "AP")  # index = RsnaTable.view
RSNA_FRAME = 1024  # the RSNA images are 1024 x 1024; its boxes reach 1024 on both axes
# VinDr's DICOMs vary in size and the table does not say it. A fixed frame keeps each image's aspect
# and relative box sizes (a per-image extent of its boxes would blow a lone nodule up to the whole
# frame). 3072 covers 99.83 % of the boxes; an image with a coordinate beyond it is divided by its own
# largest coordinate instead, so every box lies in [0, 1]. Image sizes differ by about +-25 % (the
# cardiomegaly box centre, a midline anchor, spans x = 1 114-1 816 px, p5-p95), which stays as
# positional noise: cxr_sim maps the unit frame onto its lungs by the boxes' own spread, so the
# constant itself cancels out there.
VINDR_FRAME = 3072
NO_FINDING = "No finding"

_RSNA_LABELS = "kaggle_stage_2_train_labels.csv.zip"
_RSNA_HEADERS = "kaggle_stage_2_train_images_dicom_headers.csv.gz"
_LUNG_MASKS = "semantic_masks_v7labs_lungs.zip"
_VINDR = "vinbigdata-train.csv.gz"


class CxrTablesUnavailable(ImportError):
    """torchxrayvision (the source of the tables) is not installed, or a table is missing from it."""


def _package_dir() -> Path:
    try:
        spec = importlib.util.find_spec("torchxrayvision")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CxrTablesUnavailable(f"torchxrayvision is not installed: {EXTRA_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def data_file(name: str) -> Path:
    """The path of one of torchxrayvision's data files (without importing torchxrayvision)."""
    path = _package_dir() / "data" / name
    if not path.is_file():
        raise CxrTablesUnavailable(f"{path}: not in this torchxrayvision install: {EXTRA_HINT}")
    return path


def available() -> bool:
    """Whether all the tables the benchmark reads are installed."""
    try:
        for name in (_RSNA_LABELS, _RSNA_HEADERS, _LUNG_MASKS, _VINDR):
            data_file(name)
    except CxrTablesUnavailable:
        return False
    return True


# --------------------------------------------------------------------------------------------- RSNA


@dataclass(frozen=True, eq=False)
class RsnaTable:
    """RSNA Pneumonia, one row per patient (sorted by id).

    Attributes:
        patient_ids: ``N`` ids.
        label: int8 ``[N]``, 1 = pneumonia (the table's ``Target``).
        view: uint8 ``[N]``, index into :data:`VIEWS` (0 = PA, 1 = AP).
        box_start: int64 ``[N + 1]``: patient ``i``'s boxes are ``boxes[box_start[i]:box_start[i + 1]]``.
        boxes: float32 ``[B, 4]`` ``(x, y, width, height)`` in the 1024 × 1024 frame.
    """

    patient_ids: tuple[str, ...]
    label: np.ndarray
    view: np.ndarray
    box_start: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.patient_ids)

    def boxes_of(self, i: int) -> np.ndarray:
        """Patient ``i``'s boxes ``[k, 4]`` (x, y, w, h), ``k = 0`` for a negative patient."""
        return self.boxes[self.box_start[i]:self.box_start[i + 1]]


@lru_cache(maxsize=1)
def load_rsna() -> RsnaTable:
    """Read the RSNA labels and the view position of every patient (about 0.3 s, cached)."""
    with zipfile.ZipFile(data_file(_RSNA_LABELS)) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".csv"))
        with archive.open(member) as raw:
            rows = list(csv.DictReader(io.TextIOWrapper(raw, "utf-8")))
    label: dict[str, int] = {}
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for row in rows:
        pid, target = row["patientId"], int(row["Target"])
        if label.setdefault(pid, target) != target:
            raise ValueError(f"{_RSNA_LABELS}: patient {pid} is both positive and negative")
        if target:
            boxes[pid].append((float(row["x"]), float(row["y"]), float(row["width"]), float(row["height"])))
    with gzip.open(data_file(_RSNA_HEADERS), "rt", encoding="utf-8") as text:
        view = {row["PatientID"]: row["ViewPosition"] for row in csv.DictReader(text)}
    missing = set(label) - set(view)
    if missing:
        raise ValueError(f"{_RSNA_HEADERS}: no view position for {len(missing)} patients")
    ids = tuple(sorted(label))
    counts = np.array([len(boxes.get(p, ())) for p in ids], dtype=np.int64)
    flat = [b for p in ids for b in boxes.get(p, ())]
    return RsnaTable(
        patient_ids=ids,
        label=np.array([label[p] for p in ids], dtype=np.int8),
        view=np.array([VIEWS.index(view[p]) for p in ids], dtype=np.uint8),
        box_start=np.concatenate([[0], np.cumsum(counts)]),
        boxes=np.array(flat, dtype=np.float32).reshape(-1, 4),
    )


# --------------------------------------------------------------------------------------- lung masks


@dataclass(frozen=True, eq=False)
class LungShapes:
    """Real lung-field shapes, each cropped to its bounding box and resampled to ``R × R``.

    Attributes:
        masks: bool ``[M, R, R]``; column 0 is the image's left (the patient's right lung).
        aspect: float32 ``[M]``, height / width of the bounding box in the source image, to
            restore the shape's proportions when it is placed in a frame.
        sides: float32 ``[M, 2, 4]``: ``(x0, y0, x1, y1)`` in ``[0, 1]`` of the crop, the bounding
            box of the image-left lung (``[:, 0]``) and of the image-right lung (``[:, 1]``).
        names: the ``M`` source file names.
        skipped: file name → why it was left out (empty mask, no gap between the lungs, ...).
    """

    masks: np.ndarray
    aspect: np.ndarray
    sides: np.ndarray
    names: tuple[str, ...]
    skipped: dict[str, str]

    def __len__(self) -> int:
        return len(self.names)


def _lung_shape(data: bytes, resolution: int) -> tuple[np.ndarray, float, np.ndarray] | str:
    from PIL import Image  # a base dependency; imported here so the tables need it only for masks

    image = Image.open(io.BytesIO(data))
    image.draft("L", (4 * resolution, 4 * resolution))
    factor = max(1, min(image.size) // (4 * resolution))
    grey = image.convert("L")
    if factor > 1:  # box-filter down first: the largest masks are 5 623 px wide
        grey = grey.reduce(factor)
    full = np.asarray(grey) > 127
    if full.sum() < 64:
        return "empty mask"
    rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    crop = full[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if crop.mean() < 0.3:
        return f"mask fills {crop.mean():.0%} of its bounding box (< 30 %)"
    small = Image.fromarray(crop.astype(np.uint8) * 255).resize((resolution, resolution), Image.BILINEAR)
    mask = np.asarray(small) > 127
    column = mask.sum(0)
    lo, hi = int(0.3 * resolution), int(0.7 * resolution)
    split = lo + int(np.argmin(column[lo:hi]))
    if column[split] > 0.1 * column.max():
        return "no gap between the lungs"
    sides = []
    for part, offset in ((mask[:, :split], 0), (mask[:, split:], split)):
        if part.sum() < 0.2 * mask.sum():
            return "one lung is missing"
        r, c = np.flatnonzero(part.any(1)), np.flatnonzero(part.any(0)) + offset
        sides.append((c[0] / resolution, r[0] / resolution, (c[-1] + 1) / resolution, (r[-1] + 1) / resolution))
    return mask, crop.shape[0] / crop.shape[1], np.array(sides, dtype=np.float32)


@lru_cache(maxsize=4)
def load_lung_shapes(resolution: int = 128) -> LungShapes:
    """Decode the v7labs lung masks into ``resolution²`` shapes (about 4 s for the 517 files, cached).

    A mask is kept when it is non-empty, fills at least 30 % of its bounding box and shows two
    lungs with a gap between them (434 of 517 at 128²).
    """
    if resolution < 16:
        raise ValueError(f"resolution: at least 16, got {resolution}")
    masks, aspects, sides, names, skipped = [], [], [], [], {}
    with zipfile.ZipFile(data_file(_LUNG_MASKS)) as archive:
        for name in sorted(n for n in archive.namelist() if not n.endswith("/")):
            shape = _lung_shape(archive.read(name), resolution)
            base = name.rsplit("/", 1)[-1]
            if isinstance(shape, str):
                skipped[base] = shape
                continue
            masks.append(shape[0])
            aspects.append(shape[1])
            sides.append(shape[2])
            names.append(base)
    return LungShapes(masks=np.stack(masks), aspect=np.array(aspects, dtype=np.float32), sides=np.stack(sides),
                      names=tuple(names), skipped=skipped)


# -------------------------------------------------------------------------------------------- VinDr


@dataclass(frozen=True, eq=False)
class VindrTable:
    """VinDr-CXR (the Kaggle training table): every image's three readings, boxes in a unit frame.

    Attributes:
        image_ids: ``K`` ids (sorted).
        class_names: VinDr's 15 names, indexed by its ``class_id`` (14 = "No finding").
        reader_ids: ``[K, 3]`` str, the image's three radiologists (sorted, e.g. ``R8``).
        start: int64 ``[K + 1]``: image ``k``'s annotations are ``start[k]:start[k + 1]``.
        reader: int8 ``[A]``: which of ``reader_ids[k]`` made the annotation (0..2).
        class_id: int8 ``[A]``.
        box: float32 ``[A, 4]`` ``(x_min, y_min, x_max, y_max)`` divided by ``frame[k]``, so in
            ``[0, 1]`` with the image's aspect kept; NaN rows for "No finding".
        frame: float32 ``[K]``: the divisor, :data:`VINDR_FRAME` or the image's largest coordinate.
    """

    image_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    reader_ids: np.ndarray
    start: np.ndarray
    reader: np.ndarray
    class_id: np.ndarray
    box: np.ndarray
    frame: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    def readings(self, k: int) -> tuple[tuple[str, tuple[tuple[str, np.ndarray | None], ...]], ...]:
        """Image ``k`` as ``((reader_id, ((class_name, box or None), ...)), ...)``, three readers."""
        lo, hi = self.start[k], self.start[k + 1]
        out = []
        for r, rid in enumerate(self.reader_ids[k]):
            rows = [j for j in range(lo, hi) if self.reader[j] == r]
            out.append((str(rid), tuple(
                (self.class_names[self.class_id[j]], None if np.isnan(self.box[j, 0]) else self.box[j].copy())
                for j in rows)))
        return tuple(out)


@lru_cache(maxsize=1)
def load_vindr() -> VindrTable:
    """Read VinDr's 67 914 annotation rows into per-image, per-reader arrays (about 0.5 s, cached)."""
    with gzip.open(data_file(_VINDR), "rt", encoding="utf-8") as text:
        rows = list(csv.DictReader(text))
    names: dict[int, str] = {}
    per_image: dict[str, list[tuple[str, int, tuple[float, ...] | None]]] = defaultdict(list)
    for row in rows:
        cid = int(row["class_id"])
        if names.setdefault(cid, row["class_name"]) != row["class_name"]:
            raise ValueError(f"{_VINDR}: class_id {cid} has two names")
        box = None if row["x_min"] == "" else tuple(float(row[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
        per_image[row["image_id"]].append((row["rad_id"], cid, box))
    class_names = tuple(names[i] for i in range(len(names)))
    if class_names[-1] != NO_FINDING:
        raise ValueError(f"{_VINDR}: expected the last class_id to be {NO_FINDING!r}, got {class_names[-1]!r}")
    ids = tuple(sorted(per_image))
    readers, start, reader, class_id, box, frame = [], [0], [], [], [], []
    for image_id in ids:
        annotations = per_image[image_id]
        rads = sorted({a[0] for a in annotations})
        if len(rads) != 3:
            raise ValueError(f"{_VINDR}: image {image_id} has {len(rads)} readers, expected 3")
        largest = max((max(a[2][2], a[2][3]) for a in annotations if a[2] is not None), default=0.0)
        side = max(float(VINDR_FRAME), largest)
        for rad, cid, b in annotations:
            reader.append(rads.index(rad))
            class_id.append(cid)
            box.append((np.nan,) * 4 if b is None else tuple(v / side for v in b))
        readers.append(rads)
        start.append(start[-1] + len(annotations))
        frame.append(side)
    return VindrTable(image_ids=ids, class_names=class_names, reader_ids=np.array(readers),
                      start=np.array(start, dtype=np.int64), reader=np.array(reader, dtype=np.int8),
                      class_id=np.array(class_id, dtype=np.int8), box=np.array(box, dtype=np.float32),
                      frame=np.array(frame, dtype=np.float32))
