"""Answers as tables for ML pipelines, in the pool frame the ROIs were drawn in.

* **CSV** (``annotations.csv``): one row per answered item — ``item_id``, ``source_id``,
  ``label``, ``label_name``, ``roi_kind`` (``none`` = not drawn, ``empty`` = known empty,
  ``boxes``, ``mask``), ``boxes`` (JSON ``[[x_min, y_min, x_max, y_max], …]`` in pool pixels),
  ``mask_rle`` (a mask as COCO's uncompressed RLE counts, column-major, starting with a 0-run),
  ``frame_height``, ``frame_width``, ``annotator``, ``time``.
* **COCO** (``annotations.coco.json``): ``images`` (one per item: ``id`` = item id,
  ``file_name`` = source id, the pool frame's size, and the image-level ``label``/``label_name``
  COCO has no field for), ``categories`` (the run's classes, ids from 1), ``annotations`` (one
  per box, ``bbox = [x, y, w, h]``; one per mask, ``segmentation`` = uncompressed RLE,
  ``iscrowd`` 0 for boxes and 1 for RLE masks as COCO's tools expect). Known-empty and undrawn
  ROIs have no annotation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from xal_core.loop.annotations import BoxRoi, MaskRoi

from .answers import RunAnswers

__all__ = ["export_csv", "export_coco", "rle_counts"]

CSV_COLUMNS = ("item_id", "source_id", "label", "label_name", "roi_kind", "boxes", "mask_rle", "frame_height",
               "frame_width", "annotator", "time")


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: run lengths of the column-major flattened mask, first run of zeros."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return [int(c) for c in counts]


def _kind(roi: Any) -> str:
    if roi is None:
        return "none"
    if isinstance(roi, BoxRoi):
        return "boxes" if roi.boxes else "empty"
    return "mask" if roi.to_mask().any() else "empty"


def export_csv(run: RunAnswers, out: str | Path) -> Path:
    path = Path(out) / "annotations.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for answer in run.answers:
            a = answer.annotation
            boxes = json.dumps([list(b) for b in a.roi.boxes]) if isinstance(a.roi, BoxRoi) else ""
            rle = json.dumps(rle_counts(a.roi.to_mask().numpy())) if isinstance(a.roi, MaskRoi) else ""
            writer.writerow([a.item_id, answer.source_id, a.label, a.label_name, _kind(a.roi), boxes, rle,
                             run.frame[0], run.frame[1], a.annotator, a.time])
    temporary.replace(path)
    return path


def export_coco(run: RunAnswers, out: str | Path) -> Path:
    height, width = run.frame
    images, annotations = [], []
    for answer in run.answers:
        a = answer.annotation
        images.append({"id": a.item_id, "file_name": answer.source_id, "height": height, "width": width,
                       "label": a.label, "label_name": a.label_name})
        if isinstance(a.roi, BoxRoi):
            for x0, y0, x1, y1 in a.roi.boxes:
                annotations.append({"id": len(annotations) + 1, "image_id": a.item_id, "category_id": a.label + 1,
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        elif isinstance(a.roi, MaskRoi):
            mask = a.roi.to_mask().numpy()
            if mask.any():
                ys, xs = np.nonzero(mask)
                annotations.append({"id": len(annotations) + 1, "image_id": a.item_id, "category_id": a.label + 1,
                                    "segmentation": {"size": [int(mask.shape[0]), int(mask.shape[1])],
                                                     "counts": rle_counts(mask)},
                                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                             int(ys.max() - ys.min() + 1)],
                                    "area": int(mask.sum()), "iscrowd": 1})
    document = {"info": {"description": f"xal run {run.run_dir.name}: expert answers in the pool frame"},
                "images": images, "annotations": annotations,
                "categories": [{"id": index + 1, "name": name} for index, name in enumerate(run.class_names)]}
    path = Path(out) / "annotations.coco.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
    temporary.replace(path)
    return path
