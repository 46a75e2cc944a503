"""``xal ingest SOURCE --out POOL``: preprocess a dataset into a chunked pool store.

``SOURCE`` is a dataset folder (its kind is detected, or given with ``--kind``) or the word
``synthetic`` for the built-in shortcut benchmark. Adapter options go as ``--option key=value``.
Bad items are skipped and listed in ``POOL/ingest_report.tsv``; the summary counts them. Images
above ``--max-pixels`` are refused from their header (generic, vindr, siim). A killed ingest leaves
no half-written pool: rerun the same command (docs/data.md, "Interrupted ingests").

``SOURCE`` may also be a DICOMweb service, ``dicomweb+http://HOST:PORT/dicom-web``, with
``--study UID …`` or ``--query "Modality=CR&StudyDate=…"`` and labels from ``--labels CSV`` (or
an unlabelled pool with ``--classes``): docs/data.md, "DICOMweb pools".
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from xal_core.data import DEFAULT_ROI_SOURCE, KINDS, ROI_SOURCES, detect_kind, open_dataset
from xal_core.data.dicomweb import is_dicomweb
from xal_core.data.guards import DEFAULT_MAX_PIXELS, pixel_limit
from xal_core.data.ingest import ingest
from xal_core.data.priors import WithPriorMasks

from .adapter_options import parse_adapter_options


class ItemsPerSecond(ProgressColumn):
    """Throughput in items/s (rich's own speed columns speak bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- items/s" if speed is None else f"{speed:,.0f} items/s", style="progress.data.speed")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ingest", help="write a dataset into a chunked pool store")
    parser.add_argument("source", help="dataset folder, 'synthetic' for the shortcut benchmark, or a DICOMweb "
                        "service dicomweb+http(s)://HOST:PORT/PATH")
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
    parser.add_argument("--roi-source", choices=ROI_SOURCES, default=DEFAULT_ROI_SOURCE,
                        help="the ROI the scorer reads: expert (the dataset's ROIs), anatomy (each item's prior: "
                        "--prior-masks, or the adapter's rule) or none (default expert; docs/data.md, \"ROI sources\")")
    parser.add_argument("--prior-masks", default=None, metavar="DIR",
                        help="anatomy priors as DIR/<item id>.png (e.g. a lung segmentation model's output)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    web = parser.add_argument_group("DICOMweb sources (dicomweb+http://…; docs/data.md, \"DICOMweb pools\")")
    web.add_argument("--study", nargs="+", action="extend", default=[], metavar="UID",
                     help="Study Instance UIDs whose instances to ingest")
    web.add_argument("--query", default=None, metavar="K=V&…",
                     help="QIDO-RS instance search instead of --study, e.g. \"Modality=CR&StudyDate=20240101-20240131\"")
    web.add_argument("--labels", default=None, metavar="CSV",
                     help="labels keyed by SOP or Study Instance UID: columns uid,label[,roi][,split]")
    web.add_argument("--classes", default=None, metavar="A,B,…",
                     help="the class names, in order (with --labels: fixes their order; alone: an unlabelled pool)")
    web.add_argument("--credentials-file", default=None, metavar="FILE",
                     help="user:password or a bearer token (else $XAL_DICOMWEB_CREDENTIALS); never on the command line")
    web.add_argument("--ca-bundle", default=None, metavar="PEM",
                     help="CA certificates to verify the server's TLS certificate with (verified by default)")
    web.add_argument("--retries", type=int, default=5, help="retries of a transient HTTP failure (default 5)")
    web.add_argument("--dataset-out", default=None, metavar="DIR",
                     help="also write a generic dataset folder naming the same instances, for "
                     "`xal run --dataset generic --data-dir DIR`")
    web.add_argument("--test-fraction", type=float, default=0.2,
                     help="--dataset-out: share of studies in the test split when --labels has no split column")
    parser.set_defaults(run=run)


_DECODING_KINDS = ("generic", "vindr", "siim")  # the adapters that take max_pixels


def run(args: argparse.Namespace) -> int:
    if len(args.size) not in (1, 2) or min(args.size) < 1:
        raise ValueError(f"--size: expected H or H W with positive integers, got {args.size}")
    size = (args.size[0], args.size[-1])
    if is_dicomweb(args.source):
        return run_dicomweb(args, size)
    if args.study or args.query or args.labels or args.classes or args.credentials_file or args.ca_bundle \
            or args.dataset_out:
        raise ValueError("--study, --query, --labels, --classes, --credentials-file, --ca-bundle and --dataset-out "
                         "are for a DICOMweb source (dicomweb+http://…)")
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
    if args.prior_masks:
        dataset = WithPriorMasks(dataset, args.prior_masks)
    console = Console(stderr=True, quiet=args.quiet)
    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), ItemsPerSecond(),
               TextColumn("skipped {task.fields[skipped]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        task = progress.add_task("ingest", total=len(dataset), skipped=0)
        summary = ingest(dataset, args.out, chunk=args.chunk, max_boxes=args.max_boxes, append=args.append,
                         workers=args.workers, roi_source=args.roi_source,
                         on_progress=lambda done, skipped: progress.update(task, completed=done, skipped=skipped))
    if summary.discarded_partial:
        print("an interrupted earlier ingest into this --out was discarded and started over")
    print(f"{summary.written} items written, {summary.skipped} skipped, {summary.total} in the pool "
          f"({summary.rate:,.0f} items/s); report: {summary.report}")
    return 0


def run_dicomweb(args: argparse.Namespace, size: tuple[int, int]) -> int:
    from xal_core.data.dicomweb import DicomWebConnection, read_credentials
    from xal_core.data.dicomweb_ingest import ingest_dicomweb

    if args.kind != "auto" or args.option:
        raise ValueError("--kind and --option do not apply to a DICOMweb source")
    classes = [name.strip() for name in args.classes.split(",") if name.strip()] if args.classes else None
    connection = DicomWebConnection(args.source, headers=read_credentials(args.credentials_file),
                                    ca_bundle=args.ca_bundle, retries=args.retries)
    console = Console(stderr=True, quiet=args.quiet)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), ItemsPerSecond(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        tasks: dict[str, int] = {}

        def on_phase(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        result = ingest_dicomweb(connection, args.out, size=size, studies=args.study, query=args.query,
                                 labels=args.labels, classes=classes,
                                 max_pixels=None if args.max_pixels is None else pixel_limit(args.max_pixels),
                                 chunk=args.chunk, max_boxes=args.max_boxes, append=args.append, workers=args.workers,
                                 on_phase=on_phase, dataset_out=args.dataset_out, test_fraction=args.test_fraction,
                                 credentials_file=args.credentials_file, ca_bundle=args.ca_bundle)
    if result.summary is None:
        print(f"{args.out}: already complete (an earlier run committed it); nothing to do")
        return 0
    summary = result.summary
    if result.resumed:
        print(f"resumed an interrupted ingest: {result.listed - result.retrieved} of {result.listed} instances were "
              "already retrieved")
    print(f"{summary.written} items written, {summary.skipped} skipped, {summary.total} in the pool "
          f"({result.retrieved} instances retrieved over DICOMweb); report: {summary.report}")
    if result.dataset_folder is not None:
        print(f"dataset folder for xal run --dataset generic --data-dir: {result.dataset_folder}")
    return 0
