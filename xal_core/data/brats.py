"""BraTS 2020 / 2021 adapter: 2D axial slices of the MRI volumes, ROI = whole tumour.

Layouts: ``root/MICCAI_BraTS2020_TrainingData/BraTS20_Training_NNN/…_{flair,t1,t1ce,t2,seg}.nii``
(+ ``name_mapping.csv`` with ``Grade``), or ``root/BraTS2021_NNNNN/…_{…}.nii.gz``. Case 355 of
2020 ships its segmentation as ``W39_1998.09.19_Segm.nii``; it is found under that name.

Slice rule (documented so pools are reproducible): axial slices ``z`` (the last voxel axis) with
``⌊lo·Z⌋ ≤ z < ⌈hi·Z⌉`` and ``z ≡ ⌊lo·Z⌋ (mod stride)``, defaults ``band=(0.1, 0.9)`` and
``stride=1``. The band is decided from the header alone, so indexing a 369-case dataset reads no
voxel data; the 10 % cut at each end drops the slices that hold little or no brain in the
co-registered 155-slice BraTS volumes. A slice is shown with rows = the second voxel axis and
columns = the first (no reorientation: BraTS volumes share one template).

Intensity: per volume and modality, the 0.5th and 99.5th percentiles of the *brain* voxels
(non-zero: BraTS is skull-stripped) map to 0 and 1, clipped; the background stays 0.

Tasks: ``tumour`` (default; ``no_tumour``/``tumour`` per slice: any ``seg > 0`` on it) or
``grade`` (``HGG``/``LGG`` of the case, from ``name_mapping.csv``, given to each of its slices).
The ROI is the whole tumour ``seg > 0`` on the slice, a mask; a slice without tumour has a
known-empty ROI. ``modality`` is one of ``flair, t1, t1ce, t2`` or a list of them (channels).
"""

from __future__ import annotations

import csv
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .item import IndexedDataset, Item, ItemError, Skip, resize_image, resize_mask

__all__ = ["BraTS", "MODALITIES"]

MODALITIES = ("flair", "t1", "t1ce", "t2")
_SEG_QUIRKS = {"BraTS20_Training_355": "W39_1998.09.19_Segm.nii"}


@dataclass(frozen=True)
class _Case:
    name: str
    images: tuple[Path, ...]
    seg: Path
    grade: int


@dataclass(frozen=True)
class _Record:
    case: _Case
    z: int


