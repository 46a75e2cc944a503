"""The flat rule on every path, whatever order the channels are summed in (docs/contract.md, "Flat maps").

A map is flat when its range is at most ``ε = 8·C·u·max_cells Σ_k |α_k A_k|``; paths (and hosts:
MKL sums in a different order on AMD and on Intel CPUs) may disagree only on items whose exact range
lies within a factor 8 of ε. These tests catch an order-dependent rule on any CPU, not only on the
one where the order happens to differ:

* shuffling the channels changes every path's summation order (BLAS blocking included), and must
  leave every decision outside the band unchanged;
* generators put items on purpose just below, inside and just above the band, for each path's own
  unit roundoff, and accept either answer only inside it;
* exactly constant grids whose channel sums cancel (the case that failed on an AMD EPYC host) are
  flat on every path, in every channel order.

``make test`` also runs this file under other MKL code paths (``MKL_CBWR``), see the Makefile.
"""

from __future__ import annotations

import math

import contract_reference as ref
import numpy as np
import pytest
import torch
from conftest import (
    adversarial_features,
    as_f64,
    assert_alignment_matches,
    precision_for,
    random_features,
    random_masks,
    reference_alignment,
)
from test_alignment_contract import PATHS

from xal_core.scoring import Roi

DTYPES = [torch.float32, torch.float64]
FIELDS = ("dice", "soft_dice", "roi_energy", "pointing_hit")


def _scores(scores, b: int) -> tuple[float, ...]:
    return tuple(float(getattr(scores, field)[b]) for field in FIELDS)


# --------------------------------------------------------------------------- band generator
#: Where an item's exact range sits relative to ε: far enough from the band's edges (×4) that the
#: reference's own rounding never moves it across.
POSITIONS = {"below": 1.0 / 32.0, "inside": 1.0, "above": 32.0}


def band_items(gen: torch.Generator, unit: float, dtype: torch.dtype, channels: int, h: int, w: int, positions: list[str]):
    """One item per entry of ``positions``: features ``[B, C, h, w]``, weights ``[B, C]`` (rounded to
    ``dtype``) and the cell ``(i, j)`` of each item's bump.

    Channel 0 is the constant 1 (weight 1); channel 1 is zero but for a bump ``δ`` at one cell
    (weight 1); the other channels come in pairs of equal large features with weights ``+a`` and
    ``−a``, which cancel exactly in exact arithmetic but make ``Σ_k |α_k A_k|`` (hence ε) large and
    give every path rounding to hide or fake a range with. The exact grid is 1 everywhere and
    ``1 + δ`` at the bump, with ``δ = POSITIONS[position] · ε(unit)``.
    """
    assert channels >= 4 and channels % 2 == 0
    batch = len(positions)
    pairs = (channels - 2) // 2
    f64 = torch.float64
    large = (torch.rand(batch, pairs, h, w, generator=gen, dtype=f64) * 900.0 + 100.0).to(dtype).to(f64)
    alpha = (torch.rand(batch, pairs, generator=gen, dtype=f64) * 2.0 + 0.5).to(dtype).to(f64)
    features = torch.zeros(batch, channels, h, w, dtype=f64)
    weights = torch.zeros(batch, channels, dtype=f64)
    features[:, 0] = 1.0
    weights[:, 0] = 1.0
    weights[:, 1] = 1.0
    features[:, 2::2] = large
    features[:, 3::2] = large
    weights[:, 2::2] = alpha
    weights[:, 3::2] = -alpha
    cells = []
    for b, position in enumerate(positions):
        magnitude = float((1.0 + 2.0 * (alpha[b, :, None, None] * large[b]).sum(dim=0)).max())
        epsilon = ref.FLAT_FACTOR * channels * unit * magnitude
        delta = torch.tensor(POSITIONS[position] * epsilon, dtype=f64).to(dtype).to(f64)
        cell = (int(torch.randint(h, (1,), generator=gen)), int(torch.randint(w, (1,), generator=gen)))
        features[b, 1, cell[0], cell[1]] = delta
        cells.append(cell)
    return features.to(dtype), weights.to(dtype), cells


