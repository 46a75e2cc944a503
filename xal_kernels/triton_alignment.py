"""Fused Triton kernel for ``cam_alignment`` (docs/contract.md): Dice, soft Dice, ROI energy, pointing hit.

One program per image (``_cam_alignment_kernel``) or, when a batch is too small to fill the card,
one image split over row bands (``_cam_stats_kernel`` → ``_cam_band_kernel`` → ``_cam_finish_kernel``).
Both share the same ``@triton.jit`` helpers, in the order of the contract:

1. ``_cam_grid``: ``L = ReLU(Σ_c α_c A_c)`` on the ``h×w`` grid, accumulated over channel tiles in
   ``ACC``: fp32 for float16/bfloat16/float32 inputs, fp64 when the features or weights are float64
   (the float64 contract holds for float64 inputs on every path, docs/contract.md). Also the per-item
   "invalid" flag: any non-finite feature or weight (exactly ``xal_core.scoring.inputs.nonfinite_items``)
   or a channel sum that overflows ``ACC``; the grid's min/max and ``max Σ_c |α_c A_c|`` (the flat rule).
   The grid (``h·w`` floats per image, L1/L2 resident) is the only intermediate written: Triton has
   no register-indexed gather, so the bilinear taps read it back through the cache.
2. ``_upsampled_extremes``: min, max and first arg-max (row-major) of the *upsampled* map. Bilinear
   resampling is linear in the blend weight between two consecutive output rows/columns that read
   the same pair of grid rows/columns (a "group"), so every extreme of the upsampled map — and the
   first pixel, in row-major order, that attains the maximum — lies on a row and a column that open
   or close a group. At most ``min(H, 2h) × min(W, 2w)`` candidate pixels are evaluated, with the
   same arithmetic as every other pixel. A map is "flat" (normalised to zeros, no peak) by the rule
   of ``xal_core.scoring.flatness``: the grid's or the resampled map's range is within
   ``8·C·u·max Σ|α_c A_c|``, the magnitude summed in ``_cam_grid``'s channel loop.
3. ``_band_terms``: one pass over the output pixels of a row band, each upsampled on the fly from
   four grid taps (never stored) and normalised as the contract writes it, ``(v − min) / (max − min)``,
   compared with τ (read from memory in the accumulation dtype, rounded up for fp32, so the
   comparison is the contract's): threshold counts, overlap with
   the ROI, normalised map mass inside and outside the ROI (values in [0, 1]: no sum can overflow),
   and the ROI value at the peak.
4. ``_ratios``: Dice, soft Dice, energy and hit in fp64, NaN for unknown ROIs and invalid items.

ROIs come either as bit-packed masks ``uint8 [B, H, ceil(W/8)]`` in NumPy ``packbits`` order —
pixel ``(y, x)`` is bit ``7 - x % 8`` (most significant bit first) of byte ``[y, x // 8]``; padding
bits past ``W`` are never read — or as integer pixel ranges ``int32 [B, M, 4] = (x_lo, y_lo, x_hi,
y_hi)``, half-open, from ``Roi.box_pixel_ranges()``, with per-item counts (``-1`` = unknown).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from xal_core.scoring import flatness
from xal_core.scoring.bilinear import axis_sampling
from xal_core.scoring.inputs import check_cam_inputs, warn_nonfinite
from xal_core.scoring.parameters import DEFAULT_THRESHOLD, check_threshold
from xal_core.scoring.plan_cache import byte_bounded_cache
from xal_core.scoring.results import AlignmentScores
from xal_core.scoring.roi import Roi

__all__ = ["cam_alignment", "launch_cam_alignment"]


# --------------------------------------------------------------------------- jit helpers
@triton.jit
def _cam_grid(features_ptr, weights_ptr, grid_ptr, item, C, HW, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr):
    """Write ``ReLU(Σ_c α_c A_c)`` of one image to ``grid_ptr[item]`` (in ``ACC``); return (grid
    min, grid max, ``max over cells of Σ_c |α_c A_c|`` for the flat rule (``flatness``), whether the
    item is invalid: a NaN/Inf feature or weight, or a sum that overflows)."""
    item64 = item.to(tl.int64)
    f_item = features_ptr + item64 * C * HW
    w_item = weights_ptr + item64 * C
    g_item = grid_ptr + item64 * HW
    grid_min = tl.cast(float("inf"), ACC)
    grid_max = tl.cast(-float("inf"), ACC)
    magnitude = tl.cast(0.0, ACC)
    poison = 0.0
    overflow = 0
    for p0 in range(0, HW, BLOCK_HW):
        offs_p = p0 + tl.arange(0, BLOCK_HW)
        in_p = offs_p < HW
        acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
        acc_abs = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
        # x * 0 is 0 for finite x and NaN for NaN/Inf: these sums stay 0 exactly when all are finite.
        probe = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
        probe_alpha = tl.zeros([BLOCK_C], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            in_c = offs_c < C
            alpha = tl.load(w_item + offs_c, mask=in_c, other=0.0).to(ACC)
            tile = tl.load(
                f_item + offs_c[:, None] * HW + offs_p[None, :],
                mask=in_c[:, None] & in_p[None, :],
                other=0.0,
            ).to(ACC)
            term = alpha[:, None] * tile
            acc += term
            acc_abs += tl.abs(term)
            probe += (tile * 0.0).to(tl.float32)
            probe_alpha += (alpha * 0.0).to(tl.float32)
        sums = tl.sum(acc, axis=0)
        # Finite inputs whose products or partial sums leave ACC's range: Inf or NaN here.
        overflow += tl.sum((in_p & ((sums != sums) | (tl.abs(sums) == float("inf")))).to(tl.int32), axis=0)
        values = tl.maximum(sums, 0.0)
        tl.store(g_item + offs_p, values, mask=in_p)
        grid_min = tl.minimum(grid_min, tl.min(tl.where(in_p, values, float("inf")), axis=0))
        grid_max = tl.maximum(grid_max, tl.max(tl.where(in_p, values, -float("inf")), axis=0))
        magnitude = tl.maximum(magnitude, tl.max(tl.where(in_p, tl.sum(acc_abs, axis=0), 0.0), axis=0))
        poison += tl.sum(tl.sum(probe, axis=1), axis=0) + tl.sum(probe_alpha, axis=0)
    return grid_min, grid_max, magnitude, (poison != 0.0) | (overflow > 0)


@triton.jit
def _bilinear(g_item, w, row_lo, row_hi, row_mu, col_lo, col_hi, col_lam):
    """Upsampled values ``[BY, BX]`` from row samplings ``[BY, 1]`` and column samplings ``[1, BX]``
    (the order of operations of ``torch``'s bilinear kernel: columns inside, rows outside)."""
    top = g_item + row_lo * w
    bottom = g_item + row_hi * w
    upper = (1.0 - col_lam) * tl.load(top + col_lo) + col_lam * tl.load(top + col_hi)
    lower = (1.0 - col_lam) * tl.load(bottom + col_lo) + col_lam * tl.load(bottom + col_hi)
    return (1.0 - row_mu) * upper + row_mu * lower


@triton.jit
def _upsampled_extremes(
    g_item, w, W,
    cand_rows_ptr, n_cand_rows, cand_cols_ptr, n_cand_cols,
    row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr,
    BLOCK_CY: tl.constexpr, BLOCK_CX: tl.constexpr, ACC: tl.constexpr,
):
    """(min, max, first row-major flat index of the max) of the upsampled map, from candidates."""
    low = tl.cast(float("inf"), ACC)
    high = tl.cast(-float("inf"), ACC)
    peak = 2147483647
    for r0 in range(0, n_cand_rows, BLOCK_CY):
        offs_r = r0 + tl.arange(0, BLOCK_CY)
        in_r = offs_r < n_cand_rows
        ys = tl.load(cand_rows_ptr + offs_r, mask=in_r, other=0)
        row_lo = tl.load(row_lo_ptr + ys)[:, None]
        row_hi = tl.load(row_hi_ptr + ys)[:, None]
        row_mu = tl.load(row_mu_ptr + ys)[:, None]
        for c0 in range(0, n_cand_cols, BLOCK_CX):
            offs_c = c0 + tl.arange(0, BLOCK_CX)
            in_c = offs_c < n_cand_cols
            xs = tl.load(cand_cols_ptr + offs_c, mask=in_c, other=0)
            col_lo = tl.load(col_lo_ptr + xs)[None, :]
            col_hi = tl.load(col_hi_ptr + xs)[None, :]
            col_lam = tl.load(col_lam_ptr + xs)[None, :]
            values = _bilinear(g_item, w, row_lo, row_hi, row_mu, col_lo, col_hi, col_lam)
            valid = in_r[:, None] & in_c[None, :]
            tile_high = tl.max(tl.max(tl.where(valid, values, -float("inf")), axis=1), axis=0)
            tile_low = tl.min(tl.min(tl.where(valid, values, float("inf")), axis=1), axis=0)
            flat_index = ys[:, None] * W + xs[None, :]
            at_peak = valid & (values == tile_high)
            tile_peak = tl.min(tl.min(tl.where(at_peak, flat_index, 2147483647), axis=1), axis=0)
            peak = tl.where(tile_high > high, tile_peak, tl.where(tile_high == high, tl.minimum(peak, tile_peak), peak))
            high = tl.maximum(high, tile_high)
            low = tl.minimum(low, tile_low)
    return low, high, peak


@triton.jit
def _band_terms(
    g_item, w, W, y_begin, y_end, low, span, threshold, is_flat, peak,
    row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr,
    mask_item, WB, ranges_item, n_boxes,
    ROI_BOXES: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr, ACC: tl.constexpr,
):
    """Threshold counts, overlap, ROI size, normalised map mass (all / inside the ROI) and the ROI
    value at ``peak`` over rows ``[y_begin, y_end)`` of one image, upsampling each pixel on the fly."""
    n_pred = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.int32)
    n_overlap = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.int32)
    n_truth = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.int32)
    n_hit = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.int32)
    mass = tl.zeros([BLOCK_Y, BLOCK_X], dtype=ACC)
    mass_in = tl.zeros([BLOCK_Y, BLOCK_X], dtype=ACC)
    for y0 in range(y_begin, y_end, BLOCK_Y):
        ys = y0 + tl.arange(0, BLOCK_Y)
        in_y = ys < y_end
        row_lo = tl.load(row_lo_ptr + ys, mask=in_y, other=0)[:, None]
        row_hi = tl.load(row_hi_ptr + ys, mask=in_y, other=0)[:, None]
        row_mu = tl.load(row_mu_ptr + ys, mask=in_y, other=0.0)[:, None]
        for x0 in range(0, W, BLOCK_X):
            xs = x0 + tl.arange(0, BLOCK_X)
            in_x = xs < W
            col_lo = tl.load(col_lo_ptr + xs, mask=in_x, other=0)[None, :]
            col_hi = tl.load(col_hi_ptr + xs, mask=in_x, other=0)[None, :]
            col_lam = tl.load(col_lam_ptr + xs, mask=in_x, other=0.0)[None, :]
            valid = in_y[:, None] & in_x[None, :]
            normalised = (_bilinear(g_item, w, row_lo, row_hi, row_mu, col_lo, col_hi, col_lam) - low) / span
            if ROI_BOXES:
                inside = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.int1)
                for m in range(0, n_boxes):
                    x_lo = tl.load(ranges_item + 4 * m)
                    y_lo = tl.load(ranges_item + 4 * m + 1)
                    x_hi = tl.load(ranges_item + 4 * m + 2)
                    y_hi = tl.load(ranges_item + 4 * m + 3)
                    rows_in = (ys >= y_lo) & (ys < y_hi)
                    cols_in = (xs >= x_lo) & (xs < x_hi)
                    inside = inside | (rows_in[:, None] & cols_in[None, :])
                truth = (inside & valid).to(tl.int32)
            else:
                byte = tl.load(mask_item + ys[:, None] * WB + (xs[None, :] >> 3), mask=valid, other=0).to(tl.int32)
                truth = (byte >> (7 - (xs[None, :] & 7))) & 1
            predicted = ((normalised >= threshold) & valid & (is_flat == 0)).to(tl.int32)
            n_pred += predicted
            n_overlap += predicted & truth
            n_truth += truth
            n_hit += tl.where((ys[:, None] * W + xs[None, :]) == peak, truth, 0)
            mass += tl.where(valid, normalised, 0.0)
            mass_in += tl.where(truth != 0, normalised, 0.0)
    return (
        tl.sum(tl.sum(n_pred, axis=1), axis=0),
        tl.sum(tl.sum(n_overlap, axis=1), axis=0),
        tl.sum(tl.sum(n_truth, axis=1), axis=0),
        tl.sum(tl.sum(n_hit, axis=1), axis=0),
        tl.sum(tl.sum(mass, axis=1), axis=0),
        tl.sum(tl.sum(mass_in, axis=1), axis=0),
    )


