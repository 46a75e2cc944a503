"""The synthetic shortcut benchmark: images whose class is in the lesion, with a tempting marker.

Why: explainability-guided acquisition is meant to find images a model classifies *for the wrong
reason*. This benchmark builds the wrong reason in. Each 2D single-channel image has

* a textured, anatomy-like background (a soft body ellipse, rib-like stripes, low-frequency
  texture), different in every image;
* one lesion whose *appearance* decides the class: inside the lesion the intensity follows
  ``contrast · (0.6 + 0.4·cos(π·k·ρ))`` with ``ρ`` the normalised radius, so class 0 is a solid
  blob, class 1 a bright core fading to a dark rim, class 2 a core plus a ring, and so on;
  the ROI is the lesion's mask (or its bounding box);
* a spurious marker outside the ROI, like burned-in text: a small glyph in a corner whose corner
  and bit pattern encode a class ``m``. In the ``pool`` and ``val`` splits ``m`` equals the true
  class with probability ``shortcut`` (else another class at random); in the ``test`` split it
  never does. A model that reads the marker scores well on the pool and fails on the test split,
  and its Grad-CAM sits on the marker, outside the ROI.

Every item is drawn from ``(seed, split, index)`` alone, so any item or chunk is reproducible on
its own and a pool of any size streams in constant memory.

The lesion's centre sits in the central 36–64 % of the frame and the marker's glyph in a corner
(3 % from the edges, cells of 4 % × ``marker_scale``); a lesion that would touch the glyph's box
is redrawn, so the marker is always outside the ROI.

Calibration: the defaults (``shortcut`` 0.99, ``contrast`` 0.14, ``noise`` 0.05,
``marker_scale`` 2.5) were chosen with ``bench/calibrate_shortcut.py`` on random sampling alone,
before any strategy was compared: over 3 seeds, a ResNet-18 trained on 570 random labels scores
67 % on the test split (every seed <= 77 %, criterion <= 85 %) while marker-free training reaches
98.7 % (every seed >= 98 %, criterion >= 95 %). docs/data.md has the grids and the numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .item import IndexedDataset, Item

__all__ = ["ShortcutBenchmark", "SPLITS"]

SPLITS = ("pool", "val", "test")
_GLYPH = (3, 3)  # marker bit grid (rows, cols): 9 bits of the class id plus corner


class ShortcutBenchmark(IndexedDataset):
    """``n`` items of one split.

    Args:
        size: output frame ``(H, W)``; at least 16×16 so the marker glyph has pixels.
        n: number of items in this split.
        split: ``pool``, ``val`` or ``test`` (the test split never agrees with the marker).
        classes: number of classes ``K`` (2..8).
        shortcut: probability that the marker agrees with the class in ``pool``/``val``.
        contrast: lesion intensity over the background (the class signal's strength).
        noise: standard deviation of additive Gaussian noise.
        seed: the benchmark's identity; equal arguments give equal images.
        roi: ``"mask"`` (the lesion's mask) or ``"boxes"`` (its bounding box).
        marker_scale: size of the marker glyph's cells relative to the default (4 % of the frame
            per cell); a larger glyph is a more salient shortcut without making the lesion fainter.
        val_shortcut: probability that the marker agrees with the class in the ``val`` split, when
            it should differ from ``shortcut`` (default: the same). ``1/K`` makes the marker
            uninformative there: a validation set curated by an expert who knows about the cue, so
            that early stopping no longer rewards reading it (docs/results/claim.md). Only the
            marker changes; lesion, background and noise are the same images.
    """

    kind = "synthetic"

    def __init__(self, size: tuple[int, int] = (64, 64), *, n: int = 1000, split: str = "pool", classes: int = 2,
                 shortcut: float = 0.99, contrast: float = 0.14, noise: float = 0.05, seed: int = 0,
                 roi: str = "mask", marker_scale: float = 2.5, val_shortcut: float | None = None) -> None:
        n, classes, seed = int(n), int(classes), int(seed)
        shortcut, contrast, noise = float(shortcut), float(contrast), float(noise)
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if not 2 <= classes <= 8:
            raise ValueError(f"classes: expected 2..8, got {classes}")
        if not 0.0 <= shortcut <= 1.0:
            raise ValueError(f"shortcut: expected a probability in [0, 1], got {shortcut}")
        if val_shortcut is not None:
            val_shortcut = float(val_shortcut)
            if not 0.0 <= val_shortcut <= 1.0:
                raise ValueError(f"val_shortcut: expected a probability in [0, 1], got {val_shortcut}")
        if n < 0 or noise < 0 or contrast <= 0:
            raise ValueError(f"n >= 0, noise >= 0 and contrast > 0 required, got n={n}, noise={noise}, contrast={contrast}")
        marker_scale = float(marker_scale)
        if not 0.25 <= marker_scale <= 3.0:
            raise ValueError(f"marker_scale: expected a factor in [0.25, 3], got {marker_scale}")
        if roi not in ("mask", "boxes"):
            raise ValueError(f"roi: expected 'mask' or 'boxes', got {roi!r}")
        if min(size) < 16:
            raise ValueError(f"size: the shortcut benchmark needs at least 16×16, got {tuple(size)}")
        options = dict(n=n, split=split, classes=classes, shortcut=shortcut, contrast=contrast, noise=noise,
                       seed=seed, roi=roi, marker_scale=marker_scale)
        if val_shortcut is not None:  # recorded only when set, so the default's records stay as they were
            options["val_shortcut"] = val_shortcut
        super().__init__(size, tuple(f"class_{k}" for k in range(classes)), roi, options)
        self.n, self.split, self.k, self.shortcut = n, split, classes, shortcut
        self.contrast, self.noise, self.seed, self.roi_kind = contrast, noise, seed, roi
        self.marker_scale = marker_scale
        self.agreement = {"pool": shortcut, "val": shortcut if val_shortcut is None else val_shortcut, "test": 0.0}[split]
        self.records = range(n)  # type: ignore[assignment]
        height, width = self.size
        self._ys, self._xs = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                                         indexing="ij")

    def load(self, index: int) -> Item:
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), int(index)])
        label = int(rng.integers(self.k))
        # The test split draws nothing here (its marker never agrees); pool and val draw the same
        # number, so a val_shortcut changes the val split's markers and nothing else.
        agrees = self.split != "test" and rng.random() < self.agreement
        marker = label if agrees else int((label + 1 + rng.integers(self.k - 1)) % self.k)
        image, body = self._background(rng)
        mask, lesion = self._lesion(rng, label, self._marker_box(marker))
        image += lesion
        self._draw_marker(image, marker)
        image += rng.normal(0.0, self.noise, image.shape) if self.noise > 0 else 0.0
        np.clip(image, 0.0, 1.0, out=image)
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        roi = torch.from_numpy(mask) if self.roi_kind == "mask" else torch.tensor([box], dtype=torch.float32)
        meta: dict[str, Any] = {"split": self.split, "marker_class": marker, "shortcut_agrees": bool(marker == label),
                                "box": box}
        return Item(f"synthetic-{self.split}-{index:08d}", torch.from_numpy(image.astype(np.float32))[None], roi,
                    label, meta, prior=torch.from_numpy(body))

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The background image and the body's region (the organ: the anatomy prior of an item,
        which needs no expert; the lesion always lies inside it)."""
        ys, xs = self._ys, self._xs
        cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
        rx, ry = rng.uniform(0.36, 0.46), rng.uniform(0.40, 0.48)
        distance = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2
        body = 1.0 / (1.0 + np.exp(-8.0 * (1.0 - distance)))
        texture = np.zeros_like(xs)
        for _ in range(4):
            fx, fy = rng.uniform(-4, 4, size=2)
            texture += rng.uniform(0.3, 1.0) * np.sin(2 * math.pi * (fx * xs + fy * ys) + rng.uniform(0, 2 * math.pi))
        ribs = 0.08 * np.sin(2 * math.pi * rng.uniform(5, 8) * ys + rng.uniform(0, 2 * math.pi)) * body
        return 0.15 + 0.35 * body + 0.03 * texture + ribs, distance <= 1.0

    def _lesion(self, rng: np.random.Generator, label: int,
                marker_box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """The lesion's mask and intensity; a lesion that would touch the marker's box is redrawn.

        Redrawing continues the item's own random stream, so items whose first lesion is clear of
        the marker (about 99 % at 64², the calibrated default) are unchanged by the rule.
        """
        ys, xs = self._ys, self._xs
        for _ in range(100):
            cx, cy = rng.uniform(0.36, 0.64, size=2)
            radius = rng.uniform(0.09, 0.13)
            stretch = rng.uniform(0.8, 1.25)
            rho = np.sqrt(((xs - cx) / (radius * stretch)) ** 2 + ((ys - cy) * stretch / radius) ** 2)
            mask = rho <= 1.0
            if not mask[marker_box].any():
                break
        if not mask.any():  # a tiny frame can miss every pixel centre: keep the centre pixel
            mask[int(cy * mask.shape[0]), int(cx * mask.shape[1])] = True
        pattern = 0.6 + 0.4 * np.cos(math.pi * label * np.minimum(rho, 1.0))
        return mask, np.where(mask, self.contrast * pattern, 0.0)

    def _marker_box(self, marker: int) -> tuple[slice, slice]:
        """The glyph's rows and columns: corner ``marker % 4``, cells of 4 % × ``marker_scale``."""
        height, width = self.size
        cell = 0.04 * self.marker_scale
        cell_h, cell_w = max(1, round(cell * height)), max(1, round(cell * width))
        rows, cols = _GLYPH
        top = round(0.03 * height) if marker % 4 in (0, 1) else height - round(0.03 * height) - rows * cell_h
        left = round(0.03 * width) if marker % 4 in (0, 2) else width - round(0.03 * width) - cols * cell_w
        return slice(top, top + rows * cell_h), slice(left, left + cols * cell_w)

    def _draw_marker(self, image: np.ndarray, marker: int) -> None:
        """A 3×3 bit glyph (bits of ``marker + 1``, so never blank) in corner ``marker % 4``."""
        box_rows, box_cols = self._marker_box(marker)
        top, left = box_rows.start, box_cols.start
        rows, cols = _GLYPH
        cell_h, cell_w = (box_rows.stop - top) // rows, (box_cols.stop - left) // cols
        code = marker + 1
        for bit in range(rows * cols):
            if code >> bit & 1:
                r, c = divmod(bit, cols)
                image[top + r * cell_h: top + (r + 1) * cell_h, left + c * cell_w: left + (c + 1) * cell_w] = 0.95