def _bump_masks(cells: list[tuple[int, int]], h: int, w: int) -> torch.Tensor:
    masks = torch.zeros(len(cells), h, w, dtype=torch.bool)
    for b, (i, j) in enumerate(cells):
        masks[b, i, j] = True
    return masks


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("channels", [4, 64, 512])
def test_items_either_side_of_and_inside_the_band(path, dtype, channels, gen):
    """Just below the band: flat on every path; just above: normalised; inside: either. The ROI is
    the bump's cell on an identity frame, so a flat map scores (0, 0, 0, 0) and a normalised one
    Dice 1 and pointing hit 1 (the rounding left in the other cells, at most 1/256 of the range
    just above the band, keeps them below τ), its soft metrics near 1 within the path's tolerance
    for the item's conditioning (checked against the reference). Each item is checked again with
    its channels shuffled."""
    unit = precision_for(path, dtype).unit
    positions = ["below", "inside", "above"] * 2
    h, w = 5, 6
    features, weights, cells = band_items(gen, unit, dtype, channels, h, w, positions)
    masks = _bump_masks(cells, h, w)
    refs = reference_alignment(features, weights, masks)
    for b, position in enumerate(positions):  # the generator puts each item where it says
        assert refs[b].flat_state(unit) == {"below": "flat", "inside": "ambiguous", "above": "normalised"}[position]
    roi = Roi.from_masks(masks)
    for order in ("as drawn", "shuffled"):
        if order == "shuffled":
            perm = torch.randperm(channels, generator=gen)
            features, weights = features[:, perm], weights[:, perm]
        scores = PATHS[path](features, weights, roi, 0.5)
        for b, position in enumerate(positions):
            got = _scores(scores, b)
            context = f"{path} {dtype} C={channels} {order}: item {b} {position} the band: {got}"
            if position == "below":
                assert got == (0.0, 0.0, 0.0, 0.0), context
            elif position == "above":
                assert got[0] == 1.0 and got[3] == 1.0 and min(got[1:3]) > 0.5, context
            else:
                assert all(0.0 <= v <= 1.0 for v in got), context
        assert_alignment_matches(scores, refs, context=f"[{path} {order}]", precision=precision_for(path, dtype))


# --------------------------------------------------------------------------- permutation
def _constant_cancelling(gen: torch.Generator, batch: int, channels: int, h: int, w: int, dtype: torch.dtype):
    """Exactly constant grids whose channel sums cancel: every channel constant over the cells,
    large terms of both signs, a small positive total (the inputs that failed on an AMD host)."""
    values = (torch.randn(batch, channels, 1, 1, generator=gen, dtype=torch.float64) * 1e3).to(dtype)
    weights = torch.randn(batch, channels, generator=gen, dtype=torch.float64).to(dtype)
    total = (weights.double()[:, :, None, None] * values.double()).sum(dim=1)
    values[:, 0] = torch.where(total[:, 0, 0] < 0, -values[:, 0, 0, 0], values[:, 0, 0, 0])[:, None, None]
    weights[:, 0] = torch.where(total[:, 0, 0] < 0, -weights[:, 0], weights[:, 0])
    return values.expand(batch, channels, h, w).contiguous(), weights


def _permuted_terms(gen: torch.Generator, batch: int, channels: int, h: int, w: int, dtype: torch.dtype):
    """Exactly constant grids whose cells sum the same terms in different orders: weights 1, and
    every cell's features a different permutation of the same large values of both signs (with a
    small positive total). This is what a BLAS that sums each cell in its own order does to an
    exactly constant grid (MKL on an AMD EPYC host did), made visible on any CPU."""
    terms = (torch.randn(batch, channels, generator=gen, dtype=torch.float64) * 1e3).to(dtype)
    totals = terms.double().sum(dim=1)
    terms[:, 0] += (torch.where(totals < 0, -2.0 * totals, torch.zeros_like(totals)) + 1.0).to(dtype)
    order = torch.argsort(torch.rand(batch, h * w, channels, generator=gen), dim=2)
    features = torch.gather(terms[:, None, :].expand(batch, h * w, channels), 2, order)
    return features.permute(0, 2, 1).reshape(batch, channels, h, w).contiguous(), torch.ones(batch, channels, dtype=dtype)


