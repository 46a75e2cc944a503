"""Which pneumonia findings does a cxr-sim model miss, and is the view confound what holds it back?

The learnability question of issue 25 (docs/results/study-cxr.md): with the whole pool labelled the
calibrated recipe stops near 0.79 balanced accuracy on ``val``, and more epochs, a wider network and
a 96² frame do not move it. This trains the recipe once on ``--n`` items (one torch thread, as
``bench/calibrate_cxr.py`` does) and breaks ``val``'s sensitivity down by what each positive holds:

* its finding's mean signal inside the box (the image minus the same drawing at a vanishing opacity:
  every random draw is shared, so the difference is the finding alone);
* its box area in pixels;
* its view, and the specificity per view (a model that learned the pool's view prior is more
  sensitive on AP and less specific there).

``--train-split test`` trains on renderings of the test split's patients instead of the pool's:
view and label independent, so a ceiling that stays is not the confound's. The val split is scored
in every case; nothing here feeds a protocol choice for the study's test split.

    .venv/bin/python bench/cxr_misses.py --opacity 0.35 --density-floor 0.25
    .venv/bin/python bench/cxr_misses.py --opacity 0.4 --train-split test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import calibrate_cxr  # noqa: E402  (the same splits and arrays as the calibration)


def quartile_rates(values: np.ndarray, hits: np.ndarray) -> list[dict]:
    """Sensitivity in each quartile of ``values``."""
    edges = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        chosen = (values >= low) & (values <= high)
        rows.append({"from": round(float(low), 4), "to": round(float(high), 4), "items": int(chosen.sum()),
                     "sensitivity": round(float(hits[chosen].mean()), 3)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opacity", type=float, default=0.4)
    parser.add_argument("--density-floor", type=float, default=None)
    parser.add_argument("--size-compensation", type=float, default=None)
    parser.add_argument("--mimics", type=float, default=None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=5000, help="training items (the whole pool by default)")
    parser.add_argument("--train-split", choices=("pool", "test"), default="pool")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from xal_core.loop.metrics import classification_metrics
    from xal_core.loop.recipe import TrainRecipe
    from xal_core.loop.training import train_config
    from xal_core.models import build_backbone
    from xal_core.train import fit
    from xal_core.train.roi_training import RoiTraining

    def split(name: str, n: int, opacity: float):
        return calibrate_cxr._split(name, n, args.size, 0, "rsna", opacity, density_floor=args.density_floor,
                                    size_compensation=args.size_compensation, mimics=args.mimics)

    train, val = split(args.train_split, args.n, args.opacity), split("val", 1000, args.opacity)
    images, labels, rois = calibrate_cxr._arrays(train)
    recipe = TrainRecipe(architecture="smallcnn", smallcnn_width=args.width, epochs=args.epochs, schedule="cosine",
                         augment="intensity", roi=RoiTraining(augment="swap"))
    torch.manual_seed(0)
    backbone = build_backbone(recipe.backbone(1, len(train.classes)))
    started = time.time()
    result = fit(backbone, images, labels, config=train_config(recipe, seed=0, device="cpu"),
                 class_names=train.classes, progress=False, rois=rois)
    seconds = time.time() - started
    mean, std = result.checkpoint.preprocessing.mean[0], result.checkpoint.preprocessing.std[0]
    backbone.eval()

    def positive_probability(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([torch.softmax(backbone((part - mean) / std), 1) for part in batch.split(256)]).numpy()

    val_images, val_labels, _ = calibrate_cxr._arrays(val)
    probabilities = positive_probability(val_images)
    y, predicted = val_labels.numpy(), probabilities[:, 1] > 0.5
    data, bare = val.data, split("val", 1000, 1e-6).data  # the same drawings without the findings
    positive, negative = y == 1, y == 0
    finding = (data.images - bare.images)[positive]
    boxes = data.roi[positive]
    signal = np.array([finding[i][boxes[i]].mean() if boxes[i].any() else 0.0 for i in range(len(finding))])
    area = boxes.reshape(len(boxes), -1).sum(1)
    hits, view = predicted[positive], data.view.astype(bool)
    train_predicted = positive_probability(images)[:, 1] > 0.5
    record = {
        "command": " ".join(["python", "bench/cxr_misses.py", *sys.argv[1:]]),
        "setting": {k: v for k, v in vars(args).items() if k != "out"}, "fit_seconds": round(seconds, 1),
        "val": {k: round(v, 4) for k, v in classification_metrics(y, probabilities).items()},
        "val_sensitivity": round(float(hits.mean()), 3), "val_specificity": round(float(1 - predicted[negative].mean()), 3),
        "train_sensitivity": round(float(train_predicted[labels.numpy() == 1].mean()), 3),
        "sensitivity_by_signal": quartile_rates(signal, hits), "sensitivity_by_box_area": quartile_rates(area, hits),
        "by_view": {name: {"sensitivity": round(float(predicted[positive & (view == ap)].mean()), 3),
                           "specificity": round(float(1 - predicted[negative & (view == ap)].mean()), 3)}
                    for name, ap in (("AP", True), ("PA", False))},
    }
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