@triton.jit
def _ratios(n_pred, n_overlap, n_truth, n_hit, mass, mass_in, is_flat, blank):
    """The four metrics (fp32) from the summed terms; NaN where ``blank`` (unknown ROI or invalid)."""
    n_pred = n_pred.to(tl.float64)
    n_overlap = n_overlap.to(tl.float64)
    n_truth = n_truth.to(tl.float64)
    flat = is_flat != 0
    pair = n_pred + n_truth
    dice = tl.where(pair == 0.0, 1.0, 2.0 * n_overlap / tl.where(pair == 0.0, 1.0, pair))
    total = tl.where(flat, 0.0, mass.to(tl.float64))
    inside = tl.where(flat, 0.0, tl.minimum(tl.maximum(mass_in.to(tl.float64), 0.0), total))
    soft_pair = total + n_truth
    soft_dice = tl.where(soft_pair == 0.0, 1.0, 2.0 * inside / tl.where(soft_pair == 0.0, 1.0, soft_pair))
    energy = tl.where(total == 0.0, 0.0, inside / tl.where(total == 0.0, 1.0, total))
    hit = tl.where(flat | (n_hit == 0), 0.0, 1.0)
    nan = float("nan")
    return (
        tl.where(blank, nan, dice.to(tl.float32)),
        tl.where(blank, nan, soft_dice.to(tl.float32)),
        tl.where(blank, nan, energy.to(tl.float32)),
        tl.where(blank, nan, hit.to(tl.float32)),
    )


