"""Shared by the kernel tests: the interpreter switch, and the comparison of kernel results with the float64 dense reference, tolerant only where it must be.

fp32 accumulation moves every normalised pixel by at most ``eps`` (an error bound computed per image
from the channel sum's magnitude, below). Hard Dice may then differ from the reference only through
pixels whose reference value lies within ``eps`` of ``τ``: the check brackets the kernel's Dice
between the Dice of "none of those pixels attended" and "all of them attended". Without such
pixels the bracket closes on the reference value. The pointing hit is compared only where every
pixel within ``eps`` of the maximum has the same ROI value as the reference peak.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import sys
import types
from dataclasses import dataclass

# Triton reads TRITON_INTERPRET when @triton.jit decorates a function, i.e. when a kernel module is
# first imported; the kernel modules are imported lazily (xal_kernels.dispatch), so setting it here,
# at the top of every kernel test module's imports, is early enough. It only changes how Triton
# kernels execute; nothing else in the suite uses Triton. (No conftest.py here on purpose: a second
# rootless conftest would replace the `conftest` module that tests/ imports by name.) It lives in
# tests/ so that the contract tests (tests/test_alignment_contract.py) run the Triton path too.
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from xal_core.scoring import Roi
from xal_core.scoring.inputs import nonfinite_items
from xal_core.scoring.reference import cam_alignment_dense, cam_grids, normalised_maps


def _reload_compiled_kernel_modules() -> None:
    """Re-decorate kernel modules imported earlier in this process without the interpreter."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return

    for name in ("xal_kernels.triton_alignment", "xal_kernels.triton_uncertainty"):
        module = sys.modules.get(name)
        kernels = [v for k, v in vars(module).items() if k.endswith("_kernel")] if module else []
        if kernels and not isinstance(kernels[0], InterpretedFunction):
            importlib.reload(module)


# The interpreter runs kernels on numpy, which warns where the NaN/Inf probe multiplies Inf by 0.
INTERPRETER_NOISE = "ignore:invalid value encountered:RuntimeWarning"

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETED:
    _reload_compiled_kernel_modules()

