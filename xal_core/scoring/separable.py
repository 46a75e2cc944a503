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

Precision (docs/scoring.md, "Precision per path and input dtype"): the channel sum, the vertical
pass and the candidates (min, max, peak) run in float64, on a grid scaled by a power of two (exact,
so that no later sum overflows). The rows are then normalised by the map's own min and max. A row
holds the values at the *grid* columns, which lie outside ``[0, 1]`` wherever the frame's samples
miss the grid's extremes: on a high-contrast grid read at a coarse frame they reach ±10⁴ and more,
and their sums cancel. So the per-row work runs in float64 for float64 inputs (the float64 contract
holds for them on every path), and for lower-precision inputs whenever a chunk's rows leave
``[-ROW_FLOAT32_LIMIT, ROW_FLOAT32_LIMIT]``; otherwise in float32 (twice as fast), where a row value
carries an absolute error below ~2.4e-7 of the map's range. Counts and sums accumulate in
int32/float64. Everything runs batched over a chunk of images, with no Python loop over images,
pixels or boxes (the exact check of ``flatness`` runs per suspect item, and suspects do not occur in
real Grad-CAMs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import flatness
from .bilinear import AxisSampling, axis_sampling, interpolation_matrix
from .parameters import DEFAULT_THRESHOLD
from .plan_cache import byte_bounded_cache
from .results import AlignmentScores, empty_scores
from .roi import Roi

__all__ = ["cam_alignment_separable"]

SUM_DTYPE = torch.float64  # accumulations and final ratios
# Rows of lower-precision inputs run in float32 while every value of the chunk's normalised rows lies
# within ±ROW_FLOAT32_LIMIT (then a float32 row value is within 2·2^-24·2 of the exact one).
ROW_FLOAT32_LIMIT = 2.0
TINY = 1e-30  # float32 normalised row values below this are flushed to 0 (see _chunk_metrics)
# Images per chunk, measured on 2 cores at 224²: dense masks are read twice per chunk (a running
# count along the rows, and their packed bytes for the projection), some 10 MB of temporaries for
# 128 masks; larger chunks gain little. Box ROIs carry no per-pixel data.
CHUNK_FOR_MASKS = 128
CHUNK_FOR_BOXES = 128
# The float64 copy of the features is made this many bytes at a time (see cam_grids): about the
# size of a core's L2 cache, measured at 512×7×7 on 2 cores.
GRID_BLOCK_BYTES = 2 << 20


@dataclass(frozen=True)
class ColumnPlan:
    """Everything about the ``w → W`` column resampling that does not depend on the image."""

    start: torch.Tensor  # int32 [g]: first column of the group
    end: torch.Tensor  # int32 [g]: one past its last column
    group_f: torch.Tensor  # row dtype [g]: j as a float, the group's source-coordinate origin
    candidates: torch.Tensor  # int64 [n_c]: columns where a row can take its min or max
    candidate_matrix: torch.Tensor  # float64 [w, n_c]: blended_row @ it = the row at the candidates
    ends_matrix: torch.Tensor  # row dtype [w, 2g]: blended_row @ it = (row[group], row[group_hi])
    matrix: torch.Tensor  # row dtype [W, w]: resized_row = matrix @ grid_row
    running: torch.Tensor  # row dtype [W + 1, w]: running[x] = sum of matrix rows before x
    column_weight: torch.Tensor  # row dtype [w]: matrix.sum(0), so Σ_x row(x) = column_weight · grid_row
    integer: torch.Tensor  # float64 [W, w]: 2W · matrix, exact integers
    out_per_in: float  # W / w: converts a source coordinate back to a column
    sampling: AxisSampling  # float64: where each column reads the row (the per-pixel formula)


@byte_bounded_cache()  # bounded by bytes: a plan grows with the frame (plan_cache)
def column_plan(w: int, width: int, device: torch.device, row_dtype: torch.dtype = torch.float32) -> ColumnPlan:
    """The plan with its per-row tensors in ``row_dtype`` (float32 or float64; see the module doc)."""
    sampling = axis_sampling(w, width, dtype=torch.float64, device=device)
    groups = torch.arange(w, device=device)
    start = torch.searchsorted(sampling.lo, groups, side="left")
    end = torch.searchsorted(sampling.lo, groups, side="right")
    present = end > start
    start, end, group = start[present], end[present], groups[present]
    candidates = torch.unique(torch.cat([start, end - 1]))
    matrix = interpolation_matrix(sampling, w)
    running = torch.cat([torch.zeros(1, w, dtype=torch.float64, device=device), matrix.cumsum(0)])
    group_hi = sampling.hi[start]
    # Gathers along the last (length-w) axis as small matrix products: much faster than indexing.
    ends = torch.zeros(w, 2 * len(group), dtype=row_dtype, device=device)
    ends[group, torch.arange(len(group), device=device)] = 1.0
    ends[group_hi, len(group) + torch.arange(len(group), device=device)] = 1.0
    return ColumnPlan(
        start=start.to(torch.int32),
        end=end.to(torch.int32),
        group_f=group.to(row_dtype),
        candidates=candidates,
        candidate_matrix=matrix[candidates].T.contiguous(),
        ends_matrix=ends,
        matrix=matrix.to(row_dtype),
        running=running.to(row_dtype),
        column_weight=matrix.sum(0).to(row_dtype),
        integer=integer_weights(matrix),
        out_per_in=width / w,
        sampling=sampling,
    )


@dataclass(frozen=True)
class RowPlan:
    """The ``h → H`` row resampling as matrices."""

    matrix: torch.Tensor  # float64 [H, h]: blended = matrix @ grid
    integer_t: torch.Tensor  # float32 [h, H]: (2H · matrix)^T, whose entries are exact integers
    candidates: torch.Tensor  # int64 [n_r]: rows where a column can take its min or max


@byte_bounded_cache()  # bounded by bytes: a plan grows with the frame (plan_cache)
def row_plan(h: int, height: int, device: torch.device) -> RowPlan:
    sampling = axis_sampling(h, height, dtype=torch.float64, device=device)
    matrix = interpolation_matrix(sampling, h)
    return RowPlan(matrix, integer_weights(matrix).T.contiguous().to(torch.float32), _group_ends(sampling.lo, h))


def _group_ends(lo: torch.Tensor, n_in: int) -> torch.Tensor:
    """First and last output index of each run of outputs that share the lower source index ``lo``,
    sorted: along such a run the resampled values are linear in a non-decreasing weight, so their
    extremes, and the first of them, lie at its ends."""
    groups = torch.arange(n_in, device=lo.device)
    start = torch.searchsorted(lo, groups, side="left")
    end = torch.searchsorted(lo, groups, side="right")
    present = end > start
    return torch.unique(torch.cat([start[present], end[present] - 1]))


def integer_weights(matrix: torch.Tensor) -> torch.Tensor:
    """``2·n_out·matrix`` rounded: every bilinear weight is ``k / (2·n_out)``, because the source
    coordinate is ``((2·out + 1)·n_in − n_out) / (2·n_out)``. Integer weights make the projection of a
    0/1 ROI onto the grid exact in float arithmetic (see ``_mask_terms``)."""
    scaled = matrix * (2 * matrix.shape[0])
    rounded = scaled.round()
    if (scaled - rounded).abs().max() > 1e-6:
        raise AssertionError("bilinear weights are not multiples of 1/(2·n_out)")
    return rounded


def cam_alignment_separable(
    features: torch.Tensor,
    weights: torch.Tensor,
    roi: Roi,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    chunk_size: int | None = None,
) -> AlignmentScores:
    """Alignment scores for checked, finite inputs (see ``alignment.cam_alignment`` for the API)."""
    if chunk_size is None:
        chunk_size = CHUNK_FOR_MASKS if roi.masks is not None else CHUNK_FOR_BOXES
    batch, _, h, w = features.shape
    height, width = roi.size
    device = features.device
    rows = row_plan(h, height, device)
    scores = empty_scores(batch, device)
    grids, grid_flat, tolerance, invalid = cam_grids(features, weights)  # [B, h, w]: small next to the features
    scores.invalid.copy_(invalid)
    float64_rows = features.dtype == torch.float64  # the float64 contract holds for float64 inputs
    for begin in range(0, batch, chunk_size):
        part = slice(begin, begin + chunk_size)
        metrics = _chunk_metrics(grids[part], grid_flat[part], tolerance[part], rows, (w, width, device), roi[part], threshold, float64_rows)
        for name, value in metrics.items():
            getattr(scores, name)[part] = value.to(torch.float32)
    return scores


def cam_grids(features: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ReLU(Σ_k α_k A_k)`` ``[b, h, w]`` in float64, shifted by its minimum and scaled by a power of
    two; whether each grid is flat; each item's flat tolerance ``ε`` in the same scale; and which
    items had NaN/Inf inputs (their grids come back as zeros, so they cannot disturb anything
    downstream).

    The channel sum runs in float64 whatever the input dtype: with C = 2048 channels and a common
    offset, float32 accumulation alone moves soft Dice by more than 1e-5. The same product with
    ``|α|`` gives ``Σ_k |α_k A_k|`` for ``ε`` (``flatness``) in the same pass over the features (two
    rows of weights instead of one; a second product only for features with negative values). A
    NaN or ±Inf anywhere in an item's features or weights always leaves a NaN or ±Inf in its sum
    *before* the ReLU (finite float32 products cannot overflow float64), so checking the small grid
    replaces a pass over the features; float64 inputs whose sum overflows are flagged too, like a
    NaN input (docs/contract.md).

    Each grid is then shifted by its minimum, which leaves the normalised map unchanged, and which
    is exact where it matters: on a near-flat grid (every cell within a factor 2 of the minimum) the
    difference of two close floats is exact, so the map is normalised from exact differences
    instead of differences of two large upsampled values. Last, a power of two brings the grid's
    maximum into ``[0.5, 1)``: exact, and no later sum of grid values can overflow.

    On the CPU the float64 copy of the features is made a block of items at a time into one small
    buffer (``GRID_BLOCK_BYTES``) rather than for the whole batch at once: the same products and the
    same sums, without writing and re-reading megabytes of fresh memory.
    """
    b, c, h, w = features.shape
    alpha = weights.to(torch.float64)
    both = torch.stack([alpha, alpha.abs()], dim=1)  # [b, 2, c]: the grid and Σ_k |α_k| A_k
    flat_features = features.reshape(b, c, h * w)
    sums = torch.empty(b, 2, h * w, dtype=torch.float64, device=features.device)
    if features.dtype == torch.float64 or features.device.type != "cpu" or b == 0:
        block, buffer = b, None
    else:
        block = max(1, min(b, GRID_BLOCK_BYTES // max(1, c * h * w * 8)))
        buffer = torch.empty(block, c, h * w, dtype=torch.float64)
    for begin in range(0, b, max(1, block)):
        n = min(block, b - begin)
        if buffer is None:
            part = flat_features[begin : begin + n].to(torch.float64)
        else:
            part = buffer[:n]
            part.copy_(flat_features[begin : begin + n])
        torch.bmm(both[begin : begin + n], part, out=sums[begin : begin + n])
        if part.numel() and bool(part.amin() < 0):  # |A| ≠ A: the magnitude needs its own product
            torch.bmm(both[begin : begin + n, 1:], part.abs(), out=sums[begin : begin + n, 1:])
    grid = sums[:, 0].reshape(b, h, w)
    magnitude = sums[:, 1].amax(dim=1) if h * w else sums.new_zeros(b)
    invalid = ~torch.isfinite(grid).all(dim=2).all(dim=1) | ~torch.isfinite(magnitude)
    grid = torch.relu(grid.masked_fill_(invalid[:, None, None], 0.0))
    tolerance = flatness.flat_tolerance(magnitude.masked_fill(invalid, 0.0), c, flatness.roundoff_unit(torch.float64))
    low = grid.amin(dim=(1, 2))
    grid = grid - low[:, None, None]
    high = grid.amax(dim=(1, 2))
    flat = high <= tolerance  # the grid's range (``flatness``): its minimum is 0 now
    exponent = torch.frexp(high).exponent  # high = mantissa · 2^exponent, mantissa in [0.5, 1)
    grid = torch.ldexp(grid, -exponent[:, None, None].to(torch.float64))
    tolerance = torch.ldexp(tolerance, -exponent.to(torch.float64))
    return grid, flat, tolerance, invalid


def _chunk_metrics(
    grids: torch.Tensor,
    grid_flat: torch.Tensor,
    tolerance: torch.Tensor,
    rows: RowPlan,
    columns: tuple[int, int, torch.device],
    roi: Roi,
    threshold: float,
    float64_rows: bool,
) -> dict[str, torch.Tensor]:
    height, width = roi.size
    blended = torch.matmul(rows.matrix, grids)  # vertical pass of the upsampling, float64 [b, H, w]
    plan64 = column_plan(*columns, torch.float64)

    # Min, max and first arg-max of the upsampled map, from the candidate columns of the candidate
    # rows (the same argument holds along both axes: the map is linear in each between grid lines).
    values = blended.index_select(1, rows.candidates) @ plan64.candidate_matrix
    low = values.amin(dim=(1, 2))
    high = values.amax(dim=(1, 2))
    # Flat (all zeros, no peak): no range beyond rounding on the grid or after resampling, decided
    # as every path decides it (``flatness``).
    flat = grid_flat | (high - low <= tolerance)
    span = torch.where(flat, torch.ones_like(high), high - low)
    # Candidates are sorted, so the row-major order of (row, column) candidates is that of the
    # pixels, and argmax (which returns the first maximum) finds the first peak in row-major order.
    first = values.flatten(1).argmax(dim=1)
    n_columns = plan64.candidates.numel()
    peak = rows.candidates[first // n_columns] * width + plan64.candidates[first % n_columns]

    # The rows of the normalised map, scaled by the map's own range. A row holds the values at the
    # *grid* columns, which may lie far outside [0, 1] (the samples need not reach the grid's
    # extremes) and then cancel: float32 only for lower-precision inputs whose rows stay near [0, 1]
    # (see the module doc). Float32 values this small are zero for every metric, but as denormals
    # they would slow every later operation several-fold.
    normalised = (blended - low[:, None, None]) / span[:, None, None]
    if not float64_rows and normalised.numel() and max(-float((extent := torch.aminmax(normalised)).min), float(extent.max)) <= ROW_FLOAT32_LIMIT:
        normalised = normalised.to(torch.float32)
        normalised = normalised.masked_fill_(normalised.abs() < TINY, 0.0)
    plan = column_plan(*columns, normalised.dtype)
    start, end = plan.start, plan.end

    # Per row and column group: the run [run_start, run_end) of pixels with value >= τ. On a group
    # the value is left + λ·slope with λ = source - j, so solve for the source coordinate and map it
    # back to a column: first x with source(x) >= v is ceil((v + 0.5)·W/w - 0.5).
    cut = threshold
    left, right = (normalised @ plan.ends_matrix).chunk(2, dim=2)
    slope = right - left
    rising, falling = slope > 0, slope < 0
    crossing = (cut - left).div_(slope.masked_fill(slope == 0, 1.0)).add_(plan.group_f)
    # Columns left of the first output pixel centre clamp their source coordinate to 0, so a
    # crossing below 0 lies before every column: column -1, which the clamps below take to `start`.
    # So does a *rising* crossing at exactly 0: the clamped columns hold τ itself and are attended,
    # which the mapping below (first column whose unclamped coordinate reaches 0) would miss. A
    # falling crossing at 0 maps correctly: the clamped columns, and only they, are attended.
    before_all = (crossing < 0) | ((crossing == 0) & rising)
    column = crossing.clamp_(-1.0, float(plan.matrix.shape[1])).add_(0.5).mul_(plan.out_per_in).sub_(0.5)
    column.masked_fill_(before_all, -1.0)
    first_at_or_above = column.ceil().to(torch.int32).clamp_(start, end)
    first_above = column.floor_().to(torch.int32).add_(1).clamp_(start, end)
    run_start = torch.where(rising, first_at_or_above, start)
    level_end = torch.where(left >= cut, end, start)
    run_end = torch.where(rising, end, torch.where(falling, first_above, level_end))
    if normalised.dtype == torch.float64:
        run_start, run_end = _settle_run_edges(blended, low, span, plan, run_start, run_end, rising, falling, threshold)
    run_end = torch.where(flat[:, None, None], run_start, run_end)
    n_predicted = (run_end - run_start).sum(dim=(1, 2), dtype=torch.int64).to(SUM_DTYPE)

    # Mass of the normalised map: Σ_x of a row is column_weight · row.
    mass = (normalised @ plan.column_weight).sum(dim=1, dtype=SUM_DTYPE)

    if roi.masks is not None:
        n_truth, overlap, mass_in, hit = _mask_terms(roi, grids, low, span, rows, plan, run_start, run_end, peak)
    else:
        n_truth, overlap, mass_in, hit = _box_terms(roi, normalised, plan, run_start, run_end, peak)
    mass_in_roi = torch.minimum(mass_in.clamp_min(0.0), mass)
    zero = torch.zeros_like(mass)
    mass, mass_in_roi, hit = (torch.where(flat, zero, t) for t in (mass, mass_in_roi, hit))

    pair = n_predicted + n_truth
    soft_pair = mass + n_truth
    return {
        "dice": torch.where(pair == 0, 1.0, 2.0 * overlap / pair.clamp_min(1.0)),
        "soft_dice": torch.where(soft_pair == 0, 1.0, 2.0 * mass_in_roi / soft_pair.clamp_min(1e-300)),
        "roi_energy": torch.where(mass == 0, 0.0, mass_in_roi / mass.clamp_min(1e-300)),
        "pointing_hit": hit,
    }


def _settle_run_edges(blended, low, span, plan: ColumnPlan, run_start, run_end, rising, falling, threshold: float):
    """Make each run's moving edge agree with the per-pixel test ``(v − low) / span >= τ``, with
    ``v = (1 − λ)·row[lo] + λ·row[hi]`` in float64, the order every path evaluates a pixel in.

    The analytic crossing is accurate to a few units of roundoff of the range, but a pixel exactly
    at ``τ`` (a grid of binary fractions, say) must be attended, and the crossing may round to its
    far side: so the pixel on each side of the edge is evaluated and the edge moved by one where
    they disagree. (A rising run ends at its group's end, a falling one starts at its start.)
    """
    b, height, _ = blended.shape
    width = plan.sampling.lo.numel()
    lo, hi, lam = plan.sampling.lo, plan.sampling.hi, plan.sampling.lam
    low, span = low[:, None, None], span[:, None, None]

    def attended(x: torch.Tensor) -> torch.Tensor:
        column = x.clamp(0, width - 1).long()
        left = blended.gather(2, lo[column])
        right = blended.gather(2, hi[column])
        weight = lam[column]
        return ((1.0 - weight) * left + weight * right - low) / span >= threshold

    start, end = plan.start, plan.end
    before = run_start - 1
    grow = rising & (before >= start) & attended(before)
    shrink = rising & ~grow & (run_start < end) & ~attended(run_start)
    run_start = torch.where(grow, before, torch.where(shrink, run_start + 1, run_start))
    last = run_end - 1
    cut_back = falling & (last >= start) & ~attended(last)
    extend = falling & ~cut_back & (run_end < end) & attended(run_end)
    run_end = torch.where(cut_back, last, torch.where(extend, run_end + 1, run_end))
    return run_start, run_end


def _mask_terms(roi: Roi, grids, low, span, rows: RowPlan, plan: ColumnPlan, run_start, run_end, peak):
    """ROI size, overlap with the thresholded runs, normalised map mass inside, and peak hit for
    dense masks.

    The mass inside is ``(Σ_grid L · (Ry^T G Rx) − low·|G|) / span``: the ROI projected onto the
    ``h×w`` grid. With integer-scaled weights that projection is exact (integers below 2^24 in
    float32, then float64), so subtracting ``low·|G|`` loses nothing to rounding.

    On the CPU both the counts and the projection come from the masks' bit-packed rows (a 32nd of
    their pixels' bytes): see ``_packed_terms``.
    """
    masks = roi.masks
    b, height, width = masks.shape
    if masks.device.type == "cpu":
        n_truth, overlap, projected = _packed_terms(masks, rows, plan, run_start, run_end)
    else:
        # Running ROI counts along each row, in the narrowest integer that holds a row's count.
        count_dtype = torch.uint8 if width < 2**8 else torch.int16 if width < 2**15 else torch.int32
        as_bytes = masks.view(torch.uint8)
        running = torch.cumsum(as_bytes, dim=2, dtype=count_dtype)

        def count_before(x: torch.Tensor) -> torch.Tensor:  # ROI pixels in [0, x) of each row
            taken = running.gather(2, (x.long() - 1).clamp_min(0)).to(torch.int32)
            return torch.where(x > 0, taken, 0)

        n_truth = running[:, :, width - 1].sum(dim=1, dtype=torch.int64).to(SUM_DTYPE)
        bounds = count_before(torch.cat([run_start, run_end], dim=2))
        overlap = (bounds[..., run_start.shape[2] :] - bounds[..., : run_start.shape[2]]).sum(dim=(1, 2), dtype=torch.int64)
        overlap = overlap.to(SUM_DTYPE)
        row_projected = torch.matmul(rows.integer_t, as_bytes.to(torch.float32))  # [b, h, W], exact integers
        projected = torch.matmul(row_projected.to(torch.float64), plan.integer)  # [b, h, w], exact
    scale = 4.0 * height * width
    mass_in = ((grids * projected).sum(dim=(1, 2)) / scale - low * n_truth) / span
    hit = masks.reshape(b, -1).gather(1, peak.clamp_max(height * width - 1)[:, None])[:, 0].to(SUM_DTYPE)
    return n_truth, overlap, mass_in, hit


@byte_bounded_cache()  # bounded by bytes: a plan grows with the frame (plan_cache)
def packed_columns(w: int, width: int) -> torch.Tensor:
    """``[ceil(W/8)·256, w]``: row ``k·256 + v`` is ``Σ_x bit_x(v) · integer[8k + x]`` for the byte
    value ``v`` at byte position ``k`` of a bit-packed mask row (MSB first, NumPy ``packbits``
    order), so that summing a row's bytes' entries gives that row's column pass of the projection,
    ``G @ 2W·Rx``, exactly: the entries and their sums are integers, in float32 while they stay
    below 2^24 (else float64)."""
    integer = column_plan(w, width, torch.device("cpu")).integer  # float64 [W, w]
    n_bytes = -(-width // 8)
    padded = torch.zeros(n_bytes * 8, w, dtype=torch.float64)
    padded[:width] = integer
    bits = ((torch.arange(256)[:, None] >> (7 - torch.arange(8))[None, :]) & 1).to(torch.float64)  # MSB first
    table = torch.einsum("vi,kiw->kvw", bits, padded.reshape(n_bytes, 8, w)).reshape(n_bytes * 256, w)
    exact_in_float32 = float(integer.sum(0).max()) < 2**24
    return table.to(torch.float32 if exact_in_float32 else torch.float64)


def _popcount8(v: torch.Tensor) -> torch.Tensor:
    """Set bits of each uint8 (SWAR: pairs, then nibbles, then the byte)."""
    v = v - ((v >> 1) & 0x55)
    v = (v & 0x33) + ((v >> 2) & 0x33)
    return (v + (v >> 4)) & 0x0F


def _packed_terms(masks: torch.Tensor, rows: RowPlan, plan: ColumnPlan, run_start, run_end):
    """ROI size, overlap with the runs and projection ``Ry_int^T G Rx_int`` (float64, exact
    integers) for dense CPU masks, from their bit-packed rows.

    * Projection: one table lookup per byte (``embedding_bag`` sums a row's bytes' entries) instead
      of a float copy of every pixel and a matrix product over it.
    * Counts: ROI pixels in ``[0, x)`` of a row = set bits of its bytes before ``x // 8`` (a running
      count over bytes, not pixels) + set bits among the top ``x % 8`` of byte ``x // 8``.
    """
    b, height, width = masks.shape
    n_bytes = -(-width // 8)
    packed = torch.from_numpy(np.packbits(masks.numpy(), axis=-1))  # [b, H, n_bytes], padding bits 0
    index = packed.to(torch.int32) + torch.arange(0, n_bytes * 256, 256, dtype=torch.int32)
    table = packed_columns(plan.integer.shape[1], width)
    columns = torch.nn.functional.embedding_bag(index.reshape(-1, n_bytes), table, mode="sum")
    projected = torch.matmul(rows.integer_t.to(torch.float64), columns.reshape(b, height, -1).to(torch.float64))

    count_dtype = torch.uint8 if width < 2**8 else torch.int16 if width < 2**15 else torch.int32
    before = torch.nn.functional.pad(torch.cumsum(_popcount8(packed), dim=2, dtype=count_dtype), (1, 0))  # [b, H, n_bytes + 1]
    n_truth = before[:, :, n_bytes].sum(dim=1, dtype=torch.int64).to(SUM_DTYPE)
    x = torch.cat([run_start, run_end], dim=2)  # int32 [b, H, 2g], in [0, W]
    byte = (x >> 3).long()  # x = W (a multiple of 8) points at the zero byte padded on below
    top = (torch.nn.functional.pad(packed, (0, 1)).gather(2, byte) >> (7 - (x & 7)).to(torch.uint8)) >> 1
    g = run_start.shape[2]
    full, partial = before.gather(2, byte), _popcount8(top)
    overlap = (full[..., g:].sum(dim=(1, 2), dtype=torch.int64) - full[..., :g].sum(dim=(1, 2), dtype=torch.int64)
               + partial[..., g:].sum(dim=(1, 2), dtype=torch.int64) - partial[..., :g].sum(dim=(1, 2), dtype=torch.int64))
    return n_truth, overlap.to(SUM_DTYPE), projected


def _box_terms(roi: Roi, normalised, plan: ColumnPlan, run_start, run_end, peak):
    """The same four terms for box ROIs, from per-row disjoint column intervals (no dense mask)."""
    height, width = roi.size
    ranges = roi.box_pixel_ranges().to(torch.int32)  # [b, M, 4] = x_lo, y_lo, x_hi, y_hi
    x_lo, y_lo, x_hi, y_hi = ranges.unbind(-1)
    ys = torch.arange(height, device=ranges.device, dtype=torch.int32)
    active = (ys[None, :, None] >= y_lo[:, None, :]) & (ys[None, :, None] < y_hi[:, None, :])  # [b, H, M]
    lo = torch.where(active, x_lo[:, None, :], 0)
    hi = torch.where(active, torch.maximum(x_hi, x_lo)[:, None, :], 0)
    if lo.shape[-1] > 1:
        # Union of intervals per row as disjoint pieces: sort by start, cut each at the running max end.
        lo, order = lo.sort(dim=-1)
        hi = hi.gather(-1, order)
        reach = torch.cummax(hi, dim=-1).values
        lo = torch.cat([lo[..., :1], torch.maximum(lo[..., 1:], reach[..., :-1])], dim=-1)
        hi = torch.maximum(hi, lo)
    n_truth = (hi - lo).sum(dim=(1, 2), dtype=torch.int64).to(SUM_DTYPE)
    # |[run_start, run_end) ∩ [lo_m, hi_m)| summed over the disjoint pieces m: [b, H, g, M].
    meet = torch.minimum(run_end[..., None], hi[:, :, None, :]) - torch.maximum(run_start[..., None], lo[:, :, None, :])
    overlap = meet.clamp_min_(0).sum(dim=(1, 2, 3), dtype=torch.int64).to(SUM_DTYPE)
    inside = plan.running[hi.long()] - plan.running[lo.long()]  # [b, H, M, w]
    mass_in = (normalised[:, :, None, :] * inside).sum(dim=(1, 2, 3), dtype=SUM_DTYPE)
    peak_y, peak_x = peak // width, peak % width
    in_box = (peak_x[:, None] >= x_lo) & (peak_x[:, None] < x_hi) & (peak_y[:, None] >= y_lo) & (peak_y[:, None] < y_hi)
    hit = in_box.any(dim=1).to(SUM_DTYPE)
    return n_truth, overlap, mass_in, hit