# --------------------------------------------------------------------------- kernels
@triton.jit
def _cam_alignment_kernel(
    features_ptr, weights_ptr, grid_ptr, mask_ptr, ranges_ptr, counts_ptr, known_ptr,
    dice_ptr, soft_dice_ptr, energy_ptr, hit_ptr, invalid_ptr,
    C, HW, w, H, W, WB, M, params_ptr,
    cand_rows_ptr, n_cand_rows, cand_cols_ptr, n_cand_cols,
    row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr,
    ROI_BOXES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_CY: tl.constexpr, BLOCK_CX: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
    ACC: tl.constexpr,
):
    """Everything for one image in one program: grid, extremes, all pixels, ratios."""
    item = tl.program_id(0)
    item64 = item.to(tl.int64)
    threshold = tl.load(params_ptr)
    flat_factor = tl.load(params_ptr + 1)
    grid_min, grid_max, magnitude, bad = _cam_grid(features_ptr, weights_ptr, grid_ptr, item, C, HW, BLOCK_C, BLOCK_HW, ACC)
    tl.debug_barrier()  # the grid written above is read back by other threads of this program
    g_item = grid_ptr + item64 * HW
    low, high, peak = _upsampled_extremes(
        g_item, w, W, cand_rows_ptr, n_cand_rows, cand_cols_ptr, n_cand_cols,
        row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr, BLOCK_CY, BLOCK_CX, ACC,
    )
    tolerance = flat_factor * C * magnitude
    is_flat = ((grid_max - grid_min <= tolerance) | (high - low <= tolerance)).to(tl.int32)
    span = tl.where(is_flat != 0, 1.0, high - low)
    n_boxes = tl.maximum(tl.load(counts_ptr + item), 0)
    n_pred, n_overlap, n_truth, n_hit, mass, mass_in = _band_terms(
        g_item, w, W, 0, H, low, span, threshold, is_flat, peak,
        row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr,
        mask_ptr + item64 * H * WB, WB, ranges_ptr + item64 * M * 4, n_boxes,
        ROI_BOXES, BLOCK_Y, BLOCK_X, ACC,
    )
    blank = bad | (tl.load(known_ptr + item) == 0)
    dice, soft_dice, energy, hit = _ratios(n_pred, n_overlap, n_truth, n_hit, mass, mass_in, is_flat, blank)
    tl.store(dice_ptr + item, dice)
    tl.store(soft_dice_ptr + item, soft_dice)
    tl.store(energy_ptr + item, energy)
    tl.store(hit_ptr + item, hit)
    tl.store(invalid_ptr + item, bad.to(tl.int8))


