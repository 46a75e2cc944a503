"""``cxr-sim`` as a dataset: the generator of :mod:`xal_core.data.cxr_sim` behind the adapter API.

One split (``pool``, ``val``, ``test``) is generated whole when the dataset is opened (vectorised:
seconds for thousands of items) and served item by item as :class:`Item`:

* ``roi`` — what the expert draws: the finding's boxes in output pixels (``[0, 4]`` for a negative
  image: a known-empty ROI). In the VinDr variant the ROI is *one* reader's boxes, rasterised (a
  mask pool), so it disagrees with the image as real readers do; in its ``val`` and ``test`` splits
  the ROI is the readers' consensus instead, the reference the CAM metrics are measured against.
* ``prior`` — the lung fields: an ROI that needs no expert (a deployment can get it from a lung
  segmentation model), read by the scorer under the ROI source ``anatomy`` (docs/data.md).
* ``meta`` — view (AP/PA), the AP marker's presence, the source patient or image, the fraction of the
  ROI inside the lungs.

Options (``open_dataset("cxr-sim", size=..., **options)``): ``split``, ``n``, ``seed`` and
``variant`` (``rsna``: binary pneumonia on RSNA boxes, the view confound; ``vindr``: "No finding"
plus four findings on VinDr-CXR boxes by three readers).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from . import cxr_sim
from .item import IndexedDataset, Item

__all__ = ["CxrSimBenchmark", "VARIANTS"]

VARIANTS = ("rsna", "vindr")
# the RSNA variant's drawing options and their defaults, read from the generator's own signature
_RSNA_DRAWING = {name: parameter.default for name, parameter in inspect.signature(cxr_sim.rsna_sim).parameters.items()
                 if name in ("opacity", "density_floor", "size_compensation", "mimics")}


class CxrSimBenchmark(IndexedDataset):
    """``n`` items of one split of ``cxr-sim`` (module docstring).

    Args:
        size: output frame ``(H, W)``, at least 32×32.
        n: number of items.
        split: ``pool``, ``val`` or ``test``.
        seed: the benchmark's identity (the patient split and every drawing).
        variant: ``rsna`` or ``vindr``.
        opacity: the RSNA variant's finding density factor (``cxr_sim.rsna_sim``), the difficulty.
        density_floor: the RSNA variant's faintest finding density before ``opacity``.
        size_compensation: the RSNA variant's density boost of small findings (``cxr_sim.rsna_sim``).
        mimics: the RSNA variant's mean number of finding mimics per image (``cxr_sim.rsna_sim``).
    """

    kind = "cxr-sim"

    def __init__(self, size: tuple[int, int] = (64, 64), *, n: int = 1000, split: str = "pool", seed: int = 0,
                 variant: str = "rsna", opacity: float = 1.0,
                 density_floor: float = cxr_sim.DENSITY_RANGE[0], size_compensation: float = 0.0,
                 mimics: float = 0.0) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
        if split not in cxr_sim.SPLITS:
            raise ValueError(f"split: expected one of {', '.join(cxr_sim.SPLITS)}, got {split!r}")
        n, seed = int(n), int(seed)
        drawing = {"opacity": float(opacity), "density_floor": float(density_floor),
                   "size_compensation": float(size_compensation), "mimics": float(mimics)}
        custom = [name for name, value in drawing.items() if value != _RSNA_DRAWING[name]]
        if variant == "rsna":
            self.data = cxr_sim.rsna_sim(split, n, size=tuple(size), seed=seed, **drawing)
        elif custom:
            raise ValueError(f"{custom[0]}: only the rsna variant takes it")
        else:
            self.data = cxr_sim.vindr_sim(split, n, size=tuple(size), seed=seed)
        roi_format = "boxes" if variant == "rsna" else "mask"
        options = dict(n=n, split=split, seed=seed, variant=variant)
        options.update({name: drawing[name] for name in custom})  # recorded only when set
        super().__init__(size, self.data.classes, roi_format, options)
        self.split, self.variant = split, variant
        self.records = range(len(self.data))  # type: ignore[assignment]

    def record_id(self, record: int) -> str:
        return f"cxr-sim-{self.variant}-{self.split}-{int(record):08d}"

    def load(self, record: int) -> Item:
        data, index = self.data, int(record)
        if self.roi_format == "boxes":
            roi = torch.from_numpy(np.asarray(data.boxes[index], dtype=np.float32).reshape(-1, 4))
        elif self.split != "pool" and data.consensus is not None:
            roi = torch.from_numpy(data.consensus[index].copy())
        else:
            roi = torch.from_numpy(data.roi[index].copy())
        meta: dict[str, Any] = {"split": self.split, "view": cxr_sim.tables.VIEWS[data.view[index]],
                                "marker": bool(data.marker[index].any()), "source": data.patient_ids[index],
                                "roi_in_lung": None if np.isnan(data.roi_in_lung[index]) else float(data.roi_in_lung[index])}
        image = torch.from_numpy(data.images[index].astype(np.float32, copy=False))[None]
        return Item(self.record_id(index), image, roi, int(data.labels[index]), meta,
                    prior=torch.from_numpy(data.anatomy[index].copy()))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "generator": self.data.info}
