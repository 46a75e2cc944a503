"""Tables, paired comparisons and learning curves of the issue-14 study (docs/results/study.md).

    python docs/results/analyse_study.py runs/study --out docs/results/study

Reads every arm folder of ``run_study.sh`` (``<strategy>-<training>-l<λ>-s<seed>``: its
``metrics.csv`` rows), and writes ``analysis.json``, ``learning_curves.png`` and ``tables.md``
(printed too), with, per arm (strategy × training × λ, mean and 95 % t-interval over seeds):

* test accuracy, balanced accuracy, AUROC and CAM–ROI Dice at 90, 170, 330 and 570 labels;
* the area under the learning curve (AULC): the trapezoid integral of accuracy over the label count
  from 50 to 570, divided by 520, i.e. the curve's mean height in accuracy points;
* stability: the mean absolute change of test accuracy between consecutive rounds once the arm has
  250 labels or more (the issue's target: <= 0.05);

and paired differences over the seeds two arms share (same initial labels and weights): accuracy
at 570 labels and AULC, mean and 95 % t-interval of the per-seed differences, and how many seeds
favour the first arm. Arms with fewer rounds than the protocol (an unfinished run) are left out of
every statistic and listed.
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

ARM = re.compile(r"^(?P<strategy>[a-z_]+)-(?P<training>[a-z]+)-l(?P<lam>[0-9.]+)-s(?P<seed>\d+)$")
METRICS = ("accuracy", "balanced_accuracy", "auroc", "cam_dice")
CHECKPOINTS = (90, 170, 330, 570)
FIRST, LAST = 50, 570
STABLE_FROM = 250
MIDDLE = 170  # a paired checkpoint before the well-trained arms saturate
PAIRS = (  # (first arm, second arm): first − second
    (("dual", "best", "0.5"), ("random", "best", "0.5")),
    (("entropy", "best", "0.5"), ("random", "best", "0.5")),
    (("dual", "best", "0.5"), ("random", "plain", "0.5")),
    (("random", "best", "0.5"), ("random", "plain", "0.5")),
    (("dual", "best", "0.5"), ("entropy", "best", "0.5")),
    (("dual", "plain", "0.5"), ("random", "plain", "0.5")),
    (("entropy", "plain", "0.5"), ("random", "plain", "0.5")),
    (("dual", "plain", "0.5"), ("entropy", "plain", "0.5")),
    (("dual", "best", "0.5"), ("dual", "plain", "0.5")),
    (("dual", "dice", "0.5"), ("random", "dice", "0.5")),
    (("entropy", "dice", "0.5"), ("random", "dice", "0.5")),
    (("dual", "dice", "0.5"), ("entropy", "dice", "0.5")),
    # the λ sweep of dual with the best training (λ = 1 would be entropy alone)
    (("dual", "best", "0.25"), ("random", "best", "0.5")),
    (("dual", "best", "0.75"), ("random", "best", "0.5")),
    (("dual", "best", "0.25"), ("dual", "best", "0.5")),
    (("dual", "best", "0.75"), ("dual", "best", "0.5")),
)


def load(runs: Path) -> tuple[dict, list[str]]:
    """``{(strategy, training, λ): {seed: {labels: row}}}`` of finished arms, and the unfinished ones."""
    arms: dict = defaultdict(dict)
    unfinished = []
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        match = ARM.match(folder.name)
        if not match or not (folder / "metrics.csv").is_file():
            continue
        with open(folder / "metrics.csv", newline="") as handle:
            rows = {int(r["labels"]): {k: float(r[k]) for k in METRICS} for r in csv.DictReader(handle)}
        if LAST not in rows:
            unfinished.append(folder.name)
            continue
        key = (match["strategy"], match["training"], match["lam"])
        arms[key][int(match["seed"])] = rows
    return arms, unfinished


def aulc(curve: dict[int, dict]) -> float:
    """Mean height of the accuracy curve over [50, 570] labels (trapezoids)."""
    return learning_curves.aulc(curve, "accuracy", FIRST, LAST)


def swing(curve: dict[int, dict]) -> float:
    labels = sorted(n for n in curve if n >= STABLE_FROM)
    steps = [abs(curve[b]["accuracy"] - curve[a]["accuracy"]) for a, b in zip(labels, labels[1:], strict=False)]
    return sum(steps) / len(steps) if steps else math.nan


def arm_name(key: tuple[str, str, str]) -> str:
    strategy, training, lam = key
    return f"{strategy}+{training}" + ("" if lam == "0.5" else f" (λ {lam})")


def analyse(arms: dict, best: str) -> dict:
    out: dict = {"best_training": best, "arms": {}, "pairs": []}
    for key, seeds in sorted(arms.items()):
        entry = {"seeds": sorted(seeds), "at": {}, "aulc": summary(mean_ci(aulc(c) for c in seeds.values())),
                 "swing_after_250": summary(mean_ci(swing(c) for c in seeds.values()))}
        for labels in CHECKPOINTS:
            entry["at"][labels] = {m: summary(mean_ci(c[labels][m] for c in seeds.values() if labels in c)) for m in METRICS}
        labels_all = sorted({n for c in seeds.values() for n in c})
        entry["curve"] = {n: {m: summary(mean_ci(c[n][m] for c in seeds.values() if n in c)) for m in ("accuracy", "cam_dice")}
                          for n in labels_all}
        out["arms"][arm_name(key)] = entry
    for first, second in PAIRS:
        a = tuple(best if part == "best" else part for part in first)
        b = tuple(best if part == "best" else part for part in second)
        if a == b or a not in arms or b not in arms:
            continue
        shared = sorted(set(arms[a]) & set(arms[b]))
        if len(shared) < 2:
            continue
        final = [arms[a][s][LAST]["accuracy"] - arms[b][s][LAST]["accuracy"] for s in shared]
        middle = [arms[a][s][MIDDLE]["accuracy"] - arms[b][s][MIDDLE]["accuracy"] for s in shared]
        area = [aulc(arms[a][s]) - aulc(arms[b][s]) for s in shared]
        out["pairs"].append({
            "first": arm_name(a), "second": arm_name(b), "seeds": shared,
            "accuracy_570": summary(mean_ci(final)), "aulc": summary(mean_ci(area)),
            "accuracy_170": summary(mean_ci(middle)), "first_ahead_170": sum(d > 0 for d in middle),
            "first_ahead_570": sum(d > 0 for d in final), "first_ahead_aulc": sum(d > 0 for d in area),
        })
    reference = out["arms"].get(arm_name(("random", best, "0.5")))
    if reference:
        target = reference["at"][LAST]["accuracy"]["mean"]
        out["labels_to_reach_random_best_at_570"] = {
            name: next((n for n in sorted(e["curve"]) if e["curve"][n]["accuracy"]["mean"] >= target), None)
            for name, e in out["arms"].items()
        }
    return out


def tables(result: dict) -> str:
    lines = [f"Best training on random sampling: **{result['best_training']}**.", ""]
    for metric in METRICS:
        lines += [f"**{metric.replace('_', ' ')}** (mean ± 95 % CI over seeds)", "",
                  "| arm | seeds | " + " | ".join(f"{n} labels" for n in CHECKPOINTS) + (" | AULC |" if metric == "accuracy" else " |"),
                  "|---|---:|" + "---:|" * len(CHECKPOINTS) + ("---:|" if metric == "accuracy" else "")]
        for name, e in result["arms"].items():
            cells = [fmt(e["at"][n][metric]) for n in CHECKPOINTS]
            extra = f" {fmt(e['aulc'])} |" if metric == "accuracy" else ""
            lines.append(f"| {name} | {len(e['seeds'])} | " + " | ".join(cells) + " |" + extra)
        lines.append("")
    lines += ["**Stability**: mean |Δ accuracy| between consecutive rounds from 250 labels (target <= 0.05)", "",
              "| arm | swing |", "|---|---:|"]
    lines += [f"| {name} | {fmt(e['swing_after_250'])} |" for name, e in result["arms"].items()]
    lines += ["", "**Paired differences** (same seeds; first − second; 95 % t-interval)", "",
              "| first − second | seeds | accuracy at 170 | first ahead | accuracy at 570 | first ahead | AULC | first ahead |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in result["pairs"]:
        n = len(p["seeds"])
        lines.append(f"| {p['first']} − {p['second']} | {n} | {fmt(p['accuracy_170'])} | {p['first_ahead_170']}/{n} | "
                     f"{fmt(p['accuracy_570'])} | {p['first_ahead_570']}/{n} | "
                     f"{fmt(p['aulc'])} | {p['first_ahead_aulc']}/{n} |")
    if "labels_to_reach_random_best_at_570" in result:
        lines += ["", "**Labels to reach random+best's mean accuracy at 570** (mean curve; — = never)", "",
                  "| arm | labels |", "|---|---:|"]
        lines += [f"| {name} | {n if n is not None else '—'} |" for name, n in result["labels_to_reach_random_best_at_570"].items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    def style(arm: str) -> str:
        return "-" if "best" in arm or result["best_training"] in arm else ("--" if "plain" in arm else ":")

    arms = {arm: entry for arm, entry in result["arms"].items() if "λ" not in arm}
    plot_curves(arms, ("accuracy", "cam_dice"), ("test accuracy", "test CAM–ROI Dice"), path, style=style, legend_columns=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/results/study"))
    parser.add_argument("--best", default=None, help="the best training (default: highest random AULC)")
    args = parser.parse_args(argv)
    arms, unfinished = load(args.runs)
    best = args.best or max((k for k in arms if k[0] == "random" and k[2] == "0.5"),
                            key=lambda k: sum(aulc(c) for c in arms[k].values()) / len(arms[k]), default=("", "swap", ""))[1]
    result = analyse(arms, best)
    result["unfinished"] = unfinished
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    text = tables(result)
    (args.out / "tables.md").write_text(text)
    plot(result, args.out / "learning_curves.png")
    print(text)
    if unfinished:
        print(f"unfinished arms (left out): {', '.join(unfinished)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
