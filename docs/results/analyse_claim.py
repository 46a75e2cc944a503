"""Why did (or didn't) a strategy beat random? Diagnostics from the run folders' ledgers.

    python docs/results/analyse_claim.py RUN_DIR [RUN_DIR ...] --out docs/results/claim_analysis.json

For each strategy (over every seed and round after the initial labels):

* ``counterexamples``: the share of acquired items whose marker *disagrees* with their class. On
  the shortcut benchmark these are the only pool items that contradict the marker; a strategy that
  helps the model drop the shortcut must find them more often than random sampling does (the pool
  holds ``1 − shortcut`` of them, 1 % at the calibrated default);
* ``dice_at_selection``: mean and standard deviation of the CAM–ROI Dice of the acquired items, as
  the ledger recorded it when they were selected; a spread near zero means misalignment carried no
  ranking signal (every item looked equally misaligned);
* ``overlap_with``: for each pair of strategies of the same seed and round, the Jaccard overlap of
  their acquisitions (only comparable where the two arms' models coincide, i.e. round 1);
* ``lesion_area`` and ``class_shares``: the acquired items' mean ROI area (share of the frame) and
  their classes, next to the pool's (``pool_lesion_area_estimate``, ``pool_class_shares_estimate``):
  whether a strategy favours small, hard-to-see lesions or one class;
* ``accuracy_swing``: mean absolute change of test accuracy between consecutive rounds of an arm,
  a measure of how unstable training is at these label counts.

The marker's agreement is recomputed from the benchmark (deterministic in its seed), not read
from any label the strategies saw.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
from collections import Counter, defaultdict
from pathlib import Path


def _arm_rows(run: Path):
    db = sqlite3.connect(f"file:{run / 'ledger.sqlite'}?mode=ro", uri=True)
    arms = {arm_id: (strategy, seed) for arm_id, strategy, seed in db.execute("SELECT arm_id, strategy, seed FROM arms")}
    acquisitions = defaultdict(list)
    for arm_id, round, item, dice in db.execute("SELECT arm_id, round, item_id, dice FROM acquisitions"):
        acquisitions[arms[arm_id]].append((round, item, dice))
    accuracy = defaultdict(dict)
    for arm_id, round, metrics in db.execute("SELECT arm_id, round, metrics FROM rounds"):
        accuracy[arms[arm_id]][round] = json.loads(metrics)["accuracy"]
    (config,) = db.execute("SELECT value FROM meta WHERE key = 'run_config'").fetchone()
    return acquisitions, accuracy, json.loads(config)["data"]


def _class_shares(labels: list[int]) -> dict[str, float]:
    counts = Counter(labels)
    return {str(k): round(counts[k] / max(len(labels), 1), 4) for k in sorted(counts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from xal_core.data.shortcut import ShortcutBenchmark

    acquisitions, accuracy, benchmark = {}, {}, None
    for run in args.runs:
        acq, acc, data = _arm_rows(run)
        acquisitions.update(acq)
        accuracy.update(acc)
        benchmark = benchmark or data
    options = dict(benchmark.get("options") or {})
    pool = ShortcutBenchmark(tuple(benchmark["size"]), n=benchmark["pool_size"], split="pool", **options)
    facts: dict[int, tuple[bool, float, int]] = {}

    def fact(item: int) -> tuple[bool, float, int]:
        """(marker agrees, lesion area as a share of the frame, class) of a pool item."""
        if item not in facts:
            drawn = pool[item]
            facts[item] = (bool(drawn.meta["shortcut_agrees"]), float(drawn.roi.float().mean()), int(drawn.label))
        return facts[item]

    def counterexample(item: int) -> bool:
        return not fact(item)[0]

    sample = range(0, len(pool), 5)
    pool_share = sum(counterexample(i) for i in sample) / len(sample)
    report: dict = {"pool_counterexample_share_estimate": round(pool_share, 4),
                    "pool_lesion_area_estimate": round(statistics.fmean(fact(i)[1] for i in sample), 4),
                    "pool_class_shares_estimate": _class_shares([fact(i)[2] for i in sample]),
                    "strategies": {}}
    by_strategy = defaultdict(list)
    for (strategy, seed), rows in acquisitions.items():
        by_strategy[strategy].append((seed, rows))
    picks: dict[tuple[str, int, int], set[int]] = defaultdict(set)
    for (strategy, seed), rows in acquisitions.items():
        for number, item, _ in rows:
            picks[(strategy, seed, number)].add(item)
    for strategy, arms in sorted(by_strategy.items()):
        acquired = [(item, dice) for _, rows in arms for number, item, dice in rows if number > 0]
        dices = [d for _, d in acquired if d is not None]
        swings = []
        for seed, _ in arms:
            series = [accuracy[(strategy, seed)][r] for r in sorted(accuracy[(strategy, seed)])]
            swings += [abs(b - a) for a, b in zip(series, series[1:], strict=False)]
        report["strategies"][strategy] = {
            "acquired": len(acquired),
            "counterexamples": round(sum(counterexample(i) for i, _ in acquired) / max(len(acquired), 1), 4),
            "dice_at_selection": {"mean": round(statistics.fmean(dices), 4) if dices else None,
                                  "std": round(statistics.pstdev(dices), 4) if dices else None},
            "lesion_area": round(statistics.fmean(fact(i)[1] for i, _ in acquired), 4) if acquired else None,
            "class_shares": _class_shares([fact(i)[2] for i, _ in acquired]),
            "accuracy_swing": round(statistics.fmean(swings), 4) if swings else None,
            "overlap_with": {},
        }
    strategies = sorted(by_strategy)
    for a in strategies:
        for b in strategies:
            if a >= b:
                continue
            overlaps = [len(picks[(a, s, 1)] & picks[(b, s, 1)]) / max(len(picks[(a, s, 1)] | picks[(b, s, 1)]), 1)
                        for s, _ in by_strategy[a] if (b, s, 1) in picks]
            if overlaps:
                report["strategies"][a]["overlap_with"][b] = round(statistics.fmean(overlaps), 4)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
