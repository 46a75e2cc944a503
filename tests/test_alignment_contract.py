"""CAM/ROI alignment (docs/contract.md) against the independent NumPy reference.

Every implementation runs the same cases: the separable torch path (``xal_core.scoring.cam_alignment``),
the compiled CPU kernel (``xal_kernels.cpu_alignment``, where Numba is installed), the dense torch
reference (``reference.cam_alignment_dense``) and the Triton kernel (under ``TRITON_INTERPRET=1`` on
CPU tensors, where Triton is installed). Each is held to its own guarantee for the input dtype
(``conftest.precision_for``, docs/scoring.md): hard Dice may differ from the reference only through
pixels whose normalised reference value lies within the path's band of τ, the soft metrics by the
path's tolerance, both scaled by the item's conditioning; the pointing hit only where the reference
peak is tied within that band. See ``conftest.alignment_mismatches``.
"""

from __future__ import annotations

import importlib

import contract_reference as ref
import kernel_checks  # noqa: F401  (first: Triton's interpreter for the Triton path on CPU tensors)
import numpy as np
import pytest
import torch
from conftest import (
    FAST_ALIGNMENTS,
    FEATURE_DTYPES,
    adversarial_features,
    as_f64,
    assert_alignment_matches,
    assert_close_items,
    nondegenerate_features,
    over_fast_alignments,
    precision_for,
    random_features,
    random_masks,
    reference_alignment,
    same_scores,
)

from xal_core.scoring import Roi, cam_alignment, gradcam_maps
from xal_core.scoring.alignment import cam_alignment_reference
from xal_core.scoring.reference import cam_alignment_dense

PATHS = {
    "separable": lambda f, w, roi, t: cam_alignment(f, w, roi, threshold=t),
    # the dense float64 reference as XAL_KERNELS=reference runs it (checks and NaN isolation included)
    "dense": lambda f, w, roi, t: cam_alignment_reference(f, w, roi, threshold=t),
}
if "compiled" in FAST_ALIGNMENTS:
    PATHS["compiled"] = lambda f, w, roi, t: FAST_ALIGNMENTS["compiled"](f, w, roi, threshold=t)
try:
    _triton_op = kernel_checks.on_device(importlib.import_module("xal_kernels.triton_alignment"))
except ImportError:  # no Triton on this host: the kernel tests skip too
    pass
else:
    PATHS["triton"] = lambda f, w, roi, t: _triton_op.cam_alignment(f, w, roi, threshold=t)
pytestmark = pytest.mark.filterwarnings(kernel_checks.INTERPRETER_NOISE)

# Every path copies border values exactly on the clamped plateaus (the dense one upsamples with the
# matrices of bilinear.axis_sampling, not F.interpolate), so all are held to the exact rule: the
# first of exactly equal maxima in row-major order.


def check_both_paths(features, weights, roi, refs, threshold=0.5, context=""):
    """Every path against the reference, each with its own precision for the input dtype."""
    dtype = torch.float64 if torch.float64 in (features.dtype, weights.dtype) else features.dtype
    for name, path in PATHS.items():
        scores = path(features, weights, roi, threshold)
        assert_alignment_matches(
            scores, refs, context=f"[{name} path{', ' + context if context else ''}]", precision=precision_for(name, dtype)
        )


# --------------------------------------------------------------------------- odd sizes
# (C, h, w, H, W): grids 1..17, frames that are not multiples of the grid, H or W = 1, H < h.
SHAPES = [
    (1, 1, 2, 5, 3),  # 1×2 grid: a pixel lands exactly on 0.5
    (3, 1, 1, 4, 6),  # 1×1 grid: always constant
    (3, 2, 1, 7, 5),
    (1, 3, 5, 1, 13),  # H = 1
    (1, 5, 3, 11, 1),  # W = 1
    (3, 2, 2, 3, 3),
    (3, 7, 7, 50, 50),
    (3, 7, 7, 64, 63),
    (3, 13, 11, 31, 29),
    (3, 16, 9, 33, 40),
    (1, 17, 17, 64, 64),
    (3, 17, 13, 8, 6),  # downsampled both ways
    (3, 9, 4, 5, 12),  # H < h
    (3, 2, 17, 19, 3),  # W < w
    (3, 5, 5, 5, 5),  # identity resampling
    (3, 6, 8, 12, 16),  # exact multiples
    (2048, 7, 7, 37, 45),
    (2048, 3, 5, 16, 11),
    (2048, 11, 9, 1, 21),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "C{}-{}x{}-to-{}x{}".format(*s))
def test_masks_odd_sizes_match_reference(shape, gen):
    channels, h, w, height, width = shape
    batch = 4
    features, weights = nondegenerate_features(gen, batch, channels, h, w, (height, width))
    masks = random_masks(gen, batch, height, width)
    known = [True, True, False, True]
    roi = Roi.from_masks(masks, known=known)
    refs = reference_alignment(features, weights, masks, known)
    check_both_paths(features, weights, roi, refs)


