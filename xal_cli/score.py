"""``xal score``: rank a pool and write the acquisition list as CSV.

On a running scoring service (``--engine service``, the default), or directly on a Ray cluster
(``--engine ray``: this process is the Ray driver; the model, the pool and ``--scores-dir`` must be
paths every node of the cluster can read).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from .scoring_flags import add_scoring_flags, scoring_config
from .serve import add_ray_arguments, ray_engine_config


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("score", help="rank a pool on a scoring service (xal serve) and write a CSV")
    parser.add_argument("--server", help="HOST:PORT of `xal serve` (--engine service)")
    parser.add_argument("--model", help="name of a loaded model (or load it with --model-path); --engine service")
    parser.add_argument("--pool", help="name of a registered pool (or register it with --pool-path); --engine service")
    parser.add_argument("--model-path", help="server-side model file to load under --model first; with --engine ray "
                                             "the model file the Ray workers load")
    parser.add_argument("--pool-path", help="server-side pool store to register under --pool first; with --engine ray "
                                            "the pool store the Ray workers read")
    parser.add_argument("--k", type=int, default=40, help="items to acquire (default 40)")
    add_scoring_flags(parser, presets=True)
    parser.add_argument("--exclude", type=Path, help="file with one item id (pool row) per line to leave out, e.g. the labelled ones")
    parser.add_argument("--token-file", type=Path, help="bearer token for the server")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate of a TLS server")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write: rank,id,source_id,score,...")
    parser.add_argument("--scores-dir", type=Path,
                        help="--engine ray: where the per-item Parquet files go (default: OUT.scores/ beside --out)")
    add_ray_arguments(parser, engine_default="service")
    parser.set_defaults(run=run)


CSV_HEADER = ["rank", "id", "source_id", "score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit",
              "predicted_class"]


def run(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return run_on_ray(args)
    missing = [f"--{name}" for name in ("server", "model", "pool") if not getattr(args, name)]
    if missing:
        raise ValueError(f"{', '.join(missing)} required with --engine service")
    return run_on_service(args)


def run_on_ray(args: argparse.Namespace) -> int:
    """Be the Ray driver: the pool scored by actors on the cluster, the top-k merged here."""
    import logging

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not args.model_path or not args.pool_path:
        raise ValueError("--model-path and --pool-path are required with --engine ray")
    try:
        from xal_service.engines.ray import score_pool_on_ray
    except ImportError as error:
        raise ValueError(str(error)) from None
    from xal_core.data.pool_store import PoolStore

    logging.getLogger("ray").setLevel(logging.WARNING)
    exclude = [int(line) for line in args.exclude.read_text().split()] if args.exclude else []
    total = len(PoolStore.open(args.pool_path))
    console = Console(stderr=True)
    with Progress(TextColumn("ray"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("scoring", total=total)
        try:
            result = score_pool_on_ray(
                args.pool_path, args.model_path, k=args.k, config=scoring_config(args), engine=ray_engine_config(args),
                scores_dir=args.scores_dir or args.out.with_name(args.out.name + ".scores"), exclude_ids=exclude,
                on_block=lambda block: progress.advance(task, block.n_items),
            )
        except ImportError as error:
            raise ValueError(str(error)) from None
    ranking, columns = result.ranking, result.ranking.columns
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for position, item in enumerate(ranking.selection.ids.tolist()):
            writer.writerow([position + 1, item, result.source_ids[position], f"{float(ranking.selection.scores[position]):.6g}",
                             *(f"{float(columns[name][position]):.6g}" for name in ("uncertainty", "dice", "soft_dice",
                                                                                    "roi_energy", "pointing_hit")),
                             int(columns["predicted_class"][position])])
    console.print(f"xal score: {total} items scored on Ray by {len(result.workers)} worker(s) in {result.wall_s:.1f} s, "
                  f"top {len(ranking.selection.ids)} written to {args.out}; per-item scores in {result.scores_dir}"
                  + (f"; {result.n_invalid_items} item(s) with errors ranked last" if result.n_invalid_items else ""))
    for first, reason in _skipped_runs(result.skipped_items):
        console.print(f"xal score: item {first} and the rest of its chunk: {reason}")
    if result.n_skipped_items:
        console.print(f"xal score: {result.n_skipped_items} item(s) left out: their pool chunk is damaged "
                      "(xal ingest the source again, or restore the pool's files)")
    return 0


def _skipped_runs(skipped: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The first item of each damaged chunk and its reason (one line per chunk, not per item)."""
    return [(item, reason) for n, (item, reason) in enumerate(skipped) if n == 0 or skipped[n - 1][1] != reason]


def run_on_service(args: argparse.Namespace) -> int:
    import grpc
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from xal_service.client import ScoringClient, ScoringJobFailed

    config = scoring_config(args)
    exclude = [int(line) for line in args.exclude.read_text().split()] if args.exclude else []
    token = args.token_file.read_text().strip() if args.token_file else None
    console = Console(stderr=True)
    try:
        with ScoringClient(args.server, token=token, tls_ca=args.tls_ca, timeout=600) as client:
            if args.model_path:
                client.load_model(args.model, args.model_path)
            if args.pool_path:
                client.register_pool(args.pool, args.pool_path)
            with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                          TimeRemainingColumn(), console=console, transient=True) as progress:
                task = progress.add_task("scoring", total=None, rate="")
                result = client.run_scoring_job(
                    args.model, args.pool, k=args.k, config=config, exclude_ids=exclude,
                    on_progress=lambda status: progress.update(task, total=status.items_total,
                                                               completed=status.items_done,
                                                               rate=f"{status.items_per_second:,.0f} items/s"))
    except ScoringJobFailed as failed:
        console.print(f"xal score: job {failed.job_id} ended {failed.state}: {failed.error}")
        return 1
    except grpc.RpcError as error:
        raise ValueError(f"{args.server}: {error.code().name}: {error.details()}") from None
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for item in result.items:
            writer.writerow([item.rank, item.id, item.source_id, f"{item.score:.6g}", f"{item.uncertainty:.6g}",
                             f"{item.dice:.6g}", f"{item.soft_dice:.6g}", f"{item.roi_energy:.6g}",
                             f"{item.pointing_hit:.6g}", item.predicted_class])
    console.print(f"xal score: job {result.job_id}: {result.items_done} items scored, top {len(result.items)} written "
                  f"to {args.out}" + (f"; {result.n_item_errors} item(s) with errors" if result.n_item_errors else ""))
    return 0
