"""The fused CAM-alignment kernel against the float64 dense reference, under TRITON_INTERPRET=1.

Shapes are the awkward ones (C = 1, 3, 2048; grids 1, 7, 13 per side; frames 1, 31, 224 and a
512² one), every feature dtype with its own tolerance, mask and box ROIs with unknown and empty
items, constant maps, pixels exactly at τ, NaN/Inf items, both launch layouts (one program per
image; row bands + finishing step), and poisoned buffers.
"""

from __future__ import annotations

import importlib
import math
import sys
import warnings
import zlib

import kernel_checks as kc  # first: switches Triton to its interpreter
import pytest
import torch

from xal_core.scoring import NonFiniteInputWarning, Roi
from xal_core.scoring import cam_alignment as core_cam_alignment

pytest.importorskip("triton", reason="the kernels need the 'kernels' extra (triton)")
pytestmark = [pytest.mark.interpreter, pytest.mark.filterwarnings(kc.INTERPRETER_NOISE)]

from xal_kernels import cam_alignment as kmod  # noqa: E402  (the routed function)

op = kc.on_device(importlib.import_module("xal_kernels.triton_alignment"))  # the op module
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def run_kernel(features, weights, roi, threshold=0.5, **launch):
    """The op on a ``Roi`` with optional launch overrides (bands, tile)."""
    if not launch:
        return op.cam_alignment(features, weights, roi, threshold=threshold)
    if roi.masks is not None:
        return op.launch_cam_alignment(features, weights, roi.size, roi.known, packed=roi.packed_masks(), threshold=threshold, **launch)
    return op.launch_cam_alignment(
        features, weights, roi.size, roi.known, ranges=roi.box_pixel_ranges(), counts=roi.counts, threshold=threshold, **launch
    )


def mask_roi(batch, height, width, seed, unknown=(), empty=()):
    masks = kc.random_masks(batch, height, width, seed)
    for i in empty:
        masks[i] = False
    known = torch.ones(batch, dtype=torch.bool)
    for i in unknown:
        known[i] = False
    return Roi.from_masks(masks, known=known)


def box_roi(batch, height, width, seed, unknown=(), empty=()):
    boxes = kc.random_boxes(batch, height, width, seed)
    for i in empty:
        boxes[i] = torch.zeros(0, 4, dtype=torch.float64)
    for i in unknown:
        boxes[i] = None
    return Roi.from_boxes(boxes, size=(height, width))


ROIS = {"mask": mask_roi, "box": box_roi}


# --------------------------------------------------------------------------- shapes × dtypes × ROI
# (B, C, h, w, H, W)
SHAPES = [
    (3, 1, 7, 7, 31, 31),
    (3, 3, 13, 7, 31, 224),
    (2, 3, 7, 13, 224, 31),
    (2, 2048, 7, 7, 31, 31),
    (3, 3, 1, 1, 31, 31),  # 1×1 grid: always constant
    (3, 3, 1, 13, 1, 31),  # H = 1
    (3, 3, 13, 1, 31, 1),  # W = 1
    (3, 3, 7, 7, 1, 1),  # 1×1 frame: no range after resampling
    (3, 3, 13, 13, 7, 5),  # frame smaller than the grid
]


@pytest.mark.parametrize("roi_kind", ["mask", "box"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, roi_kind):
    batch, channels, h, w, height, width = shape
    for index, dtype in enumerate(DTYPES):
        seed = zlib.crc32(repr((shape, roi_kind, index)).encode())
        features, weights = kc.random_case(batch, channels, h, w, dtype, seed)
        roi = ROIS[roi_kind](batch, height, width, seed, unknown=(batch - 1,) if batch > 2 else (), empty=(0,))
        got = run_kernel(features, weights, roi)
        kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, dtype, label=f"{shape} {roi_kind} {dtype}")


@pytest.mark.parametrize("roi_kind", ["mask", "box"])
def test_large_frame_and_channels(roi_kind):
    """C = 2048 on a 224² frame, and a 512² frame from a 16×16 grid (one image each)."""
    for shape, dtype in (((1, 2048, 13, 13, 224, 224), torch.float16), ((1, 5, 16, 16, 512, 512), torch.bfloat16)):
        features, weights = kc.random_case(*shape[:4], dtype, seed=7)
        roi = ROIS[roi_kind](1, *shape[4:], seed=8)
        got = run_kernel(features, weights, roi)
        kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, dtype, label=f"{shape} {roi_kind}")


