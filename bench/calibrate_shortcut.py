"""Calibrate the synthetic shortcut benchmark on random sampling alone (docs/data.md).

The issue's criteria, for a setting ``(shortcut, contrast, noise)`` of ``ShortcutBenchmark``:

* **the shortcut bites:** a ResNet-18 trained on 570 labels drawn uniformly at random from the
  ``pool`` split scores at most 85 % on the ``test`` split (where the marker never agrees with the
  class), so the model still leans on the marker;
* **the lesion is learnable:** the same model trained on marker-free data (``shortcut = 0.5`` with
  two classes: the marker agrees with the class half the time, so it carries no information) with
  a generous budget (2 000 labels) scores at least 95 % on the ``test`` split.

The 170-label accuracy is measured as well (cheaply), to see how far below the ceiling a small
budget sits.

Training is ``xal_core.train.fit`` with its default settings (AdamW, class-weighted cross-entropy,
the default mild augmentations) except ``epochs`` (an upper bound) and ``patience`` (early stopping
on the benchmark's ``val`` split, drawn with the same ``shortcut`` as the pool, as an active
learner's labelled validation set would be). Seeds are fixed: the label draw, the initial weights and
``fit``'s seed. The marker-free run depends on ``(contrast, noise)`` only, so it runs once per pair.

Runs go to ``--workers`` processes (default 2), each with one torch thread (on this shared 2-core
host a second intra-op thread is slower than a second process). Results: a table on stdout and JSON
in ``bench/results/shortcut_calibration.json`` (``--quick``: a tiny smoke run, 32×32, a few labels,
one epoch, JSON to ``shortcut_calibration-quick.json``; its numbers mean nothing).

    .venv/bin/python bench/calibrate_shortcut.py            # the full grid, ~8 min on 2 cores
    .venv/bin/python bench/calibrate_shortcut.py --quick    # smoke run, seconds
    .venv/bin/python bench/calibrate_shortcut.py --pairs 0.12:0.05,0.13:0.05 --shortcuts 0.98,0.99 \
        --out bench/results/shortcut_calibration-round3.json      # another grid
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

SHORTCUT_MAX_ACCURACY = 0.85  # 570 random labels: test accuracy at most this
MARKER_FREE_MIN_ACCURACY = 0.95  # marker-free training: test accuracy at least this

FULL = dict(size=64, pool=20000, val=200, test=500, budgets=(170, 570), marker_free_labels=2000, epochs=12,
            marker_free_epochs=8, patience=3,
            pairs=((0.25, 0.03), (0.15, 0.05)),  # (contrast, noise): the current default and a harder one
            shortcuts=(0.9, 0.98))
QUICK = dict(size=32, pool=200, val=16, test=16, budgets=(8, 16), marker_free_labels=24, epochs=1,
             marker_free_epochs=1, patience=1, pairs=((0.25, 0.03),), shortcuts=(0.9,))


def _images(data, indices):
    import torch

    items = [data[int(i)] for i in indices]
    return torch.stack([item.image for item in items]), torch.tensor([item.label for item in items])


def run_one(job: dict) -> dict:
    """Train one model and score it on the test split (runs in a worker process)."""
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    from xal_core.data.shortcut import ShortcutBenchmark
    from xal_core.models import build_backbone
    from xal_core.train import TrainConfig, fit

    started = time.perf_counter()
    size, seed = (job["size"], job["size"]), job["seed"]
    common = dict(classes=2, contrast=job["contrast"], noise=job["noise"], seed=seed)
    pool = ShortcutBenchmark(size, n=job["pool"], split="pool", shortcut=job["train_shortcut"], **common)
    val = ShortcutBenchmark(size, n=job["val"], split="val", shortcut=job["train_shortcut"], **common)
    test = ShortcutBenchmark(size, n=job["test"], split="test", shortcut=job["train_shortcut"], **common)
    chosen = np.random.default_rng([seed, job["labels"]]).choice(job["pool"], size=job["labels"], replace=False)
    x, y = _images(pool, chosen)
    vx, vy = _images(val, range(job["val"]))
    tx, ty = _images(test, range(job["test"]))
    agrees = float(np.mean([pool[int(i)].meta["shortcut_agrees"] for i in chosen]))
    torch.manual_seed(seed)
    model = build_backbone("resnet18", 1, 2)
    config = TrainConfig(epochs=job["epochs"], patience=job["patience"], seed=seed, device="cpu")
    result = fit(model, x, y, config=config, val_data=vx, val_labels=vy, progress=False)
    with torch.inference_mode():
        mean = torch.tensor(result.checkpoint.preprocessing.mean)[:, None, None]
        std = torch.tensor(result.checkpoint.preprocessing.std)[:, None, None]
        predicted = torch.cat([result.model((tx[i:i + 128] - mean) / std).argmax(1) for i in range(0, len(tx), 128)])
    markers = torch.tensor([test[i].meta["marker_class"] for i in range(job["test"])])
    best = result.history[result.best_epoch - 1]
    return {
        "kind": job["kind"], "shortcut": job["shortcut"], "train_shortcut": job["train_shortcut"],
        "contrast": job["contrast"], "noise": job["noise"], "labels": job["labels"],
        "labels_marker_agrees": round(agrees, 4),
        "test_accuracy": round(float((predicted == ty).float().mean()), 4),
        "test_follows_marker": round(float((predicted == markers).float().mean()), 4),
        "val_accuracy": round(float(best.get("val_accuracy", float("nan"))), 4),
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "seconds": round(time.perf_counter() - started, 1),
    }


def jobs_for(plan: dict, seed: int, threads: int) -> list[dict]:
    base = dict(size=plan["size"], pool=plan["pool"], val=plan["val"], test=plan["test"], seed=seed,
                threads=threads, patience=plan["patience"])
    jobs = []
    for contrast, noise in plan["pairs"]:
        jobs.append(dict(base, kind="marker_free", shortcut=None, train_shortcut=0.5, contrast=contrast, noise=noise,
                         labels=plan["marker_free_labels"], epochs=plan["marker_free_epochs"]))
        for shortcut in plan["shortcuts"]:
            for labels in plan["budgets"]:
                jobs.append(dict(base, kind="random", shortcut=shortcut, train_shortcut=shortcut, contrast=contrast,
                                 noise=noise, labels=labels, epochs=plan["epochs"]))
    # the longest first, so the two workers finish together
    return sorted(jobs, key=lambda job: -job["labels"] * job["epochs"])


def summarise(plan: dict, runs: list[dict]) -> list[dict]:
    settings = []
    low, high = plan["budgets"]
    for contrast, noise in plan["pairs"]:
        free = next(r for r in runs if r["kind"] == "marker_free" and (r["contrast"], r["noise"]) == (contrast, noise))
        for shortcut in plan["shortcuts"]:
            acc = {r["labels"]: r["test_accuracy"] for r in runs
                   if r["kind"] == "random" and (r["shortcut"], r["contrast"], r["noise"]) == (shortcut, contrast, noise)}
            settings.append({
                "shortcut": shortcut, "contrast": contrast, "noise": noise,
                f"test_accuracy_{low}": acc[low], f"test_accuracy_{high}": acc[high],
                "marker_free_test_accuracy": free["test_accuracy"],
                "shortcut_bites": acc[high] <= SHORTCUT_MAX_ACCURACY,
                "lesion_learnable": free["test_accuracy"] >= MARKER_FREE_MIN_ACCURACY,
            })
            settings[-1]["meets_both"] = settings[-1]["shortcut_bites"] and settings[-1]["lesion_learnable"]
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (numbers mean nothing)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/…)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", default=None,
                        help="(contrast, noise) pairs to try instead of the default grid, e.g. 0.1:0.05,0.08:0.06")
    parser.add_argument("--shortcuts", default=None, help="shortcut values instead of the default grid, e.g. 0.98,0.99")
    args = parser.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    if args.pairs:
        plan["pairs"] = tuple(tuple(float(v) for v in pair.split(":")) for pair in args.pairs.split(","))
    if args.shortcuts:
        plan["shortcuts"] = tuple(float(v) for v in args.shortcuts.split(","))
    out = args.out or ROOT / "bench" / "results" / ("shortcut_calibration-quick.json" if args.quick
                                                     else "shortcut_calibration.json")
    jobs = jobs_for(plan, args.seed, args.threads)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    if args.workers <= 1:
        runs = [run_one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(args.workers) as executor:
            runs = list(executor.map(run_one, jobs))
    elapsed = time.perf_counter() - started
    settings = summarise(plan, runs)

    low, high = plan["budgets"]
    print(f"{'shortcut':>8} {'contrast':>8} {'noise':>6} {f'test@{low}':>9} {f'test@{high}':>9} "
          f"{'marker-free':>11}  meets")
    for s in settings:
        print(f"{s['shortcut']:>8} {s['contrast']:>8} {s['noise']:>6} {s[f'test_accuracy_{low}']:>9.3f} "
              f"{s[f'test_accuracy_{high}']:>9.3f} {s['marker_free_test_accuracy']:>11.3f}  {s['meets_both']}")
    print(f"{len(runs)} runs in {elapsed:.0f} s ({args.workers} workers × {args.threads} thread(s))")
    meeting = [s for s in settings if s["meets_both"]]
    report = {
        "benchmark": "shortcut_calibration", "quick": args.quick,
        "command": "python bench/calibrate_shortcut.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
        "cpu_count": os.cpu_count(), "load_average_at_start": round(load, 2),
        "workers": args.workers, "threads_per_worker": args.threads, "seed": args.seed,
        "criteria": {f"test_accuracy_{high}_max": SHORTCUT_MAX_ACCURACY,
                     "marker_free_test_accuracy_min": MARKER_FREE_MIN_ACCURACY},
        "plan": {key: value for key, value in plan.items()},
        "model": "resnet18, 1 input channel, 2 classes, random init",
        "train": "xal_core.train.fit, TrainConfig defaults except epochs/patience/seed; early stopping on the val split",
        "runs": runs, "settings": settings, "meeting_both": meeting, "seconds": round(elapsed, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
