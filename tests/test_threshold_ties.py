"""Pixels exactly at τ are attended (P = L ≥ τ), also where the upsampling clamps at the frame's edge.

Grids with values that are exact binary fractions make the normalised map hit τ exactly at grid
nodes, where bilinear resampling (align_corners=False) clamps the leftmost/topmost pixels to the
node's value. The fast CPU path solves each row's threshold crossing analytically; before this test
it started a run that *rises* through τ exactly at the first node one column too late, dropping the
clamped pixels (Dice off by up to 0.4 on such maps). Items whose dense map holds a pixel within
rounding of τ but not on it are skipped: there the two computations may round either way.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import over_fast_alignments

from xal_core.scoring import Roi
from xal_core.scoring.reference import cam_alignment_dense, cam_grids, normalised_maps

VALUES = (0.0, 0.25, 0.5, 1.0)
FRAMES = [(8, 8), (5, 7), (16, 9), (3, 12), (1, 5), (7, 2)]


def grids() -> list[torch.Tensor]:
    out = []
    for row in itertools.product(VALUES, repeat=3):
        grid = torch.tensor([list(row), [0.0, 0.0, 0.0]], dtype=torch.float64)
        if grid.max() > grid.min():
            out += [grid, grid.flip(0), grid.flip(1)]
    return out


@over_fast_alignments
@pytest.mark.parametrize("transpose", [False, True], ids=["2x3", "3x2"])
@pytest.mark.parametrize("threshold", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f"{f[0]}x{f[1]}")
def test_exact_ties_at_grid_nodes_match_the_dense_reference(fast_alignment, threshold, frame, transpose):
    height, width = frame
    cases = [g.T.contiguous() for g in grids()] if transpose else grids()
    features = torch.stack(cases)[:, None]  # [B, 1, h, w]
    weights = torch.ones(len(cases), 1, dtype=torch.float64)
    grids_64, tolerance = cam_grids(features, weights, torch.float64)
    maps = normalised_maps(grids_64, frame, tolerance)
    off = maps - threshold
    decided = ~((off.abs() < 1e-9) & (off != 0)).flatten(1).any(dim=1)  # no pixel rounding-close to τ
    assert decided.sum() > len(cases) // 2
    masks = torch.zeros(len(cases), height, width, dtype=torch.bool)
    masks[:, :, : max(1, width // 3)] = True
    for roi in (Roi.from_masks(masks),
                Roi.from_boxes([torch.tensor([[0.0, 0.0, width / 2, height / 2]])] * len(cases), size=frame)):
        fast = fast_alignment(features, weights, roi, threshold=threshold)
        reference = cam_alignment_dense(features, weights, roi, threshold=threshold, dtype=torch.float64)
        wrong = decided & ((fast.dice.double() - reference.dice).abs() > 1e-6)
        assert not wrong.any(), [(cases[i].tolist(), float(fast.dice[i]), float(reference.dice[i]))
                                 for i in wrong.nonzero().flatten().tolist()[:5]]
