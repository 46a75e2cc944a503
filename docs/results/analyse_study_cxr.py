"""Tables, paired comparisons and learning curves of the cxr-sim study (docs/results/study-cxr.md).

    python docs/results/analyse_study_cxr.py runs/study-cxr --out docs/results/study-cxr

Reads every arm folder of ``run_study_cxr.sh`` (``<strategy>-<training>-<roi source>-s<seed>``): its
``metrics.csv`` (test split), ``metrics_val.csv`` (validation split) and ``annotation_cost.csv``
(ROIs drawn). Writes ``analysis.json``, ``tables.md`` (printed too) and ``learning_curves.png``:

* per arm, mean and 95 % t-interval over seeds of test balanced accuracy, AUROC and CAM–ROI Dice
  at 90, 170, 330 and 570 labels, and the AULC of balanced accuracy over 50–570 labels (the
  curve's mean height); the same balanced accuracy on validation; the ROIs drawn at 570 labels;
* paired differences over the seeds two arms share (same initial labels and weights): balanced
  accuracy at 170 and 570 labels, AULC, AUROC at 570 labels and ROIs drawn, with how many seeds
  favour the first arm.

Balanced accuracy, not accuracy: a fifth of the images are positive. An arm that has not reached
570 labels is left out of every statistic and listed; so is a pair with fewer than two shared seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import learning_curves  # noqa: E402 - docs/results/learning_curves.py, beside this script
from learning_curves import fmt, plot_curves, summary  # noqa: E402

from xal_core.loop.report.stats import mean_ci  # noqa: E402

ARM = re.compile(r"^(?P<strategy>[a-z_]+)-(?P<training>[a-z]+)-(?P<source>expert|anatomy|none)-s(?P<seed>\d+)$")
METRICS = ("balanced_accuracy", "auroc", "cam_dice")
CHECKPOINTS = (90, 170, 330, 570)
FIRST, LAST, MIDDLE = 50, 570, 170
PAIRS = (  # first − second
    (("dual", "swap", "anatomy"), ("random", "swap", "anatomy")),
    (("entropy", "swap", "anatomy"), ("random", "swap", "anatomy")),
    (("dual", "swap", "expert"), ("random", "swap", "anatomy")),
    (("dual", "swap", "anatomy"), ("entropy", "swap", "anatomy")),
    (("dual", "swap", "expert"), ("dual", "swap", "anatomy")),
    (("random", "swap", "anatomy"), ("random", "plain", "anatomy")),
)


def _read(path: Path, columns: tuple[str, ...]) -> dict[int, dict[str, float]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {int(r["labels"]): {k: float(r[k]) for k in columns} for r in csv.DictReader(handle)}


def load(runs: Path) -> tuple[dict, list[str]]:
    """``{(strategy, training, source): {seed: {"test"|"val"|"cost": {labels: row}}}}`` and unfinished arms."""
    arms: dict = defaultdict(dict)
    unfinished = []
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        match = ARM.match(folder.name)
        if not match or not (folder / "metrics.csv").is_file():
            continue
        test = _read(folder / "metrics.csv", METRICS)
        if LAST not in test:
            unfinished.append(folder.name)
            continue
        arms[(match["strategy"], match["training"], match["source"])][int(match["seed"])] = {
            "test": test, "val": _read(folder / "metrics_val.csv", METRICS),
            "cost": _read(folder / "annotation_cost.csv", ("rois_drawn",))}
    return arms, unfinished


def aulc(curve: dict[int, dict], metric: str = "balanced_accuracy") -> float:
    return learning_curves.aulc(curve, metric, FIRST, LAST)


def name(key: tuple[str, str, str]) -> str:
    strategy, training, source = key
    return f"{strategy}+{training} ({source} ROIs)" if strategy != "random" else f"random+{training}"


def analyse(arms: dict) -> dict:
    out: dict = {"arms": {}, "pairs": []}
    for key, seeds in sorted(arms.items()):
        tests = [s["test"] for s in seeds.values()]
        entry = {"seeds": sorted(seeds), "aulc": summary(mean_ci(aulc(c) for c in tests)),
                 "at": {n: {m: summary(mean_ci(c[n][m] for c in tests if n in c)) for m in METRICS} for n in CHECKPOINTS},
                 "val_at_570": summary(mean_ci(s["val"][LAST]["balanced_accuracy"] for s in seeds.values()
                                               if LAST in s["val"])),
                 "rois_at_570": summary(mean_ci(s["cost"][LAST]["rois_drawn"] for s in seeds.values() if LAST in s["cost"])),
                 "curve": {n: {m: summary(mean_ci(c[n][m] for c in tests if n in c)) for m in ("balanced_accuracy", "cam_dice")}
                           for n in sorted({n for c in tests for n in c})}}
        out["arms"][name(key)] = entry
    for first, second in PAIRS:
        if first not in arms or second not in arms:
            continue
        shared = sorted(set(arms[first]) & set(arms[second]))
        if len(shared) < 2:
            continue
        a, b = arms[first], arms[second]

        def diff(values):
            values = list(values)
            return {**summary(mean_ci(values)), "ahead": sum(v > 0 for v in values)}

        out["pairs"].append({
            "first": name(first), "second": name(second), "seeds": shared,
            "at_170": diff(a[s]["test"][MIDDLE]["balanced_accuracy"] - b[s]["test"][MIDDLE]["balanced_accuracy"] for s in shared),
            "at_570": diff(a[s]["test"][LAST]["balanced_accuracy"] - b[s]["test"][LAST]["balanced_accuracy"] for s in shared),
            "aulc": diff(aulc(a[s]["test"]) - aulc(b[s]["test"]) for s in shared),
            "auroc_570": diff(a[s]["test"][LAST]["auroc"] - b[s]["test"][LAST]["auroc"] for s in shared),
            "rois_570": diff(a[s]["cost"].get(LAST, {}).get("rois_drawn", math.nan)
                             - b[s]["cost"].get(LAST, {}).get("rois_drawn", math.nan) for s in shared),
        })
    return out


def tables(result: dict) -> str:
    lines = []
    for metric in METRICS:
        lines += [f"**test {metric.replace('_', ' ')}** (mean ± 95 % CI over seeds)", "",
                  "| arm | seeds | " + " | ".join(f"{n} labels" for n in CHECKPOINTS) + " |",
                  "|---|---:|" + "---:|" * len(CHECKPOINTS)]
        for arm, e in result["arms"].items():
            lines.append(f"| {arm} | {len(e['seeds'])} | " + " | ".join(fmt(e["at"][n][metric]) for n in CHECKPOINTS) + " |")
        lines.append("")
    lines += ["**AULC** (test balanced accuracy, 50–570 labels), **validation** balanced accuracy at 570, "
              "**ROIs drawn** by 570 labels", "", "| arm | seeds | AULC | val at 570 | ROIs drawn |", "|---|---:|---:|---:|---:|"]
    for arm, e in result["arms"].items():
        lines.append(f"| {arm} | {len(e['seeds'])} | {fmt(e['aulc'])} | {fmt(e['val_at_570'])} | {fmt(e['rois_at_570'], 0)} |")
    lines += ["", "**Paired differences** (same seeds; first − second; test balanced accuracy; 95 % t-interval; "
              "ahead = seeds favouring the first)", "",
              "| first − second | seeds | at 170 | ahead | at 570 | ahead | AULC | ahead | AUROC at 570 | ahead | ROIs drawn |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in result["pairs"]:
        n = len(p["seeds"])
        lines.append(f"| {p['first']} − {p['second']} | {n} | {fmt(p['at_170'])} | {p['at_170']['ahead']}/{n} | "
                     f"{fmt(p['at_570'])} | {p['at_570']['ahead']}/{n} | {fmt(p['aulc'])} | {p['aulc']['ahead']}/{n} | "
                     f"{fmt(p['auroc_570'])} | {p['auroc_570']['ahead']}/{n} | {fmt(p['rois_570'], 0)} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plot_curves(result["arms"], ("balanced_accuracy", "cam_dice"), ("test balanced accuracy", "test CAM–ROI Dice"), path,
                style=lambda arm: "--" if "plain" in arm else "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/results/study-cxr"))
    args = parser.parse_args(argv)
    arms, unfinished = load(args.runs)
    result = analyse(arms)
    result["unfinished"] = unfinished
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    text = tables(result)
    (args.out / "tables.md").write_text(text)
    if result["arms"]:
        plot(result, args.out / "learning_curves.png")
    print(text)
    if unfinished:
        print(f"unfinished arms (left out): {', '.join(unfinished)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
