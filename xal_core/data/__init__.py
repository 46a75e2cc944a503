"""Datasets, synthetic generators and the pool store (docs/architecture.md, docs/data.md).

``open_dataset(kind, root, size=(H, W), **options)`` returns an indexable dataset of
:class:`Item`; ``PoolStore.open(path)`` streams a pool written by ``xal ingest``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from .item import Dataset, Item, ItemError, Skip
from .pool_store import DEFAULT_ROI_SOURCE, ROI_SOURCES, PoolChunk, PoolStore, PoolWriter

__all__ = ["DEFAULT_ROI_SOURCE", "GENERATED_KINDS", "KINDS", "ROI_SOURCES", "Dataset", "Item", "ItemError", "PoolChunk",
           "PoolStore", "PoolWriter", "Skip", "detect_kind", "open_dataset"]

KINDS = ("brats", "vindr", "siim", "generic", "synthetic", "cxr-sim")
#: Kinds generated in memory, with their own splits and no root folder.
GENERATED_KINDS = ("synthetic", "cxr-sim")


def open_dataset(kind: str, root: str | Path | None = None, *, size: tuple[int, int] = (224, 224),
                 **options: Any) -> Dataset:
    """Open a dataset of ``kind`` at ``root`` whose items come out at ``size = (H, W)``.

    The ``GENERATED_KINDS`` take no root: ``synthetic`` (the shortcut benchmark) and ``cxr-sim``
    (synthetic chest X-rays on real annotation geometry; needs the ``cxr`` extra). Options are the
    adapter's keyword arguments (docs/data.md lists them). A wrong root raises one ``ValueError``
    naming the expected file that is missing.
    """
    size = (int(size[0]), int(size[1]))
    if kind == "synthetic":
        from .shortcut import ShortcutBenchmark

        return _construct("synthetic", ShortcutBenchmark, size, **options)
    if kind == "cxr-sim":
        from .cxr_benchmark import CxrSimBenchmark

        return _construct("cxr-sim", CxrSimBenchmark, size, **options)
    if root is None:
        raise ValueError(f"open_dataset({kind!r}): a root folder is required")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: dataset root is not a folder")
    if kind == "brats":
        from .brats import BraTS

        return _construct(kind, BraTS, root, size, **options)
    if kind == "vindr":
        from .vindr import VinDrCXR

        return _construct(kind, VinDrCXR, root, size, **options)
    if kind == "siim":
        from .siim import SiimCovid

        return _construct(kind, SiimCovid, root, size, **options)
    if kind == "generic":
        from .generic import GenericFolder

        return _construct(kind, GenericFolder, root, size, **options)
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def _construct(kind: str, adapter: type, *args: Any, **options: Any) -> Dataset:
    """Call the adapter, turning an unknown option into a ``ValueError`` that lists the known ones."""
    parameters = inspect.signature(adapter.__init__).parameters
    known = [name for name, p in parameters.items() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{kind}: unknown option(s) {unknown}; options are {known}")
    return adapter(*args, **options)


def detect_kind(root: str | Path) -> str:
    """Guess the dataset kind from the files at ``root`` (``xal ingest --kind auto``)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: dataset root is not a folder (or pass 'synthetic' for the built-in benchmark)")
    if (root / "MICCAI_BraTS2020_TrainingData").is_dir() or any(root.glob("BraTS2021_*")):
        return "brats"
    if (root / "train_study_level.csv").is_file():
        return "siim"
    if (root / "train.csv").is_file() or (root / "annotations" / "annotations_train.csv").is_file():
        return "vindr"
    if (root / "labels.csv").is_file():
        return "generic"
    raise ValueError(f"{root}: cannot tell the dataset kind (no MICCAI_BraTS2020_TrainingData/, BraTS2021_*/, "
                     "train_study_level.csv, train.csv, annotations/annotations_train.csv or labels.csv); "
                     "pass --kind")
