"""One ``xal run``: data, ledger, scorer (a local gRPC service by default), oracle, learner, report.

It lives in the CLI because it wires the core (the loop) to the service (the default scorer is a
local ``xal serve``); from Python, ``xal_core.loop.ActiveLearner`` runs the loop with any scorer.

The pieces are built in the order a failure is cheapest to report: the protocol and data first,
then the ledger (a corrupt ledger stops the run before anything else happens), then the service.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from xal_core.loop.data_spec import DataSpec
from xal_core.loop.experiment import ExperimentData, prepare_data
from xal_core.loop.learner import ActiveLearner, NeedsAnnotations, RoundEvent
from xal_core.loop.ledger import Ledger
from xal_core.loop.oracle import FileOracle, Oracle, SimulatedOracle
from xal_core.loop.protocol import Protocol
from xal_core.loop.report.final_table import final_table_markdown
from xal_core.loop.report.html import write_report
from xal_core.loop.scorers import InProcessScorer

from .annotate import DEFAULT_LISTEN
from .defaults import default_of

__all__ = ["ORACLES", "SCORERS", "RunOutcome", "RunSession"]

#: where a run's pool is scored: a gRPC service (a local ``xal serve`` or one at HOST:PORT) or this process
SCORERS = ("service", "inprocess")
#: who answers: the dataset's own labels, a CSV a person fills in, a person in the browser
ORACLES = ("simulated", "file", "web")


@dataclass(frozen=True)
class RunOutcome:
    report: Path | None
    metrics: Path
    ledger: Path
    final_table: str
    rows: list[dict]
    needs_labels: str | None = None


class RunSession:
    """Everything ``xal run`` needs, from arguments; :meth:`run` does the experiment.

    ``protocol`` (what is measured) and ``data`` (on which data) are carried whole; the keyword
    parameters are the session's own settings, and their defaults here are ``xal run``'s
    (``overlay_images`` is the learner's).
    """

    def __init__(self, run_dir: str | Path, protocol: Protocol, *, data: DataSpec = DataSpec(),
                 scorer: str = "service", server: str = "auto", token_file: Path | None = None,
                 oracle: str = "simulated", labels: Path | None = None, device: str | None = None,
                 overlay_images: int = default_of(ActiveLearner, "overlay_images"), console: Console | None = None,
                 progress: bool = True, annotate_listen: str = DEFAULT_LISTEN, annotate_token_file: Path | None = None,
                 annotate_allowed_hosts: tuple[str, ...] = (),
                 annotator: str = "web") -> None:
        if scorer not in SCORERS:
            raise ValueError(f"scorer: expected {' or '.join(map(repr, SCORERS))}, got {scorer!r}")
        if oracle not in ORACLES:
            raise ValueError(f"oracle: expected one of {', '.join(ORACLES)}, got {oracle!r}")
        self.run_dir = Path(run_dir)
        self.protocol = protocol
        self.data = data
        self.scorer_kind, self.server, self.token_file = scorer, server, token_file
        self.oracle_kind, self.labels = oracle, labels
        self.annotate_listen, self.annotate_token_file, self.annotator = annotate_listen, annotate_token_file, annotator
        self.annotate_allowed_hosts = tuple(annotate_allowed_hosts)
        self.device, self.overlay_images = device, overlay_images
        self.console = console or Console()
        self.progress = progress

    # ------------------------------------------------------------------ pieces
    def prepare(self) -> ExperimentData:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._bar("preparing data") as (bar, task):
            def on_progress(phase: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, description=f"writing the {phase} split")
            return prepare_data(self.run_dir / "data", self.data, on_progress=on_progress)

    def run_config(self, data: ExperimentData) -> dict:
        """What the ledger pins: a resumed run must be the same experiment."""
        return {"protocol": self.protocol.to_dict(),
                "data": {key: data.description.get(key) for key in
                         ("dataset", "data_dir", "size", "options", "pool_size", "val_size", "test_size",
                          "test_fraction", "pool_items", "test_items")}}

    @contextlib.contextmanager
    def _oracle(self, data: ExperimentData, ledger: Ledger) -> Iterator[Oracle]:
        if self.oracle_kind == "simulated":
            yield SimulatedOracle.from_pool(data.pool_path)
        elif self.oracle_kind == "file":
            yield FileOracle.for_pool(self.labels or self.run_dir / "to_label.csv", data.pool_path)
        else:  # the browser page, served while the run lasts, answering into this very ledger
            from xal_core.access import read_token
            from xal_core.loop.oracle import AnnotationDesk
            from xal_web import WebOracle

            token = read_token(self.annotate_token_file) if self.annotate_token_file else None
            with WebOracle(AnnotationDesk(ledger, data.pool), self.run_dir, listen=self.annotate_listen,
                           token=token, annotator=self.annotator, say=self.console.print,
                           allowed_hosts=self.annotate_allowed_hosts) as oracle:
                self.console.print(f"the annotator page is at {oracle.url}")
                yield oracle

    @contextlib.contextmanager
    def _scorer(self, data: ExperimentData):
        if self.scorer_kind == "inprocess":
            with InProcessScorer(data.pool_path) as scorer:
                yield scorer
            return
        from xal_service.client import ScoringClient  # gRPC only when scoring through the service
        from xal_service.client.loop_scorer import ServiceScorer
        from xal_service.server.process import LocalServer

        token = self.token_file.read_text().strip() if self.token_file is not None else None
        if self.server == "auto":
            state = self.run_dir / "service"
            self.console.print(f"starting the scoring service (state {state}) …")
            # the service reads server-side paths only under its roots: this run's models, the pool's folder
            roots = ("--model-root", str((self.run_dir / "models").resolve()),
                     "--pool-root", str(Path(data.pool_path).resolve().parent))
            with LocalServer.start(state, *roots) as server, ScoringClient(server.target) as client, \
                    ServiceScorer(client, data.pool_path) as scorer:
                self.console.print(f"scoring through gRPC at {server.target}")
                yield scorer
        else:
            with ScoringClient(self.server, token=token) as client, ServiceScorer(client, data.pool_path) as scorer:
                yield scorer

    @contextlib.contextmanager
    def _bar(self, description: str):
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=self.console,
                       disable=not self.progress, transient=False)
        with bar:
            task = bar.add_task(description, total=None, detail="")
            yield bar, task

    # ------------------------------------------------------------------ the run
    def run(self) -> RunOutcome:
        data = self.prepare()
        ledger_path = self.run_dir / "ledger.sqlite"
        with Ledger.open(ledger_path, run_config=self.run_config(data)) as ledger, self._scorer(data) as scorer, \
                self._oracle(data, ledger) as oracle:
            learner = ActiveLearner(self.run_dir, self.protocol, data, scorer, oracle, ledger,
                                    device=self.device, overlay_images=self.overlay_images)
            needs = self._learn(learner)
            rows = learner.write_metrics()
        report = None
        if rows and needs is None:
            report = write_report(self.run_dir, title=f"xal run — {data.description.get('dataset')}",
                                  config=self.run_config(data), metrics_rows=rows,
                                  overlays_dir=self.run_dir / "overlays")
        table = final_table_markdown(rows) if rows else "(no round finished yet)"
        return RunOutcome(report, self.run_dir / "metrics.csv", ledger_path, table, rows, needs)

    def _learn(self, learner: ActiveLearner) -> str | None:
        """Run the learner under a progress bar of rounds evaluated (all arms); the message if labels are due."""
        protocol = self.protocol
        arms = learner.arms()
        with self._bar("rounds") as (bar, task):
            bar.update(task, total=len(arms) * (protocol.rounds + 1))

            done = 0

            def on_event(event: RoundEvent) -> None:
                nonlocal done
                if event.phase != "score":  # rounds are recorded between phases, not per scored chunk
                    done = sum(len(learner.ledger.rounds(arm)) for arm in arms)
                detail = f"{event.arm}  round {event.round}: {event.phase}"
                if event.total:
                    detail += f" {event.done}/{event.total}"
                bar.update(task, completed=done, detail=detail)

            learner.on_event = on_event
            try:
                learner.run()
            except NeedsAnnotations as waiting:
                return str(waiting)
        return None