@pytest.mark.parametrize("dtype", FEATURE_DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,weights_kind",
    [
        ((5, 7, 7, 29, 33), "mixed"),
        ((5, 7, 7, 29, 33), "positive"),
        ((2048, 7, 7, 23, 19), "mixed"),
        ((64, 4, 6, 13, 1), "positive"),
    ],
    ids=lambda v: "C{}-{}x{}-to-{}x{}".format(*v) if isinstance(v, tuple) else v,
)
def test_feature_dtypes_match_reference_on_rounded_inputs(dtype, shape, weights_kind, gen):
    """float16/bfloat16 inputs: the reference starts from the same rounded numbers (cast to float64),
    so the tolerances stay tight."""
    channels, h, w, height, width = shape
    features, weights = nondegenerate_features(gen, 3, channels, h, w, (height, width), dtype=dtype, weights=weights_kind)
    assert features.dtype == dtype and weights.dtype == dtype
    masks = random_masks(gen, 3, height, width)
    refs = reference_alignment(features, weights, masks)
    check_both_paths(features, weights, Roi.from_masks(masks), refs, context=str(dtype))


def test_positive_weights_many_channels_float64(gen):
    """All channels alive (large common offset on the grid): exact in float64."""
    features, weights = nondegenerate_features(gen, 3, 2048, 9, 9, (40, 36), dtype=torch.float64, weights="positive")
    masks = random_masks(gen, 3, 40, 36)
    check_both_paths(features, weights, Roi.from_masks(masks), reference_alignment(features, weights, masks))


def test_resnet_sized_frame_224(gen):
    """A ResNet-50 head (2048 × 7×7) against a 224×224 frame, mask and box ROIs."""
    features, weights = nondegenerate_features(gen, 1, 2048, 7, 7, (224, 224))
    boxes = torch.tensor([[30.25, 40.5, 130.0, 150.75], [100.0, 90.0, 230.0, 200.0]])
    truth = ref.rasterise_boxes(boxes.tolist(), 224, 224)
    refs = reference_alignment(features, weights, truth[None])
    check_both_paths(features, weights, Roi.from_boxes([boxes], size=(224, 224)), refs, context="boxes")
    check_both_paths(features, weights, Roi.from_masks(torch.from_numpy(truth)[None]), refs, context="mask")


# --------------------------------------------------------------------------- hard inputs, every path
# (kind, C, h, w, H, W): coarse frames (h > H) read high-contrast grids where the map's range is a
# small part of the grid's values; cancelling channel sums; tiny ranges; 1×N and N×1 frames.
ADVERSARIAL = [
    ("striped", 1, 28, 28, 14, 14),  # every pixel averages two stripes
    ("striped", 3, 16, 16, 5, 7),
    ("striped", 2, 9, 12, 1, 5),  # 1×N
    ("striped", 2, 12, 9, 7, 1),  # N×1
    ("cancelling", 64, 7, 7, 12, 9),
    ("cancelling", 512, 5, 6, 3, 4),
    ("small_range", 1, 6, 6, 17, 13),
    ("small_range", 3, 9, 5, 1, 11),  # 1×N
    ("small_range", 1, 4, 7, 10, 1),  # N×1
]


@pytest.mark.parametrize("dtype", FEATURE_DTYPES, ids=str)
@pytest.mark.parametrize("case", ADVERSARIAL, ids=lambda c: "{}-C{}-{}x{}-to-{}x{}".format(*c))
def test_hard_inputs_match_reference_on_every_path(case, dtype, gen):
    """Each path keeps to its stated precision (docs/scoring.md) where rounding is most visible: the
    band around τ and the soft tolerance grow with the item's conditioning, and for float64 inputs
    they are those of float64 arithmetic on every path."""
    kind, channels, h, w, height, width = case
    batch = 6
    features, weights = adversarial_features(gen, kind, batch, channels, h, w, dtype=dtype)
    masks = random_masks(gen, batch, height, width)
    refs = reference_alignment(features, weights, masks)
    check_both_paths(features, weights, Roi.from_masks(masks), refs, context=f"{kind} {dtype}")
    boxes = [torch.tensor([[0.3 * width, 0.2 * height, 0.8 * width + 0.5, 0.9 * height + 0.5]], dtype=torch.float64)] * batch
    truth = np.stack([ref.rasterise_boxes(b.tolist(), height, width) for b in boxes])
    check_both_paths(features, weights, Roi.from_boxes(boxes, size=(height, width)), reference_alignment(features, weights, truth),
                     context=f"{kind} {dtype} boxes")


# --------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9, 1.0, 1e-9])
@pytest.mark.parametrize("shape", [(3, 5, 7, 23, 31), (1, 1, 2, 9, 3), (3, 4, 4, 12, 12)], ids=lambda s: "C{}-{}x{}-to-{}x{}".format(*s))
def test_thresholds(threshold, shape, gen):
    channels, h, w, height, width = shape
    features, weights = nondegenerate_features(gen, 4, channels, h, w, (height, width))
    masks = random_masks(gen, 4, height, width)
    refs = reference_alignment(features, weights, masks, threshold=threshold)
    check_both_paths(features, weights, Roi.from_masks(masks), refs, threshold, context=f"τ={threshold}")


