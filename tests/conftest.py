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
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contract_reference as ref  # noqa: E402

DEFAULT_BASE_SEED = 20_261_125
FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fast_alignments() -> dict:
    """The two exact fast CPU implementations of the contract, held to the same tests: the
    separable torch path and the compiled (Numba) kernel that ``xal_kernels`` routes CPU tensors to.
    A host without Numba (the lent GPU hosts run the suite from carried wheels) tests the first."""
    from xal_core.scoring import cam_alignment

    paths = {"separable": cam_alignment}
    try:
        from xal_kernels import cpu_alignment
    except ImportError:
        return paths
    paths["compiled"] = cpu_alignment.cam_alignment
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
    *,
    keep_map: bool = False,
) -> list[ref.RefAlignment]:
    """The NumPy reference of every item (on the very numbers the library sees)."""
    masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    out = []
    for b in range(features.shape[0]):
        if known is not None and not known[b]:
            out.append(ref.alignment_unknown())
        else:
            out.append(ref.alignment(as_f64(features[b]), as_f64(weights[b]), masks[b], threshold, keep_map=keep_map))
    return out


def is_degenerate(features: torch.Tensor, weights: torch.Tensor, frame: tuple[int, int]) -> bool:
    """True when the grid is not constant but its resampling to ``frame`` is (exactly): the 0/0 case
    of the normalisation, tested on its own (see test_alignment_contract)."""
    grid = ref.cam_grid(as_f64(features), as_f64(weights))
    values = [v for row in grid for v in row]
    if max(values) == min(values):
        return False
    norm = ref.normalise(grid, *frame)
    return max(max(row) for row in norm) == 0.0


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
    soft_tol: float = 1e-5,
    dice_tol: float = 1e-6,
    exact_plateaus: bool = True,
) -> list[str]:
    """Per-item disagreements between library ``AlignmentScores`` and the reference.

    Hard Dice must equal one of the values reachable by binarising the reference's near-threshold
    pixels (within ``ref.BAND`` of τ) either way; the pointing hit must be exact where the
    reference peak is unique by ``ref.PEAK_MARGIN``, else equal the ROI value at a near-peak pixel.
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
            choices = r.dice_choices()
            if not any(abs(dice[b] - c) <= dice_tol for c in choices):
                shown = ", ".join(_fmt(c) for c in choices[:6]) + (" ..." if len(choices) > 6 else "")
                item.append(
                    f"dice: got {_fmt(dice[b])}, reference {_fmt(r.dice)} (reachable via {r.near_in}+{r.near_out} "
                    f"near-threshold pixels: {shown}; |P|={r.n_pred} |G|={r.n_truth} |P∩G|={r.overlap})"
                )
            for name, got, want in (("soft_dice", soft[b], r.soft_dice), ("roi_energy", energy[b], r.roi_energy)):
                if not abs(got - want) <= soft_tol:  # also catches NaN
                    item.append(f"{name}: got {_fmt(got)}, reference {_fmt(want)}, |diff|={_fmt(abs(got - want))} > {soft_tol:g}")
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
