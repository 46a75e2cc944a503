"""Scoring jobs over registered pools: a queue, durable per-chunk results, resume after a crash.

A job lives in ``state/jobs/<id>/``: ``job.json`` (the request and its progress) and one
``chunks/<n>.npz`` per finished pool chunk, written under a temporary name and renamed, so a chunk
is either wholly recorded or not at all. One worker thread runs jobs one at a time (they are the
GPU-heavy work; inline ``ScoreBatch`` calls stay on the handler threads). A job that finds chunk
files (after a restart, even a ``kill -9``) continues after the last contiguous finished chunk and
rebuilds its ranking from the files: no item lost, none scored twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xal_core.acquisition import BatchScores, PoolRanking, ScoringConfig, rank_pool, score_chunk

from .engines.ray.config import RayEngineConfig
from .errors import RequestError, invalid_argument, not_found
from .registry import Registry
from .statistics import Statistics

__all__ = ["JobSpec", "Job", "JobManager", "TERMINAL"]

log = logging.getLogger("xal.service")
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
MAX_ITEM_ERRORS = 100  # kept in job.json; all are counted
_BATCH_FIELDS = [f.name for f in dataclasses.fields(BatchScores)]


@dataclass(frozen=True)
class JobSpec:
    model: str
    pool: str
    config: ScoringConfig
    k: int
    exclude_ids: tuple[int, ...] = ()
    idempotency_key: str = ""

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "config": dataclasses.asdict(self.config), "exclude_ids": list(self.exclude_ids)}

    @classmethod
    def from_json(cls, record: dict) -> JobSpec:
        return cls(**{**record, "config": ScoringConfig(**record["config"]), "exclude_ids": tuple(record["exclude_ids"])})


@dataclass
class Job:
    id: str
    spec: JobSpec
    directory: Path
    state: str = QUEUED
    items_done: int = 0
    items_total: int = 0
    error: str = ""
    item_errors: list[tuple[int, str]] = field(default_factory=list)
    n_item_errors: int = 0
    started: float = 0.0
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    ranking: PoolRanking | None = None
    source_ids: list[str] = field(default_factory=list)  # of the ranked items, best first

    @property
    def items_per_second(self) -> float:
        elapsed = time.monotonic() - self.started if self.started else 0.0
        return self.items_done / elapsed if elapsed > 0 else 0.0

    def save(self) -> None:
        record = {
            "id": self.id, "spec": self.spec.to_json(), "state": self.state, "items_done": self.items_done,
            "items_total": self.items_total, "error": self.error, "item_errors": self.item_errors,
            "n_item_errors": self.n_item_errors,
        }
        scratch = self.directory / "job.json.tmp"
        scratch.write_text(json.dumps(record, indent=2))
        os.replace(scratch, self.directory / "job.json")

    @classmethod
    def load(cls, directory: Path) -> Job:
        record = json.loads((directory / "job.json").read_text())
        return cls(
            id=record["id"], spec=JobSpec.from_json(record["spec"]), directory=directory, state=record["state"],
            items_done=record["items_done"], items_total=record["items_total"], error=record["error"],
            item_errors=[tuple(e) for e in record["item_errors"]], n_item_errors=record["n_item_errors"],
        )


class JobManager:
    """Jobs queued and run one at a time: in this process, or on a Ray cluster when ``ray`` is given."""

    def __init__(self, state: Path, registry: Registry, statistics: Statistics,
                 ray: RayEngineConfig | None = None) -> None:
        self.ray = ray
        self.root = state / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.statistics = statistics
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="xal-jobs", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start_worker(self) -> None:
        """Reload every job of an earlier run; re-queue those that had not finished."""
        for directory in sorted(self.root.iterdir()):
            if not (directory / "job.json").is_file():
                continue
            job = Job.load(directory)
            self._jobs[job.id] = job
            if job.state not in TERMINAL:
                job.state = QUEUED
                self._queue.put(job.id)
            elif job.state == SUCCEEDED:
                self._load_ranking(job)
        self._worker.start()

    def stop(self) -> None:
        self._queue.put(None)

    # ------------------------------------------------------------------ requests
    def submit(self, spec: JobSpec) -> Job:
        model = self.registry.model(spec.model)
        pool = self.registry.pool(spec.pool).store
        if not 1 <= spec.k <= len(pool):
            raise invalid_argument(f"k: must be in [1, {len(pool)}] (the pool's size), got {spec.k}")
        expected = (model.metadata.channels, *model.metadata.input_size)
        channels = int(pool.manifest.get("channels", expected[0]))
        if (channels, *pool.size) != expected:
            raise invalid_argument(
                f"pool: {spec.pool!r} holds {channels}×{pool.size[0]}×{pool.size[1]} images, "
                f"model {spec.model!r} takes {expected[0]}×{expected[1]}×{expected[2]}"
            )
        with self._lock:
            if spec.idempotency_key:
                for job in self._jobs.values():
                    if job.spec.idempotency_key == spec.idempotency_key:
                        if job.spec != spec:
                            raise invalid_argument("idempotency_key: already used by a different request")
                        return job
            job_id = uuid.uuid4().hex[:16]
            directory = self.root / job_id
            (directory / "chunks").mkdir(parents=True)
            job = Job(job_id, spec, directory, items_total=len(pool))
            job.save()
            self._jobs[job_id] = job
        self._queue.put(job_id)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise not_found(f"job {job_id!r} does not exist")
            return self._jobs[job_id]

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state not in TERMINAL:
            job.cancel_requested.set()
            if job.state == QUEUED:
                job.state = CANCELLED
                job.save()
        return job

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self._jobs[job_id]
            if job.state != QUEUED or job.cancel_requested.is_set():
                continue
            try:
                self._run(job)
            except RequestError as error:
                job.state, job.error = FAILED, error.message
            except Exception as error:  # the job fails, the server goes on
                log.exception("job %s failed", job.id)
                job.state, job.error = FAILED, f"{type(error).__name__}: {error}"
            job.save()

    def _finished_chunks(self, job: Job) -> int:
        done = 0
        while (job.directory / "chunks" / f"{done}.npz").is_file():
            done += 1
        return done

    def _run(self, job: Job) -> None:
        if self.ray is not None:
            self._run_on_ray(job)
            return
        spec = job.spec
        runtime = self.registry.model(spec.model).runtime
        store = self.registry.pool(spec.pool).store
        excluded_ids = torch.tensor(spec.exclude_ids, dtype=torch.int64)
        start = self._finished_chunks(job)
        job.state, job.started = RUNNING, time.monotonic()
        job.items_done = min(start * store.chunk_size, len(store))
        job.save()
        resumed_done = job.items_done
        read_started = time.perf_counter()
        for chunk in store.chunks(start=start):
            self.statistics.record_stage("read", time.perf_counter() - read_started, items=len(chunk.index))
            if job.cancel_requested.is_set():
                job.state = CANCELLED
                return
            items = len(chunk.index)
            # the one forward → score step, shared with the in-process scorer (identical numbers);
            # non-finite items come back flagged ``invalid`` and are reported per item below
            scores = score_chunk(runtime, chunk, spec.config,
                                 on_stage=lambda stage, seconds, items=items: self.statistics.record_stage(
                                     stage, seconds, items=items))
            self._write_chunk(job, chunk.number, scores, chunk.ids, torch.isin(scores.ids, excluded_ids))
            for item in scores.ids[scores.invalid].tolist():
                job.n_item_errors += 1
                if len(job.item_errors) < MAX_ITEM_ERRORS:
                    job.item_errors.append((int(item), "non-finite image or model outputs: ranked last"))
            job.items_done += len(chunk.index)
            job.save()
            read_started = time.perf_counter()
        started = time.perf_counter()
        self._rank(job)
        self.statistics.record_stage("rank", time.perf_counter() - started, items=job.items_total)
        job.state = SUCCEEDED
        log.info("job %s: %d items (%d resumed from disk)", job.id, job.items_done, resumed_done)

    def _run_on_ray(self, job: Job) -> None:
        """The same job on a Ray cluster (``xal_service.engines.ray``); WatchJob sees every merged block.

        A job resumed after a restart continues on Ray: the chunks whose per-item Parquet file an
        earlier attempt finished are read back, not scored again (``resume=True``).
        """
        from .engines.ray import ScoringCancelled, score_pool_on_ray

        spec = job.spec
        job.state, job.started, job.items_done = RUNNING, time.monotonic(), 0
        job.save()

        def on_block(block) -> None:
            if not block.resumed:  # a block read back from disk cost this run no stage time
                for stage in ("read", "forward", "kernel"):
                    self.statistics.record_stage(stage, getattr(block, f"{stage}_s"), items=block.n_items)
            job.items_done += block.n_items
            job.save()

        try:
            result = score_pool_on_ray(
                self.registry.pool(spec.pool).path, self.registry.model(spec.model).path, k=spec.k,
                scores_dir=job.directory / "scores", config=spec.config, engine=self.ray,
                exclude_ids=spec.exclude_ids, on_block=on_block, should_stop=job.cancel_requested.is_set,
                resume=True,
            )
        except ScoringCancelled:
            job.state = CANCELLED
            return
        job.item_errors = [(item, "non-finite image or model outputs: ranked last") for item in result.invalid_ids]
        job.n_item_errors = result.n_invalid_items
        self._save_ranking(job, result.ranking, result.source_ids)
        job.state = SUCCEEDED
        log.info("job %s: %d items on Ray (%d workers, %d chunk(s) resumed from disk)", job.id, job.items_done,
                 len(result.workers), result.resumed_blocks)

    def _write_chunk(self, job: Job, number: int, scores: BatchScores, source_ids: list[str], excluded: torch.Tensor) -> None:
        arrays = {name: getattr(scores, name).numpy() for name in _BATCH_FIELDS}
        arrays["requested_exclusion"] = excluded.numpy()
        arrays["source_ids"] = np.asarray(source_ids, dtype=np.str_)
        target = job.directory / "chunks" / f"{number}.npz"
        scratch = target.with_name(f"{number}.tmp.npz")
        np.savez(scratch, **arrays)
        os.replace(scratch, target)

    def _chunk_files(self, job: Job):
        for number in range(self._finished_chunks(job)):
            with np.load(job.directory / "chunks" / f"{number}.npz") as data:
                keep = ~data["requested_exclusion"]
                batch = BatchScores(**{name: torch.from_numpy(data[name][keep]) for name in _BATCH_FIELDS})
                yield batch, data["source_ids"][keep]

    def _rank(self, job: Job) -> None:
        """The ranking from the chunk files alone, so a resumed job ranks exactly like an uninterrupted one."""
        sources: dict[int, str] = {}

        def batches():
            for batch, source_ids in self._chunk_files(job):
                sources.update(zip(batch.ids.tolist(), source_ids.tolist(), strict=True))
                yield batch

        ranking = rank_pool(batches(), job.spec.k, job.spec.config)
        self._save_ranking(job, ranking, [sources[i] for i in ranking.selection.ids.tolist()])

    def _save_ranking(self, job: Job, ranking: PoolRanking, source_ids: list[str]) -> None:
        job.ranking = ranking
        job.source_ids = source_ids
        arrays = {"ids": ranking.selection.ids.numpy(), "scores": ranking.selection.scores.numpy(),
                  "source_ids": np.asarray(job.source_ids, dtype=np.str_)}
        arrays.update({f"column_{name}": value.numpy() for name, value in ranking.columns.items()})
        scratch = job.directory / "ranking.tmp.npz"
        np.savez(scratch, **arrays)
        os.replace(scratch, job.directory / "ranking.npz")

    def _load_ranking(self, job: Job) -> None:
        from xal_core.scoring import Selection

        with np.load(job.directory / "ranking.npz") as data:
            columns = {key[len("column_"):]: torch.from_numpy(data[key]) for key in data.files if key.startswith("column_")}
            selection = Selection(torch.from_numpy(data["ids"]), torch.from_numpy(data["scores"]))
            job.ranking = PoolRanking(selection, columns, job.items_total)
            job.source_ids = data["source_ids"].tolist()
