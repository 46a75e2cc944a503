"""The fast path of ``cam_alignment``: exact contract, without the full-resolution map.

Why this is exact. Bilinear upsampling is separable: first every output row ``y`` is a blend of two
grid rows, ``r_y = (1-μ_y) L[lo_y] + μ_y L[hi_y]`` (a length-``w`` vector), then output pixel
``(y, x)`` is ``(1-λ_x) r_y[lo_x] + λ_x r_y[hi_x]``. The columns ``x`` sharing the same ``lo_x = j``
form a contiguous *group*, and within it ``λ_x`` grows with ``x``, so along a row the map is linear
in ``λ`` on each group. Hence, per row and group (``H·w`` pairs instead of ``H·W`` pixels):

* the row's extreme values sit at the first or last column of a group, so the map's min, max and
  first arg-max come from ``2w`` candidate columns per row;
* the pixels with ``value >= t`` form one run at the start or end of the group, found by solving the
  linear inequality for ``λ`` and a binary search over the (monotone) source coordinates;
* sums of the map (inside and outside the ROI) are linear in ``r_y``, so they reduce to products of
  ``r_y`` with per-group column weights, of the ROI with the interpolation matrix, or (for boxes)
  with its running sums: boxes never become a dense mask.

Everything runs batched over a chunk of images, in float64 after the channel aggregation, with no
Python loop over images, pixels or boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .bilinear import AxisSampling, axis_sampling, interpolation_matrix
from .results import AlignmentScores, empty_scores
from .roi import Roi

__all__ = ["cam_alignment_separable"]

WORK_DTYPE = torch.float64
DEFAULT_CHUNK = 128


@dataclass(frozen=True)
class ColumnPlan:
    """Everything about the ``w → W`` column resampling that does not depend on the image."""

    sampling: AxisSampling
    group: torch.Tensor  # int64 [g]: the lo index j of each non-empty column group
    group_hi: torch.Tensor  # int64 [g]: the hi index paired with j
    start: torch.Tensor  # int64 [g]: first column of the group
    end: torch.Tensor  # int64 [g]: one past its last column
    candidates: torch.Tensor  # int64 [n_c]: columns where a row can take its min or max
    matrix: torch.Tensor  # [W, w]: resized_row = matrix @ grid_row
    running: torch.Tensor  # [W + 1, w]: running[x] = sum of matrix rows before x
    column_weight: torch.Tensor  # [w]: matrix.sum(0); Σ_x row(x) = column_weight · grid_row


@lru_cache(maxsize=64)
def column_plan(w: int, width: int, device: torch.device) -> ColumnPlan:
    sampling = axis_sampling(w, width, dtype=WORK_DTYPE, device=device)
    groups = torch.arange(w, device=device)
    start = torch.searchsorted(sampling.lo, groups, side="left")
    end = torch.searchsorted(sampling.lo, groups, side="right")
    present = end > start
    start, end, group = start[present], end[present], groups[present]
    group_hi = sampling.hi[start]
    candidates = torch.unique(torch.cat([start, end - 1]))
    matrix = interpolation_matrix(sampling, w)
    running = torch.cat([torch.zeros(1, w, dtype=WORK_DTYPE, device=device), matrix.cumsum(0)])
    return ColumnPlan(sampling, group, group_hi, start, end, candidates, matrix, running, matrix.sum(0))


@lru_cache(maxsize=64)
def row_sampling(h: int, height: int, device: torch.device) -> AxisSampling:
    return axis_sampling(h, height, dtype=WORK_DTYPE, device=device)


def cam_alignment_separable(
    features: torch.Tensor,
    weights: torch.Tensor,
    roi: Roi,
    *,
    threshold: float = 0.5,
    chunk_size: int = DEFAULT_CHUNK,
) -> AlignmentScores:
    """Alignment scores for checked, finite inputs (see ``alignment.cam_alignment`` for the API)."""
    batch, _, h, w = features.shape
    height, width = roi.size
    device = features.device
    rows = row_sampling(h, height, device)
    plan = column_plan(w, width, device)
    scores = empty_scores(batch, device)
    for begin in range(0, batch, chunk_size):
        part = slice(begin, begin + chunk_size)
        grids = _aggregate(features[part], weights[part])
        blended_rows = _blend_rows(grids, rows)
        metrics = _chunk_metrics(grids, blended_rows, plan, roi[part], threshold)
        for name, value in metrics.items():
            getattr(scores, name)[part] = value.to(torch.float32)
    return scores


def _aggregate(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``ReLU(Σ_k α_k A_k)`` ``[b, h, w]`` in float64; the channel sum itself runs in float32 (or
    float64 for float64 inputs) as one batched matrix product."""
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    b, c, h, w = features.shape
    grid = torch.bmm(weights.to(dtype)[:, None, :], features.to(dtype).reshape(b, c, h * w))
    return torch.relu(grid.reshape(b, h, w)).to(WORK_DTYPE)


