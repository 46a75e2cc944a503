"""What the ledger holds, as Python values, and the errors it raises: arms, acquisition rows,
the records read back. No SQL here (``store`` writes and reads them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AcquisitionRecord", "AcquisitionRow", "Arm", "LedgerConflict", "LedgerError", "RoundRecord",
           "acquisition_rows"]


class LedgerError(RuntimeError):
    """The ledger cannot be used as it is: not a ledger, corrupt, newer schema, other run config,
    locked by another writer. The message names the file and how to recover; the file is untouched."""


class LedgerConflict(LedgerError):
    """A recording call contradicts what the ledger holds (another label for an annotated item,
    other items for an acquired round, ...). Nothing of that call was written."""


@dataclass(frozen=True, order=True)
class Arm:
    """One (strategy, seed) pair of a run: its own labeled set and rounds."""

    strategy: str
    seed: int

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ValueError(f"arm: strategy must be a non-empty string, got {self.strategy!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"arm: seed must be an integer, got {self.seed!r}")

    def __str__(self) -> str:
        return f"{self.strategy}/seed={self.seed}"


@dataclass(frozen=True)
class AcquisitionRow:
    """One selected item and its scores at selection time (NaN or None = not computed; stored as NULL).

    Attributes:
        item_id: the pool's integer id; ``source_id`` the dataset's id (kept for humans and as a
            check that a resumed run reads the same pool).
        rank: position in this round's acquisition list, 0 = acquired first; a round's ranks are
            ``0 .. n-1``. Round 0 (the initial random draw) uses the draw order.
        score ... pointing_hit: the dual score and the contract's per-item values (docs/contract.md).
        predicted_class, probabilities: the model's prediction when it was selected.
        extra: any other named per-item numbers a strategy wants kept (BALD, a diversity term).
    """

    item_id: int
    source_id: str
    rank: int
    score: float | None = None
    uncertainty: float | None = None
    dice: float | None = None
    soft_dice: float | None = None
    roi_energy: float | None = None
    pointing_hit: float | None = None
    predicted_class: int | None = None
    probabilities: tuple[float, ...] | None = None
    extra: Mapping[str, float] = field(default_factory=dict)


def acquisition_rows(ranking: Any, source_ids: Sequence[str] | Mapping[int, str]) -> list[AcquisitionRow]:
    """Rows for :meth:`Ledger.record_acquisitions` from a ``PoolRanking`` (``rank_pool``'s result).

    Args:
        ranking: anything with ``selection.ids``, ``selection.scores`` (best first) and ``columns``
            (per-item tensors aligned with the ids, as ``BatchScores.columns()`` names them); columns
            without a field of their own go to ``extra`` when they hold one number per item.
        source_ids: the selected items' source ids, aligned with ``selection.ids``, or a mapping.
    """
    ids = [int(i) for i in ranking.selection.ids.tolist()]
    scores = ranking.selection.scores.tolist()
    columns = {name: value.tolist() for name, value in dict(ranking.columns).items()}
    names = dict(source_ids) if isinstance(source_ids, Mapping) else dict(zip(ids, source_ids, strict=True))
    own = {"uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit", "predicted_class", "probabilities"}
    rows = []
    for rank, item in enumerate(ids):
        value = {name: column[rank] for name, column in columns.items()}
        extra = {name: float(v) for name, v in value.items() if name not in own and isinstance(v, int | float)}
        predicted = value.get("predicted_class")
        probabilities = value.get("probabilities")
        rows.append(AcquisitionRow(
            item, names[item], rank, score=scores[rank],
            **{name: value.get(name) for name in ("uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit")},
            predicted_class=None if predicted is None else int(predicted),
            probabilities=None if probabilities is None else tuple(float(p) for p in probabilities),
            extra=extra))
    return rows


@dataclass(frozen=True)
class AcquisitionRecord:
    """An acquisition as the ledger holds it."""

    arm: Arm
    round: int
    row: AcquisitionRow
    model_version: str
    acquired_at: str


@dataclass(frozen=True)
class RoundRecord:
    """One round's evaluation: ``labels`` the model was trained on, ``metrics`` (NaN kept as NaN)."""

    round: int
    labels: int
    metrics: dict[str, float]
    model_version: str
    recorded_at: str
