"""SIIM-FISABIO-RSNA COVID-19 adapter: the 4 study-level classes, per image, with opacity boxes.

Every image of a study takes the study's class (``negative``, ``typical``, ``indeterminate``,
``atypical``); a study whose row is not exactly one-hot is skipped. The ROI is the image's opacity
boxes; an image without boxes (label ``none 1 0 0 1 1``) has a known-empty ROI. ``boxes`` is
parsed with ``ast.literal_eval`` (never ``eval``) and checked against the schema
``[{'x', 'y', 'width', 'height'}, ...]`` with finite, non-negative sizes; anything else skips
the image with a report line, as do a row whose study is not in ``train_study_level.csv`` and an
image file that is not under ``train/<study>/<series>/`` or that is a symlink leading out of the
dataset folder. DICOMs above ``max_pixels`` decoded pixels are refused per image.
"""

from __future__ import annotations

import ast
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dicom import read_dicom
from .guards import DEFAULT_MAX_PIXELS, contained_path, pixel_limit
from .item import IndexedDataset, Item, Skip, check_boxes, resize_image, scale_boxes

__all__ = ["SiimCovid", "parse_boxes"]

STUDY_COLUMNS = ("Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance")
CLASSES = ("negative", "typical", "indeterminate", "atypical")


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """The ``boxes`` field → ``[(x_min, y_min, x_max, y_max)]``; ``ValueError`` when it breaks the schema."""
    text = (text or "").strip()
    if text in ("", "nan", "NaN", "[]"):
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
        raise ValueError(f"not a Python literal ({type(error).__name__})") from None
    if not isinstance(value, list):
        raise ValueError(f"expected a list of dicts, got {type(value).__name__}")
    boxes = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"x", "y", "width", "height"}:
            raise ValueError(f"expected {{'x', 'y', 'width', 'height'}}, got {entry!r}")
        x, y, w, h = (entry[k] for k in ("x", "y", "width", "height"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y, w, h)):
            raise ValueError(f"non-numeric or non-finite coordinates in {entry!r}")
        if w < 0 or h < 0:
            raise ValueError(f"negative width or height in {entry!r}")
        boxes.append((float(x), float(y), float(x + w), float(y + h)))
    return boxes


@dataclass(frozen=True)
class _Record:
    image_id: str
    study: str
    path: Path
    boxes: tuple[tuple[float, float, float, float], ...]
    label: int


class SiimCovid(IndexedDataset):
    kind = "siim"

    def __init__(self, root: Path, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = pixel_limit(max_pixels)
        super().__init__(size, CLASSES, "boxes", {"max_pixels": self.max_pixels})
        self.root = root
        for name in ("train_study_level.csv", "train_image_level.csv"):
            if not (root / name).is_file():
                raise ValueError(f"{root}: not a SIIM-COVID root: missing {name}")
        if not (root / "train").is_dir():
            raise ValueError(f"{root}: not a SIIM-COVID root: missing the train/ folder of DICOM images")
        studies, broken_studies = self._studies(root / "train_study_level.csv")
        files = {path.stem: path for path in (root / "train").glob("*/*/*.dcm")}
        with (root / "train_image_level.csv").open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "boxes", "label", "StudyInstanceUID"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{root / 'train_image_level.csv'}: missing columns {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                image_id, study = row["id"].strip(), row["StudyInstanceUID"].strip()
                uid = image_id.removesuffix("_image")
                where = f"train_image_level.csv line {line} ({image_id})"
                path = files.get(uid)
                if study in broken_studies:
                    self.skipped.append(Skip(where, broken_studies[study]))
                elif study not in studies:
                    self.skipped.append(Skip(where, f"study {study} is not in train_study_level.csv"))
                elif path is None:
                    self.skipped.append(Skip(where, f"no image file train/{study}/*/{uid}.dcm"))
                else:
                    try:
                        contained_path(root, str(path.relative_to(root)), "image file")
                    except ValueError as error:
                        self.skipped.append(Skip(where, str(error)))
                        continue
                    try:
                        boxes = parse_boxes(row["boxes"])
                    except ValueError as error:
                        self.skipped.append(Skip(where, f"unparseable boxes: {error}"))
                        continue
                    self.records.append(_Record(image_id, study, path, tuple(boxes), studies[study]))

    @staticmethod
    def _studies(path: Path) -> tuple[dict[str, int], dict[str, str]]:
        studies: dict[str, int] = {}
        broken: dict[str, str] = {}
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", *STUDY_COLUMNS} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: missing columns {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                study = row["id"].strip().removesuffix("_study")
                flags = [row[c].strip() for c in STUDY_COLUMNS]
                if sorted(flags) != ["0", "0", "0", "1"]:
                    broken[study] = f"{path.name} line {line}: study label is not one-hot: {flags}"
                else:
                    studies[study] = flags.index("1")
        return studies, broken

    def record_id(self, record: _Record) -> str:
        return record.image_id

    def native_pixels(self, record: _Record) -> np.ndarray:
        return read_dicom(record.path, max_pixels=self.max_pixels).pixels

    def load(self, record: _Record) -> Item:
        decoded = read_dicom(record.path, max_pixels=self.max_pixels)
        raw = np.array(record.boxes, dtype=np.float64).reshape(-1, 4)
        boxes = scale_boxes(check_boxes(raw, decoded.shape, str(record.path)), decoded.shape, self.size)
        meta = {"path": str(record.path), "study": record.study, "source_shape": list(decoded.shape),
                "photometric": decoded.photometric, "bits_stored": decoded.bits_stored}
        return Item(record.image_id, resize_image(decoded.pixels, self.size), boxes, record.label, meta)