@triton.jit
def _cam_stats_kernel(
    features_ptr, weights_ptr, grid_ptr, stats_ptr, peak_ptr,
    C, HW, w, W, params_ptr,
    cand_rows_ptr, n_cand_rows, cand_cols_ptr, n_cand_cols,
    row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_CY: tl.constexpr, BLOCK_CX: tl.constexpr,
    ACC: tl.constexpr,
):
    """Split path, pass 1: grid and ``stats[item] = (low, span, flat, invalid)`` (in ``ACC``),
    ``peak[item]``."""
    item = tl.program_id(0)
    flat_factor = tl.load(params_ptr + 1)
    grid_min, grid_max, magnitude, bad = _cam_grid(features_ptr, weights_ptr, grid_ptr, item, C, HW, BLOCK_C, BLOCK_HW, ACC)
    tl.debug_barrier()
    low, high, peak = _upsampled_extremes(
        grid_ptr + item.to(tl.int64) * HW, w, W, cand_rows_ptr, n_cand_rows, cand_cols_ptr, n_cand_cols,
        row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr, BLOCK_CY, BLOCK_CX, ACC,
    )
    tolerance = flat_factor * C * magnitude
    flat = (grid_max - grid_min <= tolerance) | (high - low <= tolerance)
    tl.store(stats_ptr + item * 4, low)
    tl.store(stats_ptr + item * 4 + 1, tl.where(flat, 1.0, high - low))
    tl.store(stats_ptr + item * 4 + 2, flat.to(ACC))
    tl.store(stats_ptr + item * 4 + 3, bad.to(ACC))
    tl.store(peak_ptr + item, peak)


