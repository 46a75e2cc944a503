"""BraTS replicas in the 2020 and 2021 layouts, written with nibabel.

2020::

    MICCAI_BraTS2020_TrainingData/
        name_mapping.csv                      Grade,BraTS_2017_subject_ID,...,BraTS_2020_subject_ID
        BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii
        BraTS20_Training_355/BraTS20_Training_355_{flair,t1,t1ce,t2}.nii + W39_1998.09.19_Segm.nii

2021: ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz`` directly under the root.

Volumes are small (default 32×32×16 voxels, axial = last axis) but have the real encodings:
int16 modalities with zero background (skull-stripped), a uint8 segmentation with labels
0 (background), 1 (necrotic core), 2 (oedema), 4 (enhancing tumour). The tumour is a sphere in
the upper half of the axial range, so the lower slices have none.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["write_brats", "MODALITIES", "QUIRK_355_SEG"]

MODALITIES = ("flair", "t1", "t1ce", "t2")
QUIRK_355_SEG = "W39_1998.09.19_Segm.nii"


def _volumes(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    nx, ny, nz = shape
    x, y, z = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), np.linspace(-1, 1, nz), indexing="ij")
    brain = (x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2 < 1
    cx, cy, cz = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0.25, 0.45)
    radius = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
    seg = np.zeros(shape, dtype=np.uint8)
    seg[(radius < 0.4) & brain] = 2
    seg[(radius < 0.25) & brain] = 4
    seg[(radius < 0.12) & brain] = 1
    modalities = {}
    for index, name in enumerate(MODALITIES):
        tissue = 300 + 100 * index + 40 * rng.standard_normal(shape)
        tissue += np.where(seg == 2, 250, 0) + np.where(seg == 4, 400, 0) - np.where(seg == 1, 150, 0)
        modalities[name] = np.where(brain, np.clip(tissue, 1, None), 0).astype(np.int16)
    return modalities, seg


def write_brats(out: Path, n: int = 3, *, year: int = 2020, seed: int = 0,
                shape: tuple[int, int, int] = (32, 32, 16)) -> list[str]:
    """Write ``n`` cases; in 2020 the last one is case 355 with its oddly named seg file."""
    if year not in (2020, 2021):
        raise ValueError(f"year: expected 2020 or 2021, got {year}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    cases = []
    if year == 2020:
        numbers = [*range(1, n), 355] if n >= 1 else []
        numbers = numbers[-n:] if n < len(numbers) else numbers
        base = out / "MICCAI_BraTS2020_TrainingData"
    else:
        numbers = list(range(n))
        base = out
    mapping = []
    for position, number in enumerate(numbers):
        case = f"BraTS20_Training_{number:03d}" if year == 2020 else f"BraTS2021_{number:05d}"
        suffix = ".nii" if year == 2020 else ".nii.gz"
        folder = base / case
        folder.mkdir(parents=True, exist_ok=True)
        modalities, seg = _volumes(rng, shape)
        for name, volume in modalities.items():
            nib.save(nib.Nifti1Image(volume, affine), folder / f"{case}_{name}{suffix}")
        seg_name = QUIRK_355_SEG if (year == 2020 and number == 355) else f"{case}_seg{suffix}"
        nib.save(nib.Nifti1Image(seg, affine), folder / seg_name)
        grade = "LGG" if position % 3 == 1 else "HGG"
        mapping.append({"Grade": grade, "BraTS_2017_subject_ID": "", "BraTS_2018_subject_ID": "",
                        "TCGA_TCIA_subject_ID": "", "BraTS_2019_subject_ID": "", "BraTS_2020_subject_ID": case})
        cases.append(case)
    if year == 2020:
        base.mkdir(parents=True, exist_ok=True)
        with (base / "name_mapping.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(mapping[0]) if mapping else ["Grade"])
            writer.writeheader()
            writer.writerows(mapping)
    return cases