def test_threshold_one_selects_exactly_the_peak_pixels():
    """τ = 1: P is the set of maximal pixels. A 1×3 grid [0, 1, 0] on a 1×3 frame peaks at x = 1."""
    features = torch.tensor([[[[0.0, 1.0, 0.0]]]])
    weights = torch.ones(1, 1)
    for mask, dice in (([False, True, False], 1.0), ([True, False, False], 0.0), ([True, True, False], 2 / 3)):
        roi = Roi.from_masks(torch.tensor([[mask]]))
        for name, path in PATHS.items():
            got = float(path(features, weights, roi, 1.0).dice[0])
            assert got == pytest.approx(dice, abs=1e-7), f"{name}: mask {mask}: dice {got}, expected {dice}"


# --------------------------------------------------------------------------- constant maps
@pytest.mark.parametrize("kind", ["zero_after_relu", "positive_constant", "one_by_one_grid"])
@pytest.mark.parametrize("frame", [(1, 1), (6, 9), (17, 4)])
def test_constant_maps_normalise_to_zeros(kind, frame, gen):
    height, width = frame
    if kind == "zero_after_relu":  # positive features, negative weights: the grid is all zeros
        features = torch.rand(3, 8, 5, 6, generator=gen) + 0.1
        weights = -(torch.rand(3, 8, generator=gen) + 0.1)
    elif kind == "positive_constant":  # every channel constant on the grid
        features = (torch.rand(3, 8, 1, 1, generator=gen) + 0.1).expand(3, 8, 5, 6).contiguous()
        weights = torch.rand(3, 8, generator=gen) + 0.1
    else:
        features = torch.rand(3, 8, 1, 1, generator=gen) + 0.1
        weights = torch.randn(3, 8, generator=gen)
    masks = torch.stack(
        [torch.zeros(height, width, dtype=torch.bool), torch.ones(height, width, dtype=torch.bool), random_masks(gen, 1, height, width, 0.5)[0]]
    )
    refs = reference_alignment(features, weights, masks)
    for r, m in zip(refs, masks, strict=True):
        assert r.constant
        empty = not bool(m.any())
        assert (r.dice, r.soft_dice, r.roi_energy, r.pointing_hit) == ((1.0, 1.0, 0.0, 0.0) if empty else (0.0, 0.0, 0.0, 0.0))
    check_both_paths(features, weights, Roi.from_masks(masks), refs, context=kind)
    maps = gradcam_maps(features, weights, frame)
    assert torch.equal(maps, torch.zeros(3, height, width)), f"gradcam_maps of a constant grid: max {maps.abs().max()}"


# --------------------------------------------------------------------------- ROI kinds
def test_all_zero_and_all_one_rois(gen):
    features, weights = nondegenerate_features(gen, 4, 6, 5, 7, (21, 26), weights="positive")
    masks = torch.zeros(4, 21, 26, dtype=torch.bool)
    masks[1:3] = True
    refs = reference_alignment(features, weights, masks)
    # Empty ROI and a non-constant map (its peak is 1 >= τ, so P is not empty): Dice 0.
    for b in (0, 3):
        assert refs[b].dice == 0.0 and refs[b].soft_dice == 0.0 and refs[b].roi_energy == 0.0 and refs[b].pointing_hit == 0.0
    for b in (1, 2):  # the whole frame: energy 1 and the peak always hits
        assert refs[b].roi_energy == pytest.approx(1.0) and refs[b].pointing_hit == 1.0
    check_both_paths(features, weights, Roi.from_masks(masks), refs)


def test_unknown_rois_give_nan_not_zero(gen):
    features, weights = nondegenerate_features(gen, 4, 6, 5, 5, (16, 16))
    masks = random_masks(gen, 4, 16, 16, 0.4)
    known = torch.tensor([False, True, False, True])
    refs = reference_alignment(features, weights, masks, known.tolist())
    for name, path in PATHS.items():
        for roi, label in (
            (Roi.from_masks(masks, known=known), "masks"),
            (Roi.from_boxes([None, torch.tensor([[2.0, 3.0, 9.5, 12.0]]), None, torch.zeros(0, 4)], size=(16, 16)), "boxes"),
        ):
            scores = path(features, weights, roi, 0.5)
            for field in ("dice", "soft_dice", "roi_energy", "pointing_hit"):
                values = getattr(scores, field)
                assert torch.isnan(values[~known]).all(), f"{name}/{label}: {field} of unknown ROIs = {values[~known].tolist()}"
                assert not torch.isnan(values[known]).any(), f"{name}/{label}: {field} of known ROIs = {values[known].tolist()}"
            assert not scores.invalid.any()
            assert torch.isnan(scores.misalignment[~known]).all()
        scores = path(features, weights, Roi.from_masks(masks, known=known), 0.5)
        assert_alignment_matches(scores, refs, context=name, precision=precision_for(name, features.dtype))


