"""``xal demo``: the main job, end to end, on the built-in synthetic shortcut benchmark.

Starts the gRPC scoring service as a real process and runs the study's stable protocol
(docs/results/study.md) through it: 50 initial labels + 13 rounds of 40 = 570, one seed, a small
CNN with an 8×8 Grad-CAM, 20 epochs per round warm-started from the previous round. It runs in two
parts, because the benchmark's point is the shortcut and the study's finding is about teaching
with the ROIs:

* ``plain``: random sampling, trained on the labels alone;
* ``swap``: random and dual sampling, trained with the expert's ROIs too (the ROI-guided
  background swap, ``--roi-augment swap``).

Every round trains a model, exports it, has the service score the pool, acquires the top 40 and
lets the simulated oracle label them, all recorded in each part's ledger (``RUN/plain``,
``RUN/swap``). It then prints one table of the three arms and writes one merged report
(``RUN/report.html``). Sized to finish in about 15 minutes on 2 CPU cores. Options of ``xal run``
apply to both parts (the parts set ``--strategies`` and ``--roi-augment`` themselves); run it again
and it resumes, or reprints the table when finished.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from . import report as report_command
from . import run as run_command

DEMO_DEFAULTS = dict(out=Path("runs/demo"), size=64, pool_size=2000, val_size=100, test_size=300,
                     architecture="smallcnn", smallcnn_width=8, epochs=20, schedule="cosine", warm_start=True,
                     augment="noflip")


@dataclass(frozen=True)
class DemoPart:
    """One ``xal run`` of the demo: its folder name, strategies and ROI training."""

    name: str
    strategies: str
    roi_augment: str


DEMO_PARTS = (DemoPart("plain", "random", "none"), DemoPart("swap", "random,dual", "swap"))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="the main job: active learning with and without ROI training, through "
                                              "the gRPC service", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    run_command.add_arguments(parser)
    parser.set_defaults(run=run, **DEMO_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    """Each part as its own ``xal run``, then one table and one report over all of them (``xal report``)."""
    folders = []
    for part in DEMO_PARTS:
        part_args = argparse.Namespace(**{**vars(args), "out": args.out / part.name, "strategies": part.strategies,
                                          "roi_augment": part.roi_augment})
        print(f"\n=== demo part '{part.name}': {part.strategies}, ROI training {part.roi_augment} ===", flush=True)
        status = run_command.run(part_args)
        if status != 0:  # an error, or the file oracle waiting for a person: rerun to continue
            return status
        folders.append(part_args.out)
    print("\n=== the demo's arms, last round (one seed: an illustration; docs/results/study.md has the measurement) ===")
    return report_command.run(argparse.Namespace(runs=folders, out=args.out,
                                                 title="xal demo: ROI-guided training and acquisition, synthetic shortcut benchmark"))
