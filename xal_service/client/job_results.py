"""What the domain-level client returns: job progress, ranked rows and a finished job, as plain
Python — no protobuf — so that callers (the loop's ``ServiceScorer``, ``xal score``) never touch
the wire. ``ScoringClient.run_scoring_job`` builds them; the conversions from the wire live here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..wire import scoring_pb2 as pb

__all__ = ["ItemScoreRows", "JobProgress", "RankedItem", "ScoringJobFailed", "ScoringJobResult"]


@dataclass(frozen=True)
class JobProgress:
    """One status of a running job, as ``WatchJob`` reports it."""

    job_id: str
    state: str  # QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED
    items_done: int
    items_total: int
    items_per_second: float

    @classmethod
    def from_wire(cls, status: pb.JobStatus) -> JobProgress:
        return cls(status.job_id, job_state(status), int(status.items_done), int(status.items_total),
                   float(status.items_per_second))


@dataclass(frozen=True)
class RankedItem:
    """One row of a job's ranking (rank 1 = acquire first); ``score`` is ``-inf`` for an item whose
    inputs were not finite, ranked last."""

    rank: int
    id: int
    source_id: str
    score: float
    uncertainty: float
    dice: float
    soft_dice: float
    roi_energy: float
    pointing_hit: float
    predicted_class: int
    probabilities: tuple[float, ...]

    @classmethod
    def from_wire(cls, item: pb.RankedItem) -> RankedItem:
        return cls(int(item.rank), int(item.id), item.source_id, float(item.score), float(item.uncertainty),
                   float(item.dice), float(item.soft_dice), float(item.roi_energy), float(item.pointing_hit),
                   int(item.predicted_class), tuple(item.probabilities))


@dataclass(frozen=True)
class ScoringJobResult:
    """A job that succeeded: its ranking and what went wrong item by item (``item_errors`` is
    capped by the service; ``n_item_errors`` counts them all). ``ranking_note`` says why the
    ranking holds fewer than ``k`` items, when it does (empty otherwise)."""

    job_id: str
    items: list[RankedItem]
    items_done: int
    item_errors: list[tuple[int, str]]
    n_item_errors: int
    ranking_note: str = ""

    @classmethod
    def from_wire(cls, final: pb.JobStatus, items: list[RankedItem]) -> ScoringJobResult:
        return cls(final.job_id, items, int(final.items_done),
                   [(int(error.id), error.reason) for error in final.item_errors], int(final.n_item_errors),
                   final.ranking_note)


@dataclass(frozen=True, eq=False)
class ItemScoreRows:
    """Every item's scores of a succeeded job, in pool order (ascending ``ids``), as NumPy columns
    (``GetItemScores``): what a caller that ranks by itself reads. Requested exclusions and the
    items of skipped pool chunks are absent; ``item_errors`` (capped) / ``n_item_errors`` say why.

    ``score`` is float64 (the dual score under weighted fusion; NaN under rank fusion);
    ``uncertainty``, ``dice``, ``soft_dice``, ``roi_energy``, ``pointing_hit`` and ``probabilities``
    ``[N, K]`` float32, the wire's precision; ``predicted_class`` int64; ``invalid``, ``excluded`` bool.
    """

    job_id: str
    ids: np.ndarray
    source_ids: list[str]
    score: np.ndarray
    uncertainty: np.ndarray
    dice: np.ndarray
    soft_dice: np.ndarray
    roi_energy: np.ndarray
    pointing_hit: np.ndarray
    predicted_class: np.ndarray
    probabilities: np.ndarray
    invalid: np.ndarray
    excluded: np.ndarray
    item_errors: list[tuple[int, str]]
    n_item_errors: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def from_wire(cls, final: pb.JobStatus, pages: Iterable[pb.ItemScoresPage], classes: int) -> ItemScoreRows:
        items = [item for page in pages for item in page.items]
        floats = {name: np.asarray([getattr(item, name) for item in items], dtype=np.float32)
                  for name in ("uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit")}
        probabilities = np.asarray([list(item.probabilities) for item in items], dtype=np.float32)
        return cls(
            job_id=final.job_id, ids=np.asarray([item.id for item in items], dtype=np.int64),
            source_ids=[item.source_id for item in items],
            score=np.asarray([item.score for item in items], dtype=np.float64), **floats,
            predicted_class=np.asarray([item.predicted_class for item in items], dtype=np.int64),
            probabilities=probabilities.reshape(len(items), classes) if not items else probabilities,
            invalid=np.asarray([item.invalid for item in items], dtype=bool),
            excluded=np.asarray([item.excluded for item in items], dtype=bool),
            item_errors=[(int(error.id), error.reason) for error in final.item_errors],
            n_item_errors=int(final.n_item_errors),
        )


class ScoringJobFailed(RuntimeError):
    """A job that ended FAILED or CANCELLED (or whose status stream ended early)."""

    def __init__(self, job_id: str, state: str, error: str) -> None:
        super().__init__(f"scoring job {job_id} ended {state}: {error or 'no error reported'}")
        self.job_id, self.state, self.error = job_id, state, error


def job_state(status: pb.JobStatus) -> str:
    return pb.JobState.Name(status.state).removeprefix("JOB_")
