"""``xal rank-demo``: score a synthetic pool of model outputs and show the acquisition list.

The scorer alone, no training: a pool of model outputs (feature maps, CAM weights, logits) with
ROIs is generated, every item is scored with the dual criterion, and the top of the ranking is
printed next to a summary that shows *why* items were chosen. (``xal demo`` is the whole
active-learning loop.)
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from xal_core.acquisition import rank_pool, score_batch
from xal_core.data.synthetic_features import CASES, SyntheticFeaturePool
from xal_core.scoring import NonFiniteInputWarning

from .scoring_flags import add_scoring_flags, scoring_config


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("rank-demo", help="score a synthetic pool of model outputs (no training) and print the ranking")
    parser.add_argument("--items", type=int, default=10_000, help="pool size (default 10000)")
    parser.add_argument("--k", type=int, default=570, help="how many items to acquire (default 570, the paper's budget)")
    parser.add_argument("--show", type=int, default=20, help="rows of the ranking to print (default 20)")
    parser.add_argument("--chunk", type=int, default=512, help="items scored per batch (default 512)")
    add_scoring_flags(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    config = scoring_config(args)
    pool = SyntheticFeaturePool(size=args.items, seed=args.seed)
    if args.k < 1 or args.show < 0:
        raise ValueError(f"--k must be >= 1 and --show >= 0, got {args.k} and {args.show}")
    console.print(
        f"[bold]xal rank-demo[/bold]: {pool.size} synthetic items (C={pool.channels}, {pool.grid}×{pool.grid} CAM grid, "
        f"{pool.frame}×{pool.frame} ROI frame, K={pool.classes}), {config.uncertainty} ⊕ misalignment, "
        f"λ={config.weight}, τ={config.threshold}, {config.fusion} fusion"
    )
    cases = torch.empty(pool.size, dtype=torch.int64)
    uncertainty = torch.empty(pool.size)
    dice = torch.empty(pool.size)

    def scored_batches(progress: Progress, task: int):
        for chunk in pool.chunks(args.chunk):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NonFiniteInputWarning)  # counted and reported below
                batch = score_batch(chunk.ids, chunk.logits, chunk.features, chunk.cam_weights, chunk.roi, config)
            cases[chunk.ids] = chunk.case
            uncertainty[chunk.ids] = batch.uncertainty
            dice[chunk.ids] = batch.dice
            progress.advance(task, len(chunk.ids))
            yield batch

    started = time.perf_counter()
    with Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("scoring", total=pool.size)
        ranking = rank_pool(scored_batches(progress, task), args.k, config)
    elapsed = time.perf_counter() - started

    console.print(_top_table(ranking, cases, args.show))
    console.print(_summary_table(ranking, cases, uncertainty, dice))
    console.print(
        f"scored {ranking.n_scored} items in {elapsed:.2f} s ({ranking.n_scored / elapsed:,.0f} items/s on "
        f"{torch.get_num_threads()} CPU threads); {ranking.n_invalid} item(s) with NaN/Inf inputs ranked last "
        f"(ids {pool.corrupt_ids().tolist()}); {ranking.n_excluded} excluded by the missing-ROI policy."
    )
    return 0


def _top_table(ranking, cases: torch.Tensor, show: int) -> Table:
    table = Table(title=f"Acquisition list: top {min(show, len(ranking.selection.ids))} of {len(ranking.selection.ids)}")
    for name in ("rank", "id", "case", "score", "uncertainty", "dice", "soft dice", "ROI energy", "hit", "class"):
        table.add_column(name, justify="right" if name not in ("case",) else "left")
    columns = ranking.columns
    for rank, item in enumerate(ranking.selection.ids[:show].tolist()):
        table.add_row(
            str(rank + 1),
            str(item),
            CASES[int(cases[item])],
            f"{float(ranking.selection.scores[rank]):.3f}",
            f"{float(columns['uncertainty'][rank]):.3f}",
            _fmt(columns["dice"][rank]),
            _fmt(columns["soft_dice"][rank]),
            _fmt(columns["roi_energy"][rank]),
            _fmt(columns["pointing_hit"][rank], digits=0),
            str(int(columns["predicted_class"][rank])),
        )
    return table


def _summary_table(ranking, cases: torch.Tensor, uncertainty: torch.Tensor, dice: torch.Tensor) -> Table:
    selected = torch.zeros_like(cases, dtype=torch.bool)
    selected[ranking.selection.ids] = True
    k = int(selected.sum())
    table = Table(title=f"Why these {k} items: pool vs acquisition list, by case")
    for name in ("case", "items", "share of pool", f"share of top {k}", "mean uncertainty", "mean Dice"):
        table.add_column(name, justify="left" if name == "case" else "right")
    for index, case in enumerate(CASES):
        members = cases == index
        n = int(members.sum())
        mean_dice = torch.nanmean(dice[members]) if n else torch.tensor(float("nan"))
        table.add_row(
            case,
            str(n),
            f"{n / len(cases):.1%}",
            f"{int((members & selected).sum()) / max(k, 1):.1%}",
            f"{float(torch.nanmean(uncertainty[members])):.3f}" if n else "—",
            "unknown" if case == "unknown_roi" else _fmt(mean_dice),
        )
    return table


def _fmt(value: torch.Tensor, digits: int = 3) -> str:
    value = float(value)
    return "—" if value != value else f"{value:.{digits}f}"
