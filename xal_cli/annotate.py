"""``xal annotate RUN_DIR``: label the run's pending acquisitions in the browser.

    xal annotate runs/synthetic                  # then open http://127.0.0.1:8080/
    xal annotate runs/synthetic --listen 0.0.0.0:8080 --token-file token.txt --allowed-host annotate.example.org

Serves the page for a run that stopped to wait for labels (``xal run --oracle file`` exits with
code 3; or any run with pending items): the acquired batch with the model's Grad-CAM, class
buttons, boxes drawn by dragging (a brush where the pool's ROIs are masks), "no finding", skip.
Every answer is recorded in ``RUN_DIR/ledger.sqlite`` at once; run ``xal run`` again afterwards
and it continues with them. To label while the run waits, use ``xal run --oracle web`` instead.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:8080"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("annotate", help="label a run's pending acquisitions in the browser",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder (holds ledger.sqlite)")
    add_annotator_flags(parser)
    parser.set_defaults(run=run)


def add_annotator_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str = "") -> None:
    """The page's options; ``xal run`` takes them as ``--annotate-listen`` / ``--annotate-token-file`` /
    ``--annotate-allowed-host``."""
    parser.add_argument(f"--{prefix}listen", default=DEFAULT_LISTEN,
                        help=f"HOST:PORT of the page (default {DEFAULT_LISTEN}; off loopback only with a token file)")
    parser.add_argument(f"--{prefix}token-file", type=Path, default=None,
                        help="file holding the token the page's login form asks for (>= 32 characters, at least 10 "
                             "different ones: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    parser.add_argument(f"--{prefix}allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name the page is reached by, besides localhost, 127.0.0.1, [::1] and the listen "
                             "host (repeatable; e.g. the name behind a reverse proxy): requests naming any other host "
                             "are refused, which stops DNS-rebinding pages")
    parser.add_argument("--annotator", default=None,
                        help="the name answers carry unless the page sets one (default web:<user name>)")


def default_annotator(name: str | None) -> str:
    return name or f"web:{getpass.getuser()}"


def run(args: argparse.Namespace) -> int:
    from xal_core.access import read_token
    from xal_core.data import PoolStore
    from xal_core.loop.ledger import Ledger, LedgerError
    from xal_core.loop.oracle import AnnotationDesk
    from xal_web import AnnotationServer, build_app
    from xal_web.auth import token_problem

    run_dir: Path = args.run_dir
    ledger_path, pool_path = run_dir / "ledger.sqlite", run_dir / "data" / "pool"
    if not ledger_path.is_file() or not (run_dir / "data" / "data.json").is_file():
        raise ValueError(f"{run_dir}: not a run folder (no ledger.sqlite or data/data.json); start it with xal run")
    token = read_token(args.token_file) if args.token_file else None
    if token is not None and (problem := token_problem(token)):
        raise ValueError(f"{args.token_file}: {problem}")
    try:
        ledger = Ledger.open(ledger_path)
    except LedgerError as error:
        print(f"xal annotate: error: {error}\n(a running `xal run` holds the ledger: stop it, or answer through "
              "its own page with `xal run --oracle web`)", file=sys.stderr)
        return 2
    with ledger:
        desk = AnnotationDesk(ledger, PoolStore.open(pool_path))
        batch = desk.batch()
        if not batch:
            print(f"nothing to label in {run_dir}: every acquired item has an answer")
            return 0
        app = build_app(desk, run_dir, token=token, annotator=default_annotator(args.annotator))
        server = AnnotationServer(app, args.listen, has_token=token is not None, allowed_hosts=args.allowed_host)
        done = sum(item.answer is not None for item in batch)
        print(f"{len(batch) - done} item(s) to label ({done} of {len(batch)} done; classes: {', '.join(desk.class_names)})\n"
              f"open {server.url}{'  (sign in with the token)' if token else ''} — Ctrl-C stops the page; every "
              "answer is already in the ledger", flush=True)
        server.serve()
    return 0
