"""The driver's side of a Ray scoring run: block top-k's → the pool's top-k, and an exact tally.

Each block's top-k (ties at the k-th score included) holds every item of that block that can make
the pool's top-k under the total order ``(-score, id)``, so merging them with ``TopK`` gives
exactly ``rank_pool``'s result. The tally keys every block by its rows ``[first, stop)``: a block
delivered twice is counted once, and at the end the received ranges must tile ``[0, N)`` with no
gap and no overlap, which is the proof that no item was lost or scored twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xal_core.acquisition import PoolRanking
from xal_core.scoring import TopK

from .scorer import CANDIDATE_COLUMNS

__all__ = ["BlockReport", "BlockMerger"]


@dataclass(frozen=True)
class BlockReport:
    """One scored block, as its summary row tells it (progress, statistics, provenance)."""

    first: int
    stop: int
    n_items: int
    worker_pid: int
    node: str
    read_s: float
    forward_s: float
    kernel_s: float
    write_s: float
    resumed: bool = False  # read back from a finished Parquet file of an interrupted run, not scored again
    skipped: str = ""  # why every item of the block was skipped (a damaged chunk), or "" when scored


class BlockMerger:
    """Fold the scorer's output rows into the top-``k`` and the tally of scored rows.

    Args:
        k: the acquisition list's size.
        total: the pool's item count, which the ranges received must cover exactly.
    """

    def __init__(self, k: int, total: int) -> None:
        self.top = TopK(k)
        self.total = total
        self.blocks: dict[tuple[int, int], BlockReport] = {}
        self.duplicates = 0
        self.n_scored = self.n_invalid = self.n_excluded = 0  # of the ranked items, as rank_pool counts them
        self.n_invalid_items = 0  # of all items, requested exclusions included
        self._sources: dict[int, str] = {}  # source ids of the current selection only

    @property
    def items_done(self) -> int:
        return sum(report.n_items for report in self.blocks.values())

    def add(self, rows: dict[str, np.ndarray], *, resumed: bool = False) -> list[BlockReport]:
        """Take one output batch of the scorer (or rows rebuilt from a finished block's file, with
        ``resumed``); return the reports of the blocks it completed."""
        reports = []
        keys = np.stack([rows["first"], rows["stop"]], axis=1)
        for first, stop in np.unique(keys, axis=0).tolist():
            if (first, stop) in self.blocks:
                self.duplicates += 1
                continue
            mine = (rows["first"] == first) & (rows["stop"] == stop)
            candidates = mine & ~rows["summary"]
            if candidates.any():
                self._push(rows, candidates)
            summary = np.flatnonzero(mine & rows["summary"])
            if summary.size:
                reports.append(self._record(rows, int(summary[0]), first, stop, resumed))
        return reports

    def _push(self, rows: dict[str, np.ndarray], candidates: np.ndarray) -> None:
        ids = rows["id"][candidates].astype(np.int64)
        columns = {name: torch.from_numpy(np.ascontiguousarray(rows[name][candidates])) for name in CANDIDATE_COLUMNS}
        self.top.push(torch.from_numpy(ids), torch.from_numpy(rows["score"][candidates].astype(np.float64)), columns)
        self._sources.update(zip(ids.tolist(), rows["source_id"][candidates].tolist(), strict=True))
        selected = set(self.top.result().ids.tolist())
        self._sources = {item: source for item, source in self._sources.items() if item in selected}

    def _record(self, rows: dict[str, np.ndarray], at: int, first: int, stop: int, resumed: bool) -> BlockReport:
        report = BlockReport(
            first=first, stop=stop, n_items=int(rows["n_items"][at]), worker_pid=int(rows["worker_pid"][at]),
            node=str(rows["node"][at]), read_s=float(rows["read_s"][at]), forward_s=float(rows["forward_s"][at]),
            kernel_s=float(rows["kernel_s"][at]), write_s=float(rows["write_s"][at]), resumed=resumed,
            skipped=str(rows["skipped"][at]),
        )
        if report.n_items != stop - first:
            raise RuntimeError(f"block {first}..{stop - 1}: {report.n_items} items reported for {stop - first} rows")
        self.blocks[(first, stop)] = report
        self.n_scored += int(rows["n_scored"][at])
        self.n_invalid += int(rows["n_invalid"][at])
        self.n_excluded += int(rows["n_excluded"][at])
        self.n_invalid_items += int(rows["n_invalid_items"][at])
        return report

    @property
    def skipped(self) -> list[BlockReport]:
        """The blocks whose items were skipped (damaged chunks), in pool order."""
        return [self.blocks[key] for key in sorted(self.blocks) if self.blocks[key].skipped]

    def check_complete(self) -> None:
        """Raise unless the received ranges tile ``[0, total)`` exactly (no item lost, none twice)."""
        expected = 0
        for first, stop in sorted(self.blocks):
            if first != expected:
                what = "missing" if first > expected else "scored twice"
                low, high = sorted((first, expected))
                raise RuntimeError(f"Ray scoring: pool rows {low}..{high - 1} {what}")
            expected = stop
        if expected != self.total:
            raise RuntimeError(f"Ray scoring: pool rows {expected}..{self.total - 1} missing")

    def ranking(self) -> tuple[PoolRanking, list[str]]:
        """The merged top-k (weighted fusion) and its items' source ids, best first."""
        selection = self.top.result()
        ranking = PoolRanking(selection, self.top.selected_columns(), self.n_scored, self.n_invalid, self.n_excluded)
        return ranking, [self._sources[item] for item in selection.ids.tolist()]
