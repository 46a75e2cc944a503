"""``xal fixtures {brats,vindr,siim} --out DIR --n N``: write a tiny replica of a real dataset.

The replicas follow the published layouts file for file (written with nibabel and pydicom), so
``xal ingest DIR`` can be tried, and the adapters tested, without the real data.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("fixtures", help="write a tiny replica of BraTS, VinDr-CXR or SIIM-COVID")
    parser.add_argument("dataset", choices=("brats", "vindr", "siim"))
    parser.add_argument("--out", required=True, help="folder to write the replica into")
    parser.add_argument("--n", type=int, default=4, help="cases (BraTS) or images (X-ray sets), default 4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--year", type=int, choices=(2020, 2021), default=2020, help="BraTS layout year")
    parser.add_argument("--layout", choices=("kaggle", "physionet"), default="kaggle", help="VinDr-CXR layout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n: must be >= 1, got {args.n}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: exists and is not empty")
    if args.dataset == "brats":
        from xal_core.data.replicas.brats import write_brats

        written = write_brats(out, args.n, year=args.year, seed=args.seed)
    elif args.dataset == "vindr":
        from xal_core.data.replicas.vindr import write_vindr

        written = write_vindr(out, args.n, layout=args.layout, seed=args.seed)
    else:
        from xal_core.data.replicas.siim import write_siim

        written = write_siim(out, args.n, seed=args.seed)
    print(f"{args.dataset} replica: {len(written)} {'cases' if args.dataset == 'brats' else 'images'} in {out}")
    return 0
