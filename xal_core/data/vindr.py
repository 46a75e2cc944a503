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
image. Bad rows (unparseable boxes) and missing image files skip the image with a report line;
a box outside the image skips it when it is loaded.
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
from .item import IndexedDataset, Item, ItemError, Skip, check_boxes, resize_image, scale_boxes

__all__ = ["VinDrCXR"]

NO_FINDING = "No finding"
_BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


@dataclass(frozen=True)
class _Record:
    image_id: str
    path: Path
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...]  # (rad_id, box) of the task's findings
    readers: tuple[str, ...]
    label: int


class VinDrCXR(IndexedDataset):
    """Args: root, size; ``merge`` (``union``/``majority``); ``findings`` (None = any finding)."""

    kind = "vindr"

    def __init__(self, root: Path, size: tuple[int, int], *, merge: str = "union",
                 findings: Sequence[str] | None = None) -> None:
        if merge not in ("union", "majority"):
            raise ValueError(f"merge: expected 'union' or 'majority', got {merge!r}")
        if isinstance(findings, str):
            findings = [findings]
        classes = ("no_finding", "abnormal") if findings is None else ("negative", "positive")
        super().__init__(size, classes, "boxes" if merge == "union" else "mask",
                         {"merge": merge, "findings": None if findings is None else list(findings)})
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
                image_id, name = row["image_id"].strip(), row["class_name"].strip()
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
        for image_id, entries in rows.items():
            path = self.root / "train" / f"{image_id}.dicom"
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

    def load(self, record: _Record) -> Item:
        decoded = read_dicom(record.path)
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
