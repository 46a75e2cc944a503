"""Which misalignment measure fits an *anatomy* ROI? Measured on ``cxr-sim``'s validation split.

Against the expert's ROI the contract's misalignment is ``1 − Dice(CAM ≥ τ, ROI)``. Against an
anatomy mask (the lung fields) the question changes: the finding is a small part of the lungs, so a
CAM that sits exactly on the finding still has a low Dice with the whole lungs, and what signals a
model looking at the wrong thing is attention *outside* the anatomy (the AP marker, the heart, the
border). Candidates, each from the same ``cam_alignment`` call against the lungs:

* ``dice``: ``1 − Dice`` (the contract's measure, anatomy in place of the expert ROI);
* ``energy``: ``1 − ROI energy``, the share of the CAM's mass outside the lungs;
* ``pointing``: ``1 − pointing hit`` (the CAM's peak outside the lungs).

Each is judged, for models trained on 570 random labels (plain and with the swap), by how well it
does what the dual criterion asks of it, on ``val`` items:

* ``auroc_error``: AUROC of the measure for the model's misclassified items (an acquisition
  criterion should rank what the model gets wrong first);
* ``spearman_expert``: on positive items (which have an expert ROI), Spearman correlation with
  the expert misalignment ``1 − Dice(CAM, expert ROI)``, the paper's oracle quantity that a
  deployment cannot compute — how good a stand-in the anatomy measure is;
* ``auroc_marker``: on AP items, AUROC for the CAM's peak lying on the burned-in marker.

JSON to ``bench/results/misalignment_measures.json``.

    .venv/bin/python bench/misalignment_measures.py --opacity 0.4
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_name  # noqa: E402 - bench/timing.py (scripts run with bench/ on sys.path)

MEASURES = ("dice", "energy", "pointing")


def _spearman(a, b) -> float:
    import numpy as np

    from xal_core.loop.metrics import _average_ranks

    ra, rb = _average_ranks(np.asarray(a, float)), _average_ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))


def measure(job: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from calibrate_cxr import _arrays, _split

    from xal_core.loop.metrics import auroc
    from xal_core.loop.recipe import TrainRecipe
    from xal_core.loop.training import train_config
    from xal_core.models import build_backbone
    from xal_core.models.explainable import ExplainableModel
    from xal_core.scoring import Roi, cam_alignment
    from xal_core.train import fit
    from xal_core.train.roi_training import RoiTraining

    pool = _split("pool", job["pool"], job["size"], job["seed"], "rsna", job["opacity"])
    val = _split("val", job["val"], job["size"], job["seed"], "rsna", job["opacity"])
    images, labels, rois = _arrays(pool)
    chosen = torch.from_numpy(np.sort(np.random.default_rng([job["seed"], 570, 7]).permutation(len(labels))[:570]))
    recipe = TrainRecipe(architecture="smallcnn", smallcnn_width=job["width"], epochs=20, schedule="cosine",
                         augment=job["augment"], roi=RoiTraining(augment="swap" if job["training"] == "swap" else "none"))
    torch.manual_seed(job["seed"])
    backbone = build_backbone(recipe.backbone(1, 2))
    result = fit(backbone, images[chosen], labels[chosen], config=train_config(recipe, seed=job["seed"], device="cpu"),
                 class_names=pool.classes, progress=False, rois=rois[chosen] if recipe.uses_rois else None)
    mean, std = result.checkpoint.preprocessing.mean[0], result.checkpoint.preprocessing.std[0]
    model = ExplainableModel(backbone).eval()
    data = val.data
    val_images = torch.from_numpy(data.images[:, None].astype(np.float32))
    logits, features, weights = [], [], []
    with torch.no_grad():
        for part in val_images.split(256):
            z, f, w = model((part - mean) / std)
            logits.append(z), features.append(f), weights.append(w)
    logits, features, weights = torch.cat(logits), torch.cat(features), torch.cat(weights)
    predicted = logits.argmax(1).numpy()
    wrong = predicted != data.labels
    lungs = cam_alignment(features, weights, Roi.from_masks(torch.from_numpy(data.anatomy)))
    expert = cam_alignment(features, weights, Roi.from_masks(torch.from_numpy(data.roi)))
    marker = cam_alignment(features, weights, Roi.from_masks(torch.from_numpy(data.marker)))
    values = {"dice": 1 - lungs.dice.numpy(), "energy": 1 - lungs.roi_energy.numpy(),
              "pointing": 1 - lungs.pointing_hit.numpy()}
    positive = data.labels == 1
    ap = data.view == 1
    on_marker = marker.pointing_hit.numpy() == 1
    rows = {}
    for name, m in values.items():
        rows[name] = {
            "auroc_error": round(auroc(wrong, m), 4),
            "spearman_expert": round(_spearman(m[positive], 1 - expert.dice.numpy()[positive]), 4),
            "auroc_marker": round(auroc(on_marker[ap], m[ap]), 4) if on_marker[ap].any() and (~on_marker[ap]).any() else None,
            "mean": round(float(np.nanmean(m)), 4),
        }
    return {**job, "val_error_rate": round(float(wrong.mean()), 4), "cam_peak_on_marker_ap": round(float(on_marker[ap].mean()), 4),
            "measures": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opacity", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--augment", default="intensity")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "misalignment_measures.json")
    args = parser.parse_args()
    jobs = [dict(training=t, seed=int(s), opacity=args.opacity, width=args.width, augment=args.augment, size=64,
                 pool=5000, val=1000) for s in args.seeds.split(",") for t in ("plain", "swap")]
    with ProcessPoolExecutor(max_workers=2) as executor:
        results = list(executor.map(measure, jobs))
    for row in results:
        print(f"{row['training']:5s} seed {row['seed']}: val error {row['val_error_rate']:.3f}, CAM peak on marker "
              f"(AP) {row['cam_peak_on_marker_ap']:.3f}")
        for name, m in row["measures"].items():
            print(f"    {name:8s} AUROC(error) {m['auroc_error']:.3f}  Spearman(expert) {m['spearman_expert']:+.3f}  "
                  f"AUROC(marker peak) {m['auroc_marker']}")
    record = {"benchmark": "cxr-sim-rsna", "split_scored": "val", "when": datetime.now(UTC).isoformat(),
              "machine": cpu_name(),
              "command": " ".join(["python", "bench/misalignment_measures.py", *sys.argv[1:]]), "results": results}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
