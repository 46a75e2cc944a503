"""``xal``: the command-line entry point.

Each subcommand is a module of this package with a ``register(subparsers)`` function that adds its
parser and sets ``run`` as its handler; modules are discovered, so adding a command touches no
shared file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __path__ as _package_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xal",
        description="Explainability-guided active learning: rank unlabeled images by uncertainty "
        "and Grad-CAM/ROI misalignment.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(_package_path), key=lambda m: m.name):
        if module_info.name == "main":
            continue
        module = importlib.import_module(f"{__package__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(commands)
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
