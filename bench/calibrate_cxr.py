"""Calibrate the training protocol on ``cxr-sim`` by random sampling alone, on the validation split.

The criteria of the study (docs/results/study-cxr.md), measured on the benchmark's ``val`` split
(view and label independent, as in ``test``; the test split is never read here):

* **headroom:** a model trained with the ROI swap on 570 labels drawn uniformly at random from the
  pool ends between 0.60 and 0.80 balanced accuracy, so acquisition has something to find;
* **learnable:** the same recipe with the whole pool labelled reaches at least 0.90.

Each candidate protocol (architecture, width, augmentation preset, epochs; cosine schedule) is
trained once per budget with ``xal_core.train.fit`` exactly as the loop trains a round from scratch
(``xal_core.loop.training.train_config``: fp32, the recipe's settings), with the swap and without it
(``plain``), and scored on ``val``: balanced accuracy and AUROC, and the same for a view-only
reader (a logistic regression on the AP marker and the image's contrast) to show the confound is
there in the pool and gone in ``val``. Runs go to ``--workers`` processes with one torch thread
each. JSON to ``bench/results/cxr_calibration.json``.

    .venv/bin/python bench/calibrate_cxr.py                  # the grid below
    .venv/bin/python bench/calibrate_cxr.py --quick          # smoke run (numbers mean nothing)
    .venv/bin/python bench/calibrate_cxr.py --candidates smallcnn:16:intensity:20 --budgets 570
    .venv/bin/python bench/calibrate_cxr.py --pool 18000 --budgets 570,5000,18000   # a larger pool
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
from timing import cpu_name  # noqa: E402 - bench/timing.py (scripts run with bench/ on sys.path)

# RSNA drawing options a calibration may vary besides the opacity: each has a plural flag of values
DRAWING = {"density_floor": "density_floors", "size_compensation": "size_compensations", "mimics": "mimics"}
HEADROOM = (0.60, 0.80)  # balanced accuracy of random + swap at 570 labels, on val
LEARNABLE = 0.90  # balanced accuracy with the whole pool labelled, on val
# architecture:width:augment:epochs
GRID = ("smallcnn:8:intensity:20", "smallcnn:16:intensity:20", "smallcnn:8:noflip:20", "smallcnn:16:none:20",
        "resnet10:0:intensity:20")
FULL = dict(size=64, pool=5000, val=1000, budgets=(570, 5000), seed=0)
QUICK = dict(size=32, pool=120, val=60, budgets=(40,), seed=0)


def _split(split: str, n: int, size: int, seed: int, variant: str, opacity: float = 1.0,
           **drawing: float | None):
    """One split of the benchmark; ``drawing``: the RSNA options of ``DRAWING`` (None: the default)."""
    from xal_core.data import open_dataset

    extra = {"opacity": opacity} if opacity != 1.0 else {}
    extra.update({name: value for name, value in drawing.items() if value is not None})
    return open_dataset("cxr-sim", size=(size, size), n=n, split=split, seed=seed, variant=variant, **extra)


def _arrays(data):
    import numpy as np
    import torch

    images = torch.from_numpy(data.data.images[:, None].astype(np.float32))
    labels = torch.from_numpy(data.data.labels.astype(np.int64))
    return images, labels, torch.from_numpy(data.data.roi)


def run_one(job: dict) -> dict:
    """Train one model and score it on ``val`` (in a worker process)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from xal_core.loop.metrics import classification_metrics
    from xal_core.loop.recipe import TrainRecipe
    from xal_core.loop.training import train_config
    from xal_core.models import build_backbone
    from xal_core.train import fit
    from xal_core.train.roi_training import RoiTraining

    started = time.time()
    architecture, width, augment, epochs = job["candidate"].split(":")
    drawing = {name: job[name] for name in DRAWING if name in job}
    pool = _split("pool", job["pool"], job["size"], job["seed"], job["variant"], job["opacity"], **drawing)
    val = _split("val", job["val"], job["size"], job["seed"], job["variant"], job["opacity"], **drawing)
    images, labels, rois = _arrays(pool)
    chosen = np.random.default_rng([job["seed"], job["budget"], 7]).permutation(len(labels))[: job["budget"]]
    chosen = torch.from_numpy(np.sort(chosen))
    extra = {"smallcnn_width": int(width)} if architecture == "smallcnn" else {"output_stride": 16}
    recipe = TrainRecipe(architecture=architecture, epochs=int(epochs), schedule="cosine", augment=augment,
                         roi=RoiTraining(augment="swap" if job["training"] == "swap" else "none"), **extra)
    torch.manual_seed(job["seed"])
    backbone = build_backbone(recipe.backbone(1, len(pool.classes)))
    config = train_config(recipe, seed=job["seed"], device="cpu")
    result = fit(backbone, images[chosen], labels[chosen], config=config, class_names=pool.classes, progress=False,
                 rois=rois[chosen] if recipe.uses_rois else None)
    val_images, val_labels, _ = _arrays(val)
    preprocessing = result.checkpoint.preprocessing
    mean, std = preprocessing.mean[0], preprocessing.std[0]  # the checkpoint's own normalisation
    backbone.eval()
    with torch.no_grad():
        logits = torch.cat([backbone((part - mean) / std) for part in val_images.split(256)])
    metrics = classification_metrics(val_labels.numpy(), torch.softmax(logits, 1).numpy())
    return {**job, **{k: round(v, 4) for k, v in metrics.items()}, "seconds": round(time.time() - started, 1)}


