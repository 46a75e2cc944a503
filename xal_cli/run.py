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
from xal_core.loop.protocol import MC_DROPOUT, MC_PASSES
from xal_core.models.backbones import ARCHITECTURES

from .adapter_options import parse_adapter_options
from .annotate import add_annotator_flags, default_annotator
from .scoring_flags import add_scoring_flags

EXIT_NEEDS_LABELS = 3  # a person must label the items in to_label.csv, then rerun


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="run the active-learning experiment (strategies × seeds) and report",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's options (``xal demo`` takes the same ones with other defaults)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=("synthetic", "brats", "vindr", "siim", "generic"), default="synthetic")
    data.add_argument("--data-dir", type=Path, default=None, help="the dataset's folder (not for synthetic)")
    data.add_argument("--out", type=Path, default=None, help="the run folder (default runs/<dataset>)")
    data.add_argument("--size", type=int, default=64, help="model input frame, pixels per side (default 64)")
    data.add_argument("--pool-size", type=int, default=5000, help="synthetic pool items (default 5000)")
    data.add_argument("--val-size", type=int, default=200, help="synthetic validation items (default 200)")
    data.add_argument("--test-size", type=int, default=500, help="synthetic test items (default 500)")
    data.add_argument("--test-fraction", type=float, default=0.2,
                      help="share of cases held out for testing (brats, vindr, siim; default 0.2)")
    data.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="an adapter option, e.g. modality=t1ce (repeatable; values parsed as JSON when they can be)")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--strategies", default="random,entropy,dual",
                          help=f"comma-separated, from {','.join(STRATEGY_NAMES)} (default random,entropy,dual)")
    protocol.add_argument("--seeds", default="1", help="a count N (seeds 0..N-1) or a comma-separated list (default 1)")
    protocol.add_argument("--seed", type=int, action="append", default=None, metavar="S",
                          help="run exactly this seed (repeatable; overrides --seeds), e.g. one seed per process")
    protocol.add_argument("--initial", type=int, default=50, help="random initial labels (default 50)")
    protocol.add_argument("--rounds", type=int, default=13, help="acquisition rounds (default 13)")
    protocol.add_argument("--per-round", type=int, default=40, help="labels acquired per round (default 40)")
    add_scoring_flags(protocol, fusion=False)
    protocol.add_argument("--diversity", choices=DIVERSITY_MODES, default=None, help="batch-diversity mode (default none)")
    protocol.add_argument("--mc-passes", type=int, default=MC_PASSES,
                          help=f"bald: stochastic passes T of last-layer MC dropout (default {MC_PASSES})")
    protocol.add_argument("--mc-dropout", type=float, default=MC_DROPOUT,
                          help=f"bald: drop probability p of those passes, on the pooled features (default {MC_DROPOUT})")
    train = parser.add_argument_group("training")
    train.add_argument("--architecture", choices=ARCHITECTURES, default="resnet18")
    train.add_argument("--output-stride", type=int, choices=(32, 16), default=32,
                       help="input pixels per Grad-CAM cell: 32 (default) or 16 (ResNets without the stem's "
                            "max-pool; a 4×4 CAM at 64×64 instead of 2×2)")
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--patience", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_roi_training_arguments(train)
    scoring = parser.add_argument_group("scoring and annotation")
    scoring.add_argument("--scorer", choices=("service", "inprocess"), default="service",
                         help="score through the gRPC service (default) or in this process; same rankings")
    scoring.add_argument("--server", default="auto",
                         help="auto: start a local `xal serve` for the run (default); or HOST:PORT of a running one")
    scoring.add_argument("--token-file", type=Path, default=None, help="bearer token for --server HOST:PORT")
    scoring.add_argument("--export-format", choices=("onnx", "torchscript"), default="onnx")
    scoring.add_argument("--oracle", choices=("simulated", "file", "web"), default="simulated",
                         help="simulated: labels from the dataset; file: a CSV a person fills in (--labels); "
                              "web: a person answers in the browser (--annotate-listen) while the run waits")
    scoring.add_argument("--labels", type=Path, default=None,
                         help="the file oracle's CSV (default RUN_DIR/to_label.csv, written when labels are needed)")
    add_annotator_flags(scoring, prefix="annotate-")
    parser.add_argument("--overlay-images", type=int, default=8, help="test images in the report's CAM grid")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def add_roi_training_arguments(train: argparse._ArgumentGroup) -> None:
    """Training with the expert's ROIs and the stable-round options (``xal_core.train.options``).

    Modes are checked by ``TrainRecipe``, not by argparse ``choices``, so a bad value is one line
    (``xal run: error: roi_loss: expected one of none, dice, outside, got 'x'``) before anything runs.
    """
    train.add_argument("--roi-loss", default="none", metavar="none|dice|outside",
                       help="CAM–ROI loss term on the labelled items' ROIs (default none)")
    train.add_argument("--roi-weight", type=float, default=1.0, help="its weight α >= 0 (default 1.0)")
    train.add_argument("--roi-augment", default="none", metavar="none|swap",
                       help="swap: ROI-guided background swap of labelled items with an ROI (default none)")
    train.add_argument("--roi-swap-prob", type=float, default=0.5, help="probability an item is swapped (default 0.5)")
    train.add_argument("--roi-dilate", type=int, default=2, help="pixels the kept ROI is grown by (default 2)")
    train.add_argument("--roi-swap-source", default="any", metavar="any|other",
                       help="the outside comes from another labelled image of any class (default) or of another class")
    train.add_argument("--schedule", default="constant", metavar="constant|cosine",
                       help="constant: early stopping on the validation loss (default); cosine: a cosine-annealed "
                            "learning rate over all --epochs, last epoch kept, no hold-out")
    train.add_argument("--augment", default="default", metavar="default|noflip|none",
                       help="augmentation preset: default (flip, small affine, intensity), noflip (the same without "
                            "the left-right flip), none")
    train.add_argument("--width", type=int, default=32, dest="smallcnn_width",
                       help="smallcnn's first-stage channels (default 32; cost grows as its square)")
    train.add_argument("--warm-start", action="store_true",
                       help="start each round from the previous round's weights instead of from scratch")


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




