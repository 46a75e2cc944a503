"""``xal demo``: the main job, end to end, on the built-in synthetic shortcut benchmark.

Starts the gRPC scoring service as a real process, then runs random vs entropy vs dual sampling
through it for the default protocol (50 initial labels + 13 rounds of 40 = 570), one seed: every
round trains a model, exports it, has the service score the pool, acquires the top 40, and lets
the simulated oracle label them, all recorded in the run's ledger. It prints the final table and
where the report is. Sized to finish in about 11 minutes on 2 CPU cores (a 64×64 benchmark,
ResNet-10, at most 8 epochs per round); every option of ``xal run`` can be given to change it.
Run it again and it resumes (or, when finished, reprints the table from the ledger).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .run import add_arguments, run

DEMO_DEFAULTS = dict(out=Path("runs/demo"), size=64, pool_size=2000, val_size=100, test_size=300,
                     architecture="resnet10", epochs=8, patience=2, batch_size=64)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="the main job: random vs entropy vs dual through the gRPC service",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run, **DEMO_DEFAULTS)
