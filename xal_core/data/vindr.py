"""VinDr-CXR adapter (Kaggle or PhysioNet layout): chest X-rays with radiologists' boxes.

Task: ``no_finding`` vs ``abnormal`` (default), or, with ``findings=[...]``, ``negative`` vs
``positive`` for that set of local labels. An image is positive when *any* radiologist drew a box
of a finding in the set (the reading most sensitive to the finding, as in the Kaggle challenge's
"No finding" rule, which needs all readers to agree on no finding).

ROI merge across radiologists (``merge``):

* ``union`` (default): all boxes of the task's findings from all readers, kept as boxes;
* ``majority``: a pixel is in the ROI when the boxes of at least ``⌈R/2⌉`` of the image's ``R``
  readers cover it (readers who said "No finding" count in ``R``); the ROI is a mask.

A negative image has a known-empty ROI (every reader looked; none drew a box of the task's
findings), never an unknown one. Boxes are in the DICOM's pixel frame and are rescaled with the
image. Bad rows (unparseable boxes, a class name the layout does not define, a Kaggle
``class_id`` that does not match its name) and missing image files skip the image with a report
line; a box outside the image skips it when it is loaded. An image skipped for an unknown class
is not guessed at: the row may be the only finding that makes it abnormal. An ``image_id`` whose
file would lie outside ``train/`` (``..``, an absolute path, a symlink out of the dataset) is
refused for that image; so is a DICOM above ``max_pixels`` decoded pixels.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xal_core.scoring import Roi

from .dicom import read_dicom
from .guards import DEFAULT_MAX_PIXELS, contained_path, pixel_limit
from .item import IndexedDataset, Item, ItemError, Skip, check_boxes, resize_image, scale_boxes

__all__ = ["VinDrCXR", "KAGGLE_FINDINGS", "PHYSIONET_FINDINGS"]

NO_FINDING = "No finding"
# Kaggle (VinBigData) train.csv: these 14 findings are class_id 0..13, "No finding" is 14.
KAGGLE_FINDINGS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
                   "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
                   "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis")
# PhysioNet vindr-cxr 1.0.0 annotations: the 22 local labels (the Kaggle 14 and 8 rarer ones).
PHYSIONET_FINDINGS = (*KAGGLE_FINDINGS, "Clavicle fracture", "Edema", "Emphysema", "Enlarged PA", "Lung cavity",
                      "Lung cyst", "Mediastinal shift", "Rib fracture")
_BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


@dataclass(frozen=True)
class _Record:
    image_id: str
    path: Path
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...]  # (rad_id, box) of the task's findings
    readers: tuple[str, ...]
    label: int


class VinDrCXR(IndexedDataset):
    """Args: root, size; ``merge`` (``union``/``majority``); ``findings`` (None = any finding; else
    names of the layout's findings); ``max_pixels`` (larger DICOMs are refused per image)."""

    kind = "vindr"

    def __init__(self, root: Path, size: tuple[int, int], *, merge: str = "union",
                 findings: Sequence[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if merge not in ("union", "majority"):
            raise ValueError(f"merge: expected 'union' or 'majority', got {merge!r}")
        self.max_pixels = pixel_limit(max_pixels)
        if isinstance(findings, str):
            findings = [findings]
        classes = ("no_finding", "abnormal") if findings is None else ("negative", "positive")
        super().__init__(size, classes, "boxes" if merge == "union" else "mask",
                         {"merge": merge, "findings": None if findings is None else list(findings),
                          "max_pixels": self.max_pixels})
        self.root, self.merge = root, merge
        self.findings = None if findings is None else set(findings)
        kaggle, physionet = root / "train.csv", root / "annotations" / "annotations_train.csv"
        if kaggle.is_file():
            self.layout, csv_path = "kaggle", kaggle
        elif physionet.is_file():
            self.layout, csv_path = "physionet", physionet
        else:
            raise ValueError(f"{root}: not a VinDr-CXR root: missing {kaggle.name} (Kaggle layout) or "
                             f"annotations/{physionet.name} (PhysioNet layout)")
        if not (root / "train").is_dir():
            raise ValueError(f"{root}: not a VinDr-CXR root: missing the train/ folder of DICOM images")
        self.options["layout"] = self.layout
        self.known = KAGGLE_FINDINGS if self.layout == "kaggle" else PHYSIONET_FINDINGS
        unknown = sorted(self.findings - set(self.known)) if self.findings is not None else []
        if unknown:
            raise ValueError(f"findings: {unknown} are not findings of the VinDr-CXR {self.layout} layout; "
                             f"known: {list(self.known)}")
        self._index(csv_path)

    def _index(self, csv_path: Path) -> None:
        rows: dict[str, list[tuple[str, str, tuple[float, float, float, float] | None]]] = defaultdict(list)
        broken: dict[str, str] = {}
        with csv_path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            needed = {"image_id", "class_name", "rad_id", *_BOX_COLUMNS}
            missing = needed - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{csv_path}: missing columns {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                image_id, name = (row["image_id"] or "").strip(), (row["class_name"] or "").strip()
                if any(row[key] is None for key in needed):  # csv gives None for the fields of a short row
                    broken.setdefault(image_id, f"{csv_path.name} line {line}: too few fields")
                    continue
                problem = self._class_problem(name, row.get("class_id"))
                if problem is not None:
                    broken.setdefault(image_id, f"{csv_path.name} line {line}: {problem}")
                    continue
                if name == NO_FINDING:
                    rows[image_id].append((row["rad_id"], name, None))
                    continue
                try:
                    box = tuple(float(row[key]) for key in _BOX_COLUMNS)
                    if not all(math.isfinite(v) for v in box):
                        raise ValueError("not finite")
                except (TypeError, ValueError):
                    broken.setdefault(image_id, f"{csv_path.name} line {line}: unparseable box "
                                                f"{[row[key] for key in _BOX_COLUMNS]} for {name!r}")
                    continue
                rows[image_id].append((row["rad_id"], name, box))  # type: ignore[arg-type]
        for image_id in broken:
            rows.setdefault(image_id, [])  # every row of the image was broken: it still gets its report line
        for image_id, entries in rows.items():
            path = self.root / "train" / f"{image_id}.dicom"
            try:
                if Path(image_id).name != image_id or image_id in (".", ".."):
                    raise ValueError(f"image_id {image_id!r} is not a plain file name; refused")
                path = contained_path(self.root, f"train/{image_id}.dicom", "image file")
            except ValueError as error:
                self.skipped.append(Skip(str(path), f"{csv_path.name}: {error}"))
                continue
            if image_id in broken:
                self.skipped.append(Skip(str(path), broken[image_id]))
                continue
            if not path.is_file():
                self.skipped.append(Skip(str(path), f"{csv_path.name} lists image_id {image_id} but the file is "
                                                    "missing"))
                continue
            boxes = tuple((rad, box) for rad, name, box in entries
                          if box is not None and (self.findings is None or name in self.findings))
            readers = tuple(sorted({rad for rad, _, _ in entries}))
            self.records.append(_Record(image_id, path, boxes, readers, int(bool(boxes))))

    def _class_problem(self, name: str, class_id: str | None) -> str | None:
        """Why a row's class is not one this layout defines (``None`` when it is fine)."""
        if name != NO_FINDING and name not in self.known:
            return f"unknown class name {name!r} (not one of the {len(self.known)} findings of the {self.layout} layout)"
        if self.layout != "kaggle" or class_id is None:
            return None
        expected = len(KAGGLE_FINDINGS) if name == NO_FINDING else KAGGLE_FINDINGS.index(name)
        try:
            number = float(class_id.strip())
        except ValueError:
            number = float("nan")
        if number != expected:
            return f"class_id {class_id.strip()!r} does not match class name {name!r} (its id is {expected})"
        return None

    def record_id(self, record: _Record) -> str:
        return record.image_id

    def native_pixels(self, record: _Record) -> np.ndarray:
        return read_dicom(record.path, max_pixels=self.max_pixels).pixels

    def load(self, record: _Record) -> Item:
        decoded = read_dicom(record.path, max_pixels=self.max_pixels)
        image = resize_image(decoded.pixels, self.size)
        raw = np.array([box for _, box in record.boxes], dtype=np.float64).reshape(-1, 4)
        checked = check_boxes(raw, decoded.shape, str(record.path))
        boxes = scale_boxes(checked, decoded.shape, self.size)
        roi: torch.Tensor = boxes
        if self.merge == "majority":
            roi = self._majority(record, boxes)
        meta = {"path": str(record.path), "source_shape": list(decoded.shape), "readers": list(record.readers),
                "photometric": decoded.photometric, "bits_stored": decoded.bits_stored}
        return Item(record.image_id, image, roi, record.label, meta)

    def _majority(self, record: _Record, boxes: torch.Tensor) -> torch.Tensor:
        votes = torch.zeros(self.size, dtype=torch.int32)
        for reader in record.readers:
            mine = [row for row, (rad, _) in enumerate(record.boxes) if rad == reader]
            if mine:
                votes += Roi.from_boxes([boxes[mine]], size=self.size).to_masks()[0].to(torch.int32)
        if not record.readers:
            raise ItemError(str(record.path), "no readers for the majority rule")
        return votes >= math.ceil(len(record.readers) / 2)
