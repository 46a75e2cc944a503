"""Issue 14's quick measurement: does training with the expert's ROIs stop a model reading the marker?

One model per (training, augmentation, seed), no active learning: ``smallcnn`` trained on 570 random
labels of the calibrated synthetic shortcut benchmark (64², 2 classes, shortcut 0.99) for 20 epochs,
AdamW with a cosine-annealed learning rate (``schedule="cosine"``: no early stopping, no hold-out),
then evaluated on the benchmark's 500-item test split (marker never agrees with the class): test
accuracy, balanced accuracy, AUROC, CAM–ROI Dice (the loop's ``evaluate``, τ = 0.5).

The 570 labelled items are those ``xal run --seed S --initial 570`` acquires (same pool rows, same
weight initialisation and fit seed as its round 0), drawn from the generator directly instead of a
pool store (float32 images where the store keeps float16: not bit-identical to the CLI run).

Usage (one process; appends one JSON line per model to --out and skips models already there, so
an interrupted run continues)::

    python docs/results/roi_training_quick.py --arms plain,swap,dice --augment none --seeds 0,1 \\
        --out docs/results/roi_quick/results.jsonl
    python docs/results/roi_training_quick.py --table docs/results/roi_quick/results.jsonl

Arms: ``plain``; ``swap`` (donor of any class), ``swap-other`` (donor of another class); ``dice``,
``outside`` (ROI loss, α = 1). ``--augment default`` is ``fit``'s augmentation (what ``xal run``
trains with: flips, small affine, intensity jitter), ``none`` none. (``swap-blur`` and
``swap-noise`` in results.jsonl were measured with fills since removed from xal: roi_training.md.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from xal_core.data.shortcut import ShortcutBenchmark
from xal_core.loop.experiment import HeldOut
from xal_core.loop.metrics import evaluate
from xal_core.loop.seeds import derived_seed
from xal_core.models import ExplainableModel, build_backbone
from xal_core.train import Augment, RoiTraining, TrainConfig, fit

POOL, TEST, LABELS, SIZE = 5000, 500, 570, (64, 64)


def arm_options(arm: str) -> RoiTraining:
    if arm == "plain":
        return RoiTraining()
    if arm in ("dice", "outside"):
        return RoiTraining(loss=arm)
    if arm == "swap" or arm.startswith("swap-"):
        source = arm.split("-", 1)[1] if "-" in arm else "any"
        return RoiTraining(augment="swap", swap_source=source)
    raise ValueError(f"unknown arm {arm!r}")


def labelled_set(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, labels and ROI masks of the 570 pool items ``xal run --seed S --initial 570`` labels."""
    rows = np.random.default_rng(derived_seed("initial", seed)).choice(POOL, size=LABELS, replace=False)
    pool = ShortcutBenchmark(SIZE, n=POOL, split="pool")
    held = HeldOut.from_items([pool[int(i)] for i in rows], SIZE, 1)
    return held.images, held.labels, held.roi.to_masks()


def run_one(arm: str, augment: str, seed: int, test: HeldOut, epochs: int) -> dict:
    images, labels, rois = labelled_set(seed)
    torch.manual_seed(derived_seed("weights", seed, 0))
    backbone = build_backbone("smallcnn", 1, 2)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, schedule="cosine", seed=derived_seed("fit", seed, 0),
                         device="cpu", amp=False, augment=Augment() if augment == "default" else Augment.none(),
                         roi=arm_options(arm))
    started = time.perf_counter()
    result = fit(backbone, images, labels, config=config, rois=rois, progress=False)
    seconds = time.perf_counter() - started
    metrics = evaluate(ExplainableModel(result.model).eval(), test.images, test.labels, test.roi,
                       normalise=result.checkpoint.preprocessing)
    return {"arm": arm, "augment": augment, "seed": seed, "labels": LABELS, "epochs": epochs,
            "accuracy": metrics.accuracy, "balanced_accuracy": metrics.balanced_accuracy, "auroc": metrics.auroc,
            "cam_dice": metrics.cam_dice, "cam_soft_dice": metrics.cam_soft_dice,
            "roi_items": int(rois.flatten(1).any(1).sum()), "train_seconds": round(seconds, 1),
            "threads": torch.get_num_threads()}


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["| augment | arm | seed | accuracy | balanced acc. | AUROC | CAM Dice | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["augment"], r["arm"], r["seed"])):
        lines.append(f"| {r['augment']} | {r['arm']} | {r['seed']} | {r['accuracy']:.3f} | "
                     f"{r['balanced_accuracy']:.3f} | {r['auroc']:.3f} | {r['cam_dice']:.3f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="plain,swap,dice")
    parser.add_argument("--augment", choices=("default", "none"), default="none")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/results/roi_quick/results.jsonl"))
    parser.add_argument("--table", type=Path, default=None, help="print the Markdown table of a results file and exit")
    args = parser.parse_args()
    if args.table is not None:
        print(table(args.table))
        return
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.is_file():
        done = {(r["arm"], r["augment"], r["seed"], r["epochs"]) for r in map(json.loads, args.out.read_text().splitlines())}
    arms = args.arms.split(",")
    for arm in arms:
        arm_options(arm)  # an unknown arm fails before any training
    source = ShortcutBenchmark(SIZE, n=TEST, split="test")
    test = HeldOut.from_items([source[i] for i in range(len(source))], SIZE, 1)
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in arms:
            if (arm, args.augment, seed, args.epochs) in done:
                continue
            row = run_one(arm, args.augment, seed, test, args.epochs)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
