"""VinDr-CXR replicas in the Kaggle layout and the PhysioNet layout.

Kaggle (``vinbigdata-chest-xray-abnormalities-detection``)::

    train.csv        image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
    train/<image_id>.dicom

one row per box per radiologist; ``No finding`` is class 14 with empty box fields; three
radiologists per training image. PhysioNet (``vindr-cxr/1.0.0``)::

    annotations/annotations_train.csv   image_id,rad_id,class_name,x_min,y_min,x_max,y_max
    annotations/image_labels_train.csv  image_id,rad_ID,<one 0/1 column per label>
    train/<image_id>.dicom

Image 0 is a ``No finding`` image (known-empty ROI); the encodings cycle through 12/16-bit,
MONOCHROME1/2, window and VOI LUT.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from .dicom_writer import ENCODINGS, write_xray
from .xray_content import chest, paint_boxes

__all__ = ["write_vindr", "FINDINGS"]

FINDINGS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
            "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
            "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis")
NO_FINDING = "No finding"


def write_vindr(out: Path, n: int = 6, *, layout: str = "kaggle", seed: int = 0,
                shape: tuple[int, int] = (96, 80)) -> list[str]:
    """Write ``n`` images; returns their ids in order."""
    if layout not in ("kaggle", "physionet"):
        raise ValueError(f"layout: expected 'kaggle' or 'physionet', got {layout!r}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    labels: list[dict[str, object]] = []
    ids = []
    for index in range(n):
        image_id = hashlib.md5(f"vindr-{seed}-{index}".encode()).hexdigest()
        ids.append(image_id)
        image = chest(rng, shape)
        rads = ("R8", "R9", "R10")
        finding_boxes: list[tuple[float, float, float, float]] = []
        per_rad: dict[str, list[tuple[str, tuple[float, float, float, float] | None]]] = {r: [] for r in rads}
        if index % 3 != 0:
            height, width = shape
            for finding in range(1 + index % 2):
                x0, y0 = rng.uniform(0.1, 0.5) * width, rng.uniform(0.1, 0.5) * height
                box = (round(x0, 2), round(y0, 2), round(x0 + 0.3 * width, 2), round(y0 + 0.3 * height, 2))
                finding_boxes.append(box)
                name = FINDINGS[(index + 7 * finding) % len(FINDINGS)]
                for rad_index, rad in enumerate(rads):
                    if rad_index == 2 and finding == 0 and index % 2:
                        continue  # the third radiologist saw nothing here
                    jitter = rng.uniform(-2, 2, 4)
                    jittered = tuple(float(np.clip(v + j, 0, (width if k % 2 == 0 else height)))
                                     for k, (v, j) in enumerate(zip(box, jitter, strict=True)))
                    per_rad[rad].append((name, jittered))  # type: ignore[arg-type]
        for rad in rads:
            if not per_rad[rad]:
                per_rad[rad].append((NO_FINDING, None))
        paint_boxes(image, finding_boxes)
        bits, photometric, voi = ENCODINGS[index % len(ENCODINGS)]
        write_xray(out / "train" / f"{image_id}.dicom", image, bits=bits, photometric=photometric, voi=voi)
        for rad in rads:
            for name, box in per_rad[rad]:
                row: dict[str, object] = {"image_id": image_id, "class_name": name, "rad_id": rad}
                if layout == "kaggle":
                    row["class_id"] = 14 if name == NO_FINDING else FINDINGS.index(name)
                for key, value in zip(("x_min", "y_min", "x_max", "y_max"), box or ("",) * 4, strict=True):
                    row[key] = f"{value:.2f}" if box else ""
                rows.append(row)
            label_row: dict[str, object] = {"image_id": image_id, "rad_ID": rad}
            names = {name for name, _ in per_rad[rad]}
            for name in (*FINDINGS, "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other disease", NO_FINDING):
                label_row[name] = int(name in names)
            labels.append(label_row)
    if layout == "kaggle":
        _write_csv(out / "train.csv", ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max",
                                       "y_max"], rows)
    else:
        _write_csv(out / "annotations" / "annotations_train.csv",
                   ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"], rows)
        _write_csv(out / "annotations" / "image_labels_train.csv", list(labels[0]) if labels else ["image_id"],
                   labels)
    return ids


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