def _blend_rows(grids: torch.Tensor, rows: AxisSampling) -> torch.Tensor:
    """Vertical pass of the upsampling: ``[b, H, w]``."""
    lam = rows.lam[:, None]
    return grids[:, rows.lo, :] * (1.0 - lam) + grids[:, rows.hi, :] * lam


def _chunk_metrics(
    grids: torch.Tensor,
    blended: torch.Tensor,
    plan: ColumnPlan,
    roi: Roi,
    threshold: float,
) -> dict[str, torch.Tensor]:
    height, width = roi.size
    cols = plan.sampling
    flat = grids.amax(dim=(1, 2)) == grids.amin(dim=(1, 2))

    # Min, max and first arg-max of the upsampled map, from the candidate columns of every row.
    lam_c = cols.lam[plan.candidates]
    values = blended[:, :, cols.lo[plan.candidates]] * (1.0 - lam_c) + blended[:, :, cols.hi[plan.candidates]] * lam_c
    low = values.amin(dim=(1, 2))
    high = values.amax(dim=(1, 2))
    span = torch.where(flat, torch.ones_like(high), high - low)
    flat_index = torch.arange(height, device=grids.device)[:, None] * width + plan.candidates[None, :]
    at_peak = values == high[:, None, None]
    peak = torch.where(at_peak, flat_index, height * width).flatten(1).amin(dim=1)

    # Per row and column group: the run [run_start, run_end) of pixels with value >= t.
    cut = low + threshold * span
    left = blended[:, :, plan.group]
    right = blended[:, :, plan.group_hi]
    slope = right - left
    safe_slope = torch.where(slope == 0, torch.ones_like(slope), slope)
    crossing = plan.group + (cut[:, None, None] - left) / safe_slope  # source coordinate of value == t
    first_at_or_above = torch.searchsorted(cols.source, crossing.contiguous(), side="left")
    first_above = torch.searchsorted(cols.source, crossing.contiguous(), side="right")
    start, end = plan.start, plan.end
    run_start = torch.where(slope > 0, torch.maximum(torch.minimum(first_at_or_above, end), start), start)
    level_end = torch.where(left >= cut[:, None, None], end, start)
    falling_end = torch.maximum(torch.minimum(first_above, end), start)
    run_end = torch.where(slope > 0, end, torch.where(slope < 0, falling_end, level_end))
    run_end = torch.where(flat[:, None, None], run_start, run_end)
    n_predicted = (run_end - run_start).sum(dim=(1, 2)).to(WORK_DTYPE)

    # Map mass, measured from the minimum so that nearly flat maps do not cancel catastrophically.
    shifted = blended - low[:, None, None]
    mass = (shifted * plan.column_weight).sum(dim=(1, 2)) / span

    if roi.masks is not None:
        n_truth, overlap, shifted_mass_in, hit = _mask_terms(roi.masks, shifted, plan, run_start, run_end, peak)
    else:
        n_truth, overlap, shifted_mass_in, hit = _box_terms(roi, shifted, plan, run_start, run_end, peak)
    mass_in_roi = torch.minimum((shifted_mass_in / span).clamp_min(0.0), mass)
    mass = torch.where(flat, torch.zeros_like(mass), mass)
    mass_in_roi = torch.where(flat, torch.zeros_like(mass_in_roi), mass_in_roi)
    hit = torch.where(flat, torch.zeros_like(hit), hit)

    pair = n_predicted + n_truth
    soft_pair = mass + n_truth
    return {
        "dice": torch.where(pair == 0, 1.0, 2.0 * overlap / pair.clamp_min(1.0)),
        "soft_dice": torch.where(soft_pair == 0, 1.0, 2.0 * mass_in_roi / soft_pair.clamp_min(1e-300)),
        "roi_energy": torch.where(mass == 0, 0.0, mass_in_roi / mass.clamp_min(1e-300)),
        "pointing_hit": hit,
    }


