"""``ServiceScorer``: the loop's ``PoolScorer`` that scores through a running ``xal serve``.

It lives on the service's side because it speaks to the service: the loop (``xal_core.loop``)
knows only the ``PoolScorer`` interface, and this class implements it with the domain-level
client (``ScoringClient.run_scoring_job``: start → watch → page). The service runs the same
``score_chunk`` steps as ``InProcessScorer``, so both give the same table and the same acquisitions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from xal_core.acquisition.batch_scoring import ScoringConfig
from xal_core.loop.extras import TableExtras
from xal_core.loop.scorers import (
    EXTRA_COLUMNS,
    PoolScorer,
    Progress,
    ScoredPool,
    empty_scored_pool,
    scored_pool,
)

from .job_results import ScoringJobFailed
from .scoring_client import ScoringClient

__all__ = ["ServiceScorer"]


class ServiceScorer(PoolScorer):
    """Scores through a scoring service that can read this machine's files (a local ``xal serve``).

    The pool is registered under ``pool_name`` (default: the folder's name and a hash of its
    absolute path) on first use; each model file is loaded once under a name made of its stem and a
    hash of its bytes (reused when the server already has it, e.g. after a restart with the same
    ``--state``). Each :meth:`score` is one scoring job over the pool, the labelled items
    excluded, read back item by item in pool order (``ScoringClient.score_every_item``:
    ``GetItemScores``, not a ranking of everything sorted back by id; the loop's strategy alone
    ranks). Its idempotency key is derived from the model, the pool, the exclusions and the config,
    so a learner that restarts mid-job re-attaches to the running job instead of starting another.
    A job that ends FAILED or CANCELLED raises ``RuntimeError`` with the job's error; the next
    :meth:`score` of the same scorer then starts a fresh job.

    Invalid items (a non-finite image or model output) come flagged in the item scores. Extra
    columns (``extras=``) are computed in this process from the same model file (see
    ``PoolScorer.local_extras``), so that file must be readable here too. The job runs with
    ``fusion="weighted"`` and ``missing_roi="uncertainty_only"``: those shape only the service's
    ranking score, which the table does not carry, and keep the job's key independent of them.

    Args:
        client: a connected client; the scorer does not close it unless ``close_client``.
        pool_path: the pool store, as a path the server can read (it is sent absolute).
        pool_name: the name to register the pool under.
        page_size: items per ``GetItemScores`` page.
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
        columns = self.local_extras(self._model_file(model_path), scored.table.ids, extras, progress)
        return ScoredPool(dataclasses.replace(scored.table, **columns), scored.source_ids, scored.columns)

    def _score_on_service(self, model_path: Path, exclude: Sequence[int], config: ScoringConfig,
                          progress: Progress | None, extras: TableExtras) -> ScoredPool:
        path = self._model_file(model_path)
        excluded, unlabeled = self._unlabeled(exclude)
        try:
            for attempt in (0, 1):
                try:
                    model, classes = self._ensure_model(path)
                    if unlabeled.size == 0:
                        return empty_scored_pool(classes, extras)
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
        job_config = dataclasses.replace(config, fusion="weighted", missing_roi="uncertainty_only")
        base_key = _idempotency_key(model, self.pool_name, len(self.store), excluded, job_config)
        attempt = self._attempts.get(base_key, 0)
        key = base_key if attempt == 0 else f"{base_key}-retry{attempt}"
        report = None if progress is None else (lambda status: progress(status.items_done, status.items_total))
        try:
            rows = self.client.score_every_item(model, self.pool_name, config=job_config,
                                                exclude_ids=excluded.tolist(), idempotency_key=key,
                                                on_progress=report, page_size=self.page_size)
        except ScoringJobFailed as failed:
            self._attempts[base_key] = attempt + 1
            raise RuntimeError(f"scoring job {failed.job_id} (model {model}, pool {self.pool_name}) ended "
                               f"{failed.state}: {failed.error or 'no error reported'}") from None
        if not np.array_equal(rows.ids, unlabeled):  # in pool order: exactly the unlabeled items
            reasons = list(dict.fromkeys(reason for _, reason in rows.item_errors))[:3]
            why = f"; the job reports {rows.n_item_errors} item error(s): {'; '.join(reasons)}" \
                if reasons else ""  # e.g. a pool chunk that failed its checksum, its items skipped
            raise RuntimeError(f"scoring job {rows.job_id}: its item scores hold {len(rows)} items, expected the "
                               f"{unlabeled.size} unlabeled ones{why}")
        values = {name: getattr(rows, name) for name in ("ids", "probabilities", "dice", "soft_dice", *EXTRA_COLUMNS)}
        return scored_pool(values, rows.invalid, dict(zip(rows.ids.tolist(), rows.source_ids, strict=True)))

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
