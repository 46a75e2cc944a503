"""Pool scorers: the unlabeled part of a pool store, scored with an exported model, as a ScoreTable.

One interface, two implementations that give identical tables (and so identical acquisitions):

* :class:`InProcessScorer` runs the model here (``xal_service.runtime``) chunk by chunk through
  :func:`xal_core.acquisition.pool_scoring.score_chunk`;
* :class:`ServiceScorer` asks a running scoring service (``xal serve``) through a
  :class:`~xal_service.client.ScoringClient`: ``RegisterPool``, ``LoadModel``, ``StartScoring`` over
  every unlabeled item, ``WatchJob``, ``GetRanking``. The service runs the same ``score_chunk``
  steps, so the numbers are the same.

Both return a :class:`ScoredPool`: the strategies' :class:`ScoreTable` (rows by ascending id:
``ids``, ``probabilities``, ``dice``, ``soft_dice``, ``invalid``), each item's source id, and the
per-item columns a ledger records (``uncertainty``, ``roi_energy``, ``pointing_hit``,
``predicted_class``). Values pass through float32 in both, the precision of the wire.

``extras=TableExtras(...)`` (``xal_core.loop.extras``) adds the columns only some strategies read:
``embeddings`` (k-center) and ``mc_probabilities`` (BALD, by last-layer MC dropout). The service
does not send feature maps over its wire, so :class:`ServiceScorer` computes them with the same
exported model in this process, over the same chunks: a second forward pass over the pool (about
the cost of scoring it in-process), paid only when extras are asked for. The in-process scorer
takes them from its one forward pass. Either way the extras are the same numbers.

>>> with InProcessScorer("pool/") as scorer:                                  # doctest: +SKIP
...     scored = scorer.score(Path("model.onnx"), exclude=labelled)
...     make_strategy("dual").select(scored.table, 40, rng)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xal_core.acquisition.batch_scoring import BatchScores, ScoringConfig
from xal_core.acquisition.pool_scoring import keep_rows, score_chunk
from xal_core.acquisition.strategies.table import ScoreTable
from xal_core.data.pool_store import PoolStore

from .extras import ExtrasCollector, TableExtras

if TYPE_CHECKING:
    from xal_service.client import ScoringClient

__all__ = ["EXTRA_COLUMNS", "InProcessScorer", "PoolScorer", "ScoredPool", "ServiceScorer"]

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

    def _load(self, path: Path):
        """The model, run in this process (``xal_service.runtime``), loaded once per file version."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key != self._runtime_key:
            from xal_service.runtime import load  # ONNX Runtime / TorchScript only when a model is scored

            self._runtime, self._runtime_key = None, None
            self._runtime = load(path, **self.runtime_options)
            self._runtime_key = key
        return self._runtime


class _Capture:
    """A runtime that keeps its last outputs: ``score_chunk`` runs it, the extras read its features."""

    def __init__(self, runtime: Any) -> None:
        self.runtime, self.metadata = runtime, runtime.metadata
        self.outputs: tuple | None = None

    def run(self, images: torch.Tensor):
        self.outputs = self.runtime.run(images)
        return self.outputs


def _empty(classes: int, extras: TableExtras) -> ScoredPool:
    empty = {name: np.zeros(0) for name in ("ids", "dice", "soft_dice", *EXTRA_COLUMNS)}
    columns = ExtrasCollector(extras).columns(np.zeros(0, dtype=np.int64))
    return _scored_pool({**empty, "probabilities": np.zeros((0, classes))}, np.zeros(0, bool), {}, columns)