def _mask_terms(masks, shifted, plan, run_start, run_end, peak):
    """ROI size, overlap with the thresholded runs, map mass inside, and peak hit for dense masks."""
    b, height, width = masks.shape
    # Running ROI counts along each row; 16-bit counters whenever the row is short enough.
    count_dtype = torch.int16 if width < 2**15 else torch.int32
    running = torch.cumsum(masks.view(torch.uint8), dim=2, dtype=count_dtype)

    def count_before(x: torch.Tensor) -> torch.Tensor:  # ROI pixels in [0, x) of each row
        taken = running.gather(2, (x - 1).clamp_min(0))
        return torch.where(x > 0, taken, torch.zeros_like(taken)).to(torch.int32)

    n_truth = running[:, :, width - 1].sum(dim=1, dtype=torch.int64).to(WORK_DTYPE)
    overlap = (count_before(run_end) - count_before(run_start)).sum(dim=(1, 2), dtype=torch.int64).to(WORK_DTYPE)
    roi_columns = torch.mm(masks.reshape(b * height, width).to(torch.float32), plan.matrix.to(torch.float32))
    mass_in = (shifted * roi_columns.reshape(b, height, -1).to(WORK_DTYPE)).sum(dim=(1, 2))
    hit = masks.reshape(b, -1).gather(1, peak.clamp_max(height * width - 1)[:, None])[:, 0].to(WORK_DTYPE)
    return n_truth, overlap, mass_in, hit


def _box_terms(roi: Roi, shifted, plan, run_start, run_end, peak):
    """The same four terms for box ROIs, from per-row disjoint column intervals (no dense mask)."""
    height, width = roi.size
    ranges = roi.box_pixel_ranges()  # [b, M, 4] = x_lo, y_lo, x_hi, y_hi
    x_lo, y_lo, x_hi, y_hi = ranges.unbind(-1)
    ys = torch.arange(height, device=ranges.device)
    active = (ys[None, :, None] >= y_lo[:, None, :]) & (ys[None, :, None] < y_hi[:, None, :])  # [b, H, M]
    lo = torch.where(active, x_lo[:, None, :], 0)
    hi = torch.where(active, torch.maximum(x_hi, x_lo)[:, None, :], 0)
    # Union of intervals per row as disjoint pieces: sort by start, cut each at the running max end.
    lo, order = lo.sort(dim=-1)
    hi = hi.gather(-1, order)
    reach = torch.cummax(hi, dim=-1).values
    reach = torch.cat([torch.zeros_like(reach[..., :1]), reach[..., :-1]], dim=-1)
    lo = torch.maximum(lo, reach)
    hi = torch.maximum(hi, lo)
    n_truth = (hi - lo).sum(dim=(1, 2)).to(WORK_DTYPE)

    def covered_before(x: torch.Tensor) -> torch.Tensor:  # x: [b, H, g] -> ROI pixels in [0, x) of the row
        return (torch.minimum(hi[:, :, None, :], x[..., None]) - lo[:, :, None, :]).clamp_min(0).sum(-1)

    overlap = (covered_before(run_end) - covered_before(run_start)).sum(dim=(1, 2)).to(WORK_DTYPE)
    inside = plan.running[hi] - plan.running[lo]  # [b, H, M, w]
    mass_in = (shifted[:, :, None, :] * inside).sum(dim=(1, 2, 3))
    peak_y, peak_x = peak // width, peak % width
    in_box = (peak_x[:, None] >= x_lo) & (peak_x[:, None] < x_hi) & (peak_y[:, None] >= y_lo) & (peak_y[:, None] < y_hi)
    hit = in_box.any(dim=1).to(WORK_DTYPE)
    return n_truth, overlap, mass_in, hit
