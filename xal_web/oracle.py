"""``WebOracle``: the loop's oracle when a person answers in the browser (``xal run --oracle web``).

The page records each answer in the ledger as it is given (``AnnotationDesk``); the loop, asking
for a batch, waits here until every item of it has an answer, then goes on to train and to acquire
the next batch, which the open page picks up by itself. An item the person skips stays pending,
so the loop waits for it too: a skipped item is a question left open, not a label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from xal_core.loop.oracle import AnnotationDesk, Oracle, OracleAnswer

from .app import build_app
from .server import AnnotationServer

__all__ = ["WebOracle"]


class WebOracle(Oracle):
    """Serves the annotator for the run's ledger and answers the loop from it.

    Args:
        desk: the run's ledger and pool (the same ledger object the loop records into).
        run_dir: the run folder.
        listen: ``HOST:PORT`` of the page.
        token: the login token (required off loopback).
        annotator: the name answers carry unless the page gives one.
        say: where to announce the page's address (a console's ``print``).
        allowed_hosts: host names the page is also reached by (besides loopback and the listen host).
    """

    draws_rois = True

    def __init__(self, desk: AnnotationDesk, run_dir: str | Path, *, listen: str = "127.0.0.1:8080",
                 token: str | None = None, annotator: str = "web", say: Callable[[str], None] = print,
                 allowed_hosts: tuple[str, ...] | list[str] = ()) -> None:
        self.desk = desk
        self.class_names = desk.class_names
        self.annotator = annotator
        self.server = AnnotationServer(build_app(desk, run_dir, token=token, annotator=annotator, run_waits=True),
                                       listen, has_token=token is not None, allowed_hosts=allowed_hosts)
        self._say = say

    def __enter__(self) -> WebOracle:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def annotate(self, item_ids: Sequence[int]) -> OracleAnswer:
        asked = self._asked(item_ids)
        self._say(f"{len(asked)} item(s) wait for an expert: open {self.url} (the run goes on once they are "
                  "answered; Ctrl-C stops it, answers given so far are kept)")
        answers = self.desk.wait_for(asked)
        assert answers is not None  # no timeout: waits until answered
        return OracleAnswer(answers, [])
