"""Pool scorers: the unlabeled part of a pool store, scored with an exported model, as a ScoreTable.

One interface, two implementations that give identical tables (and so identical acquisitions):

* :class:`InProcessScorer` (here) runs the model in this process (``xal_core.models.runtime``)
  chunk by chunk through :func:`xal_core.acquisition.pool_scoring.score_chunks` (the kernel of
  one batch beside the forward pass of the next);
* ``xal_service.loop_scorer.ServiceScorer`` asks a running scoring service (``xal serve``). It lives
  on the service's side of the house: the loop is a library and knows nothing of gRPC. The service
  runs the same ``score_chunks`` steps, so the numbers are the same.

Both return a :class:`ScoredPool`: the strategies' :class:`ScoreTable` (rows by ascending id:
``ids``, ``probabilities``, ``dice``, ``soft_dice``, ``invalid``), each item's source id, and the
per-item columns a ledger records (``uncertainty``, ``roi_energy``, ``pointing_hit``,
``predicted_class``). Values pass through float32 in both, the precision of the wire.

``extras=TableExtras(...)`` (``xal_core.loop.extras``) adds the columns only some strategies read:
``embeddings`` (k-center) and ``mc_probabilities`` (BALD, by last-layer MC dropout). The service
does not send feature maps over its wire, so ``ServiceScorer`` computes them with the same
exported model in this process, over the same chunks (:meth:`PoolScorer.local_extras`): a second
forward pass over the pool, paid only when extras are asked for. The in-process scorer takes them
from its one forward pass. Either way the extras are the same numbers.

>>> with InProcessScorer("pool/") as scorer:                                  # doctest: +SKIP
...     scored = scorer.score(Path("model.onnx"), exclude=labelled)
...     make_strategy("dual").select(scored.table, 40, rng)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xal_core.acquisition.batch_scoring import BatchScores, ScoringConfig
from xal_core.acquisition.pool_scoring import keep_rows, score_chunks
from xal_core.acquisition.strategies.table import ScoreTable
from xal_core.data.pool_store import PoolStore

from .extras import ExtrasCollector, TableExtras

__all__ = ["EXTRA_COLUMNS", "InProcessScorer", "PoolScorer", "Progress", "ScoredPool", "check_shapes",
           "empty_scored_pool", "scored_pool"]

#: Per-item columns of a :class:`ScoredPool` besides the table, aligned with ``table.ids``.
EXTRA_COLUMNS = ("uncertainty", "roi_energy", "pointing_hit", "predicted_class")

Progress = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class ScoredPool:
    """The unlabeled pool as scored by one model.

    Attributes:
        table: what the strategies read (rows by ascending id).
        source_ids: item id → the item's id in the pool's source (e.g. ``"case_012/slice_077"``).
        columns: ``uncertainty``, ``roi_energy`` and ``pointing_hit`` (float64, NaN for invalid
            items, and for unknown ROIs, where the scoring function says so) and
            ``predicted_class`` (int64), aligned with ``table.ids``.
    """

    table: ScoreTable
    source_ids: dict[int, str] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    def row(self, item: int) -> dict[str, Any]:
        """Everything known about one item, e.g. for the ledger's "scores at selection time"."""
        position = int(np.searchsorted(self.table.ids, item))
        if position >= len(self.table) or self.table.ids[position] != item:
            raise KeyError(f"item {item} is not in this scored pool")
        out: dict[str, Any] = {
            "id": int(item),
            "source_id": self.source_ids[int(item)],
            "probabilities": self.table.probabilities[position].tolist(),
            "dice": float(self.table.dice[position]),
            "soft_dice": float(self.table.soft_dice[position]) if self.table.soft_dice is not None else float("nan"),
            "invalid": bool(self.table.invalid_mask[position]),
        }
        for name, values in self.columns.items():
            out[name] = values[position].item()
        return out


