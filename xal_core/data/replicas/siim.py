"""SIIM-FISABIO-RSNA COVID-19 replicas in the Kaggle layout::

    train_study_level.csv   id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,Atypical Appearance
    train_image_level.csv   id,boxes,label,StudyInstanceUID
    train/<study>/<series>/<image>.dcm

Study ids are ``<StudyInstanceUID>_study``, image ids ``<SOPInstanceUID>_image``; ``boxes`` is a
Python-literal list of ``{'x', 'y', 'width', 'height'}`` dicts, empty for an image without
opacity, whose ``label`` is ``none 1 0 0 1 1``. Study 0 holds two images in two series, and its
second image has no boxes; the rest have one image each.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from .dicom_writer import ENCODINGS, write_xray
from .xray_content import chest, paint_boxes

__all__ = ["write_siim", "STUDY_COLUMNS"]

STUDY_COLUMNS = ("Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance")


def write_siim(out: Path, n: int = 5, *, seed: int = 0, shape: tuple[int, int] = (80, 96)) -> list[str]:
    """Write ``n`` images (study 0 has two); returns the image ids (``<uid>_image``) in CSV order."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    prefix = f"1.2.826.0.1.3680043.10.{seed}."
    studies: list[dict[str, object]] = []
    images: list[dict[str, object]] = []
    ids: list[str] = []
    study_uid = ""
    study_number = -1
    for index in range(n):
        if index != 1:  # image 1 joins study 0
            study_number += 1
            study_uid = generate_uid(prefix=prefix, entropy_srcs=[f"study{study_number}"])
            category = study_number % 4
            studies.append({"id": f"{study_uid}_study", **{c: int(i == category) for i, c in enumerate(STUDY_COLUMNS)}})
        category = study_number % 4
        series_uid = generate_uid(prefix=prefix, entropy_srcs=[f"series{index}"])
        image_uid = generate_uid(prefix=prefix, entropy_srcs=[f"image{index}"])
        image = chest(rng, shape)
        height, width = shape
        boxes = []
        if category != 0 and index != 1:
            for _ in range(1 + index % 2):
                x, y = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
                boxes.append({"x": round(x, 5), "y": round(y, 5), "width": round(0.3 * width, 5),
                              "height": round(0.35 * height, 5)})
        paint_boxes(image, [(b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]) for b in boxes])
        bits, photometric, voi = ENCODINGS[index % len(ENCODINGS)]
        write_xray(out / "train" / study_uid / series_uid / f"{image_uid}.dcm", image, bits=bits,
                   photometric=photometric, voi=voi, study_uid=study_uid, series_uid=series_uid, sop_uid=image_uid)
        label = " ".join(f"opacity 1 {b['x']} {b['y']} {b['x'] + b['width']} {b['y'] + b['height']}"
                         for b in boxes) or "none 1 0 0 1 1"
        images.append({"id": f"{image_uid}_image", "boxes": str(boxes) if boxes else "", "label": label,
                       "StudyInstanceUID": study_uid})
        ids.append(f"{image_uid}_image")
    _write(out / "train_study_level.csv", ["id", *STUDY_COLUMNS], studies)
    _write(out / "train_image_level.csv", ["id", "boxes", "label", "StudyInstanceUID"], images)
    return ids


def _write(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
