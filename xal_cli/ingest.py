"""``xal ingest SOURCE --out POOL``: preprocess a dataset into a chunked pool store.

``SOURCE`` is a dataset folder (its kind is detected, or given with ``--kind``) or the word
``synthetic`` for the built-in shortcut benchmark. Adapter options go as ``--option key=value``.
Bad items are skipped and listed in ``POOL/ingest_report.tsv``; the summary counts them. Images
above ``--max-pixels`` are refused from their header (generic, vindr, siim). A killed ingest leaves
no half-written pool: rerun the same command (docs/data.md, "Interrupted ingests").
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from xal_core.data import KINDS, detect_kind, open_dataset
from xal_core.data.guards import DEFAULT_MAX_PIXELS, pixel_limit
from xal_core.data.ingest import ingest

from .adapter_options import parse_adapter_options


class ItemsPerSecond(ProgressColumn):
    """Throughput in items/s (rich's own speed columns speak bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- items/s" if speed is None else f"{speed:,.0f} items/s", style="progress.data.speed")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ingest", help="write a dataset into a chunked pool store")
    parser.add_argument("source", help="dataset folder, or 'synthetic' for the shortcut benchmark")
    parser.add_argument("--out", required=True, help="pool folder to create (or to extend with --append)")
    parser.add_argument("--kind", choices=("auto", *KINDS), default="auto")
    parser.add_argument("--size", type=int, nargs="+", default=[224], metavar="PX",
                        help="output resolution: H [W] (default 224)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="adapter option, repeatable (e.g. modality=flair, n=1000); values parse as JSON "
                        "when they can")
    parser.add_argument("--chunk", type=int, default=1024, help="items per chunk (default 1024)")
    parser.add_argument("--max-boxes", type=int, default=64, help="box slots per item in a box pool (default 64)")
    parser.add_argument("--workers", type=int, default=4, help="loader threads (default 4)")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help=f"refuse (one report line each) images above N pixels, from their header, before "
                        f"decoding (default {DEFAULT_MAX_PIXELS:,}; kinds generic, vindr, siim)")
    parser.add_argument("--append", action="store_true", help="add the items to an existing pool")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


_DECODING_KINDS = ("generic", "vindr", "siim")  # the adapters that take max_pixels


def run(args: argparse.Namespace) -> int:
    if len(args.size) not in (1, 2) or min(args.size) < 1:
        raise ValueError(f"--size: expected H or H W with positive integers, got {args.size}")
    size = (args.size[0], args.size[-1])
    options = parse_adapter_options(args.option)
    if args.source == "synthetic":
        kind, root = "synthetic", None
    else:
        kind, root = (detect_kind(args.source) if args.kind == "auto" else args.kind), args.source
    if args.max_pixels is not None:
        if kind not in _DECODING_KINDS:
            raise ValueError(f"--max-pixels applies to the kinds {', '.join(_DECODING_KINDS)}, not {kind}")
        options.setdefault("max_pixels", pixel_limit(args.max_pixels))
    dataset = open_dataset(kind, root, size=size, **options)
    console = Console(stderr=True, quiet=args.quiet)
    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), ItemsPerSecond(),
               TextColumn("skipped {task.fields[skipped]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task("ingest", total=len(dataset), skipped=0)
        summary = ingest(dataset, args.out, chunk=args.chunk, max_boxes=args.max_boxes, append=args.append,
                         workers=args.workers,
                         on_progress=lambda done, skipped: progress.update(task, completed=done, skipped=skipped))
    if summary.discarded_partial:
        print("an interrupted earlier ingest into this --out was discarded and started over")
    print(f"{summary.written} items written, {summary.skipped} skipped, {summary.total} in the pool "
          f"({summary.rate:,.0f} items/s); report: {summary.report}")
    return 0