@triton.jit
def _cam_band_kernel(
    grid_ptr, stats_ptr, peak_ptr, mask_ptr, ranges_ptr, counts_ptr, counts_out_ptr, sums_out_ptr,
    HW, w, H, W, WB, M, params_ptr, rows_per_band,
    row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr,
    ROI_BOXES: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr, ACC: tl.constexpr,
):
    """Split path, pass 2: the terms of one row band of one image, written as partials."""
    item = tl.program_id(0)
    band = tl.program_id(1)
    n_bands = tl.num_programs(1)
    item64 = item.to(tl.int64)
    threshold = tl.load(params_ptr)
    low = tl.load(stats_ptr + item * 4)
    span = tl.load(stats_ptr + item * 4 + 1)
    is_flat = (tl.load(stats_ptr + item * 4 + 2) != 0.0).to(tl.int32)
    peak = tl.load(peak_ptr + item)
    y_begin = band * rows_per_band
    y_end = tl.minimum(y_begin + rows_per_band, H)
    n_boxes = tl.maximum(tl.load(counts_ptr + item), 0)
    n_pred, n_overlap, n_truth, n_hit, mass, mass_in = _band_terms(
        grid_ptr + item64 * HW, w, W, y_begin, y_end, low, span, threshold, is_flat, peak,
        row_lo_ptr, row_hi_ptr, row_mu_ptr, col_lo_ptr, col_hi_ptr, col_lam_ptr,
        mask_ptr + item64 * H * WB, WB, ranges_ptr + item64 * M * 4, n_boxes,
        ROI_BOXES, BLOCK_Y, BLOCK_X, ACC,
    )
    slot = item64 * n_bands + band
    tl.store(counts_out_ptr + slot * 4, n_pred)
    tl.store(counts_out_ptr + slot * 4 + 1, n_overlap)
    tl.store(counts_out_ptr + slot * 4 + 2, n_truth)
    tl.store(counts_out_ptr + slot * 4 + 3, n_hit)
    tl.store(sums_out_ptr + slot * 2, mass)
    tl.store(sums_out_ptr + slot * 2 + 1, mass_in)


