"""CPU throughput of CAM/ROI alignment: xal's two CPU paths against a torch eager pipeline.

Providers, measured in the same run on the same inputs:

* ``xal-numba`` — ``xal_kernels.cpu_alignment.cam_alignment``, the compiled kernel that
  ``xal_kernels`` routes CPU tensors to (run with ``torch.get_num_threads()`` threads);
* ``xal-separable`` — ``xal_core.scoring.cam_alignment`` (the separable torch path: no
  full-resolution map; ``XAL_KERNELS=torch``);
* ``torch-eager`` — the straightforward pipeline: einsum → ReLU → ``interpolate`` → min-max
  normalise → threshold → sums, in float32 over the whole batch (boxes rasterised to masks), as
  ``xal_core.scoring.reference.cam_alignment_dense`` writes it.

Cases: 512 images (512×7×7 → 224², mask and box ROIs), the service's inline ``ScoreBatch``
batch (64 images, masks), and 512 float64 images (masks), where every path meets the float64
contract (the separable path's rows run in float64 there: docs/scoring.md, "Precision"). It prints a table of medians with the ratio against the eager pipeline,
checks that xal's paths agree with the float64 reference
(soft metrics to 1e-5; hard Dice only through pixels at the threshold), and writes JSON to
``bench/results/scoring_cpu.json``. Run: ``python bench/scoring_cpu.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path

import torch
from timing import cpu_name, time_calls  # bench/timing.py (scripts run with bench/ on sys.path)

from xal_core.scoring import Roi, cam_alignment
from xal_core.scoring.reference import cam_alignment_dense
from xal_kernels import cpu_alignment

RESULTS = Path(__file__).resolve().parent / "results"


def make_inputs(batch: int, channels: int, grid: int, frame: int, roi_kind: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(batch, channels, grid, grid, generator=generator).to(dtype)
    weights = (torch.randn(batch, channels, generator=generator) / channels).to(dtype)
    if roi_kind == "mask":
        roi = Roi.from_masks(torch.rand(batch, frame, frame, generator=generator) < 0.25)
    else:
        corner = torch.rand(batch, 2, 2, generator=generator) * frame * 0.6
        size = (0.1 + 0.3 * torch.rand(batch, 2, 2, generator=generator)) * frame
        boxes = torch.cat([corner, corner + size], dim=2)
        roi = Roi.from_padded_boxes(boxes, torch.full((batch,), 2), size=(frame, frame))
    return features, weights, roi


def run_case(batch: int, channels: int, grid: int, frame: int, roi_kind: str, repeats: int,
             dtype: torch.dtype = torch.float32) -> dict:
    features, weights, roi = make_inputs(batch, channels, grid, frame, roi_kind, dtype)
    ours = {
        "xal-numba": lambda: cpu_alignment.cam_alignment(features, weights, roi),
        "xal-separable": lambda: cam_alignment(features, weights, roi),
    }
    providers = {
        **ours,
        "torch-eager": lambda: cam_alignment_dense(features, weights, roi, dtype=torch.float32, chunk_size=batch, method="interpolate"),
    }
    timings = {name: time_calls(fn, repeats) for name, fn in providers.items()}
    exact = cam_alignment_dense(features, weights, roi, dtype=torch.float64)
    agreement = {}
    for name, fn in ours.items():
        got = fn()
        agreement[name] = {
            "soft_dice_max_abs_diff": float((got.soft_dice - exact.soft_dice).abs().max()),
            "roi_energy_max_abs_diff": float((got.roi_energy - exact.roi_energy).abs().max()),
            "dice_max_abs_diff": float((got.dice - exact.dice).abs().max()),
            "pointing_hit_mismatches": int((got.pointing_hit != exact.pointing_hit).sum()),
        }
    medians = {name: statistics.median(t) for name, t in timings.items()}
    return {
        "case": {"B": batch, "C": channels, "h": grid, "w": grid, "H": frame, "W": frame, "roi": roi_kind,
                 "dtype": str(dtype).removeprefix("torch.")},
        "median_s": medians,
        "images_per_s": {name: batch / m for name, m in medians.items()},
        "speedup_vs_torch_eager": {name: medians["torch-eager"] / medians[name] for name in ours},
        "numba_vs_separable": medians["xal-separable"] / medians["xal-numba"],
        "all_times_s": timings,
        "agreement_vs_float64_reference": agreement,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "scoring_cpu.json")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    # (batch, channels, grid, frame, roi): the pool-chunk sizes, then the service's inline batch.
    shapes = [(64, 64, 7, 112, "mask"), (64, 64, 7, 112, "boxes")] if args.quick else [
        (512, 512, 7, 224, "mask"), (512, 512, 7, 224, "boxes"), (64, 512, 7, 224, "mask")]
    cases = [run_case(*shape, repeats) for shape in shapes]
    if not args.quick:
        cases.append(run_case(512, 512, 7, 224, "mask", repeats, torch.float64))
    header = f"{'case':<26} {'provider':<14} {'median ms':>10} {'images/s':>10} {'vs eager':>9}"
    print(f"{torch.get_num_threads()} threads, median of {repeats}; ratio = torch-eager time / provider time")
    print(header)
    print("-" * len(header))
    for case in cases:
        c = case["case"]
        label = f"B={c['B']} C={c['C']} {c['H']}² {c['roi']}" + (" f64" if c["dtype"] == "float64" else "")
        for name, median in case["median_s"].items():
            ratio = case["median_s"]["torch-eager"] / median
            print(f"{label:<26} {name:<14} {median * 1e3:>10.2f} {c['B'] / median:>10.0f} {ratio:>8.1f}×")
        print(f"{'':<26} xal-numba is {case['numba_vs_separable']:.1f}× the separable path")
        for name, a in case["agreement_vs_float64_reference"].items():
            print(
                f"{'':<26} {name} vs float64 reference: soft Dice {a['soft_dice_max_abs_diff']:.1e}, "
                f"ROI energy {a['roi_energy_max_abs_diff']:.1e}, Dice {a['dice_max_abs_diff']:.1e}, "
                f"pointing mismatches {a['pointing_hit_mismatches']}"
            )
    record = {
        "benchmark": "scoring_cpu",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "processor": cpu_name(),
            "cpu_count": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "quick": args.quick,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