@over_fast_alignments
def test_unknown_roi_mask_content_is_ignored(fast_alignment, gen):
    features, weights = nondegenerate_features(gen, 2, 4, 5, 5, (12, 12))
    full = torch.ones(2, 12, 12, dtype=torch.bool)
    scores = fast_alignment(features, weights, Roi.from_masks(full, known=[False, True]))
    assert torch.isnan(scores.dice[0]) and not torch.isnan(scores.dice[1])


def test_empty_known_rois(gen):
    features, weights = nondegenerate_features(gen, 3, 6, 6, 4, (18, 11), weights="positive")
    empty_boxes = Roi.from_boxes([torch.zeros(0, 4)] * 3, size=(18, 11))
    empty_masks = Roi.from_masks(torch.zeros(3, 18, 11, dtype=torch.bool))
    refs = reference_alignment(features, weights, np.zeros((3, 18, 11), dtype=bool))
    assert all(r.dice == 0.0 and r.soft_dice == 0.0 for r in refs)
    for roi in (empty_boxes, empty_masks):
        assert roi.known.all()
        check_both_paths(features, weights, roi, refs, context=roi.kind)


# --------------------------------------------------------------------------- boxes
def _random_boxes(rng: np.random.Generator, height: int, width: int, count: int) -> torch.Tensor:
    """Boxes with fractional corners, some crossing the border, none entirely outside."""
    out = []
    while len(out) < count:
        x0, x1 = sorted(rng.uniform(-0.4 * width, 1.4 * width, 2))
        y0, y1 = sorted(rng.uniform(-0.4 * height, 1.4 * height, 2))
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            continue
        if rng.random() < 0.3:  # corners on half-pixels: exactly on pixel centres
            x0, y0, x1, y1 = (round(v * 2) / 2 for v in (x0, y0, x1, y1))
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                continue
        out.append([x0, y0, x1, y1])
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 4)


@pytest.mark.parametrize("frame", [(24, 31), (7, 1), (1, 9), (50, 45)])
def test_box_rois_match_reference(frame, gen, rng):
    height, width = frame
    batch = 5
    features, weights = nondegenerate_features(gen, batch, 8, 6, 5, frame)
    boxes = [_random_boxes(rng, height, width, int(rng.integers(1, 5))) for _ in range(batch - 1)] + [None]
    roi = Roi.from_boxes(boxes, size=frame)
    truth = np.stack([ref.rasterise_boxes(b.tolist(), height, width) if b is not None else np.zeros(frame, bool) for b in boxes])
    rasterised = roi.to_masks().numpy()
    for b in range(batch - 1):
        diff = np.argwhere(rasterised[b] != truth[b])
        assert diff.size == 0, f"item {b}: to_masks differs from the pixel-centre rule at (y, x) {diff[:10].tolist()}; boxes {boxes[b].tolist()}"
    refs = reference_alignment(features, weights, truth, known=[True] * (batch - 1) + [False])
    check_both_paths(features, weights, roi, refs, context=f"boxes {frame}")


def test_box_pixel_centre_rule_on_edges():
    """``x_min <= x + 0.5 < x_max``: a corner exactly on a pixel centre includes it at the min side
    and excludes it at the max side; a box outside the frame on one side is clipped."""
    roi = Roi.from_boxes(
        [
            torch.tensor([[0.5, 0.5, 2.5, 2.5]]),
            torch.tensor([[-3.0, 1.2, 0.6, 100.0]]),
            torch.tensor([[1.0, 1.0, 1.4, 1.4]]),  # no pixel centre inside
            torch.tensor([[2.0, 0.0, 4.0, 2.0], [3.0, 1.0, 5.0, 3.0]]),  # overlapping: the union
        ],
        size=(4, 5),
    )
    got = roi.to_masks().numpy()
    for b, boxes in enumerate(([[0.5, 0.5, 2.5, 2.5]], [[-3.0, 1.2, 0.6, 100.0]], [[1.0, 1.0, 1.4, 1.4]], [[2.0, 0.0, 4.0, 2.0], [3.0, 1.0, 5.0, 3.0]])):
        np.testing.assert_array_equal(got[b], ref.rasterise_boxes(boxes, 4, 5), err_msg=f"item {b}")
    assert got[0].sum() == 4 and got[0][:2, :2].all()
    assert got[1].sum() == 3 and got[1][1:, 0].all()  # rows whose centre is >= 1.2, column 0 only
    assert got[2].sum() == 0
    assert got[3].sum() == 2 * 2 + 2 * 2 - 1


