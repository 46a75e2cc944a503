"""An independent float64 reference of the scoring contract (docs/contract.md), for the tests.

Written straight from the contract with plain Python loops over pixels and classes, on NumPy
arrays and Python floats. It deliberately imports nothing from ``xal_core`` and nothing from
``torch``: the point is to have a second, obviously-correct implementation to compare the
library's fast path and dense reference against. Keep frames modest: it loops over every pixel.

Inputs are NumPy arrays. Feature maps given in float16/bfloat16 must be rounded by the caller and
handed over as float64, so that both sides start from the very same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

__all__ = [
    "BAND",
    "FLAT_FACTOR",
    "flat_state",
    "PEAK_MARGIN",
    "RefAlignment",
    "cam_grid",
    "upsample_bilinear",
    "normalise",
    "rasterise_boxes",
    "alignment",
    "dice_from_counts",
    "reachable_dice",
    "entropy",
    "margin",
    "least_confidence",
    "bald",
    "softmax",
    "percentile_ranks",
    "dual_score",
]

#: A pixel whose normalised reference value lies within BAND of τ may legitimately binarise either
#: way in another implementation. This is the default band; the tests pass each path's own band,
#: computed from its precision and the item's conditioning (``conftest.Precision``).
BAND = 1e-6
#: Pixels within PEAK_MARGIN of the normalised maximum count as tied for the peak (default).
PEAK_MARGIN = 1e-9
#: Above this conditioning (grid maximum / map range) the map is normalised in exact rational
#: arithmetic, so that the reference's own rounding never decides a test.
EXACT_ABOVE_CONDITIONING = 1e4
#: The flat rule (docs/contract.md, "Flat maps"): a map is flat when its range is at most
#: ``ε = FLAT_FACTOR · C · u · max_cells Σ_k |α_k A_k|``; implementations may disagree only where the
#: exact range lies in the ambiguous band ``(ε / FLAT_FACTOR, FLAT_FACTOR · ε]``. Written here again,
#: not imported, so that the reference stays independent of the library.
FLAT_FACTOR = 8.0
UNIT = 2.0**-53


def flat_state(exact_range: float, magnitude: float, channels: int, unit: float = UNIT) -> str:
    """``"flat"``, ``"normalised"`` or ``"ambiguous"``: how every path that sums the channels with unit
    roundoff ``unit`` must classify a map whose exact range (after resampling: never more than the
    grid's) is ``exact_range``."""
    epsilon = FLAT_FACTOR * max(1, channels) * unit * magnitude
    if exact_range <= epsilon / FLAT_FACTOR:
        return "flat"
    if exact_range > FLAT_FACTOR * epsilon:
        return "normalised"
    return "ambiguous"


# --------------------------------------------------------------------------- the map
def cam_grid(features: np.ndarray, weights: np.ndarray) -> list[list[float]]:
    """``ReLU(Σ_k α_k A_k)`` on the ``h×w`` grid of one image.

    ``features``: float64 ``[C, h, w]``; ``weights``: float64 ``[C]``. Each channel product is
    formed in float64 (exact for inputs of at most 26 significant bits: float32/16, bfloat16) and
    the channel sum is ``math.fsum``, i.e. correctly rounded: this is the exact grid.
    """
    return cam_grid_and_magnitude(features, weights)[0]


def cam_grid_and_magnitude(features: np.ndarray, weights: np.ndarray) -> tuple[list[list[float]], float]:
    """The grid and ``max over cells of Σ_k |α_k A_k|``: how large the terms of the channel sum are,
    which bounds the rounding of any implementation's sum (``C`` terms, each rounded at most once)."""
    features = np.asarray(features, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    channels, h, w = features.shape
    if weights.shape != (channels,):
        raise ValueError("weights must be [C]")
    grid = []
    magnitude = 0.0
    for i in range(h):
        row = []
        for j in range(w):
            terms = (weights * features[:, i, j]).tolist()
            total = math.fsum(terms)
            magnitude = max(magnitude, math.fsum(abs(t) for t in terms))
            row.append(total if total > 0.0 else 0.0)
        grid.append(row)
    return grid, magnitude


def _axis(n_in: int, n_out: int) -> list[tuple[int, int, float]]:
    """Per output index: ``(i0, i1, λ)`` of bilinear resampling with ``align_corners=False``."""
    scale = n_in / n_out
    out = []
    for dst in range(n_out):
        src = (dst + 0.5) * scale - 0.5
        if src < 0.0:
            src = 0.0
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        out.append((i0, i1, src - i0))
    return out


def _exact_axis(n_in: int, n_out: int) -> list[tuple[int, int, Fraction]]:
    """``_axis`` in rational arithmetic: the contract's exact source coordinates and weights."""
    out = []
    for dst in range(n_out):
        src = (Fraction(dst) + Fraction(1, 2)) * Fraction(n_in, n_out) - Fraction(1, 2)
        src = max(src, Fraction(0))
        i0 = min(math.floor(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        out.append((i0, i1, src - i0 if i1 != i0 else Fraction(0)))
    return out


def _sample_keys(n_in: int, n_out: int) -> list[tuple[int, int, float]]:
    """Per output index, what it reads: ``(i0, i1, λ)``, with λ dropped where ``i0 == i1`` (then
    the value is the grid value whatever λ is). Equal keys mean exactly equal values."""
    return [(i0, i1, lam if i0 != i1 else 0.0) for i0, i1, lam in _axis(n_in, n_out)]


def upsample_bilinear(grid: list[list[float]], height: int, width: int) -> list[list[float]]:
    """Bilinear resampling of an ``h×w`` grid to ``height×width`` (``align_corners=False``),
    written out pixel by pixel as in ``torch.nn.functional.interpolate``."""
    h, w = len(grid), len(grid[0])
    rows, cols = _axis(h, height), _axis(w, width)
    out = []
    for y0, y1, ly in rows:
        line = []
        for x0, x1, lx in cols:
            v00, v01 = grid[y0][x0], grid[y0][x1]
            v10, v11 = grid[y1][x0], grid[y1][x1]
            line.append((1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11))
        out.append(line)
    return out


def upsample_exact(grid: list[list[float]], height: int, width: int) -> list[list[Fraction]]:
    """The same resampling in exact rational arithmetic (every pixel)."""
    h, w = len(grid), len(grid[0])
    rows, cols = _exact_axis(h, height), _exact_axis(w, width)
    exact = [[Fraction(v) for v in row] for row in grid]
    out = []
    for y0, y1, ly in rows:
        line = []
        for x0, x1, lx in cols:
            top = (1 - lx) * exact[y0][x0] + lx * exact[y0][x1]
            bottom = (1 - lx) * exact[y1][x0] + lx * exact[y1][x1]
            line.append((1 - ly) * top + ly * bottom)
        out.append(line)
    return out


def normalise(grid: list[list[float]], height: int, width: int, magnitude: float = 0.0, channels: int = 1) -> list[list[float]]:
    """Upsample then min-max normalise (docs/contract.md), at float64's unit roundoff. A map whose
    exact range is not certainly above the flat bound (``flat_state``: flat *or* ambiguous) comes
    back as all zeros; callers that must tell the two apart use :func:`normalise_with_conditioning`.
    """
    return normalise_with_conditioning(grid, height, width, magnitude, channels)[0]


def exact_map_range(grid: list[list[float]], height: int, width: int) -> tuple[float, list[list[float]], float, float]:
    """The resampled map's range in exact arithmetic where rounding could matter, with the map and
    its computed extremes: ``(range, map, low, high)``. Exact rational arithmetic is used when the
    float range is small next to the grid's values (every pixel is then evaluated exactly)."""
    values = [v for row in grid for v in row]
    if max(values) == min(values):  # exactly constant: every resampled pixel is that value
        return 0.0, [[values[0]] * width for _ in range(height)], values[0], values[0]
    up = upsample_bilinear(grid, height, width)
    low = min(min(row) for row in up)
    high = max(max(row) for row in up)
    grid_max = max(values)
    if high - low <= 1e-6 * grid_max or grid_max > EXACT_ABOVE_CONDITIONING * (high - low):
        exact = upsample_exact(grid, height, width)
        low_q = min(min(row) for row in exact)
        high_q = max(max(row) for row in exact)
        return float(high_q - low_q), exact, low_q, high_q
    return high - low, up, low, high


def normalise_with_conditioning(
    grid: list[list[float]], height: int, width: int, magnitude: float = 0.0, channels: int = 1
) -> tuple[list[list[float]], float, float]:
    """``normalise``, the map's conditioning ``grid maximum / map range`` (0 for a flat map: how much
    the rounding of a grid value is magnified in the normalised map), and the exact map range."""
    map_range, up, low, high = exact_map_range(grid, height, width)
    if map_range == 0.0 or flat_state(map_range, magnitude, channels) != "normalised":
        return [[0.0] * width for _ in range(height)], 0.0, map_range
    span = high - low
    grid_max = max(max(row) for row in grid)
    return [[float((v - low) / span) for v in row] for row in up], grid_max / float(span), map_range


# --------------------------------------------------------------------------- the ROI
def rasterise_boxes(boxes: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Union of boxes ``(x_min, y_min, x_max, y_max)``; pixel ``(y, x)`` is inside when
    ``x_min <= x + 0.5 < x_max`` and ``y_min <= y + 0.5 < y_max``. Pixels outside the frame do
    not exist, which is the clipping."""
    mask = np.zeros((height, width), dtype=bool)
    for y in range(height):
        cy = y + 0.5
        for x in range(width):
            cx = x + 0.5
            for x_min, y_min, x_max, y_max in boxes:
                if x_min <= cx < x_max and y_min <= cy < y_max:
                    mask[y, x] = True
                    break
    return mask


# --------------------------------------------------------------------------- the metrics
def dice_from_counts(n_pred: int, n_truth: int, overlap: int) -> float:
    """``2|P∩G| / (|P| + |G|)``; both empty → 1 (exactly one empty gives 0 by the formula)."""
    if n_pred + n_truth == 0:
        return 1.0
    return 2.0 * overlap / (n_pred + n_truth)


@dataclass
class RefAlignment:
    """Reference metrics of one image, plus what a test needs to judge near-ties.

    ``near_in`` / ``near_out``: pixels inside / outside the ROI whose normalised value lies within
    ``BAND`` of τ; ``n_pred`` and ``overlap`` count them on the side the reference put them.
    ``peak_unique``: the maximum is unique by ``PEAK_MARGIN`` once pixels that are exact copies of an
    earlier one (same grid reads: the clamped border plateaus) are set aside; ``pointing_hit`` is then
    the ROI value at the first of them. ``peak_hits``: the ROI values at all pixels within
    ``PEAK_MARGIN`` of the maximum (the admissible hits when the peak is not unique).
    ``peak_unique_by_margin``: no other pixel at all within ``PEAK_MARGIN`` of the maximum, exact
    copies included (the looser criterion, for implementations whose plateaus carry rounding noise).
    ``conditioning``: grid maximum / map range; ``sum_conditioning``: the largest ``Σ_k |α_k A_k|``
    of a cell / map range; ``channels``: C. These scale the rounding a path may show (``at_band``).
    """

    dice: float
    soft_dice: float
    roi_energy: float
    pointing_hit: float
    n_pred: int = 0
    n_truth: int = 0
    overlap: int = 0
    near_in: int = 0
    near_out: int = 0
    near_pred_in: int = 0
    near_pred_out: int = 0
    peak_unique: bool = True
    peak_unique_by_margin: bool = True
    peak_hits: set = field(default_factory=set)
    constant: bool = False
    map: list | None = None
    conditioning: float = 0.0
    sum_conditioning: float = 0.0
    channels: int = 1
    threshold: float = 0.5
    roi: np.ndarray | None = None
    copies: list | None = None  # per pixel (row-major): the key of what it reads (exact copies share one)
    map_range: float = 0.0  # the resampled map's exact range (never more than the grid's)
    magnitude: float = 0.0  # max over cells of Σ_k |α_k A_k|
    ambiguous: bool = False  # in the flat rule's ambiguous band at float64: either answer is right

    def flat_state(self, unit: float = UNIT) -> str:
        """How a path summing with unit roundoff ``unit`` must classify this map (``flat_state``)."""
        if math.isnan(self.dice):
            return "unknown"
        return flat_state(self.map_range, self.magnitude, self.channels, unit)

    def as_flat(self) -> RefAlignment:
        """The same item scored as a flat map: nothing attended, no mass, no peak."""
        if math.isnan(self.dice):
            return self
        empty = self.n_truth == 0
        zeros = [[0.0] * len(self.map[0]) for _ in self.map] if self.map else None
        return dataclasses.replace(
            self, dice=1.0 if empty else 0.0, soft_dice=1.0 if empty else 0.0, roi_energy=0.0, pointing_hit=0.0,
            n_pred=0, overlap=0, near_in=0, near_out=0, near_pred_in=0, near_pred_out=0, peak_unique=True,
            peak_unique_by_margin=True, peak_hits={0.0}, constant=True, map=zeros, conditioning=0.0,
            sum_conditioning=0.0, ambiguous=False,
        )

    def dice_choices(self) -> list[float]:
        return reachable_dice(self)

    def at_band(self, band: float, peak_margin: float | None = None) -> RefAlignment:
        """The same item judged with another band (and peak margin, default ``band``): near counts
        and peak ties recounted from the kept map."""
        if math.isnan(self.dice) or self.map is None:
            return self
        near = _near_counts(self.map, self.roi, self.threshold, band)
        peak = _peak_ties(self.map, self.roi, self.copies, self.constant, band if peak_margin is None else peak_margin)
        return dataclasses.replace(self, **near, **peak)


def reachable_dice(ref: RefAlignment) -> list[float]:
    """Every Dice value obtainable by binarising the near-threshold pixels either way."""
    if math.isnan(ref.dice):
        return [math.nan]
    sure_pred = ref.n_pred - ref.near_pred_in - ref.near_pred_out
    sure_overlap = ref.overlap - ref.near_pred_in
    values = set()
    if (ref.near_in + 1) * (ref.near_out + 1) > 200_000:  # too many to list: the two extremes
        for i, o in ((0, ref.near_out), (ref.near_in, 0), (0, 0), (ref.near_in, ref.near_out)):
            values.add(dice_from_counts(sure_pred + i + o, ref.n_truth, sure_overlap + i))
        return sorted(values)
    for i in range(ref.near_in + 1):
        for o in range(ref.near_out + 1):
            values.add(dice_from_counts(sure_pred + i + o, ref.n_truth, sure_overlap + i))
    return sorted(values)


def _near_counts(norm: list[list[float]], roi: np.ndarray, threshold: float, band: float) -> dict:
    near_in = near_out = near_pred_in = near_pred_out = 0
    for y, row in enumerate(norm):
        for x, v in enumerate(row):
            if abs(v - threshold) <= band:
                p = v >= threshold
                if roi[y, x]:
                    near_in += 1
                    near_pred_in += p
                else:
                    near_out += 1
                    near_pred_out += p
    return dict(near_in=near_in, near_out=near_out, near_pred_in=near_pred_in, near_pred_out=near_pred_out)


def _peak_ties(norm: list[list[float]], roi: np.ndarray, copies: list | None, constant: bool, margin: float) -> dict:
    if constant:
        return dict(peak_unique=True, peak_unique_by_margin=True, peak_hits={0.0})
    height, width = len(norm), len(norm[0])
    best = max(max(row) for row in norm)
    near_peak = [(y, x) for y in range(height) for x in range(width) if norm[y][x] >= best - margin]
    hits = {float(roi[yx]) for yx in near_peak}
    # Pixels that read the grid in exactly the same way (the clamped plateaus at the borders) are
    # equal in exact arithmetic, so only the first of them (row-major) can be the peak.
    seen, distinct = set(), []
    for y, x in near_peak:
        key = copies[y * width + x]
        if key not in seen:
            seen.add(key)
            distinct.append((y, x))
    return dict(peak_unique=len(distinct) == 1, peak_unique_by_margin=len(near_peak) == 1, peak_hits=hits)


def _first_peak_hit(norm: list[list[float]], roi: np.ndarray, copies: list | None = None) -> float:
    """The ROI value at the first maximum of the map in row-major order.

    Pixels that read the grid in exactly the same way (``copies``: same sample keys, e.g. every row
    of a one-row grid) are equal in exact arithmetic, although this float evaluation of the
    interpolation may differ among them in the last bit; the peak is the first of its copies, as
    the contract's exact arithmetic has it, not whichever copy rounding happened to lift.
    """
    best, where = -math.inf, (0, 0)
    for y, row in enumerate(norm):
        for x, v in enumerate(row):
            if v > best:
                best, where = v, (y, x)
    if copies is not None:
        width = len(norm[0])
        key = copies[where[0] * width + where[1]]
        where = next(divmod(i, width) for i, k in enumerate(copies) if k == key)
    return float(roi[where])


def alignment(
    features: np.ndarray,
    weights: np.ndarray,
    roi: np.ndarray | None,
    threshold: float = 0.5,
) -> RefAlignment:
    """Dice, soft Dice, ROI energy and pointing hit of one image.

    ``features`` float64 ``[C, h, w]``, ``weights`` float64 ``[C]``, ``roi`` bool ``[H, W]`` (its
    shape is the frame). For an unknown ROI use :func:`alignment_unknown`.
    """
    if roi is None:
        raise ValueError("use alignment_unknown for an unknown ROI")
    roi = np.asarray(roi, dtype=bool)
    height, width = roi.shape
    grid, magnitude = cam_grid_and_magnitude(features, weights)
    channels = int(np.asarray(features).shape[0])
    norm, conditioning, map_range = normalise_with_conditioning(grid, height, width, magnitude, channels)
    # A normalised map spans [0, 1]; a flat one is all zeros (no peak, nothing attended). A map in the
    # ambiguous band is scored as flat here and marked, so that either answer is accepted.
    constant = max(max(row) for row in norm) == 0.0
    ambiguous = flat_state(map_range, magnitude, channels) == "ambiguous"

    n_pred = n_truth = overlap = 0
    terms_l, terms_lg = [], []
    for y in range(height):
        for x in range(width):
            v = norm[y][x]
            g = bool(roi[y, x])
            p = v >= threshold
            n_truth += g
            n_pred += p
            overlap += p and g
            terms_l.append(v)
            if g:
                terms_lg.append(v)
    sum_l = math.fsum(terms_l)
    sum_lg = math.fsum(terms_lg)
    sum_g = n_truth

    dice = dice_from_counts(n_pred, n_truth, overlap)
    soft_dice = 1.0 if sum_l + sum_g == 0 else 2.0 * sum_lg / (sum_l + sum_g)
    roi_energy = 0.0 if sum_l == 0 else sum_lg / sum_l
    rows, cols = _sample_keys(len(grid), height), _sample_keys(len(grid[0]), width)
    copies = [(r, c) for r in rows for c in cols]
    span_ratio = conditioning / max(max(v for row in grid for v in row), 1e-300)  # 1 / map range
    return RefAlignment(
        dice=dice,
        soft_dice=soft_dice,
        roi_energy=roi_energy,
        pointing_hit=0.0 if constant else _first_peak_hit(norm, roi, copies),
        n_pred=n_pred,
        n_truth=n_truth,
        overlap=overlap,
        constant=constant,
        map=norm,
        conditioning=conditioning,
        sum_conditioning=magnitude * span_ratio,
        channels=channels,
        threshold=threshold,
        roi=roi,
        copies=copies,
        map_range=map_range,
        magnitude=magnitude,
        ambiguous=ambiguous,
        **_near_counts(norm, roi, threshold, BAND),
        **_peak_ties(norm, roi, copies, constant, PEAK_MARGIN),
    )


def alignment_unknown() -> RefAlignment:
    """An image whose ROI is unknown: every metric NaN (never silently 0)."""
    nan = math.nan
    return RefAlignment(dice=nan, soft_dice=nan, roi_energy=nan, pointing_hit=nan, peak_hits={nan})


# --------------------------------------------------------------------------- uncertainty
def softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(z - top) for z in logits]
    total = math.fsum(exps)
    return [e / total for e in exps]


def _entropy_nats(p: Sequence[float]) -> float:
    return -math.fsum(q * math.log(q) for q in p if q > 0.0)


def entropy(logits: Sequence[float]) -> float:
    """``−Σ p log p / log K``."""
    return _entropy_nats(softmax(logits)) / math.log(len(logits))


def margin(logits: Sequence[float]) -> float:
    """``1 − (p₁ − p₂)`` with the two largest probabilities."""
    p = sorted(softmax(logits), reverse=True)
    return 1.0 - (p[0] - p[1])


def least_confidence(logits: Sequence[float]) -> float:
    """``(1 − p₁)·K/(K − 1)``."""
    k = len(logits)
    return (1.0 - max(softmax(logits))) * k / (k - 1)


def bald(logits_mc: Sequence[Sequence[float]]) -> float:
    """``(H(mean_t p_t) − mean_t H(p_t)) / log K`` for one item's ``T`` passes ``[T][K]``."""
    probs = [softmax(z) for z in logits_mc]
    passes, classes = len(probs), len(probs[0])
    mean_p = [math.fsum(p[c] for p in probs) / passes for c in range(classes)]
    expected = math.fsum(_entropy_nats(p) for p in probs) / passes
    return (_entropy_nats(mean_p) - expected) / math.log(classes)


# --------------------------------------------------------------------------- fusion
def percentile_ranks(values: Sequence[float], among: Sequence[bool]) -> list[float]:
    """Mid-rank percentiles ``(rank + 0.5) / n`` over the chosen items, ties sharing their average
    rank; NaN for items not chosen."""
    chosen = [v for v, c in zip(values, among, strict=True) if c]
    n = len(chosen)
    out = []
    for v, c in zip(values, among, strict=True):
        if not c:
            out.append(math.nan)
            continue
        below = sum(1 for u in chosen if u < v)
        equal = sum(1 for u in chosen if u == v)
        out.append((below + (equal - 1) / 2.0 + 0.5) / n)
    return out


def dual_score(
    u: Sequence[float],
    m: Sequence[float],
    *,
    weight: float = 0.5,
    method: str = "weighted",
    missing_roi: str = "uncertainty_only",
    invalid: Sequence[bool] | None = None,
) -> list[float]:
    """``s = λ·U + (1 − λ)·M`` (or the same blend of percentile ranks).

    Items with non-finite ``U`` (or ``M = ±inf``) or flagged ``invalid`` score ``-inf``; an unknown
    ROI (``M`` NaN) scores ``U`` alone (``"uncertainty_only"``) or NaN (``"exclude"``).
    """
    n = len(u)
    invalid = list(invalid) if invalid is not None else [False] * n
    bad = [invalid[i] or not math.isfinite(u[i]) or math.isinf(m[i]) for i in range(n)]
    unknown = [math.isnan(m[i]) and not bad[i] for i in range(n)]
    excluded = [unknown[i] and missing_roi == "exclude" for i in range(n)]
    eligible = [not bad[i] and not excluded[i] for i in range(n)]
    with_roi = [eligible[i] and not unknown[i] for i in range(n)]
    if method == "weighted":
        u_part, m_part = list(u), list(m)
    else:
        u_part = percentile_ranks(u, eligible)
        m_part = percentile_ranks(m, with_roi)
    out = []
    for i in range(n):
        if bad[i]:
            out.append(-math.inf)
        elif excluded[i]:
            out.append(math.nan)
        elif unknown[i]:
            out.append(u_part[i])
        else:
            out.append(weight * u_part[i] + (1.0 - weight) * m_part[i])
    return out
