"""Shared fixtures and helpers of the scoring-core tests.

Seeds. Every test that draws random inputs takes the ``seed`` fixture: a per-test seed derived
from the test's node id and a base seed. The base seed is fixed by default, so that CI runs are
reproducible; ``XAL_TEST_SEED=<int>`` picks another base and ``XAL_TEST_SEED=random`` draws a fresh
one per run. The seed is printed (pytest shows it with a failure) together with the command that
reproduces the run.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contract_reference as ref  # noqa: E402

DEFAULT_BASE_SEED = 20_261_125
FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Precision:
    """What a scoring path guarantees for one input dtype (docs/scoring.md, "Precision per path and
    input dtype"), as a band around τ and a tolerance for the soft metrics, per item.

    A path computes the grid (a ``C``-term sum) and the map in some precision with unit of roundoff
    ``unit``. A grid value is then off by at most ``growth(C) · unit · Σ_k |α_k A_k|`` and a map value
    by a few units of roundoff of the grid maximum; normalising divides both by the map's range. So
    a pixel whose exact normalised value lies within ``band`` of τ may binarise either way, where
    ``band = floor + 64 · unit · (growth(C) · sum_conditioning + conditioning)`` (the conditionings
    are the reference's, see ``contract_reference.RefAlignment``). ``floor`` covers float32 row
    arithmetic, ``soft_floor`` the float32 outputs and float32 partial sums.
    """

    name: str
    unit: float
    floor: float = 0.0
    soft_floor: float = 2e-7
    statistical: bool = False  # growth √C + 8 (random rounding) instead of the worst case C

    def growth(self, channels: int) -> float:
        return math.sqrt(channels) + 8.0 if self.statistical else float(channels)

    def band(self, r: ref.RefAlignment) -> float:
        return self.floor + 64.0 * self.unit * (self.growth(r.channels) * r.sum_conditioning + r.conditioning)

    def soft_tolerance(self, r: ref.RefAlignment) -> float:
        return self.soft_floor + 4.0 * self.band(r)


FLOAT64 = Precision("float64 arithmetic", unit=2.0**-53)
#: The separable path on lower-precision inputs: float64 grid, float32 rows while they stay near [0, 1].
FLOAT32_ROWS = Precision("float64 grid, float32 rows", unit=2.0**-53, floor=1e-6, soft_floor=1e-5)
#: Triton on lower-precision inputs: fp32 accumulation. The guarantee grows like C; the tests hold it
#: to the statistical bound, which random inputs meet by a wide margin.
FLOAT32_ACCUMULATION = Precision("fp32 accumulation", unit=2.0**-24, floor=1e-6, soft_floor=2e-6, statistical=True)


def precision_for(path: str, dtype: torch.dtype) -> Precision:
    """The guarantee of scoring path ``path`` for inputs of ``dtype``: the one table of the tests."""
    if dtype == torch.float64 or path in ("dense", "compiled"):
        return FLOAT64  # float64 inputs meet the float64 contract everywhere; these widen every dtype
    if path == "separable":
        return FLOAT32_ROWS
    if path == "triton":
        return FLOAT32_ACCUMULATION
    raise ValueError(f"unknown scoring path {path!r}")


@dataclass(frozen=True)
class ScoringPath:
    """A fast implementation of ``cam_alignment`` under test, with its name (``precision_for``)."""

    name: str
    function: Callable

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def precision(self, dtype: torch.dtype) -> Precision:
        return precision_for(self.name, dtype)


def _fast_alignments() -> dict[str, ScoringPath]:
    """The two exact fast CPU implementations of the contract, held to the same tests: the
    separable torch path and the compiled (Numba) kernel that ``xal_kernels`` routes CPU tensors to.
    A host without Numba (the lent GPU hosts run the suite from carried wheels) tests the first."""
    from xal_core.scoring import cam_alignment

    paths = {"separable": ScoringPath("separable", cam_alignment)}
    try:
        from xal_kernels import cpu_alignment
    except ImportError:
        return paths
    paths["compiled"] = ScoringPath("compiled", cpu_alignment.cam_alignment)
    return paths


FAST_ALIGNMENTS = _fast_alignments()
over_fast_alignments = pytest.mark.parametrize("fast_alignment", list(FAST_ALIGNMENTS.values()), ids=list(FAST_ALIGNMENTS))


def _base_seed() -> int:
    raw = os.environ.get("XAL_TEST_SEED", "").strip()
    if raw == "random":
        return random.SystemRandom().randrange(2**31)
    return int(raw) if raw else DEFAULT_BASE_SEED


BASE_SEED = _base_seed()


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    digest = hashlib.sha256(f"{BASE_SEED}:{request.node.nodeid}".encode()).digest()
    value = int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF
    print(f"seed={value} (reproduce: XAL_TEST_SEED={BASE_SEED} pytest '{request.node.nodeid}')")
    return value


@pytest.fixture
def gen(seed: int) -> torch.Generator:
    """A seeded CPU torch Generator private to the test."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- random inputs
def random_features(
    gen: torch.Generator,
    batch: int,
    channels: int,
    h: int,
    w: int,
    *,
    dtype: torch.dtype = torch.float32,
    weights: str = "mixed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps ``[B, C, h, w]`` in ``[0.05, 1.05)`` (post-ReLU-like, never zero) and CAM weights
    ``[B, C]``: ``"mixed"`` signs (a Grad-CAM ``W[c]/(hw)``: many grid cells die in the ReLU) or
    ``"positive"`` (every cell alive). Both rounded to ``dtype``."""
    features = torch.rand(batch, channels, h, w, generator=gen, dtype=torch.float64) + 0.05
    if weights == "mixed":
        alpha = torch.randn(batch, channels, generator=gen, dtype=torch.float64)
    elif weights == "positive":
        alpha = torch.rand(batch, channels, generator=gen, dtype=torch.float64) + 0.05
    else:
        raise ValueError(weights)
    return features.to(dtype), alpha.to(dtype)


def adversarial_features(
    gen: torch.Generator,
    kind: str,
    batch: int,
    channels: int,
    h: int,
    w: int,
    *,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that make the rounding of each step visible, rounded to ``dtype``:

    * ``"striped"``: a high-contrast grid (columns alternating 0 and 1000) plus a small random field
      whose size varies per item from 1e-3 to 10; read at a coarse frame, the samples average the
      stripes and the map's range is 1e-2…1e-6 of the grid's values;
    * ``"cancelling"``: channel pairs of nearly equal large features with weights +1 and −1, so the
      grid is a small difference of sums of terms some 10⁴ times larger;
    * ``"small_range"``: a grid ``1 + δ·U(0, 1)`` with ``δ`` from 1e-4 down to 1e-13 per item: maps
      on the normalised side of the flat rule, in its band, or (where ``dtype`` rounds ``δ`` away, or
      the path sums in float32) on its flat side;
    * ``"offset_bump"``: a grid of 500 with a bump of 1e-9…1e-5 at one to three cells (``C`` a power
      of two, weights ``1/C``): a range tiny next to the values, far above the flat bound for float64
      sums, where normalising from differences of upsampled values would lose most digits.
    """
    f64 = torch.float64
    scales = torch.logspace(-3, 1, batch, dtype=f64)[torch.randperm(batch, generator=gen)]
    if kind == "striped":
        stripes = (torch.arange(w) % 2).to(f64).expand(h, w) * 1000.0
        features = torch.rand(batch, channels, h, w, generator=gen, dtype=f64) * 0.1
        features[:, 0] = stripes + torch.rand(batch, h, w, generator=gen, dtype=f64) * scales[:, None, None]
        weights = torch.randn(batch, channels, generator=gen, dtype=f64) * 1e-3
        weights[:, 0] = 1.0
    elif kind == "cancelling":
        pairs = max(1, channels // 2)
        large = torch.rand(batch, pairs, h, w, generator=gen, dtype=f64) * 1e3 + 100.0
        nudge = torch.rand(batch, pairs, h, w, generator=gen, dtype=f64) * scales[:, None, None, None]
        features = torch.stack([large + nudge, large], dim=2).reshape(batch, 2 * pairs, h, w)
        weights = torch.tensor([1.0, -1.0], dtype=f64).repeat(pairs).expand(batch, 2 * pairs).contiguous()
    elif kind == "small_range":
        deltas = torch.logspace(-4, -13, batch, dtype=f64)[torch.randperm(batch, generator=gen)]
        features = 1.0 + torch.rand(batch, channels, h, w, generator=gen, dtype=f64) * deltas[:, None, None, None]
        weights = torch.full((batch, channels), 1.0 / channels, dtype=f64)
    elif kind == "offset_bump":
        if channels & (channels - 1):
            raise ValueError("offset_bump: channels must be a power of two (exact weights 1/C)")
        features = torch.full((batch, channels, h, w), 500.0, dtype=f64)
        bumps = torch.logspace(-9, -5, batch, dtype=f64)[torch.randperm(batch, generator=gen)]
        for b in range(batch):
            for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
                i, j = int(torch.randint(h, (1,), generator=gen)), int(torch.randint(w, (1,), generator=gen))
                features[b, 0, i, j] += float(bumps[b]) * channels
        weights = torch.full((batch, channels), 1.0 / channels, dtype=f64)
    else:
        raise ValueError(kind)
    return features.to(dtype), weights.to(dtype)


def random_masks(gen: torch.Generator, batch: int, height: int, width: int, fill: float | None = None) -> torch.Tensor:
    """bool ``[B, H, W]``; each item gets its own fill ratio unless ``fill`` is given."""
    if fill is None:
        fill_t = torch.rand(batch, 1, 1, generator=gen)
    else:
        fill_t = torch.full((batch, 1, 1), fill)
    return torch.rand(batch, height, width, generator=gen) < fill_t


def as_f64(tensor: torch.Tensor) -> np.ndarray:
    """The exact float64 values of a (possibly float16/bfloat16) tensor, as NumPy."""
    return tensor.detach().to(torch.float64).cpu().numpy()


def reference_alignment(
    features: torch.Tensor,
    weights: torch.Tensor,
    masks: torch.Tensor | np.ndarray,
    known: Sequence[bool] | None = None,
    threshold: float = 0.5,
) -> list[ref.RefAlignment]:
    """The NumPy reference of every item (on the very numbers the library sees)."""
    masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    out = []
    for b in range(features.shape[0]):
        if known is not None and not known[b]:
            out.append(ref.alignment_unknown())
        else:
            out.append(ref.alignment(as_f64(features[b]), as_f64(weights[b]), masks[b], threshold))
    return out


def is_degenerate(features: torch.Tensor, weights: torch.Tensor, frame: tuple[int, int]) -> bool:
    """True when the map lies in the flat rule's ambiguous band for some path's precision (float64,
    or fp32 accumulation), or is flat without being constant on the grid (the resampling reads only
    equal values): items where paths may, or must, answer "flat" for a reason random tests do not
    aim at. They are tested on their own (see test_alignment_contract)."""
    grid, magnitude = ref.cam_grid_and_magnitude(as_f64(features), as_f64(weights))
    values = [v for row in grid for v in row]
    if max(values) == min(values):
        return False
    map_range = ref.exact_map_range(grid, *frame)[0]
    channels = features.shape[0]
    return any(ref.flat_state(map_range, magnitude, channels, unit) != "normalised" for unit in (2.0**-53, 2.0**-24))


def nondegenerate_features(
    gen: torch.Generator,
    batch: int,
    channels: int,
    h: int,
    w: int,
    frame: tuple[int, int],
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``random_features`` with every degenerate item (see :func:`is_degenerate`) redrawn."""
    features, weights = random_features(gen, batch, channels, h, w, **kwargs)
    for b in range(batch):
        for _ in range(50):
            if not is_degenerate(features[b], weights[b], frame):
                break
            f, a = random_features(gen, 1, channels, h, w, **kwargs)
            features[b], weights[b] = f[0], a[0]
        else:
            raise AssertionError(f"could not draw a non-degenerate item for grid {h}x{w} -> frame {frame}")
    return features, weights


# --------------------------------------------------------------------------- comparisons
def _fmt(value: float) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.9g}"


def alignment_mismatches(
    scores,
    refs: Sequence[ref.RefAlignment],
    *,
    precision: Precision | None = None,
    soft_tol: float = 1e-5,
    dice_tol: float = 1e-6,
    exact_plateaus: bool = True,
) -> list[str]:
    """Per-item disagreements between library ``AlignmentScores`` and the reference.

    With ``precision`` (a path's guarantee for the input dtype, see :func:`precision_for`), each item
    is judged with that path's band around τ and soft tolerance, scaled by the item's conditioning;
    without it, with the fixed ``ref.BAND`` and ``soft_tol``. Hard Dice must equal one of the values
    reachable by binarising the reference's near-threshold pixels either way; the pointing hit must
    be exact where the reference peak is unique, else equal the ROI value at a near-peak pixel.
    With ``exact_plateaus`` (the default), pixels that are exact copies of an earlier one (the
    clamped border plateaus of the upsampling) do not make a peak ambiguous: the first copy is the
    peak, as in exact arithmetic. Without it, any near-peak pixel is admissible.
    """
    problems = []
    dice = scores.dice.double().tolist()
    soft = scores.soft_dice.double().tolist()
    energy = scores.roi_energy.double().tolist()
    hit = scores.pointing_hit.double().tolist()
    invalid = scores.invalid.tolist()
    for b, r in enumerate(refs):
        item = []
        if math.isnan(r.dice):  # unknown ROI: every metric NaN, never 0
            for name, got in (("dice", dice[b]), ("soft_dice", soft[b]), ("roi_energy", energy[b]), ("hit", hit[b])):
                if not math.isnan(got):
                    item.append(f"{name}: got {_fmt(got)}, expected NaN (unknown ROI)")
        else:
            state = r.flat_state(precision.unit if precision is not None else ref.UNIT)
            if state == "ambiguous":  # either answer is right: flat, or some normalised map
                item.extend(_ambiguous_mismatches(r, dice[b], soft[b], energy[b], hit[b]))
                if invalid[b]:
                    item.append("invalid: set for a finite item")
                if item:
                    problems.append(f"item {b}: " + "; ".join(item))
                continue
            if state == "flat":
                r = r.as_flat()
            tolerance = soft_tol
            if precision is not None:
                band = precision.band(r)
                r, tolerance = r.at_band(max(band, 1e-12)), precision.soft_tolerance(r)
            choices = r.dice_choices()
            if not any(abs(dice[b] - c) <= dice_tol for c in choices):
                shown = ", ".join(_fmt(c) for c in choices[:6]) + (" ..." if len(choices) > 6 else "")
                item.append(
                    f"dice: got {_fmt(dice[b])}, reference {_fmt(r.dice)} (reachable via {r.near_in}+{r.near_out} "
                    f"near-threshold pixels: {shown}; |P|={r.n_pred} |G|={r.n_truth} |P∩G|={r.overlap}; "
                    f"conditioning {r.conditioning:.3g})"
                )
            for name, got, want in (("soft_dice", soft[b], r.soft_dice), ("roi_energy", energy[b], r.roi_energy)):
                if not abs(got - want) <= tolerance:  # also catches NaN
                    item.append(f"{name}: got {_fmt(got)}, reference {_fmt(want)}, |diff|={_fmt(abs(got - want))} > {tolerance:.3g}")
            if r.peak_unique if exact_plateaus else r.peak_unique_by_margin:
                if hit[b] != r.pointing_hit:
                    item.append(f"pointing_hit: got {_fmt(hit[b])}, reference {_fmt(r.pointing_hit)} (unique peak)")
            elif hit[b] not in r.peak_hits:
                item.append(f"pointing_hit: got {_fmt(hit[b])}, near-tied peaks allow {sorted(r.peak_hits)}")
        if invalid[b]:
            item.append("invalid: set for a finite item")
        if item:
            problems.append(f"item {b}: " + "; ".join(item))
    return problems


def _ambiguous_mismatches(r: ref.RefAlignment, dice: float, soft: float, energy: float, hit: float) -> list[str]:
    """An item in the flat rule's ambiguous band: the flat answer, or any answer a normalised map
    can give (every metric within its range; rounding noise normalised is still a map in [0, 1])."""
    flat = r.as_flat()
    if (dice, soft, energy, hit) == (flat.dice, flat.soft_dice, flat.roi_energy, flat.pointing_hit):
        return []
    problems = [f"{name}: got {_fmt(got)}, outside [0, 1] (ambiguous item)"
                for name, got in (("dice", dice), ("soft_dice", soft), ("roi_energy", energy)) if not 0.0 <= got <= 1.0]
    if hit not in (0.0, 1.0):
        problems.append(f"pointing_hit: got {_fmt(hit)}, expected 0 or 1")
    return problems


def assert_alignment_matches(scores, refs: Sequence[ref.RefAlignment], context: str = "", **tolerances) -> None:
    problems = alignment_mismatches(scores, refs, **tolerances)
    if problems:
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise AssertionError(
            f"{len(problems)} of {len(refs)} items disagree with the NumPy reference {context}:\n  "
            + "\n  ".join(shown)
            + more
        )


def assert_close_items(got: Iterable[float], want: Iterable[float], *, atol: float, what: str) -> None:
    """Element-wise |got - want| <= atol with NaN == NaN and ±inf == ±inf; lists every mismatch."""
    got, want = list(got), list(want)
    assert len(got) == len(want), f"{what}: {len(got)} values, expected {len(want)}"
    bad = []
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if math.isnan(w) or math.isnan(g) or math.isinf(w) or math.isinf(g):
            same = (math.isnan(w) and math.isnan(g)) or g == w
        else:
            same = abs(g - w) <= atol
        if not same:
            bad.append(f"[{i}] got {_fmt(g)} expected {_fmt(w)}")
    if bad:
        raise AssertionError(f"{what}: {len(bad)} of {len(got)} mismatch (atol={atol:g}):\n  " + "\n  ".join(bad[:30]))


def same_scores(a, b) -> bool:
    """Bit-for-bit equality of two AlignmentScores (NaN equal to NaN)."""
    fields = ("dice", "soft_dice", "roi_energy", "pointing_hit")
    return all(torch.equal(torch.nan_to_num(getattr(a, f), nan=-7.0), torch.nan_to_num(getattr(b, f), nan=-7.0)) for f in fields) and torch.equal(
        a.invalid, b.invalid
    )


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test (small models; two pytest workers share 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