def test_overlapping_boxes_equal_their_union_mask(gen):
    """The ROI is the union: duplicated and nested boxes add nothing."""
    features, weights = nondegenerate_features(gen, 2, 8, 5, 5, (30, 30))
    base = torch.tensor([[3.0, 4.0, 20.0, 18.5], [10.25, 12.0, 29.0, 27.0]])
    padded = torch.cat([base, base, torch.tensor([[5.0, 6.0, 7.0, 8.0]])])  # duplicate + nested
    truth = ref.rasterise_boxes(base.tolist(), 30, 30)
    refs = reference_alignment(features, weights, np.stack([truth, truth]))
    for name, path in PATHS.items():
        a = path(features, weights, Roi.from_boxes([base, padded], size=(30, 30)), 0.5)
        b = path(features, weights, Roi.from_masks(torch.from_numpy(truth).expand(2, 30, 30).contiguous()), 0.5)
        assert_alignment_matches(a, refs, context=f"{name} boxes", precision=precision_for(name, features.dtype))
        assert_alignment_matches(b, refs, context=f"{name} masks", precision=precision_for(name, features.dtype))
        assert torch.equal(a.dice, b.dice) and torch.equal(a.pointing_hit, b.pointing_hit), f"{name}: box vs mask Dice/hit differ"


# --------------------------------------------------------------------------- bit-packed masks
@over_fast_alignments
@pytest.mark.parametrize("width", [1, 7, 8, 13, 33])
def test_packed_masks_match_dense_masks_and_reference(fast_alignment, width, gen, rng):
    height, batch = 11, 4
    features, weights = nondegenerate_features(gen, batch, 6, 5, 4, (height, width))
    masks = rng.random((batch, height, width)) < 0.4
    packed = np.packbits(masks, axis=2)  # NumPy's default bit order: most significant bit first
    padding_bits = (8 - width % 8) % 8
    if padding_bits:  # bits past W must be ignored: set them all
        packed[..., -1] |= np.uint8((1 << padding_bits) - 1)
    known = [True, False, True, True]
    roi = Roi.from_packed_masks(torch.from_numpy(packed), width, known=known)
    expected = masks & np.array(known)[:, None, None]
    np.testing.assert_array_equal(roi.to_masks().numpy(), expected)
    np.testing.assert_array_equal(roi.packed_masks().numpy() & ~np.uint8(0), np.packbits(expected, axis=2))
    refs = reference_alignment(features, weights, masks, known)
    check_both_paths(features, weights, roi, refs, context="packed")
    dense = fast_alignment(features, weights, Roi.from_masks(torch.from_numpy(masks), known=known))
    assert same_scores(fast_alignment(features, weights, roi), dense)