def _inputs(kind: str, gen: torch.Generator, dtype: torch.dtype):
    if kind == "random":
        return random_features(gen, 6, 48, 5, 6, dtype=dtype)
    if kind == "constant-cancelling":
        return _constant_cancelling(gen, 6, 256, 5, 6, dtype)
    if kind == "permuted-terms":
        return _permuted_terms(gen, 6, 256, 5, 6, dtype)
    if kind == "cancelling":
        return adversarial_features(gen, "cancelling", 6, 64, 5, 6, dtype=dtype)
    if kind == "near-flat":
        return adversarial_features(gen, "small_range", 6, 16, 5, 6, dtype=dtype)
    if kind == "offset-bump":
        return adversarial_features(gen, "offset_bump", 6, 8, 5, 6, dtype=dtype)
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "constant-cancelling", "permuted-terms", "cancelling", "near-flat", "offset-bump"])
@pytest.mark.parametrize("path", list(PATHS))
def test_channel_order_changes_no_decision_outside_the_band(path, kind, dtype, gen):
    """Shuffled channels change every path's summation order. Outside the band, every item's
    flat/normalised decision, Dice (no pixel within the path's band of τ) and pointing hit (a
    unique peak) stay the same, soft Dice moves by at most the path's tolerance, and both orders
    match the reference."""
    precision = precision_for(path, dtype)
    features, weights = _inputs(kind, gen, dtype)
    frame = (9, 11)
    masks = random_masks(gen, len(features), *frame, 0.5)
    roi = Roi.from_masks(masks)
    refs = reference_alignment(features, weights, masks)
    runs = [PATHS[path](features, weights, roi, 0.5)]
    for _ in range(3):
        perm = torch.randperm(features.shape[1], generator=gen)
        runs.append(PATHS[path](features[:, perm], weights[:, perm], roi, 0.5))
    for scores in runs:
        assert_alignment_matches(scores, refs, context=f"[{path} {kind} {dtype}]", precision=precision)
    for b, r in enumerate(refs):
        state = r.flat_state(precision.unit)
        if state == "ambiguous":
            continue
        judged = r.as_flat() if state == "flat" else r.at_band(max(precision.band(r), 1e-12))
        first = _scores(runs[0], b)
        for other in runs[1:]:
            got = _scores(other, b)
            context = f"{path} {kind} {dtype} item {b} ({state}): {first} vs {got} after a shuffle"
            if judged.near_in + judged.near_out == 0:
                assert got[0] == first[0], context
            if judged.peak_unique:
                assert got[3] == first[3], context
            assert abs(got[1] - first[1]) <= 2 * precision.soft_tolerance(r), context
            if state == "flat":
                assert got == first, context


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("channels", [64, 512, 2048])
def test_constant_grids_with_cancelling_sums_are_flat_in_every_channel_order(path, channels, gen):
    """Exactly constant grids whose channels cancel, float32 and float64, in eight channel orders,
    with every cell summing its channels in the same order or (``_permuted_terms``) each in its
    own: flat every time (no rounding noise stretched into a map; soft Dice never leaves [0, 1])."""
    for dtype, make in ((d, m) for d in DTYPES for m in (_constant_cancelling, _permuted_terms)):
        features, weights = make(gen, 4, channels, 7, 5, dtype)
        masks = random_masks(gen, 4, 9, 11, 0.5)
        masks[0] = False  # an empty ROI: a flat map scores (1, 1, 0, 0) there
        roi = Roi.from_masks(masks)
        for _ in range(8):
            perm = torch.randperm(channels, generator=gen)
            scores = PATHS[path](features[:, perm], weights[:, perm], roi, 0.5)
            for b in range(4):
                want = (1.0, 1.0, 0.0, 0.0) if b == 0 else (0.0, 0.0, 0.0, 0.0)
                assert _scores(scores, b) == want, f"{path} {dtype} {make.__name__} C={channels} item {b}: {_scores(scores, b)}"


# --------------------------------------------------------------------------- conditioning
@pytest.mark.parametrize("path", ["separable", "compiled", "dense"])
def test_near_flat_offset_grid_is_normalised_without_cancellation(path):
    """A float64 grid of 500.0 with one cell 1e-6 higher, read at 13×16 (τ = 0.441): the range is
    far above ε (≈ 4e-13), and the map must be normalised from the exact differences to the grid's
    minimum, not from differences of two upsampled values near 500 (which lose 9 digits)."""
    if path not in PATHS:
        pytest.skip(f"no {path} path on this host")
    grid = torch.full((8, 5), 500.0, dtype=torch.float64)
    grid[3, 2] = 500.0 + 1e-6
    features, weights = grid[None, None], torch.ones(1, 1, dtype=torch.float64)
    masks = torch.zeros(1, 13, 16, dtype=torch.bool)
    masks[0, 4:8, 5:11] = True
    r = ref.alignment(as_f64(features[0]), as_f64(weights[0]), masks[0].numpy(), threshold=0.441)
    assert r.flat_state() == "normalised"
    scores = PATHS[path](features, weights, Roi.from_masks(masks), 0.441)
    got = _scores(scores, 0)
    # float32 outputs: within a few float32 ulps of the reference
    assert got[1] == pytest.approx(r.soft_dice, abs=1e-7) and got[2] == pytest.approx(r.roi_energy, abs=1e-7), (path, got, r)
    assert got[0] == pytest.approx(r.dice, abs=1e-7) and got[3] == r.pointing_hit


def test_band_generator_puts_items_where_it_says():
    """The generator's own check, at float64 and float32 units, with the exact reference."""
    gen = torch.Generator().manual_seed(5)
    for unit, dtype in ((2.0**-53, torch.float64), (2.0**-53, torch.float32), (2.0**-24, torch.float32)):
        features, weights, cells = band_items(gen, unit, dtype, 8, 3, 4, list(POSITIONS))
        for b, position in enumerate(POSITIONS):
            grid, magnitude = ref.cam_grid_and_magnitude(as_f64(features[b]), as_f64(weights[b]))
            values = np.array(grid)
            epsilon = ref.FLAT_FACTOR * 8 * unit * magnitude
            ratio = (values.max() - values.min()) / epsilon
            assert math.isclose(ratio, POSITIONS[position], rel_tol=0.01), (unit, dtype, position, ratio)
            assert tuple(np.unravel_index(values.argmax(), values.shape)) == cells[b]