def _scored_pool(values: dict[str, Any], invalid: np.ndarray, source_ids: dict[int, str],
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


def _check_shapes(store: PoolStore, metadata: Any, path: Path) -> None:
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
        runtime_options: passed to ``xal_service.runtime.load`` (e.g. ``threads``, ``providers``).
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
        path = self._model_file(model_path)
        excluded, unlabeled = self._unlabeled(exclude)
        runtime = _Capture(self._load(path))
        _check_shapes(self.store, runtime.metadata, path)
        if unlabeled.size == 0:
            return _empty(len(runtime.metadata.class_names), extras)
        excluded_t = torch.from_numpy(excluded)
        batches: list[BatchScores] = []
        collector = ExtrasCollector(extras)
        source_ids: dict[int, str] = {}
        done, total = 0, len(self.store)
        for chunk in self.store.chunks():
            # The whole chunk goes through the model, as in a service job: same batches, same numbers.
            scores = score_chunk(runtime, chunk, config)
            keep = ~torch.isin(scores.ids, excluded_t)
            batches.append(keep_rows(scores, keep))
            if extras:
                logits, features, _ = runtime.outputs
                collector.add(chunk.index, logits, features, keep)
            source_ids.update((i, s) for i, s, k in zip(chunk.index.tolist(), chunk.ids, keep.tolist(), strict=True) if k)
            done += len(chunk.index)
            if progress is not None:
                progress(done, total)
        merged = {name: torch.cat([getattr(b, name) for b in batches]).numpy()
                  for name in ("ids", "probabilities", "dice", "soft_dice", "invalid", *EXTRA_COLUMNS)}
        order = np.argsort(merged["ids"], kind="stable")
        ids = merged["ids"][order]
        return _scored_pool({name: values[order] for name, values in merged.items()}, merged["invalid"][order],
                            source_ids, collector.columns(ids) if extras else None)


class ServiceScorer(PoolScorer):
    """Scores through a scoring service that can read this machine's files (a local ``xal serve``).

    The pool is registered under ``pool_name`` (default: the folder's name and a hash of its
    absolute path) on first use; each model file is loaded once under a name made of its stem and a
    hash of its bytes (reused when the server already has it, e.g. after a restart with the same
    ``--state``). Each :meth:`score` is one ``StartScoring`` job over every unlabeled item (``k`` =
    their number) with an idempotency key derived from the model, the pool, the exclusions and the
    config, so a learner that restarts mid-job re-attaches to the running job instead of starting
    another. A job that ends FAILED or CANCELLED raises ``RuntimeError`` with the job's error; the
    next :meth:`score` of the same scorer then starts a fresh job.

    Invalid items (a non-finite image or model output) are the ones the service ranks with score
    ``-inf``. Extra columns (``extras=``) are computed in this process from the same model file
    (see the module's docstring), so that file must be readable here too. The job is always run with ``fusion="weighted"`` and ``missing_roi="uncertainty_only"``
    so that every unlabeled item is in its ranking (those two change only the ranking score, not
    the table's columns).

    Args:
        client: a connected client; the scorer does not close it unless ``close_client``.
        pool_path: the pool store, as a path the server can read (it is sent absolute).
        pool_name: the name to register the pool under.
        page_size: items per ``GetRanking`` page.
        runtime_options: for the in-process pass that computes extra columns (as ``InProcessScorer``).
    """

    def __init__(
        self,
        client: ScoringClient,
        pool_path: str | Path,
        *,
        pool_name: str | None = None,
        page_size: int = 4096,
        close_client: bool = False,
        runtime_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(pool_path, runtime_options=runtime_options)
        self.client = client
        self.pool_name = pool_name or f"{self.pool_path.name}-{_short_hash(str(self.pool_path).encode())}"
        self.page_size = page_size
        self.close_client = close_client
        self._pool_registered = False
        self._model_names: dict[tuple, str] = {}  # (path, size, mtime) → name
        self._loaded: dict[str, int] = {}  # model name → number of classes
        self._attempts: dict[str, int] = {}  # idempotency key → failed jobs seen with it

    # ------------------------------------------------------------------ setup on first use
    def _model_name(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._model_names:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            self._model_names[key] = f"{path.stem[:100]}-{digest.hexdigest()[:12]}"
        return self._model_names[key]

    def _ensure_model(self, path: Path) -> tuple[str, int]:
        name = self._model_name(path)
        if name not in self._loaded:
            known = {m.name: m for m in self.client.list_models().models}
            info = known.get(name) or self.client.load_model(name, str(path))
            self._loaded[name] = len(info.class_names)
        return name, self._loaded[name]

    def _ensure_pool(self) -> None:
        if not self._pool_registered:
            info = self.client.register_pool(self.pool_name, str(self.pool_path))
            if info.size != len(self.store):
                raise RuntimeError(f"pool {self.pool_path}: the service sees {info.size} items, this process {len(self.store)}")
            self._pool_registered = True

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        model_path: Path,
        *,
        exclude: Sequence[int],
        config: ScoringConfig = ScoringConfig(),
        progress: Progress | None = None,
        extras: TableExtras = TableExtras(),
    ) -> ScoredPool:
        scored = self._score_on_service(model_path, exclude, config, progress, extras)
        if not extras or len(scored) == 0:
            return scored
        columns = self._local_extras(self._model_file(model_path), scored.table.ids, extras, progress)
        return ScoredPool(dataclasses.replace(scored.table, **columns), scored.source_ids, scored.columns)

    def _local_extras(self, path: Path, ids: np.ndarray, extras: TableExtras,
                      progress: Progress | None) -> dict[str, np.ndarray]:
        """The extra columns of items ``ids``, from the model run here over the pool's chunks (the
        batches a service job and ``InProcessScorer`` use, so the numbers are theirs)."""
        runtime = self._load(path)
        _check_shapes(self.store, runtime.metadata, path)
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

    def _score_on_service(self, model_path: Path, exclude: Sequence[int], config: ScoringConfig,
                          progress: Progress | None, extras: TableExtras) -> ScoredPool:
        import grpc

        path = self._model_file(model_path)
        excluded, unlabeled = self._unlabeled(exclude)
        try:
            for attempt in (0, 1):
                try:
                    model, classes = self._ensure_model(path)
                    if unlabeled.size == 0:
                        return _empty(classes, extras)
                    self._ensure_pool()
                    return self._run_job(model, excluded, unlabeled, config, progress)
                except grpc.RpcError as error:
                    if attempt or error.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    # A server restarted without its state forgot the model or the pool: set up again.
                    self._loaded.clear()
                    self._pool_registered = False
            raise AssertionError("unreachable")
        except grpc.RpcError as error:
            code = error.code()
            message = f"scoring service: {code.name if code is not None else 'UNKNOWN'}: {error.details()}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:  # e.g. a model that does not take the pool's images
                raise ValueError(message) from error
            raise RuntimeError(message) from error

    def _run_job(self, model: str, excluded: np.ndarray, unlabeled: np.ndarray, config: ScoringConfig,
                 progress: Progress | None) -> ScoredPool:
        from xal_service import codec
        from xal_service.wire import scoring_pb2 as pb

        job_config = dataclasses.replace(config, fusion="weighted", missing_roi="uncertainty_only")
        k = int(unlabeled.size)
        base_key = _idempotency_key(model, self.pool_name, len(self.store), excluded, job_config)
        attempt = self._attempts.get(base_key, 0)
        key = base_key if attempt == 0 else f"{base_key}-retry{attempt}"
        request = pb.StartScoringRequest(
            model=model, pool=self.pool_name, k=k, exclude_ids=excluded.tolist(), idempotency_key=key,
            strategy=codec.encode_strategy(job_config.uncertainty, job_config.weight, job_config.threshold,
                                           job_config.fusion, job_config.missing_roi),
        )
        job_id = self.client.start_scoring(request).job_id
        final = None
        for status in self.client.watch_job(job_id):
            final = status
            if progress is not None:
                progress(int(status.items_done), int(status.items_total))
        if final is None or final.state != pb.JOB_SUCCEEDED:
            self._attempts[base_key] = attempt + 1
            state = pb.JobState.Name(final.state) if final is not None else "unknown"
            error = final.error if final is not None and final.error else "no error reported"
            raise RuntimeError(f"scoring job {job_id} (model {model}, pool {self.pool_name}) ended {state}: {error}")

        items = [item for page in self.client.get_ranking(job_id, page_size=self.page_size) for item in page.items]
        ids = np.asarray([item.id for item in items], dtype=np.int64)
        if ids.size != k or not np.array_equal(np.sort(ids), unlabeled):
            reasons = list(dict.fromkeys(error.reason for error in final.item_errors))[:3]
            why = f"; the job reports {final.n_item_errors} item error(s): {'; '.join(reasons)}" \
                if reasons else ""  # e.g. a pool chunk that failed its checksum, its items skipped
            raise RuntimeError(f"scoring job {job_id}: the ranking holds {ids.size} items, expected the {k} "
                               f"unlabeled ones{why}")
        order = np.argsort(ids, kind="stable")
        items = [items[i] for i in order]
        score = np.asarray([item.score for item in items], dtype=np.float64)
        values = {name: [getattr(item, name) for item in items]
                  for name in ("dice", "soft_dice", *EXTRA_COLUMNS)}
        values["ids"] = ids[order]
        values["probabilities"] = [list(item.probabilities) for item in items]
        invalid = score == -np.inf  # the service's mark of an item with non-finite inputs
        return _scored_pool(values, invalid, {int(item.id): item.source_id for item in items})

    def close(self) -> None:
        super().close()
        if self.close_client:
            self.client.close()


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def _idempotency_key(model: str, pool: str, pool_size: int, excluded: np.ndarray, config: ScoringConfig) -> str:
    record = {
        "model": model, "pool": pool, "pool_size": pool_size, "config": dataclasses.asdict(config),
        "exclude": hashlib.sha256(excluded.astype("<i8").tobytes()).hexdigest(),
    }
    return "xal-loop-" + hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]
