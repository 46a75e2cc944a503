"""CPU throughput of CAM/ROI alignment: xal's separable path against a torch eager pipeline.

Providers, measured in the same run on the same inputs:

* ``xal-cpu`` — ``xal_core.scoring.cam_alignment`` (the separable path: no full-resolution map);
* ``torch-eager`` — the straightforward pipeline: einsum → ReLU → ``interpolate`` → min-max
  normalise → threshold → sums, in float32 over the whole batch (boxes rasterised to masks), as
  ``xal_core.scoring.reference.cam_alignment_dense`` writes it.

It prints a table of medians with the ratio against the eager pipeline, checks that the two agree
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
from timing import time_calls  # bench/timing.py (scripts run with bench/ on sys.path)

from xal_core.scoring import Roi, cam_alignment
from xal_core.scoring.reference import cam_alignment_dense

RESULTS = Path(__file__).resolve().parent / "results"


def make_inputs(batch: int, channels: int, grid: int, frame: int, roi_kind: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(batch, channels, grid, grid, generator=generator)
    weights = torch.randn(batch, channels, generator=generator) / channels
    if roi_kind == "mask":
        roi = Roi.from_masks(torch.rand(batch, frame, frame, generator=generator) < 0.25)
    else:
        corner = torch.rand(batch, 2, 2, generator=generator) * frame * 0.6
        size = (0.1 + 0.3 * torch.rand(batch, 2, 2, generator=generator)) * frame
        boxes = torch.cat([corner, corner + size], dim=2)
        roi = Roi.from_padded_boxes(boxes, torch.full((batch,), 2), size=(frame, frame))
    return features, weights, roi


def run_case(batch: int, channels: int, grid: int, frame: int, roi_kind: str, repeats: int) -> dict:
    features, weights, roi = make_inputs(batch, channels, grid, frame, roi_kind)
    providers = {
        "xal-cpu": lambda: cam_alignment(features, weights, roi),
        "torch-eager": lambda: cam_alignment_dense(features, weights, roi, dtype=torch.float32, chunk_size=batch, method="interpolate"),
    }
    timings = {name: time_calls(fn, repeats) for name, fn in providers.items()}
    ours = cam_alignment(features, weights, roi)
    exact = cam_alignment_dense(features, weights, roi, dtype=torch.float64)
    agreement = {
        "soft_dice_max_abs_diff": float((ours.soft_dice - exact.soft_dice).abs().max()),
        "roi_energy_max_abs_diff": float((ours.roi_energy - exact.roi_energy).abs().max()),
        "dice_max_abs_diff": float((ours.dice - exact.dice).abs().max()),
        "pointing_hit_mismatches": int((ours.pointing_hit != exact.pointing_hit).sum()),
    }
    medians = {name: statistics.median(t) for name, t in timings.items()}
    return {
        "case": {"B": batch, "C": channels, "h": grid, "w": grid, "H": frame, "W": frame, "roi": roi_kind},
        "median_s": medians,
        "images_per_s": {name: batch / m for name, m in medians.items()},
        "speedup_vs_torch_eager": medians["torch-eager"] / medians["xal-cpu"],
        "all_times_s": timings,
        "agreement_vs_float64_reference": agreement,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "scoring_cpu.json")
    args = parser.parse_args()
    batch, channels, grid, frame, repeats = (64, 64, 7, 112, 2) if args.quick else (512, 512, 7, 224, args.repeats)

    cases = [run_case(batch, channels, grid, frame, kind, repeats) for kind in ("mask", "boxes")]
    header = f"{'ROI':<6} {'provider':<12} {'median ms':>10} {'images/s':>10} {'ratio':>7}"
    print(f"B={batch} C={channels} h=w={grid} H=W={frame}, {torch.get_num_threads()} threads, median of {repeats}")
    print(header)
    print("-" * len(header))
    for case in cases:
        for name, median in case["median_s"].items():
            ratio = case["median_s"]["torch-eager"] / median
            print(f"{case['case']['roi']:<6} {name:<12} {median * 1e3:>10.1f} {batch / median:>10.0f} {ratio:>6.1f}×")
        a = case["agreement_vs_float64_reference"]
        print(
            f"{'':<6} agreement with float64 reference: soft Dice {a['soft_dice_max_abs_diff']:.1e}, "
            f"ROI energy {a['roi_energy_max_abs_diff']:.1e}, Dice {a['dice_max_abs_diff']:.1e}, "
            f"pointing mismatches {a['pointing_hit_mismatches']}"
        )
    record = {
        "benchmark": "scoring_cpu",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
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