@triton.jit
def _cam_finish_kernel(
    stats_ptr, counts_ptr, sums_ptr, known_ptr,
    dice_ptr, soft_dice_ptr, energy_ptr, hit_ptr, invalid_ptr,
    B, n_bands,
    BLOCK_B: tl.constexpr,
):
    """Split path, finishing step: sum the band partials in a fixed order (deterministic), ratios."""
    items = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    live = items < B
    items64 = items.to(tl.int64)
    n_pred = tl.zeros([BLOCK_B], dtype=tl.int64)
    n_overlap = tl.zeros([BLOCK_B], dtype=tl.int64)
    n_truth = tl.zeros([BLOCK_B], dtype=tl.int64)
    n_hit = tl.zeros([BLOCK_B], dtype=tl.int64)
    mass = tl.zeros([BLOCK_B], dtype=tl.float64)
    mass_in = tl.zeros([BLOCK_B], dtype=tl.float64)
    for band in range(0, n_bands):
        slot = items64 * n_bands + band
        n_pred += tl.load(counts_ptr + slot * 4, mask=live, other=0).to(tl.int64)
        n_overlap += tl.load(counts_ptr + slot * 4 + 1, mask=live, other=0).to(tl.int64)
        n_truth += tl.load(counts_ptr + slot * 4 + 2, mask=live, other=0).to(tl.int64)
        n_hit += tl.load(counts_ptr + slot * 4 + 3, mask=live, other=0).to(tl.int64)
        mass += tl.load(sums_ptr + slot * 2, mask=live, other=0.0).to(tl.float64)
        mass_in += tl.load(sums_ptr + slot * 2 + 1, mask=live, other=0.0).to(tl.float64)
    is_flat = (tl.load(stats_ptr + items64 * 4 + 2, mask=live, other=0.0) != 0.0).to(tl.int32)
    bad = tl.load(stats_ptr + items64 * 4 + 3, mask=live, other=0.0) != 0.0
    blank = bad | (tl.load(known_ptr + items64, mask=live, other=0) == 0)
    dice, soft_dice, energy, hit = _ratios(n_pred, n_overlap, n_truth, n_hit, mass, mass_in, is_flat, blank)
    tl.store(dice_ptr + items64, dice, mask=live)
    tl.store(soft_dice_ptr + items64, soft_dice, mask=live)
    tl.store(energy_ptr + items64, energy, mask=live)
    tl.store(hit_ptr + items64, hit, mask=live)
    tl.store(invalid_ptr + items64, bad.to(tl.int8), mask=live)