def view_reader(size: int, pool_n: int, val_n: int, seed: int) -> dict:
    """Balanced accuracy of a reader that sees only the view (marker and contrast), pool vs val."""
    import numpy as np

    from xal_core.loop.metrics import classification_metrics

    out = {}
    pool = _split("pool", pool_n, size, seed, "rsna").data
    for name, data in (("pool", pool), ("val", _split("val", val_n, size, seed, "rsna").data)):
        p_pos = np.array([pool.labels[pool.view == v].mean() for v in (0, 1)])
        probs = p_pos[data.view]
        metrics = classification_metrics(data.labels, np.stack([1 - probs, probs], 1))
        out[name] = {k: round(v, 4) for k, v in metrics.items()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--candidates", default=",".join(GRID), help="architecture:width:augment:epochs,…")
    parser.add_argument("--budgets", default=None, help="label budgets, e.g. 570,5000")
    parser.add_argument("--trainings", default="swap,plain")
    parser.add_argument("--variant", default="rsna", choices=("rsna", "vindr"))
    parser.add_argument("--opacities", default="1.0", help="finding density factors to try, e.g. 0.3,0.5")
    parser.add_argument("--density-floors", default=None,
                        help="RSNA variant: faintest finding densities before the opacity, e.g. 0.25 (default 0.10)")
    parser.add_argument("--size-compensations", default=None,
                        help="RSNA variant: density boosts of small findings to try, e.g. 0.5,1 (default 0: none)")
    parser.add_argument("--mimics", default=None,
                        help="RSNA variant: mean finding mimics per image to try, e.g. 1,2 (default 0: none)")
    parser.add_argument("--size", type=int, default=None, help="frame side (default 64)")
    parser.add_argument("--pool", type=int, default=None,
                        help="pool items (default 5000; the RSNA pool holds ~18 700 patients, more repeat them); "
                             "the default budgets become 570 and the whole pool")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    setting = dict(QUICK if args.quick else FULL)
    if args.size:
        setting["size"] = args.size
    if args.pool:
        setting["pool"] = args.pool
        setting["budgets"] = (*[b for b in setting["budgets"] if b < args.pool], args.pool)
    budgets = tuple(int(b) for b in args.budgets.split(",")) if args.budgets else setting["budgets"]
    if max(budgets) > setting["pool"]:
        parser.error(f"--budgets: {max(budgets)} labels exceed the pool of {setting['pool']} items (--pool)")
    out = args.out or ROOT / "bench" / "results" / ("cxr_calibration-quick.json" if args.quick else "cxr_calibration.json")
    grids = [[(name, float(v)) for v in getattr(args, flag).split(",")] if getattr(args, flag) else [()]
             for name, flag in DRAWING.items()]
    jobs = [dict(candidate=c, budget=b, training=t, variant=args.variant, size=setting["size"], pool=setting["pool"],
                 val=setting["val"], seed=setting["seed"], opacity=float(o), **dict(p for p in picked if p))
            for picked in itertools.product(*grids)
            for o in args.opacities.split(",") for c in args.candidates.split(",")
            for b in sorted(budgets, reverse=True)  # the longest runs first: the workers end together
            for t in args.trainings.split(",")]
    if args.quick:
        jobs = [dict(job, candidate=job["candidate"].rsplit(":", 1)[0] + ":1") for job in jobs]
    results = []
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_one, job) for job in jobs]
        for future in as_completed(futures):
            row = future.result()
            results.append(row)
            floor = "".join(f" {name} {row[name]:g}" for name in DRAWING if name in row)
            print(f"opacity {row['opacity']:.2f}{floor} {row['candidate']:26s} {row['training']:5s} {row['budget']:5d} labels: balanced accuracy "
                  f"{row['balanced_accuracy']:.3f}  AUROC {row['auroc']:.3f}  ({row['seconds']} s)", flush=True)
    record = {"benchmark": f"cxr-sim-{args.variant}", "split_scored": "val", "when": datetime.now(UTC).isoformat(),
              "machine": cpu_name(), "criteria": {"headroom_570": HEADROOM,
              "learnable_full_pool": LEARNABLE}, "setting": {k: v for k, v in setting.items() if k != "budgets"},
              "view_reader": view_reader(setting["size"], setting["pool"], setting["val"], setting["seed"])
              if args.variant == "rsna" else None,
              "command": " ".join(["python", "bench/calibrate_cxr.py", *sys.argv[1:]]),
              "results": sorted(results, key=lambda r: (r["opacity"], r["candidate"], r["training"], r["budget"]))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"view-only reader: {record['view_reader']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
