"""The compiled CPU kernel for CAM/ROI alignment (Numba; it runs without the GIL).

Why it exists. The separable torch path (``xal_core.scoring.separable``) is exact and never builds
the full-resolution map, but it is some 200 small torch operations per chunk: at the service's
inline batch (64 items, 512×7×7 → 224²) their fixed costs, not arithmetic, set its ~8 ms on this
project's 2-core CPUs. This kernel does the same maths in one compiled pass per image, a row of the
ROI frame at a time, and holds no GIL, so the threads of one process score parts of a batch, or
different requests, truly in parallel.

What it computes, per image (docs/contract.md; docs/kernels.md, "The compiled CPU kernel"):

* the grid ``L = ReLU(Σ_k α_k A_k)`` in float64 (a non-finite sum marks the item invalid), scaled by
  a power of two that brings its maximum into ``[0.5, 1)`` (exact, and no later sum can overflow);
* the horizontal pass of the upsampling on the ``h`` grid rows,
  ``U[i, x] = (1-λ_x)·L[i, lo_x] + λ_x·L[i, hi_x]``, so that every output row is a blend of two
  contiguous rows, ``v(y, x) = (1-μ_y)·U[lo_y, x] + μ_y·U[hi_y, x]``, with no gather per pixel;
* the map's min, max and first arg-max from the two end columns of each column group (columns that
  share their source indices: along a row the map is linear in λ there, see ``separable``);
* per pixel the contract's test ``(v − min) / (max − min) >= τ``, done as ``v >= cut``, where
  ``cut`` is the smallest float64 whose normalised value reaches ``τ`` (found once per image by
  bisection over the ordered bit patterns of non-negative floats): the same decision as the
  division, exact ties at ``τ`` included, for one comparison per pixel;
* per row the counts (attended, ROI, both) as integers and the masses ``Σ (v − min)`` and
  ``Σ G·(v − min)``, divided by the range once per image;
* whether the map is flat, by the rule of ``xal_core.scoring.flatness``, with ``Σ_k |α_k A_k|``
  summed in the same loop as the grid.

Only the two mass sums may be reassociated by the compiler (``fastmath={"reassoc"}`` on
``_row_masses`` alone, so that they vectorise): sums of non-negative terms, any order keeps them to
~1e-15 relative. The values compared with ``cut`` are computed without any fast-math flag.
Box ROIs are drawn one row at a time into a scratch row: they never become a whole dense mask.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import torch

from xal_core.scoring import flatness
from xal_core.scoring.bilinear import axis_sampling
from xal_core.scoring.inputs import check_cam_inputs, warn_nonfinite
from xal_core.scoring.parameters import DEFAULT_THRESHOLD, check_threshold
from xal_core.scoring.plan_cache import byte_bounded_cache
from xal_core.scoring.results import AlignmentScores
from xal_core.scoring.roi import Roi

__all__ = ["cam_alignment", "resampling_plan", "warm_up"]

# Below this many images per thread, handing work to another thread costs more than it saves.
MIN_ITEMS_PER_THREAD = 8


@dataclass(frozen=True)
class ResamplingPlan:
    """Everything about ``h×w → H×W`` that does not depend on the image, as NumPy arrays."""

    row_lo: np.ndarray  # int64 [H]
    row_hi: np.ndarray  # int64 [H]
    row_mu: np.ndarray  # float64 [H]
    col_lo: np.ndarray  # int64 [W]
    col_hi: np.ndarray  # int64 [W]
    col_lam: np.ndarray  # float64 [W]
    group_first: np.ndarray  # int64 [g]: first column of each run of columns sharing (lo, hi)
    group_last: np.ndarray  # int64 [g]: its last column


@byte_bounded_cache()  # bounded by bytes: a plan grows with the frame (plan_cache)
def resampling_plan(h: int, w: int, height: int, width: int) -> ResamplingPlan:
    rows = axis_sampling(h, height, dtype=torch.float64)
    cols = axis_sampling(w, width, dtype=torch.float64)
    col_lo, col_hi = cols.lo.numpy(), cols.hi.numpy()
    changes = np.flatnonzero((col_lo[1:] != col_lo[:-1]) | (col_hi[1:] != col_hi[:-1])) + 1
    first = np.concatenate([[0], changes]).astype(np.int64)
    last = np.concatenate([changes - 1, [width - 1]]).astype(np.int64)
    return ResamplingPlan(
        row_lo=np.ascontiguousarray(rows.lo.numpy()),
        row_hi=np.ascontiguousarray(rows.hi.numpy()),
        row_mu=np.ascontiguousarray(rows.lam.numpy()),
        col_lo=np.ascontiguousarray(col_lo),
        col_hi=np.ascontiguousarray(col_hi),
        col_lam=np.ascontiguousarray(cols.lam.numpy()),
        group_first=first,
        group_last=last,
    )


# Relative slack when deciding from a row's candidate extremes that no pixel, or every pixel, of
# the row reaches the cut: a pixel can differ from the exact bilinear value, which lies between the
# candidates, by a few ulps (~1e-15); 1e-12 keeps the shortcut safe by three orders of magnitude.
ROW_MARGIN = 1e-12
# nogil: threads run the kernel in parallel; cache: compiled once per install, not per process.
JIT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")


@numba.njit(**JIT)
def _normalised(v, low, span):
    return (v - low) / span


@numba.njit(**JIT)
def _raw_cut(low, high, span, tau):
    """The smallest float64 ``v`` in ``(low, high]`` with ``(v - low) / span >= tau``.

    The normalisation is monotone in ``v`` (so is each rounded step), and for non-negative
    floats the order of the values is the order of their bit patterns as integers: bisect on
    those. ``high`` always qualifies (``(high - low) / span == 1 >= tau``), ``low`` never does
    (``tau > 0``)."""
    pattern = np.empty(2, dtype=np.float64)
    bits = pattern.view(np.int64)
    pattern[0] = low + 0.0  # + 0.0 turns a -0.0 into 0.0, whose bit pattern orders correctly
    pattern[1] = high
    below, above = bits[0], bits[1]
    while above - below > 1:
        middle = below + (above - below) // 2
        bits[0] = middle
        if _normalised(pattern[0], low, span) >= tau:
            above = middle
        else:
            below = middle
    bits[0] = above
    return pattern[0]


@numba.njit(**JIT)
def _row_attended(top, bottom, mu, mask, cut):
    """(attended, attended inside the ROI) pixels of the output row blended from ``top`` and
    ``bottom`` (rows of the horizontally resampled grid) with weight ``mu``."""
    attended = np.int32(0)
    both = np.int32(0)
    for x in range(mask.shape[0]):
        p = np.int32((1.0 - mu) * top[x] + mu * bottom[x] >= cut)
        attended += p
        both += p & np.int32(mask[x])
    return attended, both


@numba.njit(fastmath={"reassoc"}, **JIT)
def _row_masses(top, bottom, mu, mask, low):
    """(Σ (v − low), Σ G·(v − low), Σ G) over the same row; reassociation only reorders sums."""
    total = 0.0
    inside = 0.0
    truth = np.int32(0)
    for x in range(mask.shape[0]):
        shifted = (1.0 - mu) * top[x] + mu * bottom[x] - low
        total += shifted
        inside += shifted * mask[x]
        truth += np.int32(mask[x])
    return total, inside, truth


@numba.njit(**JIT)
def _extremes(columns, row_lo, row_hi, row_mu, group_first, group_last, row_low, row_high):
    """Min, max and first arg-max (row-major) of the upsampled map, and each row's own min and
    max. Along a row the map is linear in λ on each column group, so they sit at a group's first
    or last column (and the first maximum at the first of the two when they tie)."""
    low = np.inf
    high = -np.inf
    peak = 0
    width = columns.shape[1]
    for y in range(row_lo.shape[0]):
        mu = row_mu[y]
        top = columns[row_lo[y]]
        bottom = columns[row_hi[y]]
        row_min = np.inf
        row_max = -np.inf
        for g in range(group_first.shape[0]):
            for end in range(2):
                x = group_last[g] if end else group_first[g]
                v = (1.0 - mu) * top[x] + mu * bottom[x]
                row_min = min(row_min, v)
                if v > row_max:
                    row_max = v
                    if v > high:
                        high = v
                        peak = y * width + x
        low = min(low, row_min)
        row_low[y] = row_min
        row_high[y] = row_max
    return low, high, peak


@numba.njit(**JIT)
def _cam_grid(features, weights, out, magnitude_of):
    """``ReLU(Σ_k α_k A_k)`` into ``out`` (float64 whatever the feature dtype: see
    ``separable.cam_grids``), scaled by the power of two that brings its maximum into ``[0.5, 1)``
    (exact: the normalised map does not change, and no sum of grid values can overflow). Returns
    whether the sum is finite (else ``out`` is all zeros) and ``max over cells of Σ_k |α_k A_k|``
    in the same scale, summed in the same loop (``flatness``; ``magnitude_of`` is scratch)."""
    out[:] = 0.0
    magnitude_of[:] = 0.0
    size = out.shape[0]
    for k in range(features.shape[0]):
        alpha = weights[k]
        channel = features[k]
        for i in range(size):
            term = alpha * np.float64(channel[i])
            out[i] += term
            magnitude_of[i] += abs(term)
    finite = True
    magnitude = 0.0
    for i in range(size):
        if not np.isfinite(out[i]) or not np.isfinite(magnitude_of[i]):
            finite = False
        magnitude = max(magnitude, magnitude_of[i])
    high = 0.0
    for i in range(size):
        out[i] = max(out[i], 0.0) if finite else 0.0
        high = max(high, out[i])
    if high > 0.0:
        scale = math.ldexp(1.0, -math.frexp(high)[1])
        for i in range(size):
            out[i] *= scale
        magnitude *= scale
    return finite, magnitude


@numba.njit(**JIT)
def _roi_row(b, y, masks, ranges, use_boxes, scratch):
    """Row ``y`` of image ``b``'s ROI: a row of its mask, or its boxes drawn into ``scratch``
    (boxes never become a whole dense mask)."""
    if not use_boxes:
        return masks[b, y]
    scratch[:] = False
    for m in range(ranges.shape[1]):
        x_lo, y_lo, x_hi, y_hi = ranges[b, m, 0], ranges[b, m, 1], ranges[b, m, 2], ranges[b, m, 3]
        if y_lo <= y < y_hi:
            scratch[x_lo:x_hi] = True
    return scratch


@numba.njit(**JIT)
def _alignment(features, weights, h, masks, ranges, use_boxes, known, height, width,
              row_lo, row_hi, row_mu, col_lo, col_hi, col_lam, group_first, group_last,
              tau, flat_factor, scores, invalid):
    """``scores[b] = (Dice, soft Dice, ROI energy, pointing hit)`` and ``invalid[b]`` for every
    image: ``features`` ``[B, C, h·w]`` (float32 or float64), ``weights`` float64 ``[B, C]``, the ROI
    as bool ``masks [B, H, W]`` or, with ``use_boxes``, as integer pixel ranges ``[B, M, 4]``.
    Unknown ROIs and non-finite inputs give NaN scores. A map is flat when its grid's or its
    resampled range is at most ``flat_factor · C · Σ|α_k A_k|`` (``flatness``)."""
    batch = features.shape[0]
    w = features.shape[2] // h
    flat_grid = np.empty(h * w)
    magnitude_of = np.empty(h * w)
    columns = np.empty((h, width))
    scratch = np.empty(width, dtype=np.bool_)
    row_low = np.empty(height)
    row_high = np.empty(height)
    for b in range(batch):
        finite, magnitude = _cam_grid(features[b], weights[b], flat_grid, magnitude_of)
        invalid[b] = not finite
        if invalid[b] or not known[b]:
            scores[b, :] = np.nan
            continue
        grid = flat_grid.reshape((h, w))
        grid_low = np.inf
        grid_high = -np.inf
        for i in range(h * w):
            grid_low = min(grid_low, flat_grid[i])
            grid_high = max(grid_high, flat_grid[i])
        # Horizontal pass first, on the h grid rows (h·W values): then every output row is a
        # blend of two contiguous rows of `columns`, with no gather per pixel.
        for i in range(h):
            for x in range(width):
                lam = col_lam[x]
                columns[i, x] = (1.0 - lam) * grid[i, col_lo[x]] + lam * grid[i, col_hi[x]]
        low, high, peak = _extremes(columns, row_lo, row_hi, row_mu, group_first, group_last, row_low, row_high)
        attended = 0
        overlap = 0
        truth = 0
        mass = 0.0
        mass_in = 0.0
        hit = 0.0
        tolerance = flat_factor * features.shape[1] * magnitude
        if grid_high - grid_low <= tolerance or high - low <= tolerance:
            # No range beyond rounding on the grid or after resampling: the map is all zeros.
            for y in range(height):
                row = _roi_row(b, y, masks, ranges, use_boxes, scratch)
                for x in range(width):
                    truth += row[x]
        else:
            span = high - low
            cut = _raw_cut(low, high, span, tau)
            for y in range(height):
                row = _roi_row(b, y, masks, ranges, use_boxes, scratch)
                top, bottom, mu = columns[row_lo[y]], columns[row_hi[y]], row_mu[y]
                m, m_in, t = _row_masses(top, bottom, mu, row, low)
                mass += m
                mass_in += m_in
                truth += t
                if y == peak // width:
                    hit = 1.0 if row[peak % width] else 0.0
                # A row's pixels lie between its candidates' min and max up to a few ulps of
                # rounding: rows clear of the cut by far more than that need no pixel test.
                if row_high[y] + ROW_MARGIN * row_high[y] < cut:
                    continue
                if row_low[y] - ROW_MARGIN * row_high[y] >= cut:
                    attended += width
                    overlap += t
                    continue
                a, o = _row_attended(top, bottom, mu, row, cut)
                attended += a
                overlap += o
            mass /= span
            mass_in = min(max(mass_in / span, 0.0), mass)
        pair = attended + truth
        scores[b, 0] = 1.0 if pair == 0 else 2.0 * overlap / pair
        soft_pair = mass + truth
        scores[b, 1] = 1.0 if soft_pair == 0 else 2.0 * mass_in / soft_pair
        scores[b, 2] = 0.0 if mass == 0 else mass_in / mass
        scores[b, 3] = hit



_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads:  # noqa: SLF001 - grow, never shrink
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xal-cpu-kernel")
        return _pool


def cam_alignment(
    features: torch.Tensor,
    weights: torch.Tensor,
    roi: Roi,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    threads: int | None = None,
) -> AlignmentScores:
    """``xal_core.scoring.cam_alignment`` on the compiled CPU kernel (same arguments, same results).

    ``threads`` (default ``torch.get_num_threads()``) splits the images over that many threads of
    a shared pool; the kernel holds no GIL, so they run in parallel. A process that gives torch
    one thread (``xal serve``) gets one thread here too, and runs requests in parallel instead.
    """
    check_cam_inputs(features, weights, roi)
    check_threshold(threshold)
    if features.device.type != "cpu":
        raise ValueError(f"features: the compiled CPU kernel takes CPU tensors, got {features.device}")
    roi = roi.to(features.device)
    features, weights = features.detach(), weights.detach()  # scores are not differentiable on any path
    batch, channels, h, w = features.shape
    height, width = roi.size
    plan = resampling_plan(h, w, height, width)
    if features.dtype not in (torch.float32, torch.float64):
        features = features.float()  # float16 and bfloat16 widen exactly
    features_np = features.reshape(batch, channels, h * w).numpy()
    weights_np = weights.to(torch.float64).numpy()
    use_boxes = roi.masks is None
    masks_np = np.zeros((batch, 1, 1), dtype=np.bool_) if use_boxes else roi.masks.numpy()
    ranges_np = roi.box_pixel_ranges().numpy() if use_boxes else np.zeros((batch, 0, 4), dtype=np.int64)
    known_np = roi.known.numpy()
    scores = np.empty((batch, 4), dtype=np.float32)
    invalid = np.empty(batch, dtype=np.bool_)
    flat_factor = flatness.FLAT_FACTOR * flatness.roundoff_unit(torch.float64)

    def run(part: slice) -> None:
        _alignment(features_np[part], weights_np[part], h, masks_np[part], ranges_np[part], use_boxes,
               known_np[part], height, width, plan.row_lo, plan.row_hi, plan.row_mu, plan.col_lo,
               plan.col_hi, plan.col_lam, plan.group_first, plan.group_last, float(threshold),
               flat_factor, scores[part], invalid[part])

    threads = torch.get_num_threads() if threads is None else threads
    parts = max(1, min(threads, batch // MIN_ITEMS_PER_THREAD))
    if parts == 1:
        run(slice(0, batch))
    else:
        bounds = np.linspace(0, batch, parts + 1).astype(int)
        futures = [_thread_pool(parts).submit(run, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        for future in futures:
            future.result()
    result = AlignmentScores(*torch.from_numpy(scores).T, invalid=torch.from_numpy(invalid))
    warn_nonfinite(result.n_invalid, "features, CAM weights or channel sum")
    return result


def warm_up() -> None:
    """Compile the kernel now (or load it from Numba's cache) rather than on the first request."""
    roi = Roi.from_masks(torch.ones(1, 4, 4, dtype=torch.bool))
    cam_alignment(torch.rand(1, 2, 2, 2), torch.rand(1, 2), roi, threads=1)