# --------------------------------------------------------------------------- gradcam_maps
@pytest.mark.parametrize("shape", [(3, 7, 7, 32, 29), (1, 1, 2, 4, 3), (5, 12, 3, 9, 20), (2048, 4, 5, 17, 1)], ids=lambda s: "C{}-{}x{}-to-{}x{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradcam_maps_match_reference(shape, dtype, gen):
    channels, h, w, height, width = shape
    features, weights = nondegenerate_features(gen, 3, channels, h, w, (height, width), dtype=dtype)
    maps = gradcam_maps(features, weights, (height, width))
    assert maps.shape == (3, height, width) and maps.dtype == torch.float32
    for b in range(3):
        want = np.array(ref.normalise(ref.cam_grid(as_f64(features[b]), as_f64(weights[b])), height, width))
        got = maps[b].double().numpy()
        err = np.abs(got - want)
        worst = np.unravel_index(int(err.argmax()), err.shape)
        assert err.max() <= 1e-5, f"item {b}: |map - reference| = {err.max():.3g} at (y, x) = {tuple(int(i) for i in worst)}"
        assert got.min() >= 0.0 and got.max() <= 1.0


def test_gradcam_maps_chunking_does_not_matter(gen):
    features, weights = random_features(gen, 7, 5, 6, 6)
    whole = gradcam_maps(features, weights, (13, 14))
    chunked = gradcam_maps(features, weights, (13, 14), chunk_size=3)
    assert torch.equal(whole, chunked)


# --------------------------------------------------------------------------- chunking / batch independence
@over_fast_alignments
def test_scores_do_not_depend_on_batch_composition(fast_alignment, gen):
    """An item's scores are the same whether scored alone or inside a batch."""
    features, weights = nondegenerate_features(gen, 6, 16, 7, 7, (40, 40))
    masks = random_masks(gen, 6, 40, 40)
    batch = fast_alignment(features, weights, Roi.from_masks(masks))
    for b in (0, 3, 5):
        alone = fast_alignment(features[b : b + 1], weights[b : b + 1], Roi.from_masks(masks[b : b + 1]))
        for field in ("dice", "soft_dice", "roi_energy", "pointing_hit"):
            assert_close_items(getattr(alone, field).tolist(), getattr(batch, field)[b : b + 1].tolist(), atol=1e-6, what=f"item {b} {field}")


@pytest.mark.parametrize("kind", ["masks", "boxes"])
def test_batches_larger_than_a_chunk(kind, gen, rng):
    """300 items cross the chunk boundaries of both paths (fast: 48 for masks, 128 for boxes;
    dense: 64)."""
    batch, frame = 300, (9, 7)
    features, weights = nondegenerate_features(gen, batch, 3, 4, 3, frame)
    known = (torch.rand(batch, generator=gen) > 0.1).tolist()
    if kind == "masks":
        masks = random_masks(gen, batch, *frame)
        roi = Roi.from_masks(masks, known=known)
    else:
        boxes = [_random_boxes(rng, *frame, int(rng.integers(0, 3))) if k else None for k in known]
        roi = Roi.from_boxes(boxes, size=frame)
        masks = np.stack([ref.rasterise_boxes(b.tolist(), *frame) if b is not None else np.zeros(frame, bool) for b in boxes])
    refs = reference_alignment(features, weights, masks, known)
    check_both_paths(features, weights, roi, refs, context=f"300 items, {kind}")


@over_fast_alignments
def test_inputs_that_require_grad_are_scored_like_detached_ones(fast_alignment, gen):
    """Outputs straight from a model's forward pass (autograd on) need no ``torch.no_grad``."""
    features, weights = nondegenerate_features(gen, 3, 8, 5, 5, (20, 20))
    roi = Roi.from_masks(random_masks(gen, 3, 20, 20))
    tracked = fast_alignment(features.clone().requires_grad_(), weights.clone().requires_grad_(), roi)
    assert same_scores(tracked, fast_alignment(features, weights, roi))


@over_fast_alignments
def test_memory_layout_does_not_matter(fast_alignment, gen):
    """channels_last and strided views give the same scores as contiguous tensors."""
    features, weights = nondegenerate_features(gen, 4, 8, 6, 5, (20, 17))
    masks = random_masks(gen, 4, 20, 17)
    roi = Roi.from_masks(masks)
    base = fast_alignment(features, weights, roi)
    wide = torch.zeros(4, 16, 6, 5)
    wide[:, ::2] = features
    for variant in (features.to(memory_format=torch.channels_last), wide[:, ::2]):
        assert not variant.is_contiguous()
        assert same_scores(fast_alignment(variant, weights, roi), base)
    assert same_scores(fast_alignment(features, weights.t().contiguous().t(), roi), base)


# --------------------------------------------------------------------------- no range: the rule
# A grid that is NOT constant can resample to a map that IS constant: a 1×1 frame, or a frame that
# only reads grid points of equal value. The contract's (L − min) / (max − min) is then 0/0, and
# every path treats the map as flat (all zeros, no peak) by the same bound as a flat grid
# (docs/contract.md, "Flat maps"; xal_core.scoring.flatness).
DEGENERATE = [
    # (grid, frame, threshold, mask)
    pytest.param([[0.0, 1.0, 0.0]], (1, 1), 0.5, [[1]], id="1x1-frame"),
    pytest.param([[0.3], [0.7]], (1, 5), 0.5, [[1, 1, 1, 1, 1]], id="2x1-grid-to-1x5"),
    pytest.param([[0.1, 0.7, 0.2]], (6, 1), 0.5, [[1], [1], [1], [1], [1], [1]], id="1x3-grid-to-6x1"),
    pytest.param(
        [[0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 3.0, 0.0, 0.0]], (2, 1), 0.3, [[0], [1]], id="3x4-grid-to-2x1"
    ),
    # Non-dyadic weights (1/6, 1/2, 5/6): exactly 0.625 everywhere, but float64 blends of 0.75 and 1.25
    # with 5/6 round: the computed range is a few ulps, within the flat bound.
    pytest.param([[0.75, 0.0, 1.25, 0.5]], (1, 3), 0.5, [[0, 1, 0]], id="non-dyadic-1x4-to-1x3"),
    pytest.param([[0.75, 0.0, 1.25, 0.5]] * 2, (3, 3), 0.7, [[0, 1, 0]] * 3, id="non-dyadic-2x4-to-3x3"),
]


def _degenerate_case(grid, frame, mask):
    features = torch.tensor(grid, dtype=torch.float64)[None, None]
    weights = torch.ones(1, 1, dtype=torch.float64)
    masks = torch.tensor(mask, dtype=torch.bool)[None]
    assert masks.shape[1:] == frame
    assert ref.alignment(as_f64(features[0]), as_f64(weights[0]), masks[0].numpy()).constant
    return features, weights, masks


def _expected_degenerate(masks):
    return [ref.alignment(np.array([[[1.0, 1.0]]]), np.ones(1), m.numpy()) for m in masks]  # a constant map


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("grid,frame,threshold,mask", DEGENERATE)
def test_degenerate_resampled_map_is_flat_on_every_path(path, grid, frame, threshold, mask):
    features, weights, masks = _degenerate_case(grid, frame, mask)
    scores = PATHS[path](features, weights, Roi.from_masks(masks), threshold)
    assert_alignment_matches(scores, _expected_degenerate(masks), context=f"{path} path, degenerate map",
                             precision=precision_for(path, torch.float64))
    boxes = Roi.from_boxes([torch.tensor([[x, y, x + 1.0, y + 1.0] for y, x in torch.nonzero(masks[0]).tolist()]).reshape(-1, 4)],
                           size=frame)
    scores = PATHS[path](features, weights, boxes, threshold)
    assert_alignment_matches(scores, _expected_degenerate(masks), context=f"{path} path, degenerate map, boxes",
                             precision=precision_for(path, torch.float64))


@pytest.mark.parametrize("grid,frame,threshold,mask", DEGENERATE)
def test_degenerate_resampled_map_gradcam_maps_are_zero(grid, frame, threshold, mask):
    features, weights, masks = _degenerate_case(grid, frame, mask)
    maps = gradcam_maps(features, weights, frame)
    assert torch.equal(maps, torch.zeros(1, *frame)), f"gradcam_maps of an exactly constant map: {maps.flatten().tolist()}"


# (grid, frame, mask, expected (dice, soft_dice, roi_energy, pointing_hit)): both sides of the flat
# rule (docs/contract.md, "Flat maps"), with C = 1 so ε = 8·2⁻⁵³·(grid maximum) ≈ 8.9e-16 of it.
RANGES_EITHER_SIDE = [
    # Columns 1 and 4 of a 1×6 grid, 0 and 1e-10, next to a maximum of 1000: range ≈ 1e-13 of the
    # maximum, far above 8ε (7e-15 of it), so the map is normalised.
    pytest.param([[1000.0, 0.0, 0.0, 0.0, 1e-10, 0.0]], (1, 2), [[0, 1]], (1.0, 1.0, 1.0, 1.0), id="1e-13-of-max-normalised"),
    # A grid whose range (2⁻⁵¹) lies in the band, read through a 1×1 frame: a single pixel has no
    # range at all, so the map is flat on every path (tests/test_flat_rule.py draws the band itself).
    pytest.param([[0.25, 0.25], [0.25, 0.25 + 16 * 2.0**-55]], (1, 1), [[1]], (0.0, 0.0, 0.0, 0.0), id="bump-1x1-frame-flat"),
    # 2⁻⁴⁰ of the maximum: 2¹⁰ times ε, normalised.
    pytest.param([[1.0, 1.0], [1.0, 1.0 + 2.0**-40]], (2, 2), [[0, 0], [0, 1]], (1.0, 1.0, 1.0, 1.0), id="2^-40-bump-normalised"),
]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("grid,frame,mask,expected", RANGES_EITHER_SIDE)
def test_ranges_on_either_side_of_the_flat_band(path, grid, frame, mask, expected):
    features = torch.tensor(grid, dtype=torch.float64)[None, None]
    weights = torch.ones(1, 1, dtype=torch.float64)
    masks = torch.tensor(mask, dtype=torch.bool)[None]
    r = ref.alignment(as_f64(features[0]), as_f64(weights[0]), masks[0].numpy())
    assert not r.ambiguous and (r.dice, r.soft_dice, r.roi_energy, r.pointing_hit) == expected
    scores = PATHS[path](features, weights, Roi.from_masks(masks), 0.5)
    got = tuple(float(getattr(scores, f)[0]) for f in ("dice", "soft_dice", "roi_energy", "pointing_hit"))
    assert got == pytest.approx(expected, abs=1e-7), f"{path}: {got}, expected {expected}"


def test_constant_grid_on_the_other_side_of_the_rule():
    """An exactly constant grid (the same value in every cell) is flat on every path, also when the
    per-cell channel sums cancel: each cell sums the same terms in the same order."""
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        channels = torch.randn(4, 2048, 1, 1, generator=gen, dtype=torch.float64) * 1e3
        features = channels.to(dtype).expand(4, 2048, 7, 5).contiguous()
        weights = torch.randn(4, 2048, generator=gen, dtype=torch.float64).to(dtype)
        masks = random_masks(gen, 4, 9, 11, 0.5)
        refs = reference_alignment(features, weights, masks)
        assert all(r.constant for r in refs)
        check_both_paths(features, weights, Roi.from_masks(masks), refs, context=f"constant grid {dtype}")


def test_dense_path_first_peak_on_a_plateau():
    features = torch.tensor([[[[0.0, 0.1]]]], dtype=torch.float64)
    masks = torch.tensor([[[False, False, True], [False, False, False]]])
    scores = cam_alignment_dense(features, torch.ones(1, 1, dtype=torch.float64), Roi.from_masks(masks))
    assert float(scores.pointing_hit[0]) == 1.0


@over_fast_alignments
def test_fast_path_first_peak_on_a_plateau(fast_alignment):
    """Grid [0, 0.1] on a 2×3 frame: both rows read the same grid row, so (0, 2) and (1, 2) are
    exactly equal maxima and the first in row-major order, (0, 2), is the peak."""
    features = torch.tensor([[[[0.0, 0.1]]]], dtype=torch.float64)
    masks = torch.tensor([[[False, False, True], [False, False, False]]])
    refs = reference_alignment(features, torch.ones(1, 1, dtype=torch.float64), masks)
    assert refs[0].pointing_hit == 1.0 and refs[0].peak_unique and not refs[0].peak_unique_by_margin
    scores = fast_alignment(features, torch.ones(1, 1, dtype=torch.float64), Roi.from_masks(masks))
    assert float(scores.pointing_hit[0]) == 1.0


# --------------------------------------------------------------------------- precision: hard inputs
@pytest.mark.parametrize("path", list(PATHS))
def test_channel_sum_precision_with_large_offset(path):
    # Grid = 4096 + [0, 0.4999, 1]: exactly normalised [0, 0.4999, 1], so P = {x = 2} at τ = 0.5.
    features = torch.tensor([[[[4096.0, 4096.0, 4096.0]], [[0.0, 0.4999, 1.0]]]], dtype=torch.float32)
    weights = torch.ones(1, 2, dtype=torch.float32)
    masks = torch.tensor([[[False, False, True]]])
    refs = reference_alignment(features, weights, masks)
    assert refs[0].dice == 1.0 and refs[0].near_in + refs[0].near_out == 0
    scores = PATHS[path](features, weights, Roi.from_masks(masks), 0.5)
    assert_alignment_matches(scores, refs, context=path, precision=precision_for(path, torch.float32))


@pytest.mark.parametrize("path", list(PATHS))
def test_row_precision_when_map_range_is_small(path):
    # 1×6 grid read at columns 0.5, 2.5, 4.5 (frame 1×3): map = [500, 500.004, 500.01] of a grid
    # spanning [0, 1000]; exactly normalised [0, 0.4, 1]. float64 inputs: no channel-sum rounding.
    features = torch.tensor([[[[0.0, 1000.0, 500.004, 500.004, 500.01, 500.01]]]], dtype=torch.float64)
    weights = torch.ones(1, 1, dtype=torch.float64)
    masks = torch.tensor([[[False, True, True]]])
    refs = reference_alignment(features, weights, masks, threshold=0.401)
    assert refs[0].near_in + refs[0].near_out == 0
    scores = PATHS[path](features, weights, Roi.from_masks(masks), 0.401)
    assert_alignment_matches(scores, refs, context=path, precision=precision_for(path, torch.float64))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy sums overflow, as meant
@pytest.mark.parametrize("path", list(PATHS))
def test_overflowing_channel_sum_is_invalid_not_nan(path):
    """Finite inputs whose channel sum overflows the path's accumulation are flagged invalid, like a
    NaN input (docs/contract.md): never a NaN soft Dice beside ``invalid = False``. float64 products
    near the float64 limit overflow every path; float32 ones only fp32 accumulation (Triton)."""
    features = torch.ones(3, 4, 3, 3, dtype=torch.float64)
    features[0, :, 1, 1] = 1e308  # 4 · 1e308 overflows float64
    weights = torch.ones(3, 4, dtype=torch.float64)
    masks = torch.ones(3, 5, 5, dtype=torch.bool)
    for dtype in (torch.float64, torch.float32):
        f = features if dtype == torch.float64 else torch.where(features > 1e30, torch.tensor(3e38, dtype=torch.float64), features).to(dtype)
        fp32_sum = dtype == torch.float32 and precision_for(path, dtype).unit > 2.0**-30
        if dtype == torch.float64 or fp32_sum:
            with pytest.warns(UserWarning, match="channel sum"):
                scores = PATHS[path](f, weights.to(dtype), Roi.from_masks(masks), 0.5)
            assert scores.invalid.tolist() == [True, False, False], (path, dtype)
            assert torch.isnan(scores.soft_dice[0]) and torch.isnan(scores.dice[0])
        else:  # 4 · 3e38 is finite in float64 accumulation: a valid, finite item
            scores = PATHS[path](f, weights.to(dtype), Roi.from_masks(masks), 0.5)
            assert not scores.invalid[0] and torch.isfinite(scores.soft_dice[0]), (path, dtype, scores)


@pytest.mark.parametrize("path", list(PATHS))
def test_huge_and_tiny_float64_grids_do_not_overflow(path):
    """Grid values near the float64 limits: the normalised map is scale-free, so the scores are
    those of the same grid at unit scale (paths scale grids by a power of two, exactly)."""
    gen = torch.Generator().manual_seed(11)
    base, weights = random_features(gen, 3, 4, 5, 6, dtype=torch.float64, weights="positive")
    masks = random_masks(gen, 3, 13, 17)
    refs = reference_alignment(base, weights, masks)
    for scale in (2.0**1000, 2.0**-1000, 1e300):
        scores = PATHS[path](base * scale, weights, Roi.from_masks(masks), 0.5)
        assert not scores.invalid.any(), (path, scale)
        assert_alignment_matches(scores, refs, context=f"{path} ×{scale:g}", precision=precision_for(path, torch.float64))