# --------------------------------------------------------------------------- host side
@byte_bounded_cache()  # bounded by bytes: a plan grows with the frame (plan_cache)
def _axis(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lo, hi, lam, candidates)`` for one axis: int32, int32, ``dtype`` (the accumulation's), int32.

    The sampling is ``xal_core.scoring.bilinear.axis_sampling`` (fp64, torch's own arithmetic) cast
    once, so group boundaries are exactly the reference's. ``candidates`` are the output indices
    that open or close a group (consecutive outputs reading the same pair of inputs).
    """
    sampling = axis_sampling(n_in, n_out, dtype=torch.float64, device=device)
    lo = sampling.lo
    change = torch.nonzero(lo[1:] != lo[:-1]).flatten()
    ends = torch.cat([change, torch.tensor([n_out - 1], device=device)])
    starts = torch.cat([torch.tensor([0], device=device), change + 1])
    candidates = torch.unique(torch.cat([starts, ends]))
    return (
        lo.to(torch.int32).contiguous(),
        sampling.hi.to(torch.int32).contiguous(),
        sampling.lam.to(dtype).contiguous(),
        candidates.to(torch.int32).contiguous(),
    )


def _scalar_params(threshold: float, flat_factor: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[τ, FLAT_FACTOR · u]`` (``flatness``) in the accumulation dtype, read by the kernels from memory (a Python float
    argument would reach them as fp32). In fp32, τ is rounded *up*: for an fp32 value ``v``,
    ``v >= τ`` exactly when ``v >= fp32_ceil(τ)``, so the comparison stays the contract's."""
    tau = torch.tensor(float(threshold), dtype=torch.float64)
    if dtype != torch.float64:
        rounded = tau.to(dtype)
        if rounded.double() < tau:
            rounded = torch.nextafter(rounded, torch.tensor(float("inf"), dtype=dtype))
        tau = rounded
    return torch.tensor([float(tau), flat_factor], dtype=dtype, device=device)


def _buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the kernels write (outputs and intermediates); tests fill them with poison."""
    return torch.empty(shape, dtype=dtype, device=device)


def _pixel_tile(height: int, width: int, tile: int) -> tuple[int, int]:
    """``(BLOCK_Y, BLOCK_X)``: the column block wasting the fewest lanes on ``width``, then as many
    rows as fit in ``tile`` pixels."""
    choices = [b for b in (16, 32, 64, 128) if b <= tile] or [tile]
    if width <= choices[0]:
        block_x = triton.next_power_of_2(width)
    else:
        block_x = min(choices, key=lambda b: (triton.cdiv(width, b) * b, -b))
    block_y = max(1, min(triton.next_power_of_2(height), tile // block_x))
    return block_y, block_x


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 0  # interpreter: one program per image unless asked otherwise


# Tile budgets (elements per program-wide block). On a GPU: the channel tile keeps the grid pass at
# ~16 fp32 registers per thread for 8 warps, the pixel tile keeps the pixel pass near 80 registers
# (sm_90 compile, no spills), i.e. 3 programs per SM; to be tuned on the card. The interpreter runs
# numpy on whole blocks, so there the blocks are as large as memory allows (fewer Python steps).
_GPU_CHANNEL_TILE, _GPU_PIXEL_TILE = 2048, 1024
_INTERPRETER_CHANNEL_TILE, _INTERPRETER_PIXEL_TILE = 65536, 16384


def launch_cam_alignment(
    features: torch.Tensor,
    weights: torch.Tensor,
    size: tuple[int, int],
    known: torch.Tensor,
    *,
    packed: torch.Tensor | None = None,
    ranges: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    rows_per_band: int | None = None,
    tile: int | None = None,
) -> AlignmentScores:
    """Run the kernels on checked inputs; exactly one of ``packed`` / (``ranges``, ``counts``).

    Args:
        features: ``[B, C, h, w]`` (made contiguous here if it is not).
        weights: ``[B, C]``.
        size: the ROI frame ``(H, W)``.
        known: bool ``[B]``.
        packed: ``uint8 [B, H, ceil(W/8)]`` bit-packed masks.
        ranges: ``int [B, M, 4]`` half-open pixel ranges ``(x_lo, y_lo, x_hi, y_hi)``.
        counts: ``int [B]`` boxes per item (``-1`` = unknown; only the first ``counts[b]`` are read).
        rows_per_band: rows per program in the split path; ``None`` picks: one program per image
            when the batch fills the card, otherwise bands sized to give ~4 programs per SM.
        tile: pixels per inner tile of the pixel pass (a power of two); ``None`` = by device.

    Returns:
        ``AlignmentScores`` with ``invalid`` from the kernel's own probe (NaN/Inf inputs, or a channel
        sum that overflows the accumulation precision).
    """
    batch, channels, h, w = features.shape
    height, width = size
    device = features.device
    features = features.contiguous()
    weights = weights.contiguous()
    # The float64 contract holds for float64 inputs: then the kernels accumulate in fp64 throughout.
    acc_dtype = torch.float64 if torch.float64 in (features.dtype, weights.dtype) else torch.float32
    acc = tl.float64 if acc_dtype == torch.float64 else tl.float32
    params = _scalar_params(threshold, flatness.FLAT_FACTOR * flatness.roundoff_unit(acc_dtype), acc_dtype, device)
    row_lo, row_hi, row_mu, cand_rows = _axis(h, height, device, acc_dtype)
    col_lo, col_hi, col_lam, cand_cols = _axis(w, width, device, acc_dtype)
    roi_boxes = packed is None
    if roi_boxes:
        ranges = ranges.to(device=device, dtype=torch.int32).contiguous()
        counts = counts.to(device=device, dtype=torch.int32).contiguous()
        packed = torch.zeros(1, dtype=torch.uint8, device=device)
        bytes_per_row = 1
        n_slots = ranges.shape[1]
    else:
        packed = packed.contiguous()
        bytes_per_row = packed.shape[2]
        ranges = torch.zeros(4, dtype=torch.int32, device=device)
        counts = torch.zeros(batch, dtype=torch.int32, device=device)
        n_slots = 0
    known_i8 = known.to(device=device, dtype=torch.int8).contiguous()
    grid_scratch = _buffer((batch, h * w), acc_dtype, device)
    outputs = [_buffer((batch,), torch.float32, device) for _ in range(4)]
    invalid = _buffer((batch,), torch.int8, device)
    if batch == 0:
        return AlignmentScores(*outputs, invalid.bool())

    on_gpu = device.type == "cuda"
    channel_tile = _GPU_CHANNEL_TILE if on_gpu else _INTERPRETER_CHANNEL_TILE
    if tile is None:
        tile = _GPU_PIXEL_TILE if on_gpu else _INTERPRETER_PIXEL_TILE
    block_hw = min(triton.next_power_of_2(h * w), 1024)
    block_c = max(1, min(triton.next_power_of_2(channels), channel_tile // block_hw))
    block_cy = min(triton.next_power_of_2(cand_rows.numel()), 32)
    block_cx = min(triton.next_power_of_2(cand_cols.numel()), 64)
    block_y, block_x = _pixel_tile(height, width, tile)
    if rows_per_band is None:
        programs_wanted = 4 * _sm_count(device)
        bands = max(1, min(triton.cdiv(height, block_y), triton.cdiv(programs_wanted, batch)))
        rows_per_band = triton.cdiv(triton.cdiv(height, bands), block_y) * block_y
    rows_per_band = max(1, min(int(rows_per_band), height))
    n_bands = triton.cdiv(height, rows_per_band)
    common_axes = (row_lo, row_hi, row_mu, col_lo, col_hi, col_lam)
    candidates = (cand_rows, cand_rows.numel(), cand_cols, cand_cols.numel())

    if n_bands == 1:
        _cam_alignment_kernel[(batch,)](
            features, weights, grid_scratch, packed, ranges, counts, known_i8,
            *outputs, invalid,
            channels, h * w, w, height, width, bytes_per_row, n_slots, params,
            *candidates, *common_axes,
            ROI_BOXES=roi_boxes, BLOCK_C=block_c, BLOCK_HW=block_hw,
            BLOCK_CY=block_cy, BLOCK_CX=block_cx, BLOCK_Y=block_y, BLOCK_X=block_x, ACC=acc,
            num_warps=8,
        )
    else:
        stats = _buffer((batch, 4), acc_dtype, device)
        peak = _buffer((batch,), torch.int32, device)
        band_counts = _buffer((batch, n_bands, 4), torch.int32, device)
        band_sums = _buffer((batch, n_bands, 2), acc_dtype, device)
        _cam_stats_kernel[(batch,)](
            features, weights, grid_scratch, stats, peak,
            channels, h * w, w, width, params, *candidates, *common_axes,
            BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_CY=block_cy, BLOCK_CX=block_cx, ACC=acc,
            num_warps=8,
        )
        _cam_band_kernel[(batch, n_bands)](
            grid_scratch, stats, peak, packed, ranges, counts, band_counts, band_sums,
            h * w, w, height, width, bytes_per_row, n_slots, params, rows_per_band,
            *common_axes,
            ROI_BOXES=roi_boxes, BLOCK_Y=block_y, BLOCK_X=block_x, ACC=acc,
            num_warps=8,
        )
        block_b = min(triton.next_power_of_2(batch), 128)
        _cam_finish_kernel[(triton.cdiv(batch, block_b),)](
            stats, band_counts, band_sums, known_i8, *outputs, invalid,
            batch, n_bands, BLOCK_B=block_b, num_warps=4,
        )
    return AlignmentScores(*outputs, invalid.bool())


def cam_alignment(
    features: torch.Tensor,
    weights: torch.Tensor,
    roi: Roi,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> AlignmentScores:
    """``xal_core.scoring.cam_alignment`` on the Triton kernels (same arguments, same results).

    Mask ROIs are bit-packed on the device first (``Roi`` holds them unpacked); box ROIs go in as
    integer pixel ranges. NaN/Inf items are detected inside the kernel (no second pass over the
    features) and reported with the same ``NonFiniteInputWarning``.
    """
    check_cam_inputs(features, weights, roi)
    check_threshold(threshold)
    roi = roi.to(features.device)
    if roi.masks is not None:
        height, width = roi.size
        packed = roi.packed_masks() if len(roi.masks) else roi.masks.new_zeros(0, height, math.ceil(width / 8), dtype=torch.uint8)
        scores = launch_cam_alignment(features, weights, roi.size, roi.known, packed=packed, threshold=threshold)
    else:
        scores = launch_cam_alignment(
            features, weights, roi.size, roi.known,
            ranges=roi.box_pixel_ranges(), counts=roi.counts, threshold=threshold,
        )
    warn_nonfinite(scores.n_invalid, "features, CAM weights or channel sum")
    return scores