class PoolScorer(ABC):
    """Scores the unlabeled part of a pool store with an exported model: the strategies' ScoreTable.

    Args:
        pool_path: a pool store written by ``xal ingest`` (item ids are its row numbers).
    """

    def __init__(self, pool_path: str | Path, *, runtime_options: dict[str, Any] | None = None) -> None:
        self.pool_path = Path(pool_path).resolve()
        self.store = PoolStore.open(self.pool_path)
        self.runtime_options = dict(runtime_options or {})
        self._runtime: Any = None
        self._runtime_key: tuple | None = None

    @abstractmethod
    def score(
        self,
        model_path: Path,
        *,
        exclude: Sequence[int],
        config: ScoringConfig = ScoringConfig(),
        progress: Progress | None = None,
        extras: TableExtras = TableExtras(),
    ) -> ScoredPool:
        """Score every pool item not in ``exclude`` (the labelled ones).

        Args:
            model_path: an exported model (ONNX or TorchScript, ``xal export``).
            exclude: item ids left out of the table; each must be an id of the pool.
            config: the scoring parameters; ``threshold`` decides the Dice and ``uncertainty`` the
                ``uncertainty`` column. (``weight``, ``fusion`` and ``missing_roi`` only shape the
                service's own ranking score, which the table does not carry.)
            progress: called with ``(items done, items total)`` over the whole pool as chunks finish.
            extras: the table's optional columns to compute (``embeddings``, ``mc_probabilities``);
                none by default, as they cost memory (``N × C'`` and ``T × N × K`` floats).

        Raises:
            ValueError: no such model file; an excluded id outside the pool; a model that does not
                take the pool's images (the service's INVALID_ARGUMENT errors); an MC-dropout head
                that does not reproduce the model's logits.
            RuntimeError: the scoring failed (the service's job error, or another RPC error).
        """

    def close(self) -> None:
        """Release what the scorer holds (a model loaded in this process)."""
        self._runtime, self._runtime_key = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ shared by both
    def _unlabeled(self, exclude: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique excluded ids, sorted unlabeled ids), checked against the pool."""
        excluded = np.unique(np.asarray(list(exclude), dtype=np.int64))
        n = len(self.store)
        if excluded.size and (excluded[0] < 0 or excluded[-1] >= n):
            bad = int(excluded[0] if excluded[0] < 0 else excluded[-1])
            raise ValueError(f"exclude: id {bad} is not an item of the pool {self.pool_path} (ids 0..{n - 1})")
        unlabeled = np.setdiff1d(np.arange(n, dtype=np.int64), excluded, assume_unique=True)
        return excluded, unlabeled

    @staticmethod
    def _model_file(model_path: str | Path) -> Path:
        path = Path(model_path).resolve()
        if not path.is_file():
            raise ValueError(f"{path}: no such model file")
        return path

    def local_extras(self, path: Path, ids: np.ndarray, extras: TableExtras,
                     progress: Progress | None = None) -> dict[str, np.ndarray]:
        """The extra columns of items ``ids``, from the model run here over the pool's chunks (the
        batches a service job and ``InProcessScorer`` use, so the numbers are theirs): what a
        scorer whose scores come from elsewhere (the service) adds for ``extras``."""
        runtime = self._load(path)
        check_shapes(self.store, runtime.metadata, path)
        collector = ExtrasCollector(extras)
        wanted = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        done, total = 0, len(self.store)
        for chunk in self.store.chunks():
            keep = torch.isin(chunk.index, wanted)
            if bool(keep.any()):
                logits, features, _ = runtime.run(runtime.metadata.normalise(chunk.images))
                collector.add(chunk.index, logits, features, keep)
            done += len(chunk.index)
            if progress is not None:
                progress(done, total)
        return collector.columns(ids)

    def _load(self, path: Path):
        """The model, run in this process (``xal_core.models.runtime``), loaded once per file version."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key != self._runtime_key:
            from xal_core.models.runtime import load  # ONNX Runtime / TorchScript only when a model is scored

            self._runtime, self._runtime_key = None, None
            self._runtime = load(path, **self.runtime_options)
            self._runtime_key = key
        return self._runtime


def empty_scored_pool(classes: int, extras: TableExtras) -> ScoredPool:
    """The table of a pool with nothing left unlabeled."""
    empty = {name: np.zeros(0) for name in ("ids", "dice", "soft_dice", *EXTRA_COLUMNS)}
    columns = ExtrasCollector(extras).columns(np.zeros(0, dtype=np.int64))
    return scored_pool({**empty, "probabilities": np.zeros((0, classes))}, np.zeros(0, bool), {}, columns)


