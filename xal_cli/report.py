"""``xal report``: rebuild the report of one run, or merge several runs' metrics into one report.

    xal report runs/seed-0 runs/seed-1 runs/seed-2 --out runs/merged

Runs of the same protocol split by seed (e.g. run in parallel, one process per seed, each with its
own ledger) merge into one table and one set of learning curves with confidence intervals over all
their seeds. A (strategy, seed) pair found in two runs is an error: it would count twice. Runs
trained differently (``metrics.csv``'s ``training`` column: ROI loss or swap, schedule, warm start)
are kept apart as their own lines, ``dual+swap`` beside ``dual``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="(re)build report.html from one or more run folders",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each holds metrics.csv)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the single run's folder)")
    parser.add_argument("--title", default=None)
    parser.set_defaults(run=run)


def merge_runs(runs: list[Path]) -> tuple[list[dict], dict]:
    """All runs' metrics rows and a config that records where they came from."""
    from xal_core.loop.metrics_file import read_metrics_csv
    from xal_core.loop.report.stats import series

    rows: list[dict] = []
    owner: dict[tuple[str, int], Path] = {}
    for run in runs:
        path = run / "metrics.csv"
        if not path.is_file():
            raise ValueError(f"{run}: no metrics.csv (not a run folder, or no round finished yet)")
        for row in read_metrics_csv(path):
            arm = (series(row), int(row["seed"]))
            if owner.setdefault(arm, run) != run:
                raise ValueError(f"strategy {arm[0]!r} seed {arm[1]} appears in both {owner[arm]} and {run}")
            rows.append(row)
    return rows, {"runs": [str(r) for r in runs], "arms": len(owner)}


def run(args: argparse.Namespace) -> int:
    from xal_core.loop.report.final_table import final_table_markdown
    from xal_core.loop.report.html import write_report

    if args.out is None and len(args.runs) > 1:
        raise ValueError("--out is required when merging several runs")
    out = args.out or args.runs[0]
    rows, config = merge_runs(args.runs)
    overlays = out / "overlays"
    if out not in args.runs:  # each strategy's CAM grid from the first run that has one
        out.mkdir(parents=True, exist_ok=True)
        overlays.mkdir(exist_ok=True)
        for run_dir in args.runs:
            for grid in sorted((run_dir / "overlays").glob("*.npz")):
                if not (overlays / grid.name).exists():
                    shutil.copyfile(grid, overlays / grid.name)
        from xal_core.loop.metrics_file import append_metrics_csv

        (out / "metrics.csv").unlink(missing_ok=True)
        append_metrics_csv(out / "metrics.csv", rows)
    grids = overlays if overlays.is_dir() and any(overlays.glob("*.npz")) else None
    report = write_report(out, title=args.title or f"xal report — {len(args.runs)} run(s)", config=config,
                          metrics_rows=rows, overlays_dir=grids)
    print(final_table_markdown(rows))
    print(f"\nreport: {report}")
    return 0
