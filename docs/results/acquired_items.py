"""Which items each strategy acquired: class shares and scores of the picks, per arm and strategy.

    python docs/results/acquired_items.py runs/study-cxr-vindr --write-csv docs/results/study-cxr-vindr/arms \\
        --out docs/results/study-cxr-vindr/acquired.md

Why: the study's curves say *that* a strategy learns less per label than random sampling, not
*what* it asked the expert to label. The answer is in each arm's ledger: every acquired item, the
round it was picked in, its scores at that moment (uncertainty, CAM–ROI Dice) and the label the
expert gave. Round 0 (the initial labels, the same random draw for every strategy of a seed) is
left out: only the picks differ.

Reads each arm folder (``<strategy>-<training>-<roi source>-s<seed>``, as ``analyse_study_cxr.py``)
from its ``ledger.sqlite`` or, where the ledger is not kept, the ``acquisitions.csv`` that
``--write-csv`` writes beside the arm's metrics (520 rows an arm: small enough for git). Prints and
writes a markdown table: per strategy, the mean share of each class among the picks with its 95 %
t-interval over seeds, the picks' mean uncertainty and Dice, and per class the paired difference
from random sampling over the seeds both have.
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analyse_study_cxr import ARM  # noqa: E402 - the arm folders' names, beside this script
from learning_curves import fmt, summary  # noqa: E402 - docs/results/learning_curves.py

from xal_core.loop.report.stats import mean_ci  # noqa: E402

COLUMNS = ("round", "item_id", "label", "label_name", "uncertainty", "dice")


def from_ledger(path: Path) -> list[dict]:
    """The picks of rounds >= 1 with their labels, read-only (a ledger is never written here)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT a.round, a.item_id, n.label, n.label_name, a.uncertainty, a.dice FROM acquisitions a "
            "JOIN annotations n ON n.item_id = a.item_id WHERE a.round >= 1 ORDER BY a.round, a.rank").fetchall()
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def from_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{"round": int(r["round"]), "item_id": int(r["item_id"]), "label": int(r["label"]),
                 "label_name": r["label_name"],
                 "uncertainty": float(r["uncertainty"]) if r["uncertainty"] else None,
                 "dice": float(r["dice"]) if r["dice"] else None} for r in csv.DictReader(handle)]


def load(runs: Path) -> dict[tuple[str, str, str], dict[int, list[dict]]]:
    """``{(strategy, training, source): {seed: picks}}`` of every arm folder with a ledger or CSV."""
    arms: dict = defaultdict(dict)
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        match = ARM.match(folder.name)
        if not match:
            continue
        if (folder / "ledger.sqlite").is_file():
            picks = from_ledger(folder / "ledger.sqlite")
        elif (folder / "acquisitions.csv").is_file():
            picks = from_csv(folder / "acquisitions.csv")
        else:
            continue
        arms[(match["strategy"], match["training"], match["source"])][int(match["seed"])] = picks
    return arms


def write_csv(picks: list[dict], path: Path) -> None:
    """Whole file or nothing: written beside ``path`` and renamed over it."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(picks)
    partial.replace(path)


def shares(picks: list[dict], classes: list[str]) -> dict[str, float]:
    return {name: sum(p["label_name"] == name for p in picks) / len(picks) for name in classes}


def table(arms: dict) -> str:
    classes = sorted({p["label_name"] for seeds in arms.values() for picks in seeds.values() for p in picks})
    lines = ["**Class shares of the acquired items** (rounds 1–13; mean ± 95 % CI over seeds)", "",
             "| arm | seeds | " + " | ".join(classes) + " | mean uncertainty | mean Dice at pick |",
             "|---|---:|" + "---:|" * (len(classes) + 2)]
    per_seed = {key: {seed: shares(picks, classes) for seed, picks in seeds.items()} for key, seeds in arms.items()}
    for key, seeds in sorted(arms.items()):
        cells = [fmt(summary(mean_ci(per_seed[key][s][name] for s in seeds))) for name in classes]
        means = [fmt(summary(mean_ci(sum(v) / len(v) for picks in seeds.values()
                                     if (v := [p[column] for p in picks if p[column] is not None]))))
                 for column in ("uncertainty", "dice")]
        lines.append(f"| {'+'.join(key[:2])} ({key[2]}) | {len(seeds)} | " + " | ".join(cells + means) + " |")
    random = next((key for key in arms if key[0] == "random"), None)
    if random is not None:
        lines += ["", "**Paired difference from random sampling** (share of each class among the picks; same seeds)", "",
                  "| arm − random | seeds | " + " | ".join(classes) + " |", "|---|---:|" + "---:|" * len(classes)]
        for key in sorted(k for k in arms if k != random):
            shared = sorted(set(arms[key]) & set(arms[random]))
            if len(shared) < 2:
                continue
            cells = [fmt(summary(mean_ci(per_seed[key][s][name] - per_seed[random][s][name] for s in shared)))
                     for name in classes]
            lines.append(f"| {'+'.join(key[:2])} ({key[2]}) | {len(shared)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="a folder of arm folders")
    parser.add_argument("--write-csv", type=Path, default=None, metavar="ARMS",
                        help="also write each arm's picks as ARMS/<arm>/acquisitions.csv (arms read from a ledger)")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too (markdown)")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        parser.error(f"{args.runs}: not a folder")
    arms = load(args.runs)
    if not arms:
        parser.error(f"{args.runs}: no arm folder with a ledger.sqlite or acquisitions.csv")
    if args.write_csv is not None:
        for (strategy, training, source), seeds in arms.items():
            for seed, picks in seeds.items():
                folder = args.write_csv / f"{strategy}-{training}-{source}-s{seed}"
                if folder.is_dir():
                    write_csv(picks, folder / "acquisitions.csv")
    text = table(arms)
    if args.out is not None:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