def scored_pool(values: dict[str, Any], invalid: np.ndarray, source_ids: dict[int, str],
                 extras: dict[str, np.ndarray] | None = None) -> ScoredPool:
    """A ScoredPool from per-item values in ascending id order (``ids``, ``probabilities``, ``dice``,
    ``soft_dice`` and ``EXTRA_COLUMNS``), built the same way by both scorers so their tables agree;
    ``extras``: ``embeddings`` and/or ``mc_probabilities`` in the same row order."""
    ids = np.asarray(values["ids"], dtype=np.int64)
    table = ScoreTable(ids=ids, probabilities=_wire_float(values["probabilities"]), dice=_wire_float(values["dice"]),
                       soft_dice=_wire_float(values["soft_dice"]), invalid=np.asarray(invalid, dtype=bool),
                       **(extras or {}))
    columns = {name: np.asarray(values[name], dtype=np.int64) if name == "predicted_class" else _wire_float(values[name])
               for name in EXTRA_COLUMNS}
    return ScoredPool(table, {int(i): source_ids[int(i)] for i in ids}, columns)


def check_shapes(store: PoolStore, metadata: Any, path: Path) -> None:
    """The service's check before a job: the model must take the pool's images as they are."""
    expected = (metadata.channels, *metadata.input_size)
    held = (int(store.manifest.get("channels", expected[0])), *store.size)
    if tuple(held) != tuple(expected):
        raise ValueError(f"pool {store.path} holds {held[0]}×{held[1]}×{held[2]} images, model {path} takes "
                         f"{expected[0]}×{expected[1]}×{expected[2]}")


def _wire_float(values: np.ndarray) -> np.ndarray:
    """float64 through float32: the precision both scorers report (the service's wire is float32)."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


class InProcessScorer(PoolScorer):
    """Runs the model in this process, chunk by chunk (memory: a few chunks, whatever the pool size).

    Args:
        pool_path: the pool store.
        runtime_options: passed to ``xal_core.models.runtime.load`` (e.g. ``threads``, ``providers``).
    """

    def __init__(self, pool_path: str | Path, *, runtime_options: dict[str, Any] | None = None) -> None:
        super().__init__(pool_path, runtime_options=runtime_options)

    def score(
        self,
        model_path: Path,
        *,
        exclude: Sequence[int],
        config: ScoringConfig = ScoringConfig(),
        progress: Progress | None = None,
        extras: TableExtras = TableExtras(),
    ) -> ScoredPool:
        from xal_core.models.runtime import ThreadSplit  # with the runtime: only when a model is scored

        path = self._model_file(model_path)
        excluded, unlabeled = self._unlabeled(exclude)
        runtime = self._load(path)
        check_shapes(self.store, runtime.metadata, path)
        if unlabeled.size == 0:
            return empty_scored_pool(len(runtime.metadata.class_names), extras)
        excluded_t = torch.from_numpy(excluded)
        batches: list[BatchScores] = []
        collector = ExtrasCollector(extras)

        def add_extras(chunk, rows: slice, outputs: tuple) -> None:  # on the scoring thread, batch by batch
            index = chunk.index[rows]
            collector.add(index, outputs[0], outputs[1], ~torch.isin(index, excluded_t))

        source_ids: dict[int, str] = {}
        done, total = 0, len(self.store)
        # The whole pool goes through the model chunk by chunk as in a service job (same batches,
        # same numbers), the kernel of one batch beside the forward pass of the next.
        for chunk, scores in score_chunks(runtime, self.store.chunks(), config,
                                          kernel_threads=ThreadSplit().kernel_threads,
                                          on_outputs=add_extras if extras else None):
            keep = ~torch.isin(scores.ids, excluded_t)
            batches.append(keep_rows(scores, keep))
            source_ids.update((i, s) for i, s, k in zip(chunk.index.tolist(), chunk.ids, keep.tolist(), strict=True) if k)
            done += len(chunk.index)
            if progress is not None:
                progress(done, total)
        merged = {name: torch.cat([getattr(b, name) for b in batches]).numpy()
                  for name in ("ids", "probabilities", "dice", "soft_dice", "invalid", *EXTRA_COLUMNS)}
        order = np.argsort(merged["ids"], kind="stable")
        ids = merged["ids"][order]
        return scored_pool({name: values[order] for name, values in merged.items()}, merged["invalid"][order],
                            source_ids, collector.columns(ids) if extras else None)