# Where the kernels run. CI: the interpreter on CPU tensors. On a GPU host the same tests run the
# compiled kernels on the card with ``TRITON_INTERPRET=0 XAL_KERNEL_TEST_DEVICE=cuda``: inputs are
# built on the CPU as always (same seeds, same float64 reference) and moved to the device at the
# op's boundary, results moved back (``on_device``).
DEVICE = torch.device(os.environ.get("XAL_KERNEL_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and INTERPRETED:
    raise RuntimeError("XAL_KERNEL_TEST_DEVICE=cuda needs TRITON_INTERPRET=0 (compiled kernels)")


def moved(value, device: torch.device):
    """``value`` with every tensor (in Rois, dataclasses, tuples, lists, dicts) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Roi):
        return value.to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: moved(getattr(value, f.name), device) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(moved(v, device) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    return value


class _OnDevice(types.ModuleType):
    """A kernel module whose public functions take CPU inputs, run on ``DEVICE``, return CPU results.

    Private names (``_buffer``…) resolve to the module itself, so ``monkeypatch`` patches and restores
    the real module.
    """

    def __init__(self, module: types.ModuleType) -> None:
        super().__init__(module.__name__)
        object.__setattr__(self, "_module", module)

    def __getattr__(self, name: str):
        value = getattr(object.__getattribute__(self, "_module"), name)
        if name.startswith("_") or not callable(value) or isinstance(value, type):
            return value

        def on_device(*args, **kwargs):
            return moved(value(*moved(args, DEVICE), **moved(kwargs, DEVICE)), torch.device("cpu"))

        return on_device

    def __setattr__(self, name: str, value) -> None:
        setattr(object.__getattribute__(self, "_module"), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(object.__getattribute__(self, "_module"), name)


def on_device(module: types.ModuleType) -> types.ModuleType:
    """``module`` itself on the CPU; a proxy that runs its functions on ``DEVICE`` otherwise."""
    return module if DEVICE.type == "cpu" else _OnDevice(module)

# Per input dtype: the unit of roundoff of the kernel's accumulation (fp32 for fp16/bf16/fp32 inputs,
# which convert exactly; fp64 for float64 inputs, which must meet the float64 contract: an fp32 loss
# on them fails these checks), an absolute floor in normalised units, and the tolerance of the soft
# metrics (the outputs are float32).
DTYPE_TOLERANCE = {
    torch.float16: (2.0**-24, 1e-6, 2e-6),
    torch.bfloat16: (2.0**-24, 1e-6, 2e-6),
    torch.float32: (2.0**-24, 1e-6, 2e-6),
    torch.float64: (2.0**-53, 1e-12, 2e-7),
}


@dataclass
class Expected:
    scores: object  # AlignmentScores, float64 dense reference, NaN where blank
    maps: torch.Tensor  # [B, H, W] float64 normalised maps
    truth: torch.Tensor  # [B, H, W] bool
    eps: torch.Tensor  # [B] bound on the kernel's error in normalised units
    blank: torch.Tensor  # [B] unknown ROI or invalid inputs
    invalid: torch.Tensor  # [B]


def expected(features: torch.Tensor, weights: torch.Tensor, roi: Roi, threshold: float = 0.5) -> Expected:
    invalid = nonfinite_items(features, weights)
    keep = ~invalid
    clean_f = torch.where(keep[:, None, None, None], features, torch.zeros((), dtype=features.dtype))
    clean_w = torch.where(keep[:, None], weights, torch.zeros((), dtype=weights.dtype))
    scores = cam_alignment_dense(clean_f, clean_w, roi, threshold=threshold, dtype=torch.float64)
    blank = invalid | ~roi.known
    for field in (scores.dice, scores.soft_dice, scores.roi_energy, scores.pointing_hit):
        field.masked_fill_(blank, float("nan"))
    grids, tolerance = cam_grids(clean_f, clean_w, torch.float64)
    maps = normalised_maps(grids, roi.size, tolerance)
    raw = torch.nn.functional.interpolate(grids[:, None], size=roi.size, mode="bilinear", align_corners=False)[:, 0]
    span = (raw.amax(dim=(1, 2)) - raw.amin(dim=(1, 2))).clamp_min(1e-300)
    magnitude = torch.einsum("bc,bchw->bhw", clean_w.double().abs(), clean_f.double().abs()).amax(dim=(1, 2))
    unit, floor, _ = DTYPE_TOLERANCE[features.dtype]
    # A statistical bound (rounding errors of a C-term sum grow like sqrt(C) on random inputs), not
    # the worst case C·u·Σ|α A|; measured errors stay below it by a factor of ~50 or more.
    err = unit * ((math.sqrt(features.shape[1]) + 8) * magnitude + 16 * grids.amax(dim=(1, 2)))
    eps = 4 * err / span + floor
    return Expected(scores, maps, roi.to_masks(), eps, blank, invalid)


def dice_bracket(exp: Expected, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] lowest and highest Dice reachable by flipping pixels within ``eps`` of ``τ``."""
    eps = exp.eps[:, None, None]
    sure = (exp.maps >= threshold + eps).double()
    maybe = (exp.maps >= threshold - eps).double()
    truth = exp.truth.double()
    n_truth = truth.sum(dim=(1, 2))
    lo_overlap, hi_overlap = (sure * truth).sum(dim=(1, 2)), (maybe * truth).sum(dim=(1, 2))
    lo_pred, hi_pred = sure.sum(dim=(1, 2)), maybe.sum(dim=(1, 2))

    def dice(overlap, pred):
        pair = pred + n_truth
        return torch.where(pair == 0, 1.0, 2 * overlap / pair.clamp_min(1))

    # Each flipped pixel adds to |P| and possibly to |P ∩ G|: the extremes pair the ends.
    low = torch.minimum(dice(lo_overlap, hi_pred), dice(lo_overlap, lo_pred))
    high = torch.maximum(dice(hi_overlap, lo_pred), dice(hi_overlap, hi_pred))
    return low, high


def hit_comparable(exp: Expected) -> torch.Tensor:
    """[B] items whose pointing hit is decided by margin: all near-max pixels agree on the ROI."""
    flat = exp.maps.flatten(1)
    truth = exp.truth.flatten(1)
    peak_value = flat.amax(dim=1, keepdim=True)
    near = flat >= peak_value - 4 * exp.eps[:, None]
    at_peak = truth.gather(1, flat.argmax(dim=1, keepdim=True))
    return ~(near & (truth != at_peak)).any(dim=1)


def assert_matches(got, exp: Expected, threshold: float, dtype: torch.dtype, label: str = "") -> None:
    """Compare every field; on failure print the mismatching items."""
    soft_atol = DTYPE_TOLERANCE[dtype][2]
    ref = exp.scores
    problems = []
    assert torch.equal(got.invalid, exp.invalid), f"{label} invalid flags {got.invalid.tolist()} != {exp.invalid.tolist()}"
    for name in ("dice", "soft_dice", "roi_energy", "pointing_hit"):
        g, r = getattr(got, name), getattr(ref, name)
        assert g.dtype == torch.float32, f"{label} {name} is {g.dtype}"
        nan_mismatch = torch.isnan(g) != exp.blank
        for i in nan_mismatch.nonzero().flatten().tolist():
            problems.append(f"{name}[{i}] = {g[i].item()} but blank = {bool(exp.blank[i])}")
    live = ~exp.blank
    low, high = dice_bracket(exp, threshold)
    d = got.dice.double()
    bad = live & ((d < low - 1e-6) | (d > high + 1e-6))
    for i in bad.nonzero().flatten().tolist():
        problems.append(f"dice[{i}] = {d[i].item():.7f} outside [{low[i].item():.7f}, {high[i].item():.7f}] (ref {ref.dice[i].item():.7f})")
    for name in ("soft_dice", "roi_energy"):
        g, r = getattr(got, name).double(), getattr(ref, name).double()
        tol = soft_atol + 0.05 * exp.eps
        bad = live & ((g - r).abs() > tol)
        for i in bad.nonzero().flatten().tolist():
            problems.append(f"{name}[{i}] = {g[i].item():.7f}, ref {r[i].item():.7f}, tol {tol[i].item():.2e}")
    comparable = live & hit_comparable(exp)
    bad = comparable & (got.pointing_hit.double() != ref.pointing_hit.double())
    for i in bad.nonzero().flatten().tolist():
        problems.append(f"pointing_hit[{i}] = {got.pointing_hit[i].item()}, ref {ref.pointing_hit[i].item()}")
    assert not problems, f"{label}: {len(problems)} mismatch(es):\n  " + "\n  ".join(problems)


def random_case(
    batch: int, channels: int, h: int, w: int, dtype: torch.dtype, seed: int, *, signed: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded features ``[B, C, h, w]`` and weights ``[B, C]``, never zero-filled."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.rand(batch, channels, h, w, generator=gen) * 2 + 0.05
    if signed:
        features = features - 1.0
    weights = torch.randn(batch, channels, generator=gen).abs() + 0.1
    return features.to(dtype), weights.to(dtype)


def random_masks(batch: int, height: int, width: int, seed: int, fill: float = 0.35) -> torch.Tensor:
    """Blob-like masks (a random low-resolution field, thresholded): ROIs with real structure."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, max(1, height // 6), max(1, width // 6), generator=gen)
    field = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return field > torch.quantile(field.flatten(1), 1 - fill, dim=1)[:, None, None]


def random_boxes(batch: int, height: int, width: int, seed: int, most: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        n = int(torch.randint(1, most + 1, (1,), generator=gen))
        x0 = torch.rand(n, generator=gen) * width * 0.8 - 0.1 * width
        y0 = torch.rand(n, generator=gen) * height * 0.8 - 0.1 * height
        x1 = x0 + torch.rand(n, generator=gen) * width * 0.6 + 0.3
        y1 = y0 + torch.rand(n, generator=gen) * height * 0.6 + 0.3
        x0, y0 = x0.clamp_max(width - 0.25), y0.clamp_max(height - 0.25)
        x1, y1 = x1.clamp_min(0.25), y1.clamp_min(0.25)
        out.append(torch.stack([x0, y0, x1, y1], dim=1).double())
    return out
