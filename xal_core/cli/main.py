"""``xal``: the command-line entry point. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys

from . import demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xal",
        description="Explainability-guided active learning: rank unlabeled images by uncertainty "
        "and Grad-CAM/ROI misalignment.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"xal {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
