"""``cxr-sim``: synthetic chest X-rays drawn on real annotation geometry (RSNA Pneumonia, VinDr-CXR).

Why: explainability-guided acquisition has to be tried where the wrong reasons are the real ones.
A fully invented benchmark (:mod:`xal_core.data.shortcut`) chooses its own lesion sizes and
confounds; this one takes them from real tables (:mod:`xal_core.data.cxr_tables`): each synthetic
image is one real RSNA patient (label, view position, boxes) or one real VinDr image (three
radiologists' boxes) rendered on one of 434 real lung-field shapes. No pixel comes from a real image.

What an image holds (single channel, float32 in ``[0, 1]``, bright = dense as on a film):

* a chest: dark air around a soft-tissue trunk, two lung fields (a real shape placed with jitter),
  the mediastinum and spine, a heart shadow, clavicles, faint periodic curved rib bands, a
  low-frequency texture, blur and noise;
* the finding (RSNA: pneumonia) drawn inside the real boxes, mapped onto the synthetic lungs (below),
  with a varied extent (a rounded patch filling 70-100 % of the box), density and texture (smooth
  ground glass to patchy consolidation), and always inside the lung mask: the opacity is the box
  intersected with the lungs;
* the view's look. AP (portable, supine) films differ from PA ones as in practice: the heart is
  magnified (about 1.25×), the lungs are shorter (poor inspiration), contrast is lower, the image is
  blurrier and noisier, and most carry a burned-in "AP"/portable marker, a small bright letter-like
  block in a top corner, outside the lungs. In the RSNA pool pneumonia is 38 % of AP and 9 % of PA
  images (the real table), so a model can cheat twice: on the whole-image look and on the marker.

Boxes to the synthetic frame: the table's boxes are in their own frame (RSNA 1024², VinDr's unit
frame). The 1st-99th percentile extent of all the table's lung-finding box edges is mapped onto the
synthetic lungs' bounding box, and each box is then clipped to the bounding box of the lung its
centre falls on (cardiac and mediastinal VinDr findings: to the thorax), so boxes keep their real
sizes relative to the lungs, their sides and heights. The expert ROI is the box rasterised by the
pixel-centre rule (pixel ``(y, x)`` is inside when ``x_min <= x + 0.5 < x_max`` and the same on
``y``). A box still covers some pixels outside the lung mask (the mask is not a rectangle);
``roi_in_lung`` reports the fraction per item (RSNA: 0.93 on average, 10th percentile 0.82).

Splits: patients (VinDr: images) are split once per ``seed``, inside every (view, label) stratum,
into ``pool`` 70 %, ``val`` 10 % and ``test`` 20 %, so no patient is in two splits. The pool keeps the
table's joint distribution of view and label (the confound). ``val`` and ``test`` are resampled so
that view and label are independent: half AP, and the same prevalence in both views (the table's by
default), so a view-only classifier scores at chance (balanced accuracy 0.5). Where a split needs
more items of a stratum than it has patients, patients repeat with a new rendering (``repeat``).

Determinism: item ``i`` of a split depends only on the arguments and ``i`` (not on ``n``): items are
drawn in fixed chunks, each from its own seeded ``numpy`` Generator, so a longer pool extends a
shorter one. Generation is vectorised: 5 000 items at 64² take about 2-3 s on 2 cores (after the
tables are read once per process, about 4 s).

VinDr variant (:func:`vindr_sim`): a multi-class task, "No finding" (all three readers agreed) plus a
few findings (by default the four most frequent). An image's label is the listed finding most of
its readers marked (ties: the first listed); the finding is drawn in its *consensus* region (pixels
inside the boxes of at least 2 of the 3 readers; the union of the boxes where no pixel has two votes,
as when only one reader marked it), shaped by a soft ellipse in the region's bounding box.
The ROI an oracle gives is *one* reader's boxes (drawn at random among those who marked the finding),
so it disagrees with the image as real readers do; the consensus and the union of all readers are
kept for test-time CAM metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import cxr_tables as tables

__all__ = ["SPLITS", "DEFAULT_FINDINGS", "FINDING_STYLES", "CxrSimSplit", "rsna_sim", "vindr_sim"]

SPLITS = ("pool", "val", "test")
DENSITY_RANGE = (0.10, 0.30)  # the RSNA finding's density before `opacity` (full scale 1.0)
# the median RSNA finding's share of the frame (its boxes' union on the synthetic lungs; 164 px at 64²):
# `size_compensation` makes smaller findings denser, up to 4x, so none is less visible than this one
REFERENCE_AREA = 0.04
MAX_COMPENSATION = 4.0
MAX_MIMICS = 4  # finding mimics per image at most (`mimics`)
MIMIC_RADIUS = (0.015, 0.035)  # of the frame: 1-2 px at 64², below the smallest RSNA boxes (~6 px)
_FRACTIONS = {"val": 0.10, "test": 0.20}  # of each stratum; the pool keeps the rest
DEFAULT_FINDINGS = ("Aortic enlargement", "Cardiomegaly", "Pleural thickening", "Pulmonary fibrosis")
# How each VinDr finding looks in the synthetic image (the label is not only where, but what).
FINDING_STYLES = {
    "Aortic enlargement": "mediastinal", "Cardiomegaly": "mediastinal", "Pleural thickening": "pleural",
    "Pleural effusion": "homogeneous", "Pulmonary fibrosis": "reticular", "ILD": "reticular",
    "Nodule/Mass": "nodular", "Calcification": "nodular", "Lung Opacity": "patchy", "Consolidation": "patchy",
    "Infiltration": "patchy", "Atelectasis": "homogeneous", "Other lesion": "patchy", "Pneumothorax": "lucent",
}
_MEDIASTINAL = ("Aortic enlargement", "Cardiomegaly")
_PHI = (math.sqrt(5.0) - 1.0) / 2.0
# the burned-in marker: "AP" in a 3×5 font (rows × cols = 5 × 7)
_GLYPH = np.array([[0, 1, 0, 0, 1, 1, 0],
                   [1, 0, 1, 0, 1, 0, 1],
                   [1, 1, 1, 0, 1, 1, 0],
                   [1, 0, 1, 0, 1, 0, 0],
                   [1, 0, 1, 0, 1, 0, 0]], dtype=bool)


@dataclass(frozen=True, eq=False)
class CxrSimSplit:
    """``N`` generated items of one split, as arrays (index ``i`` is one item).

    Attributes:
        images: float32 ``[N, H, W]`` in ``[0, 1]``.
        labels: int64 ``[N]``, index into ``classes``.
        roi: bool ``[N, H, W]``: the expert's boxes (RSNA: the table's; VinDr: one reader's), empty
            for a negative image.
        anatomy: bool ``[N, H, W]``: the lung fields (an ROI that needs no expert).
        marker: bool ``[N, H, W]``: the burned-in AP marker's pixels (empty when there is none).
        view: uint8 ``[N]``, index into :data:`cxr_tables.VIEWS` (0 = PA, 1 = AP).
        patient_ids: the source row of each item (RSNA patient id, VinDr image id).
        boxes: per item, float32 ``[k, 4]`` ``(x_min, y_min, x_max, y_max)`` in output pixels, the
            boxes ``roi`` rasterises.
        roi_in_lung: float32 ``[N]``: fraction of the ROI's pixels inside ``anatomy`` (NaN: no ROI).
        repeat: int32 ``[N]``: how many earlier items of the split used the same patient.
        consensus, union: VinDr only, bool ``[N, H, W]``: pixels inside the boxes of at least 2 of
            the 3 readers (where no pixel has two: of any reader), and of any reader; ``None`` for
            RSNA, whose table holds one adjudicated reading.
        n_readers: VinDr only, int8 ``[N]``: how many of the 3 readers marked the label's finding.
        classes: the class names.
        info: the arguments and the facts of the table and the split (JSON-serialisable).
    """

    images: np.ndarray
    labels: np.ndarray
    roi: np.ndarray
    anatomy: np.ndarray
    marker: np.ndarray
    view: np.ndarray
    patient_ids: tuple[str, ...]
    boxes: tuple[np.ndarray, ...]
    roi_in_lung: np.ndarray
    repeat: np.ndarray
    classes: tuple[str, ...]
    consensus: np.ndarray | None = None
    union: np.ndarray | None = None
    n_readers: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, i: int) -> dict[str, Any]:
        """Item ``i`` as a dict of plain values and arrays (``image`` is ``[H, W]``)."""
        out = {"image": self.images[i], "label": int(self.labels[i]), "roi": self.roi[i], "anatomy": self.anatomy[i],
               "marker": self.marker[i], "view": tables.VIEWS[self.view[i]], "patient_id": self.patient_ids[i],
               "boxes": self.boxes[i], "roi_in_lung": float(self.roi_in_lung[i]), "repeat": int(self.repeat[i])}
        if self.consensus is not None:
            out["consensus"] = self.consensus[i]
            out["union"] = self.union[i]
            out["n_readers"] = int(self.n_readers[i])
        return out


# ------------------------------------------------------------------------------------------ splits


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *tags])


def _partition(strata: np.ndarray, n_strata: int, seed: int, salt: int) -> dict[str, list[np.ndarray]]:
    """Table rows per split and stratum, each list shuffled; disjoint, the same for every split asked."""
    rng = _rng(seed, salt, 0)
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for s in range(n_strata):
        rows = rng.permutation(np.flatnonzero(strata == s))
        n_val = int(round(_FRACTIONS["val"] * len(rows)))
        n_test = int(round(_FRACTIONS["test"] * len(rows)))
        out["val"].append(rows[:n_val])
        out["test"].append(rows[n_val:n_val + n_test])
        out["pool"].append(rows[n_val + n_test:])
    return out


def _sequence(parts: list[np.ndarray], quotas: np.ndarray | None, count: int, seed: int, salt: int,
              split: int) -> tuple[np.ndarray, np.ndarray]:
    """Table rows of items ``0..count-1`` and how often each row was used before.

    ``quotas is None`` (the pool): one shuffle of all the split's rows, cycled, so any prefix keeps the
    table's joint distribution up to sampling noise. Otherwise item ``i``'s stratum comes from the
    golden-ratio sequence ``frac(u0 + i·φ)`` cut at the quotas' cumulative sums (every prefix holds the
    quotas to within a few items), and its row is the next unused one of that stratum, cycling.
    """
    if quotas is None:
        rows = _rng(seed, salt, 1, split).permutation(np.concatenate(parts))
        if len(rows) == 0:
            raise ValueError("the split has no rows")
        i = np.arange(count)
        return rows[i % len(rows)], (i // len(rows)).astype(np.int32)
    usable = np.array([len(p) > 0 for p in parts]) & (quotas > 0)
    q = np.where(usable, quotas, 0.0)
    if q.sum() <= 0:
        raise ValueError("the split has no rows in any stratum its quotas ask for")
    cuts = np.cumsum(q / q.sum())
    u0 = _rng(seed, salt, 2, split).random()
    stratum = np.minimum(np.searchsorted(cuts, (u0 + np.arange(count) * _PHI) % 1.0, side="right"), len(q) - 1)
    rows = np.empty(count, dtype=np.int64)
    repeat = np.empty(count, dtype=np.int32)
    for s in np.unique(stratum):
        at = np.flatnonzero(stratum == s)
        k = np.arange(len(at))
        rows[at] = parts[s][k % len(parts[s])]
        repeat[at] = k // len(parts[s])
    return rows, repeat


def _chunk_size(shape: tuple[int, int]) -> int:
    return int(max(8, 2 ** int(math.log2(max(1, 256 * 64 * 64 // (shape[0] * shape[1]))))))


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    shape = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if min(shape) < 32:
        raise ValueError(f"size: at least 32 × 32 (the marker and the ribs need pixels), got {shape}")
    return shape


def _extent(boxes: np.ndarray) -> np.ndarray:
    """The 1st-99th percentile extent ``(x0, y0, x1, y1)`` of boxes ``[B, 4]`` (x_min..y_max)."""
    return np.array([np.percentile(boxes[:, 0], 1), np.percentile(boxes[:, 1], 1),
                     np.percentile(boxes[:, 2], 99), np.percentile(boxes[:, 3], 99)], dtype=np.float32)


# ------------------------------------------------------------------------------------------ RSNA


def rsna_sim(split: str = "pool", n: int = 1000, *, size: int | tuple[int, int] = 64, seed: int = 0,
             heldout_prevalence: float | None = None, heldout_ap: float = 0.5, ap_marker: float = 0.9,
             opacity: float = 1.0, density_floor: float = DENSITY_RANGE[0],
             size_compensation: float = 0.0, mimics: float = 0.0) -> CxrSimSplit:
    """``n`` items of one split of the binary pneumonia benchmark on RSNA geometry.

    Args:
        split: ``pool`` (the real view/label confound), ``val`` or ``test`` (view ⟂ label).
        n: number of items; beyond the split's patients, patients repeat with new renderings.
        size: output frame, ``S`` or ``(H, W)``, at least 32.
        seed: the benchmark's identity (the patient split and every drawing).
        heldout_prevalence: pneumonia rate of ``val``/``test`` (default: the table's, 22.5 %).
        heldout_ap: share of AP images in ``val``/``test``.
        ap_marker: probability that an AP image carries the burned-in marker (PA images never do).
        opacity: scales the finding's density (drawn from ``[density_floor, 0.30]`` of the full scale
            times ``opacity``): the benchmark's difficulty, calibrated on ``val`` (bench/calibrate_cxr.py).
        density_floor: the faintest finding's density before ``opacity`` (0.10 by default). Findings
            fainter than an absolute ~0.07 are not learned by the small CNNs at 64² even with the whole
            pool labelled (docs/results/study-cxr.md, calibration): a higher floor with a lower
            opacity makes every finding subtle but learnable.
        size_compensation: ``γ`` in ``[0, 1]``: a finding smaller than the median one
            (``REFERENCE_AREA`` of the frame) is made denser by ``(REFERENCE_AREA / area) ** (γ / 2)``
            (at most 4×). A matched filter's signal-to-noise grows as density × √area, so ``γ = 1``
            keeps small findings as visible as the median one; 0 (the default) draws every density
            from the same range whatever the size. Why: at 64² the small, faint quarter of the RSNA
            boxes is not learned even with the whole pool labelled (bench/cxr_misses.py), and a
            reader boxes a small consolidation only when it is dense enough to see.
        mimics: mean number of finding mimics per image (Poisson, at most ``MAX_MIMICS``), in every
            image whatever its label: small, sharp, homogeneous dense nodules inside the lungs (a
            vessel seen end-on, a calcified granuloma, a nipple shadow), as dense as the findings
            but smaller and without their texture. Why: on a real film not every local density is
            pneumonia; a model must learn which are, which takes labels. 0 (the default) draws none
            and leaves every image bit for bit as it was.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n: at least 0, got {n}")
    for name, value in (("heldout_ap", heldout_ap), ("ap_marker", ap_marker)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a probability, got {value}")
    if not 0.0 < opacity <= 4.0:
        raise ValueError(f"opacity: expected a factor in (0, 4], got {opacity}")
    if not 0.0 <= density_floor <= DENSITY_RANGE[1]:
        raise ValueError(f"density_floor: expected a density in [0, {DENSITY_RANGE[1]}], got {density_floor}")
    if not 0.0 <= size_compensation <= 1.0:
        raise ValueError(f"size_compensation: expected an exponent in [0, 1], got {size_compensation}")
    if not 0.0 <= mimics <= MAX_MIMICS:
        raise ValueError(f"mimics: expected a mean count in [0, {MAX_MIMICS}], got {mimics}")
    shape = _shape(size)
    table = tables.load_rsna()
    prevalence = float(table.label.mean()) if heldout_prevalence is None else float(heldout_prevalence)
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"heldout_prevalence: expected a probability, got {heldout_prevalence}")
    strata = 2 * table.view.astype(np.int64) + table.label  # PA-neg, PA-pos, AP-neg, AP-pos
    parts = _partition(strata, 4, seed, salt=1)[split]
    quotas = None if split == "pool" else np.array(
        [(1 - heldout_ap) * (1 - prevalence), (1 - heldout_ap) * prevalence, heldout_ap * (1 - prevalence),
         heldout_ap * prevalence])
    split_code = SPLITS.index(split)
    chunk = _chunk_size(shape)
    total = max(1, -(-n // chunk)) * chunk  # whole chunks, so item i never depends on n
    rows, repeat = _sequence(parts, quotas, total, seed, 1, split_code)
    # the table frame → lungs calibration (all boxes are lung findings here)
    xywh = table.boxes / tables.RSNA_FRAME
    unit = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    extent = _extent(unit)
    shapes = tables.load_lung_shapes(128)
    outs = []
    for c in range(total // chunk):
        take = rows[c * chunk:(c + 1) * chunk]
        boxes = [unit[table.box_start[r]:table.box_start[r + 1]] for r in take]
        outs.append(_render_rsna(_rng(seed, 1, 3, split_code, c), shapes, extent, table.view[take], boxes, shape,
                                 ap_marker, opacity, density_floor, size_compensation, mimics))
    out = _concat(outs, n)
    rows, repeat = rows[:n], repeat[:n]
    info = {"benchmark": "cxr-sim-rsna", "split": split, "n": n, "size": list(shape), "seed": seed,
            "heldout_prevalence": prevalence, "heldout_ap": heldout_ap, "ap_marker": ap_marker, "opacity": opacity,
            "density_range": [density_floor, DENSITY_RANGE[1]], "size_compensation": size_compensation,
            "mimics": mimics,
            "table": {"patients": len(table), "prevalence": float(table.label.mean()),
                      "p_pos_ap": float(table.label[table.view == 1].mean()),
                      "p_pos_pa": float(table.label[table.view == 0].mean())},
            "split_patients": int(sum(len(p) for p in parts)), "unique_patients": int(len(np.unique(rows))),
            "box_extent_1024": [float(v * tables.RSNA_FRAME) for v in extent],
            "mean_roi_in_lung": float(np.nanmean(out["roi_in_lung"])) if np.isfinite(out["roi_in_lung"]).any()
            else None}
    return CxrSimSplit(labels=table.label[rows].astype(np.int64), view=table.view[rows].copy(),
                       patient_ids=tuple(table.patient_ids[r] for r in rows), repeat=repeat,
                       classes=("no pneumonia", "pneumonia"), info=info, **out)


def _render_rsna(rng: np.random.Generator, shapes: tables.LungShapes, extent: np.ndarray, view: np.ndarray,
                 boxes: list[np.ndarray], shape: tuple[int, int], ap_marker: float, opacity: float,
                 density_floor: float, size_compensation: float, mimics: float) -> dict[str, Any]:
    b = len(view)
    chest = _Chest(rng, shapes, view.astype(bool), shape)
    k = max(1, max(len(x) for x in boxes))
    padded = np.zeros((b, k, 4), dtype=np.float32)
    valid = np.zeros((b, k), dtype=bool)
    for i, x in enumerate(boxes):
        padded[i, :len(x)] = x
        valid[i, :len(x)] = True
    px = chest.place_boxes(padded, extent, np.zeros((b, k), dtype=bool))
    rects = chest.rasterise(px, valid)  # [B, K, H, W]
    roi = rects.any(1)
    # the finding: a rounded patch filling 70-100 % of each box, inside the lungs, with its own texture
    fill = rng.uniform(0.7, 1.0, (b, k, 1, 1)).astype(np.float32)
    patch = (chest.superellipse(px, fill) * rects).max(1)
    density = (rng.uniform(density_floor, DENSITY_RANGE[1], (b, 1, 1)) * opacity).astype(np.float32)
    if size_compensation > 0:  # skipped at 0 so the default drawing stays bit for bit what it was
        area = np.maximum(roi.sum((1, 2)), 1) / (shape[0] * shape[1])
        boost = np.clip((REFERENCE_AREA / area) ** (size_compensation / 2), 1.0, MAX_COMPENSATION)
        density = (density * boost[:, None, None]).astype(np.float32)
    patchiness = rng.uniform(0.0, 1.0, (b, 1, 1)).astype(np.float32)
    texture = np.clip(1.0 + patchiness * 0.8 * chest.coarse + 0.25 * chest.fine, 0.2, 2.0)
    chest.add(density * patch * texture * chest.lung)
    if mimics > 0:  # no draw at 0: the default images stay bit for bit what they were
        chest.add(chest.mimics(mimics, (density_floor * opacity, DENSITY_RANGE[1] * opacity * 1.5)))
    marker = chest.burn_marker(rng.random(b) < ap_marker * view.astype(bool))
    return chest.finish(roi=roi, marker=marker, boxes=[px[i, valid[i]] for i in range(b)])


# ----------------------------------------------------------------------------------------- VinDr


def vindr_sim(split: str = "pool", n: int = 1000, *, size: int | tuple[int, int] = 64, seed: int = 0,
              findings: tuple[str, ...] = DEFAULT_FINDINGS, heldout: str = "balanced") -> CxrSimSplit:
    """``n`` items of one split of the multi-class benchmark on VinDr-CXR geometry (all PA, no marker).

    Classes are ``("No finding", *findings)``. Images whose findings are all outside ``findings``
    are not used.

    Args:
        split: ``pool`` (the table's class mix), ``val`` or ``test``.
        n, size, seed: as for :func:`rsna_sim`.
        findings: VinDr finding names (keys of :data:`FINDING_STYLES`), in tie-breaking order.
        heldout: ``balanced`` (every class equally often in ``val``/``test``) or ``table``.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n: at least 0, got {n}")
    if heldout not in ("balanced", "table"):
        raise ValueError(f"heldout: expected 'balanced' or 'table', got {heldout!r}")
    findings = tuple(findings)
    unknown = [f for f in findings if f not in FINDING_STYLES]
    if unknown or not findings or len(set(findings)) != len(findings):
        raise ValueError(f"findings: distinct names among {sorted(FINDING_STYLES)}, got {findings}")
    shape = _shape(size)
    table = tables.load_vindr()
    labels = _vindr_labels(table, findings)
    used = np.flatnonzero(labels >= 0)
    classes = (tables.NO_FINDING, *findings)
    parts = _partition(labels[used], len(classes), seed, salt=2)[split]
    parts = [used[p] for p in parts]
    counts = np.array([len(p) for p in parts], dtype=float)
    quotas = None if split == "pool" else (np.ones(len(classes)) if heldout == "balanced" else counts)
    split_code = SPLITS.index(split)
    chunk = _chunk_size(shape)
    total = max(1, -(-n // chunk)) * chunk  # whole chunks, so item i never depends on n
    rows, repeat = _sequence(parts, quotas, total, seed, 2, split_code)
    finding_ids = {table.class_names.index(f): i + 1 for i, f in enumerate(findings)}
    lung_rows = ~np.isin(table.class_id, [table.class_names.index(m) for m in _MEDIASTINAL] + [len(table.class_names) - 1])
    extent = _extent(table.box[lung_rows])
    shapes = tables.load_lung_shapes(128)
    outs = []
    for c in range(total // chunk):
        take = rows[c * chunk:(c + 1) * chunk]
        rng = _rng(seed, 2, 3, split_code, c)
        readings = []
        for r in take:
            lo, hi = table.start[r], table.start[r + 1]
            cls = np.array([finding_ids.get(int(v), 0) for v in table.class_id[lo:hi]])
            keep = (cls == labels[r]) & (labels[r] > 0)
            readings.append((table.box[lo:hi][keep], table.reader[lo:hi][keep]))
        outs.append(_render_vindr(rng, shapes, extent, labels[take], readings, classes, shape))
    out = _concat(outs, n)
    rows, repeat = rows[:n], repeat[:n]
    info = {"benchmark": "cxr-sim-vindr", "split": split, "n": n, "size": list(shape), "seed": seed,
            "findings": list(findings), "heldout": heldout,
            "table": {"images": len(table), "used": int(len(used)),
                      "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)}},
            "split_images": int(counts.sum()), "unique_images": int(len(np.unique(rows))),
            "box_extent_unit": [float(v) for v in extent], "frame": tables.VINDR_FRAME}
    return CxrSimSplit(labels=labels[rows].astype(np.int64), view=np.zeros(n, dtype=np.uint8),
                       patient_ids=tuple(table.image_ids[r] for r in rows), repeat=repeat, classes=classes,
                       info=info, **out)


def _vindr_labels(table: tables.VindrTable, findings: tuple[str, ...]) -> np.ndarray:
    """Per image: 0 = No finding (all readers), ``1 + j`` = the listed finding most readers marked
    (ties: the first listed), -1 = none of the listed findings (not used)."""
    ids = [table.class_names.index(f) for f in findings]
    nf = len(table.class_names) - 1
    labels = np.full(len(table), -1, dtype=np.int64)
    image = np.repeat(np.arange(len(table)), np.diff(table.start))
    readers_per = np.zeros((len(table), len(ids)), dtype=np.int64)
    for j, cid in enumerate(ids):
        sel = table.class_id == cid
        marked = np.zeros((len(table), 3), dtype=bool)
        marked[image[sel], table.reader[sel]] = True
        readers_per[:, j] = marked.sum(1)
    none_found = np.zeros(len(table), dtype=bool)
    none_found[image[table.class_id == nf]] = True
    best = readers_per.argmax(1)  # argmax takes the first of ties
    has = readers_per.max(1) > 0
    labels[has] = best[has] + 1
    labels[none_found & ~has] = 0
    return labels


def _render_vindr(rng: np.random.Generator, shapes: tables.LungShapes, extent: np.ndarray, labels: np.ndarray,
                  readings: list[tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...],
                  shape: tuple[int, int]) -> dict[str, Any]:
    b = len(labels)
    chest = _Chest(rng, shapes, np.zeros(b, dtype=bool), shape)
    k = max(1, max(len(x[0]) for x in readings))
    padded = np.zeros((b, k, 4), dtype=np.float32)
    reader = np.zeros((b, k), dtype=np.int64)
    valid = np.zeros((b, k), dtype=bool)
    for i, (bx, rd) in enumerate(readings):
        padded[i, :len(bx)] = bx
        reader[i, :len(bx)] = rd
        valid[i, :len(bx)] = True
    mediastinal = np.array([classes[lab] in _MEDIASTINAL for lab in labels])
    px = chest.place_boxes(padded, extent, np.repeat(mediastinal[:, None], k, 1))
    rects = chest.rasterise(px, valid)
    per_reader = np.zeros((b, 3) + shape, dtype=bool)
    for j in range(k):
        per_reader[np.arange(b), reader[:, j]] |= rects[:, j]
    votes = per_reader.sum(1)
    union = votes > 0
    # >= 2 of 3 readers; where no pixel has two votes (one reader, or disjoint boxes): the union
    consensus = votes >= np.clip(votes.max((1, 2)), 1, 2)[:, None, None]
    consensus &= union
    # the oracle: one of the readers who marked the finding, at random
    marked = per_reader.any((2, 3))
    pick = np.argmax(np.where(marked, rng.random((b, 3)), -1.0), axis=1)
    roi = per_reader[np.arange(b), pick] & marked.any(1)[:, None, None]
    boxes = [px[i, valid[i] & (reader[i] == pick[i])] for i in range(b)]
    # the finding, drawn in the consensus region, by style
    density = rng.uniform(0.12, 0.30, (b, 1, 1)).astype(np.float32)
    region = consensus.astype(np.float32)
    styles = np.array([FINDING_STYLES.get(classes[lab], "none") if lab > 0 else "none" for lab in labels])
    taper = chest.taper(consensus)  # an ellipse inscribed in the region's bounding box, soft
    drawn = np.zeros((b,) + shape, dtype=np.float32)
    for style in np.unique(styles):
        if style == "none":
            continue
        at = styles == style
        lung, reg, tp = chest.lung[at], region[at] * taper[at], taper[at]
        if style == "mediastinal":  # an enlarged heart or aortic knob: a smooth dense shadow
            layer = reg * np.broadcast_to(chest.body[at], reg.shape) * 0.9
        elif style == "pleural":  # a band along the lung's edge
            band = _dilate(chest.anatomy[at], 2) & ~_erode(chest.anatomy[at], 2)
            layer = region[at] * band * 1.2
        elif style == "reticular":  # a fine network over the lung
            layer = reg * lung * np.clip(1.0 - np.abs(chest.fine[at]), 0, 1) * 1.6
        elif style == "nodular":  # a round bright focus
            layer = reg * lung * tp * 1.8
        elif style == "homogeneous":
            layer = reg * lung * 1.2
        elif style == "lucent":  # air: darker, no texture
            layer = -reg * lung * 0.8
        else:  # patchy
            layer = reg * lung * np.clip(1.0 + 0.8 * chest.coarse[at], 0.2, 2.0)
        drawn[at] = layer
    chest.add(density * drawn)
    marker = np.zeros((b,) + shape, dtype=bool)
    out = chest.finish(roi=roi, marker=marker, boxes=boxes)
    out["consensus"], out["union"] = consensus, union
    out["n_readers"] = per_reader.any((2, 3)).sum(1).astype(np.int8)
    return out


# ------------------------------------------------------------------------------------------ drawing


class _Chest:
    """One chunk of chest backgrounds (vectorised over the chunk) that findings are added to."""

    def __init__(self, rng: np.random.Generator, shapes: tables.LungShapes, ap: np.ndarray,
                 shape: tuple[int, int]) -> None:
        self.rng, self.shape, self.ap = rng, shape, ap
        b, (h, w) = len(ap), shape
        y = ((np.arange(h, dtype=np.float32) + 0.5) / h)[None, :, None]  # [1, H, 1]
        x = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, None, :]  # [1, 1, W]
        u = lambda lo, hi: rng.uniform(lo, hi, (b, 1, 1)).astype(np.float32)  # noqa: E731
        ap3 = ap[:, None, None]
        on_ap = lambda a, p: np.where(ap3, a, p).astype(np.float32)  # noqa: E731
        self.shape_id = rng.integers(0, len(shapes), b)
        # the marker's box in pixels (a top corner), fixed by the frame: the lungs start below it
        self.marker_rows = (max(1, round(0.02 * h)), max(5, round(0.08 * h)))
        self.marker_cols = (max(1, round(0.03 * w)), max(7, round(0.11 * w)))
        top_min = (self.marker_rows[0] + self.marker_rows[1] + 1.0) / h
        # lung placement: AP lungs are shorter (poor inspiration), the whole chest slightly magnified
        mag = on_ap(u(1.02, 1.08), 1.0)
        wl = u(0.70, 0.80) * mag
        aspect = shapes.aspect[self.shape_id][:, None, None]
        hl = np.clip(wl * aspect * on_ap(u(0.82, 0.92), u(0.95, 1.05)), 0.5, 0.82)
        self.cx = 0.5 + u(-0.02, 0.02)
        self.x0 = self.cx - wl / 2
        self.y0 = np.minimum(np.maximum(top_min, u(0.08, 0.13)), 0.95 - hl)
        self.wl, self.hl = wl, hl
        self.sides = shapes.sides[self.shape_id]  # [B, 2, 4] crop-relative
        # the lung mask: nearest sample of the shape in its box
        r = shapes.masks.shape[1]
        iy = np.floor((y - self.y0) / hl * r).astype(np.int64)  # [B, H, 1]
        ix = np.floor((x - self.x0) / wl * r).astype(np.int64)  # [B, 1, W]
        inside = (iy >= 0) & (iy < r) & (ix >= 0) & (ix < r)
        self.anatomy = inside & shapes.masks[self.shape_id[:, None, None], np.clip(iy, 0, r - 1),
                                             np.clip(ix, 0, r - 1)]
        self.lung = self.anatomy.astype(np.float32)
        # noise fields shared by the background and the findings (unit std per item)
        spectrum = np.fft.rfft2(rng.standard_normal((b, h, w), dtype=np.float32))
        self.coarse = self._filtered(spectrum, 0.05)
        self.fine = self._filtered(spectrum, 0.012)
        # anatomy intensities (bright = dense); separable terms are built on [B, H, 1] / [B, 1, W]
        dx = np.abs(x - self.cx)  # [B, 1, W]
        dy = y - self.y0  # [B, H, 1]
        hw = wl / 2 + u(0.07, 0.11)
        self.body = _sigmoid((hw - dx) / 0.015)  # [B, 1, W] a trunk, full height
        img = 0.05 + self.body * (0.45 + 0.12 * np.clip(1 - (dx / hw) ** 2, 0, 1))
        mediastinum = _sigmoid((u(0.055, 0.075) * mag - dx) / 0.012) * _sigmoid((0.7 * hl - dy) / 0.03)
        img = img + 0.14 * mediastinum + 0.08 * _sigmoid((0.025 - dx) / 0.006) * self.body  # + spine
        # the heart: low and to the image's right, magnified on AP films (r² < 1 inside the ellipse)
        ha = wl * u(0.21, 0.25) * on_ap(u(1.18, 1.32), 1.0)
        hb = hl * u(0.15, 0.19) * on_ap(u(1.10, 1.20), 1.0)
        r2 = ((x - self.cx - wl * u(0.04, 0.08)) / ha) ** 2 + ((dy - hl * u(0.72, 0.80)) / hb) ** 2
        img = img + 0.20 * _sigmoid((1 - r2) / 0.15)
        # clavicles, and ribs as cos(A(y) + B(x)) = cos A cos B - sin A sin B (no full-size cos)
        clav_y = 0.02 + on_ap(0.0, 0.10) * dx - on_ap(0.02, 0.0)
        clav = np.exp(-(((dy - clav_y) / 0.012) ** 2)) * ((dx > 0.04) & (dx < wl * 0.55))
        period = hl / u(8.0, 10.0)
        a = 2 * np.pi * (dy / period + u(0, 1))
        bend = 2 * np.pi * on_ap(u(0.2, 0.6), u(1.0, 1.8)) * dx ** 2 / period
        ribs = 0.5 + 0.5 * (np.cos(a) * np.cos(bend) - np.sin(a) * np.sin(bend))
        ribs = ribs ** 3 * ((dy > -0.05) & (dy < hl))
        img = img + self.body * (0.10 * clav + 0.06 * ribs * _sigmoid((hw - 0.02 - dx) / 0.02))
        # the lung fields: air (less of it on AP films), denser towards the bases and the hila
        depth = u(0.27, 0.35) * on_ap(0.85, 1.0)
        hilum = np.exp(-((dx - 0.08) ** 2) / 0.02) * np.exp(-((dy - 0.45 * hl) ** 2) / 0.02)
        img = img - self.lung * ((depth - 0.04 * dy / hl) - 0.04 * hilum * (1 + self.fine))
        self.image = (img + 0.025 * self.coarse * self.body).astype(np.float32)

    def _filtered(self, spectrum: np.ndarray, sigma: float) -> np.ndarray:
        h, w = self.shape
        fy = np.fft.fftfreq(h)[:, None] * h  # cycles per frame
        fx = np.fft.rfftfreq(w)[None, :] * w
        gain = np.exp(-2 * (np.pi * sigma) ** 2 * (fy ** 2 + fx ** 2)).astype(np.float32)
        field_ = np.fft.irfft2(spectrum * gain, s=self.shape).astype(np.float32)
        return field_ / (field_.std(axis=(1, 2), keepdims=True) + 1e-6)

    def blur(self, images: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
        """Gaussian blur of ``[B, H, W]`` with ``sigma`` in frame units (scalar or ``[B, 1, 1]``)."""
        h, w = self.shape
        fy = np.fft.fftfreq(h)[None, :, None] * h
        fx = np.fft.rfftfreq(w)[None, None, :] * w
        gain = np.exp(-2 * (np.pi * np.asarray(sigma, dtype=np.float32)) ** 2 * (fy ** 2 + fx ** 2))
        return np.fft.irfft2(np.fft.rfft2(images) * gain, s=self.shape).astype(np.float32)

    def place_boxes(self, unit: np.ndarray, extent: np.ndarray, thorax: np.ndarray) -> np.ndarray:
        """Boxes ``[B, K, 4]`` (x_min..y_max in the table's unit frame) → output pixels.

        The table's extent maps onto the lungs' box; each box is clipped to its lung's box (the
        lung its centre falls on), or to the whole lungs' box where ``thorax`` ``[B, K]`` is set.
        """
        rel = np.empty_like(unit)
        rel[..., 0::2] = (unit[..., 0::2] - extent[0]) / (extent[2] - extent[0])
        rel[..., 1::2] = (unit[..., 1::2] - extent[1]) / (extent[3] - extent[1])
        left, right = self.sides[:, None, 0], self.sides[:, None, 1]  # [B, 1, 4]
        mid = (left[..., 2] + right[..., 0]) / 2
        centre = (rel[..., 0] + rel[..., 2]) / 2
        side = np.where((centre >= mid)[..., None], right, left)
        lim = np.where(thorax[..., None], np.array([0, 0, 1, 1], dtype=np.float32), side)
        lo = np.maximum(rel[..., :2], lim[..., :2])
        hi = np.minimum(rel[..., 2:], lim[..., 2:])
        h, w = self.shape
        scale = np.array([w, h], dtype=np.float32)
        x0y0 = np.concatenate([self.x0[:, :, 0], self.y0[:, :, 0]], axis=1)[:, None, :]  # [B, 1, 2]
        wh = np.concatenate([self.wl[:, :, 0], self.hl[:, :, 0]], axis=1)[:, None, :]
        lo_px = (x0y0 + lo * wh) * scale
        hi_px = (x0y0 + hi * wh) * scale
        hi_px = np.maximum(hi_px, lo_px + 1.0)  # at least a pixel's width after clipping
        return np.concatenate([lo_px, hi_px], axis=-1).astype(np.float32)

    def rasterise(self, px: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Boxes ``[B, K, 4]`` in pixels → bool ``[B, K, H, W]`` by the pixel-centre rule."""
        h, w = self.shape
        cy = np.arange(h, dtype=np.float32)[None, None, :] + 0.5
        cx = np.arange(w, dtype=np.float32)[None, None, :] + 0.5
        rows = (cy >= px[..., 1:2]) & (cy < px[..., 3:4])
        cols = (cx >= px[..., 0:1]) & (cx < px[..., 2:3])
        return rows[..., :, None] & cols[..., None, :] & valid[..., None, None]

    def superellipse(self, px: np.ndarray, fill: np.ndarray, power: int = 4) -> np.ndarray:
        """A rounded patch ``[B, K, H, W]`` in ``[0, 1]`` centred in each box, ``fill`` of its size
        (``power`` 2: an ellipse, 4: a rounded rectangle)."""
        h, w = self.shape
        cy = (np.arange(h, dtype=np.float32) + 0.5)[None, None, :, None]
        cx = (np.arange(w, dtype=np.float32) + 0.5)[None, None, None, :]
        mx, my = (px[..., 0] + px[..., 2])[..., None, None] / 2, (px[..., 1] + px[..., 3])[..., None, None] / 2
        ax = np.maximum((px[..., 2] - px[..., 0])[..., None, None] / 2 * fill, 0.5)
        ay = np.maximum((px[..., 3] - px[..., 1])[..., None, None] / 2 * fill, 0.5)
        r = (np.abs(cx - mx) / ax) ** power + (np.abs(cy - my) / ay) ** power
        r = np.sqrt(r) if power == 4 else r
        return _sigmoid((1 - r) / 0.25)

    def taper(self, region: np.ndarray) -> np.ndarray:
        """A soft ellipse ``[B, H, W]`` in ``[0, 1]`` inscribed in each region's bounding box (0: empty)."""
        h, w = self.shape
        rows, cols = region.any(2), region.any(1)  # [B, H], [B, W]
        top, bottom = rows.argmax(1), h - rows[:, ::-1].argmax(1)
        left, right = cols.argmax(1), w - cols[:, ::-1].argmax(1)
        px = np.stack([left, top, right, bottom], axis=1).astype(np.float32)[:, None]  # [B, 1, 4]
        ellipse = self.superellipse(px, np.ones((len(region), 1, 1, 1), dtype=np.float32), power=2)[:, 0]
        return ellipse * region.any((1, 2))[:, None, None]

    def mimics(self, mean: float, density: tuple[float, float]) -> np.ndarray:
        """Poisson(``mean``) small sharp round densities per image (at most ``MAX_MIMICS``), centred on
        lung pixels drawn uniformly, with ``density`` drawn per nodule: a layer ``[B, H, W]``."""
        b, (h, w) = len(self.ap), self.shape
        count = np.minimum(self.rng.poisson(mean, b), MAX_MIMICS)
        lung_pixels = self.anatomy.reshape(b, -1)
        # a uniform lung pixel per slot: the argmax of uniform noise over the lung (none: slot off)
        pick = np.where(lung_pixels[:, None, :], self.rng.random((b, MAX_MIMICS, h * w), dtype=np.float32), -1.0)
        at = pick.argmax(2)
        on = (np.arange(MAX_MIMICS)[None, :] < count[:, None]) & lung_pixels.any(1)[:, None]
        cy = (at // w).astype(np.float32) + self.rng.uniform(0.0, 1.0, (b, MAX_MIMICS)).astype(np.float32)
        cx = (at % w).astype(np.float32) + self.rng.uniform(0.0, 1.0, (b, MAX_MIMICS)).astype(np.float32)
        radius = self.rng.uniform(*MIMIC_RADIUS, (b, MAX_MIMICS)).astype(np.float32) * min(h, w)
        value = self.rng.uniform(*density, (b, MAX_MIMICS)).astype(np.float32) * on
        yy = (np.arange(h, dtype=np.float32) + 0.5)[None, None, :, None]
        xx = (np.arange(w, dtype=np.float32) + 0.5)[None, None, None, :]
        r2 = ((yy - cy[..., None, None]) ** 2 + (xx - cx[..., None, None]) ** 2) / radius[..., None, None] ** 2
        return (value[..., None, None] * _sigmoid((1 - r2) / 0.15)).max(1)

    def add(self, layer: np.ndarray) -> None:
        self.image = self.image + layer

    def burn_marker(self, on: np.ndarray) -> np.ndarray:
        """The "AP" glyph in a random top corner of the items where ``on``; returns its pixels."""
        b, (h, w) = len(on), self.shape
        (r0, rh), (c0, cw) = self.marker_rows, self.marker_cols
        glyph = _GLYPH[(np.arange(rh) * _GLYPH.shape[0]) // rh][:, (np.arange(cw) * _GLYPH.shape[1]) // cw]
        marker = np.zeros((b, h, w), dtype=bool)
        right = self.rng.random(b) < 0.5
        for flag, col in ((False, c0), (True, w - c0 - cw)):
            at = on & (right == flag)
            marker[at, r0:r0 + rh, col:col + cw] = glyph
        marker &= ~self.anatomy  # never over the lungs (the lungs start below it; kept as a guard)
        self.marker_value = self.rng.uniform(0.88, 0.96, (b, 1, 1)).astype(np.float32)
        return marker

    def finish(self, roi: np.ndarray, marker: np.ndarray, boxes: list[np.ndarray]) -> dict[str, Any]:
        """The view's look (contrast, blur, noise), the marker burned in last (it is sharp), clipped."""
        b = len(self.ap)
        ap3 = self.ap[:, None, None]
        u = lambda lo, hi: self.rng.uniform(lo, hi, (b, 1, 1)).astype(np.float32)  # noqa: E731
        contrast = np.where(ap3, u(0.72, 0.86), u(0.95, 1.08))
        img = 0.42 + (self.image - 0.42) * contrast + np.where(ap3, 0.03, 0.0)
        sigma = np.where(ap3, u(0.012, 0.020), u(0.004, 0.008))  # frame units: ~1 px vs ~0.4 px at 64²
        img = self.blur(img, sigma)
        img = img + self.rng.standard_normal(img.shape, dtype=np.float32) * np.where(ap3, u(0.02, 0.03),
                                                                                       u(0.01, 0.02))
        if marker.any():
            img = np.where(marker, getattr(self, "marker_value", 0.92), img)
        n_roi = roi.sum((1, 2))
        inside = (roi & self.anatomy).sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n_roi > 0, inside / np.maximum(n_roi, 1), np.nan).astype(np.float32)
        return {"images": np.clip(img, 0.0, 1.0).astype(np.float32), "roi": roi, "anatomy": self.anatomy,
                "marker": marker, "boxes": boxes, "roi_in_lung": frac}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.multiply(z, 0.5, dtype=np.float32)
    np.tanh(z, out=z)
    z += 1
    z *= 0.5
    return z


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for axis in (1, 2):
        grown = out.copy()
        for s in range(1, k + 1):
            grown |= np.roll(out, s, axis) | np.roll(out, -s, axis)
        out = grown
    return out


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    return ~_dilate(~mask, k)


def _concat(chunks: list[dict[str, Any]], n: int) -> dict[str, Any]:
    if not chunks:
        return {}
    out: dict[str, Any] = {}
    for key in chunks[0]:
        if key == "boxes":
            out[key] = tuple(b for c in chunks for b in c[key])[:n]
        else:
            out[key] = np.concatenate([c[key] for c in chunks])[:n]
    return out