def build_protocol(args: argparse.Namespace):
    from xal_core.loop.protocol import Protocol, TrainRecipe

    recipe = TrainRecipe(architecture=args.architecture, epochs=args.epochs, patience=args.patience,
                         batch_size=args.batch_size, lr=args.lr, output_stride=args.output_stride,
                         roi_loss=args.roi_loss, roi_weight=args.roi_weight, roi_augment=args.roi_augment,
                         roi_swap_prob=args.roi_swap_prob, roi_dilate=args.roi_dilate,
                         roi_swap_source=args.roi_swap_source, schedule=args.schedule, warm_start=args.warm_start,
                         augment=args.augment, smallcnn_width=args.smallcnn_width)
    return Protocol(strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
                    seeds=tuple(args.seed) if args.seed else _seeds(args.seeds), initial=args.initial, rounds=args.rounds, per_round=args.per_round,
                    weight=args.weight, threshold=args.threshold, uncertainty=args.uncertainty,
                    missing_roi=args.missing_roi, diversity=args.diversity, export_format=args.export_format,
                    train=recipe, mc_passes=args.mc_passes, mc_dropout=args.mc_dropout)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from xal_cli.session import RunSession
    from xal_core.loop.ledger import LedgerError

    console = Console(stderr=False)
    protocol = build_protocol(args)
    out = args.out or Path("runs") / args.dataset
    session = RunSession(
        out, protocol, dataset=args.dataset, data_dir=args.data_dir, size=(args.size, args.size),
        pool_size=args.pool_size, val_size=args.val_size, test_size=args.test_size,
        test_fraction=args.test_fraction, options=parse_adapter_options(args.option), scorer=args.scorer, server=args.server,
        token_file=args.token_file, oracle=args.oracle, labels=args.labels, device=args.device,
        annotate_listen=args.annotate_listen, annotate_token_file=args.annotate_token_file,
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