@pytest.mark.parametrize("roi_kind", ["mask", "box"])
@pytest.mark.parametrize("launch", [dict(rows_per_band=5, tile=64), dict(rows_per_band=16, tile=256), dict(tile=32)])
def test_split_and_tiled_launches(roi_kind, launch):
    """Row bands (stats → bands → finishing step) and many small tiles give the same results."""
    features, weights = kc.random_case(4, 6, 7, 9, torch.float32, seed=11)
    roi = ROIS[roi_kind](4, 37, 45, seed=12, unknown=(2,), empty=(1,))
    got = run_kernel(features, weights, roi, **launch)
    kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, torch.float32, label=str(launch))
    whole = run_kernel(features, weights, roi)
    for name in ("dice", "pointing_hit"):
        assert torch.equal(getattr(got, name).nan_to_num(-1), getattr(whole, name).nan_to_num(-1)), name


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.75, 1.0])
def test_thresholds(threshold):
    features, weights = kc.random_case(3, 4, 7, 7, torch.float32, seed=int(threshold * 100))
    roi = mask_roi(3, 40, 33, seed=3)
    got = run_kernel(features, weights, roi, threshold=threshold)
    kc.assert_matches(got, kc.expected(features, weights, roi, threshold), threshold, torch.float32, label=f"tau={threshold}")


# --------------------------------------------------------------------------- exact cases
def test_pixels_exactly_at_threshold_are_attended():
    """A 1×2 grid [0, 1] resampled to 8 columns gives 0, 0, .125, .375, .625, .875, 1, 1 exactly:
    at τ = 0.375 five pixels are attended, in the kernel as in the contract (``L ≥ τ``)."""
    features = torch.tensor([[[[0.0, 1.0]]]]).repeat(1, 1, 1, 1)
    weights = torch.ones(1, 1)
    masks = torch.zeros(1, 1, 8, dtype=torch.bool)
    masks[0, 0, 3] = True  # exactly at τ
    masks[0, 0, 0] = True  # below
    roi = Roi.from_masks(masks)
    got = run_kernel(features, weights, roi, threshold=0.375)
    # |P| = 5 (columns 3..7), |G| = 2, |P ∩ G| = 1  →  Dice = 2/7
    assert got.dice.item() == pytest.approx(2 / 7, abs=1e-7)
    assert got.pointing_hit.item() == 0.0  # the first maximum is column 6, outside the ROI
    expected_mass = 0.125 + 0.375 + 0.625 + 0.875 + 1 + 1
    assert got.roi_energy.item() == pytest.approx(0.375 / expected_mass, abs=1e-7)
    assert got.soft_dice.item() == pytest.approx(2 * 0.375 / (expected_mass + 2), abs=1e-7)


