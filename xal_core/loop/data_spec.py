"""``DataSpec``: which data a run prepares, with its defaults and checks.

One frozen dataclass, built once from ``xal run``'s flags (or by hand from Python) and carried whole
to ``prepare_data``, which writes it into ``RUN_DIR/data/data.json`` and refuses to reuse a data
folder prepared for another spec.

>>> DataSpec().pool_size, DataSpec().size
(5000, (64, 64))
>>> DataSpec("brats")
Traceback (most recent call last):
...
ValueError: dataset 'brats' needs --data-dir (the folder of the dataset's files)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xal_core.data import DEFAULT_ROI_SOURCE, GENERATED_KINDS, ROI_SOURCES

__all__ = ["DATASETS", "NATIVE_SPLITS", "DataSpec"]

DATASETS = ("synthetic", "cxr-sim", "brats", "vindr", "siim", "generic")
#: the datasets whose own pool / val / test splits are used; the others split off a test share of groups
NATIVE_SPLITS = ("synthetic", "cxr-sim", "generic")


@dataclass(frozen=True)
class DataSpec:
    """The data of one run.

    Attributes:
        dataset: one of ``DATASETS``.
        data_dir: the dataset's root folder (not used by the generated benchmarks, ``synthetic`` and
            ``cxr-sim``).
        size: the model's input frame ``(H, W)``.
        pool_size, val_size, test_size: split sizes of the generated benchmarks.
        test_fraction: share of groups held out for testing (brats, vindr, siim).
        options: the adapter's own options (``open_dataset``), e.g. the benchmark's ``shortcut``.
        roi_source: what the scorer reads as an unlabelled item's ROI (``xal_core.data.ROI_SOURCES``,
            docs/data.md "ROI sources"): ``expert`` (every item's expert ROI: the paper's oracle
            setting, which no deployment has), ``anatomy`` (a prior that needs no expert) or ``none``.
    """

    dataset: str = "synthetic"
    data_dir: str | Path | None = None
    size: tuple[int, int] = (64, 64)
    pool_size: int = 5000
    val_size: int = 200
    test_size: int = 500
    test_fraction: float = 0.2
    options: Mapping[str, Any] = field(default_factory=dict)
    roi_source: str = DEFAULT_ROI_SOURCE

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {DATASETS}, got {self.dataset!r}")
        if self.roi_source not in ROI_SOURCES:
            raise ValueError(f"roi_source: expected one of {', '.join(ROI_SOURCES)}, got {self.roi_source!r}")
        if self.dataset not in GENERATED_KINDS and self.data_dir is None:
            raise ValueError(f"dataset {self.dataset!r} needs --data-dir (the folder of the dataset's files)")
        object.__setattr__(self, "size", tuple(self.size))
        object.__setattr__(self, "options", dict(self.options))
