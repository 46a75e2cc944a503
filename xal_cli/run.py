"""``xal run``: the active-learning experiment, strategies × seeds, to a label budget.

    xal run --dataset synthetic --strategies random,entropy,dual --seeds 5 --out runs/synthetic

writes ``RUN_DIR/ledger.sqlite`` (every acquisition and annotation), ``metrics.csv`` (one row per
strategy, seed and round), ``report.html`` with its PNGs, and the models of the last rounds. Run
the same command again after an interruption and it continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xal_core.acquisition.strategies import DIVERSITY_MODES, STRATEGY_NAMES
from xal_core.data import ROI_SOURCES
from xal_core.loop.data_spec import DATASETS, DataSpec
from xal_core.loop.protocol import Protocol
from xal_core.models.export import FORMATS

from .adapter_options import parse_adapter_options
from .annotate import add_annotator_flags, default_annotator
from .defaults import default_of
from .scoring_flags import add_scoring_flags, scoring_config
from .session import ORACLES, SCORERS, RunSession
from .training_flags import add_recipe_choice, add_recipe_flags, add_roi_training_flags, train_recipe

EXIT_NEEDS_LABELS = 3  # a person must label the items in to_label.csv, then rerun


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="run the active-learning experiment (strategies × seeds) and report",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's options (``xal demo`` takes the same ones with other defaults). Every default
    is read from the dataclass or parameter the flag becomes (``xal_cli.defaults``)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=default_of(DataSpec, "dataset"))
    data.add_argument("--data-dir", type=Path, default=None,
                      help="the dataset's folder (not for the generated synthetic and cxr-sim)")
    data.add_argument("--out", type=Path, default=None, help="the run folder (default runs/<dataset>)")
    side = default_of(DataSpec, "size")[0]
    data.add_argument("--size", type=int, default=side, help=f"model input frame, pixels per side (default {side})")
    for name, what in (("pool_size", "pool"), ("val_size", "validation"), ("test_size", "test")):
        data.add_argument(f"--{name.replace('_', '-')}", type=int, default=default_of(DataSpec, name),
                          help=f"synthetic {what} items (default {default_of(DataSpec, name)})")
    data.add_argument("--test-fraction", type=float, default=default_of(DataSpec, "test_fraction"),
                      help="share of cases held out for testing (brats, vindr, siim; default "
                           f"{default_of(DataSpec, 'test_fraction')})")
    data.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="an adapter option, e.g. modality=t1ce (repeatable; values parsed as JSON when they can be)")
    data.add_argument("--roi-source", choices=ROI_SOURCES, default=default_of(DataSpec, "roi_source"),
                      help="the ROI the scorer reads for unlabelled items: expert (each item's expert ROI, the "
                           "paper's oracle setting; a known-empty ROI then reveals a negative label), anatomy (a "
                           "prior that needs no expert: lungs, brain, organ) or none (default "
                           f"{default_of(DataSpec, 'roi_source')}; docs/data.md, \"ROI sources\")")
    protocol = parser.add_argument_group("protocol")
    strategies = ",".join(default_of(Protocol, "strategies"))
    protocol.add_argument("--strategies", default=strategies,
                          help=f"comma-separated, from {','.join(STRATEGY_NAMES)} (default {strategies})")
    protocol.add_argument("--seeds", default=None, help="a count N (seeds 0..N-1) or a comma-separated list (default: "
                          f"seed {','.join(map(str, default_of(Protocol, 'seeds')))})")
    protocol.add_argument("--seed", type=int, action="append", default=None, metavar="S",
                          help="run exactly this seed (repeatable; overrides --seeds), e.g. one seed per process")
    for name, what in (("initial", "random initial labels"), ("rounds", "acquisition rounds"),
                       ("per_round", "labels acquired per round")):
        protocol.add_argument(f"--{name.replace('_', '-')}", type=int, default=default_of(Protocol, name),
                              help=f"{what} (default {default_of(Protocol, name)})")
    add_scoring_flags(protocol, fusion_flag=False)
    protocol.add_argument("--diversity", choices=DIVERSITY_MODES, default=None, help="batch-diversity mode (default none)")
    passes, dropout = default_of(Protocol, "mc_passes"), default_of(Protocol, "mc_dropout")
    protocol.add_argument("--mc-passes", type=int, default=passes,
                          help=f"bald: stochastic passes T of last-layer MC dropout (default {passes})")
    protocol.add_argument("--mc-dropout", type=float, default=dropout,
                          help=f"bald: drop probability p of those passes, on the pooled features (default {dropout})")
    train = parser.add_argument_group("training")
    add_recipe_choice(train)
    add_recipe_flags(train)
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_roi_training_flags(train)
    scoring = parser.add_argument_group("scoring and annotation")
    scoring.add_argument("--scorer", choices=SCORERS, default=default_of(RunSession, "scorer"),
                         help="score through the gRPC service (default) or in this process; same rankings")
    scoring.add_argument("--server", default=default_of(RunSession, "server"),
                         help="auto: start a local `xal serve` for the run (default); or HOST:PORT of a running one")
    scoring.add_argument("--token-file", type=Path, default=None, help="bearer token for --server HOST:PORT")
    scoring.add_argument("--export-format", choices=FORMATS, default=default_of(Protocol, "export_format"))
    scoring.add_argument("--oracle", choices=ORACLES, default=default_of(RunSession, "oracle"),
                         help="simulated: labels from the dataset; file: a CSV a person fills in (--labels); "
                              "web: a person answers in the browser (--annotate-listen) while the run waits")
    scoring.add_argument("--labels", type=Path, default=None,
                         help="the file oracle's CSV (default RUN_DIR/to_label.csv, written when labels are needed)")
    add_annotator_flags(scoring, prefix="annotate-")
    parser.add_argument("--overlay-images", type=int, default=default_of(RunSession, "overlay_images"),
                        help="test images in the report's CAM grid")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return tuple(range(count))
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--seeds: expected a count >= 1 or a comma-separated list of seeds, got {text!r}") from None


def build_protocol(args: argparse.Namespace) -> Protocol:
    """The protocol flags as a checked ``Protocol``, its scoring and training settings built whole."""
    seeds = tuple(args.seed) if args.seed else _seeds(args.seeds) if args.seeds is not None else None
    return Protocol(strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
                    **({} if seeds is None else {"seeds": seeds}), initial=args.initial,
                    rounds=args.rounds, per_round=args.per_round, scoring=scoring_config(args),
                    diversity=args.diversity, export_format=args.export_format, train=train_recipe(args),
                    mc_passes=args.mc_passes, mc_dropout=args.mc_dropout)


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The data flags as a checked ``DataSpec``."""
    return DataSpec(dataset=args.dataset, data_dir=args.data_dir, size=(args.size, args.size),
                    pool_size=args.pool_size, val_size=args.val_size, test_size=args.test_size,
                    test_fraction=args.test_fraction, options=parse_adapter_options(args.option),
                    roi_source=args.roi_source)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from xal_core.loop.ledger import LedgerError

    console = Console(stderr=False)
    protocol = build_protocol(args)
    out = args.out or Path("runs") / args.dataset
    session = RunSession(
        out, protocol, data=data_spec(args), scorer=args.scorer, server=args.server, token_file=args.token_file,
        oracle=args.oracle, labels=args.labels, device=args.device, annotate_listen=args.annotate_listen,
        annotate_token_file=args.annotate_token_file, annotate_allowed_hosts=tuple(args.annotate_allowed_host),
        annotator=default_annotator(args.annotator),
        overlay_images=args.overlay_images, console=console, progress=not args.no_progress,
    )
    started = time.perf_counter()
    try:
        outcome = session.run()
    except LedgerError as error:  # corrupt / foreign / other-experiment ledger: untouched, say how to recover
        print(f"xal run: error: {error}", file=sys.stderr)
        return 2
    if outcome.needs_labels is not None:
        console.print(f"[yellow]{outcome.needs_labels}[/yellow]")
        return EXIT_NEEDS_LABELS
    console.print(f"\n[bold]Final round ({protocol.budget} labels), mean ± 95% CI over {len(protocol.seeds)} "
                  f"seed(s)[/bold]  ({time.perf_counter() - started:.0f} s)")
    print(outcome.final_table, flush=True)  # plain: a Markdown table must not be wrapped to the terminal
    print(f"\nreport: {outcome.report}\nmetrics: {outcome.metrics}\nledger: {outcome.ledger}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from xal_cli.main import main

    sys.exit(main(["run", *sys.argv[1:]]))