def test_first_maximum_in_row_major_order():
    """A 3×3 grid whose maximum (0.9) sits on the right border, resampled to 9×12: grid row 1 lands
    exactly on output row 4 and the border plateau copies 0.9 exactly to columns 10 and 11. The
    peak is the first of the two (flat index 4·12 + 10 = 58), not the second."""
    grid = torch.tensor([[0.1, 0.2, 0.3], [0.2, 0.4, 0.9], [0.1, 0.3, 0.5]])
    features, weights = grid[None, None], torch.ones(1, 1)
    upsampled = torch.nn.functional.interpolate(features.double(), size=(9, 12), mode="bilinear", align_corners=False)
    peak = grid.max().item()
    assert upsampled.flatten()[[58, 59]].tolist() == [peak, peak] and int(upsampled.flatten().argmax()) == 58
    for pixel, hit in ((58, 1.0), (59, 0.0)):
        masks = torch.zeros(1, 9 * 12, dtype=torch.bool)
        masks[0, pixel] = True
        for roi in (Roi.from_masks(masks.view(1, 9, 12)), Roi.from_boxes([torch.tensor([[pixel % 12, pixel // 12, pixel % 12 + 1, pixel // 12 + 1.0]])], size=(9, 12))):
            assert run_kernel(features, weights, roi).pointing_hit.item() == hit, (pixel, roi.kind)


@pytest.mark.parametrize("roi_kind", ["mask", "box"])
def test_constant_maps(roi_kind):
    """Constant grid (features constant over space), all-zero after ReLU, and a nonconstant one:
    the first two are all zeros: Dice 0 against a non-empty ROI, 1 against an empty one."""
    gen = torch.Generator().manual_seed(5)
    channels = 4
    constant = (torch.rand(1, channels, 1, 1, generator=gen) + 0.2).expand(1, channels, 7, 7)
    negative = torch.rand(1, channels, 7, 7, generator=gen) + 0.2  # with negative weights: ReLU → 0
    varied = torch.rand(1, channels, 7, 7, generator=gen) + 0.2
    features = torch.cat([constant, negative, varied, constant]).contiguous()
    weights = torch.rand(4, channels, generator=gen) + 0.1
    weights[1] = -weights[1]
    roi = ROIS[roi_kind](4, 29, 29, seed=6, empty=(3,))
    got = run_kernel(features, weights, roi)
    assert got.dice[:2].tolist() == [0.0, 0.0]
    assert got.soft_dice[:2].tolist() == [0.0, 0.0]
    assert got.roi_energy[:2].tolist() == [0.0, 0.0]
    assert got.pointing_hit[:2].tolist() == [0.0, 0.0]
    assert got.dice[3].item() == 1.0 and got.soft_dice[3].item() == 1.0  # both empty
    kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, torch.float32, label="constant maps")


def test_packed_masks_ignore_padding_bits():
    """Bit order: pixel x is bit 7 - x % 8 of byte x // 8; padding bits past W are never read."""
    features, weights = kc.random_case(3, 5, 7, 7, torch.float32, seed=21)
    masks = kc.random_masks(3, 23, 13, seed=22)  # W = 13: 3 padding bits in the last byte
    roi = Roi.from_masks(masks, known=[True, False, True])
    packed = roi.packed_masks().clone()
    packed[:, :, -1] |= 0b00000111  # set every padding bit
    got = op.launch_cam_alignment(features, weights, roi.size, roi.known, packed=packed, threshold=0.5)
    kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, torch.float32, label="padded packed")
    # A single set bit lands on the right pixel.
    one = torch.zeros(1, 1, 2, dtype=torch.uint8)
    one[0, 0, 1] = 0b00100000  # bit 5 of byte 1 → x = 8 + (7 - 5) = 10
    ref = torch.zeros(1, 1, 13, dtype=torch.bool)
    ref[0, 0, 10] = True
    f1, w1 = kc.random_case(1, 2, 1, 5, torch.float32, seed=23)
    a = op.launch_cam_alignment(f1, w1, (1, 13), torch.ones(1, dtype=torch.bool), packed=one, threshold=0.5)
    kc.assert_matches(a, kc.expected(f1, w1, Roi.from_masks(ref)), 0.5, torch.float32, label="single bit")


def test_box_layout_matches_roi():
    """Padded boxes + counts (−1 unknown, 0 empty), overlapping and partly outside the frame."""
    boxes = torch.tensor(
        [
            [[-3.0, -2.0, 10.4, 9.6], [5.5, 4.5, 20.0, 12.0], [0.0, 0.0, 0.0, 0.0]],
            [[1.2, 1.7, 1.4, 30.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],  # sub-pixel wide
            [[0.0, 0.0, 0.0, 0.0]] * 3,
            [[2.0, 3.0, 40.0, 50.0]] * 3,
        ]
    )
    counts = torch.tensor([2, 1, 0, -1])
    features, weights = kc.random_case(4, 3, 7, 7, torch.float32, seed=31)
    roi = Roi.from_padded_boxes(boxes, counts, (26, 24))
    got = op.cam_alignment(features, weights, roi)
    kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, torch.float32, label="padded boxes")
    assert math.isnan(got.dice[3].item())


# --------------------------------------------------------------------------- NaN/Inf and validation
@pytest.mark.parametrize("roi_kind", ["mask", "box"])
def test_nonfinite_items_are_isolated(roi_kind):
    features, weights = kc.random_case(5, 4, 7, 7, torch.float32, seed=41)
    features[1, 2, 3, 3] = float("nan")
    features[2, 0, 0, 6] = float("inf")
    weights[3, 1] = -float("inf")
    roi = ROIS[roi_kind](5, 31, 31, seed=42, unknown=(4,))
    with pytest.warns(NonFiniteInputWarning, match="3 item"):
        got = op.cam_alignment(features, weights, roi)
    with pytest.warns(NonFiniteInputWarning):
        core = core_cam_alignment(features, weights, roi)
    assert torch.equal(got.invalid, core.invalid)
    assert got.invalid.tolist() == [False, True, True, True, False]
    kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, torch.float32, label="nonfinite")


def test_half_precision_infinities():
    features, weights = kc.random_case(2, 3, 5, 5, torch.float16, seed=43)
    features[0, 1, 2, 2] = float("-inf")
    roi = mask_roi(2, 17, 17, seed=44)
    with pytest.warns(NonFiniteInputWarning):
        got = op.cam_alignment(features, weights, roi)
    assert got.invalid.tolist() == [True, False]
    kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, torch.float16, label="fp16 inf")


BAD_INPUTS = [
    (lambda f, w, r: (f[0], w, r, 0.5), "features: expected shape"),
    (lambda f, w, r: (f.int(), w, r, 0.5), "dtype"),
    (lambda f, w, r: (f, w[:, :2], r, 0.5), "weights: expected shape"),
    (lambda f, w, r: (f, w, r[0:1], 0.5), "roi: holds 1 items"),
    (lambda f, w, r: (f, w, "roi", 0.5), "roi: expected"),
    (lambda f, w, r: (f, w, r, 0.0), "threshold"),
    (lambda f, w, r: (f, w, r, 1.5), "threshold"),
]


@pytest.mark.parametrize("make, message", BAD_INPUTS)
def test_validation_matches_core(make, message):
    features, weights = kc.random_case(2, 3, 5, 5, torch.float32, seed=51)
    roi = mask_roi(2, 9, 9, seed=52)
    args = make(features, weights, roi)
    with pytest.raises(ValueError, match=message) as core_error:
        core_cam_alignment(*args[:3], threshold=args[3])
    with pytest.raises(ValueError) as kernel_error:
        op.cam_alignment(*args[:3], threshold=args[3])
    assert str(kernel_error.value) == str(core_error.value)


def test_empty_batch():
    features, weights = kc.random_case(0, 3, 5, 5, torch.float32, seed=53)
    got = op.cam_alignment(features, weights, Roi.from_masks(torch.zeros(0, 9, 9, dtype=torch.bool)))
    assert got.dice.shape == (0,) and got.invalid.shape == (0,)


# --------------------------------------------------------------------------- poisoned buffers
@pytest.mark.parametrize("poison", [float("nan"), -7.0, 3.0e38])
@pytest.mark.parametrize("launch", [{}, dict(rows_per_band=6, tile=64)])
def test_every_buffer_element_is_written(monkeypatch, poison, launch):
    """All outputs and intermediates (grid scratch, stats, band partials) start as poison."""

    def poisoned(shape, dtype, device):
        fill = poison if dtype.is_floating_point else -7
        return torch.full(shape, fill, dtype=dtype, device=device)

    monkeypatch.setattr(op, "_buffer", poisoned)
    features, weights = kc.random_case(5, 3, 7, 6, torch.float32, seed=61)
    features[2, 0, 0, 0] = float("nan")
    roi = mask_roi(5, 27, 19, seed=62, unknown=(3,), empty=(4,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)
        got = run_kernel(features, weights, roi, **launch) if launch else op.cam_alignment(features, weights, roi)
    for name in ("dice", "soft_dice", "roi_energy", "pointing_hit"):
        values = getattr(got, name)
        assert not (values == -7.0).any() and not (values == 3.0e38).any(), f"{name} not written: {values.tolist()}"
    assert got.invalid.tolist() == [False, False, True, False, False]
    kc.assert_matches(got, kc.expected(features, weights, roi), 0.5, torch.float32, label=f"poison {poison}")


def test_routed_function_survives_op_module_import():
    """``xal_kernels.cam_alignment`` is the routed function, also after the op module is imported:
    the op module is ``triton_alignment``, so importing it binds no ``cam_alignment`` attribute."""
    import xal_kernels
    import xal_kernels.triton_alignment
    from xal_kernels import dispatch

    assert xal_kernels.cam_alignment is dispatch.cam_alignment
    assert kmod is xal_kernels.cam_alignment and not isinstance(xal_kernels.cam_alignment, type(sys))
    assert xal_kernels.triton_alignment is sys.modules["xal_kernels.triton_alignment"]  # the module, bound