class BraTS(IndexedDataset):
    kind = "brats"

    def __init__(self, root: Path, size: tuple[int, int], *, modality: str | Sequence[str] = "flair",
                 task: str = "tumour", band: Sequence[float] = (0.1, 0.9), stride: int = 1,
                 cache_cases: int = 2) -> None:
        modalities = (modality,) if isinstance(modality, str) else tuple(modality)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(f"modality: expected one or more of {MODALITIES}, got {list(modalities)}")
        if task not in ("tumour", "grade"):
            raise ValueError(f"task: expected 'tumour' or 'grade', got {task!r}")
        lo, hi = (float(b) for b in band)
        if not 0 <= lo < hi <= 1 or int(stride) < 1:
            raise ValueError(f"band must satisfy 0 <= lo < hi <= 1 and stride >= 1, got {band}, {stride}")
        classes = ("no_tumour", "tumour") if task == "tumour" else ("HGG", "LGG")
        super().__init__(size, classes, "mask", {"modality": list(modalities), "task": task, "band": [lo, hi],
                                                 "stride": int(stride)})
        self.channels = len(modalities)
        self.modalities, self.task, self.band, self.stride = modalities, task, (lo, hi), int(stride)
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray] | ItemError] = OrderedDict()
        self._cache_cases = max(1, int(cache_cases))
        self._lock = threading.Lock()
        self._index(root)

    def _index(self, root: Path) -> None:
        base = root / "MICCAI_BraTS2020_TrainingData"
        if base.is_dir():
            year, folders = 2020, sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("BraTS20_"))
        else:
            year, folders, base = 2021, sorted(p for p in root.glob("BraTS2021_*") if p.is_dir()), root
        if not folders:
            raise ValueError(f"{root}: not a BraTS root: missing MICCAI_BraTS2020_TrainingData/BraTS20_Training_*/ "
                             "(2020) or BraTS2021_*/ case folders (2021)")
        self.options["year"] = year
        grades: dict[str, int] = {}
        if self.task == "grade":
            mapping = base / "name_mapping.csv"
            if year == 2021 or not mapping.is_file():
                raise ValueError(f"{root}: task 'grade' needs {mapping} (BraTS 2020), which is missing")
            with mapping.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    grade = row.get("Grade", "").strip()
                    if grade in ("HGG", "LGG"):
                        grades[row.get("BraTS_2020_subject_ID", "").strip()] = ("HGG", "LGG").index(grade)
        suffix = ".nii" if year == 2020 else ".nii.gz"
        for folder in folders:
            case = self._case(folder, suffix, grades)
            if case is None:
                continue
            try:
                depth = int(nib.load(case.seg).shape[2])
            except Exception as error:  # nibabel raises several types for a broken header
                self.skipped.append(Skip(str(case.seg), f"unreadable NIfTI header ({type(error).__name__}: {error})"))
                continue
            first, last = math.floor(self.band[0] * depth), math.ceil(self.band[1] * depth)
            self.records.extend(_Record(case, z) for z in range(first, min(last, depth), self.stride))

    def _case(self, folder: Path, suffix: str, grades: dict[str, int]) -> _Case | None:
        name = folder.name
        images = tuple(folder / f"{name}_{m}{suffix}" for m in self.modalities)
        seg = folder / f"{name}_seg{suffix}"
        if not seg.is_file() and name in _SEG_QUIRKS:
            seg = folder / _SEG_QUIRKS[name]
        for path in (*images, seg):
            if not path.is_file():
                self.skipped.append(Skip(str(path), f"case {name}: file missing"))
                return None
        if self.task == "grade" and name not in grades:
            self.skipped.append(Skip(str(folder), f"case {name}: no HGG/LGG grade in name_mapping.csv"))
            return None
        return _Case(name, images, seg, grades.get(name, -1))

    def _volumes(self, case: _Case) -> tuple[np.ndarray, np.ndarray]:
        """Normalised modalities ``[C, X, Y, Z]`` and the seg ``[X, Y, Z]``, cached per case."""
        with self._lock:
            cached = self._cache.get(case.name)
            if cached is None:
                try:
                    cached = self._read(case)
                except ItemError as error:
                    cached = error
                self._cache[case.name] = cached
                while len(self._cache) > self._cache_cases:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(case.name)
        if isinstance(cached, ItemError):
            raise cached
        return cached

    def _read(self, case: _Case) -> tuple[np.ndarray, np.ndarray]:
        volumes = []
        for path in (*case.images, case.seg):
            try:
                volumes.append(np.asarray(nib.load(path).dataobj))
            except Exception as error:  # truncated gzip, short file, bad header: nibabel raises many types
                raise ItemError(str(path), f"corrupt or truncated NIfTI ({type(error).__name__}: {error})") from None
        seg = volumes.pop()
        if any(v.shape != seg.shape or v.ndim != 3 for v in volumes):
            raise ItemError(str(case.seg), f"case {case.name}: volume shapes differ "
                                           f"{[v.shape for v in volumes]} vs seg {seg.shape}")
        unexpected = set(np.unique(seg).tolist()) - {0, 1, 2, 4}
        if unexpected:
            raise ItemError(str(case.seg), f"case {case.name}: seg labels {sorted(unexpected)} not in 0/1/2/4")
        normalised = np.stack([self._normalise(v.astype(np.float32)) for v in volumes])
        return normalised, seg > 0

    @staticmethod
    def _normalise(volume: np.ndarray) -> np.ndarray:
        brain = volume > 0
        if not brain.any():
            return np.zeros_like(volume)
        low, high = np.percentile(volume[brain], [0.5, 99.5])
        scaled = np.clip((volume - low) / max(high - low, 1e-6), 0, 1)
        return np.where(brain, scaled, 0).astype(np.float32)

    def record_id(self, record: _Record) -> str:
        return f"{record.case.name}/z{record.z:03d}"

    def native_pixels(self, record: _Record) -> np.ndarray:
        return self._axial(self._volumes(record.case)[0], record.z)

    @staticmethod
    def _axial(images: np.ndarray, z: int) -> np.ndarray:
        """``[C, H, W]`` of axial slice ``z`` of the ``[C, X, Y, Z]`` volumes, transposed as the pool stores it."""
        return np.ascontiguousarray(images[:, :, :, z].transpose(0, 2, 1))

    def load(self, record: _Record) -> Item:
        images, tumour = self._volumes(record.case)
        image = resize_image(torch.from_numpy(self._axial(images, record.z)), self.size)
        mask = resize_mask(np.ascontiguousarray(tumour[:, :, record.z].T), self.size)
        label = int(mask.any() or tumour[:, :, record.z].any()) if self.task == "tumour" else record.case.grade
        meta = {"case": record.case.name, "slice": record.z, "modality": list(self.modalities),
                "path": str(record.case.images[0].parent)}
        # The brain (nonzero voxels in any modality) is the slice's anatomy prior: no expert needed.
        brain = resize_mask(np.ascontiguousarray((images[:, :, :, record.z] > 0).any(axis=0).T), self.size)
        return Item(self.record_id(record), image, mask, label, meta, prior=brain)
