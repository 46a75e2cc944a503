"""Scoring jobs over registered pools: a queue, durable per-chunk results, resume after a crash.

A job lives in ``state/jobs/<id>/``: ``job.json`` (the request, the inputs it pinned, its
progress) and one ``chunks/<n>.npz`` per finished pool chunk (``files``). One worker thread
runs jobs one at a time (they are the GPU-heavy work; inline ``ScoreBatch`` calls stay on the
handler threads). A job that finds chunk files (after a restart, even a ``kill -9``) continues
after the last contiguous finished chunk and rebuilds its ranking from the files: no item lost,
none scored twice.

What may go wrong, and what happens then:

* an item's image or model outputs are not finite: it ranks last and is listed in the job's
  item errors;
* a pool chunk fails its checksum (a file deleted or damaged after ingest): its items are listed
  as item errors and skipped, the rest is ranked;
* the model or pool the job pinned changed before it ran or resumed (``pins``): the job fails
  and says which;
* the state folder cannot be written (``state_probe``): the job fails with that reason, health
  turns NOT_SERVING, and the worker waits until the folder is writable before the next job. The
  worker itself never dies of a job's exception.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np
import torch

from xal_core.acquisition import PoolRanking, ScoringConfig, rank_stored_pool
from xal_core.acquisition.pool_scoring import ScoringStopped, score_chunks
from xal_core.data.pool_store import CorruptChunk
from xal_core.models.runtime import ThreadSplit

from ..engines.ray.config import RayEngineConfig
from ..errors import RequestError, invalid_argument, not_found
from ..process_memory import release_freed_memory
from ..registry.registry import Registry
from . import pins as job_pins
from .files import INVALID_REASON, ChunkFiles
from .pins import Pins
from .state_probe import StateMonitor, StateUnwritable, state_write

__all__ = ["JobSpec", "Job", "JobManager", "TERMINAL"]

log = logging.getLogger("xal.service")
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
MAX_ITEM_ERRORS = 100  # kept in job.json; all are counted


class StageTimes(Protocol):
    """Where a job records the time of each stage (the server's ``Statistics``)."""

    def record_stage(self, name: str, seconds: float, *, items: int = 0) -> None: ...


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
    source_ids: Sequence[str] = field(default_factory=list)  # of the ranked items, best first (mapped from disk)
    pins: Pins | None = None  # the model file and pool content the job runs on (None: an older job)

    @property
    def files(self) -> ChunkFiles:
        return ChunkFiles(self.directory)

    def add_item_errors(self, errors: list[tuple[int, str]]) -> None:
        self.n_item_errors += len(errors)
        room = MAX_ITEM_ERRORS - len(self.item_errors)
        self.item_errors.extend(errors[: max(room, 0)])

    @property
    def items_per_second(self) -> float:
        elapsed = time.monotonic() - self.started if self.started else 0.0
        return self.items_done / elapsed if elapsed > 0 else 0.0

    def save(self) -> None:
        record = {
            "id": self.id, "spec": self.spec.to_json(), "state": self.state, "items_done": self.items_done,
            "items_total": self.items_total, "error": self.error, "item_errors": self.item_errors,
            "n_item_errors": self.n_item_errors, "pins": self.pins.to_json() if self.pins else None,
        }
        scratch = self.directory / "job.json.tmp"
        with state_write():
            scratch.write_text(json.dumps(record, indent=2))
            os.replace(scratch, self.directory / "job.json")

    @classmethod
    def load(cls, directory: Path) -> Job:
        record = json.loads((directory / "job.json").read_text())
        return cls(
            id=record["id"], spec=JobSpec.from_json(record["spec"]), directory=directory, state=record["state"],
            items_done=record["items_done"], items_total=record["items_total"], error=record["error"],
            item_errors=[tuple(e) for e in record["item_errors"]], n_item_errors=record["n_item_errors"],
            pins=Pins.from_json(record.get("pins")),
        )


def _check_excluded(exclude_ids: tuple[int, ...], pool: str, size: int) -> None:
    """Every excluded id must be an item of the pool (its ids are 0..size-1): an id outside it
    cannot have been labelled from this pool (most likely it is another pool's)."""
    if not exclude_ids:
        return
    ids = np.asarray(exclude_ids, dtype=np.int64)
    outside = np.flatnonzero((ids < 0) | (ids >= size))
    if outside.size:
        position = int(outside[0])
        raise invalid_argument(f"exclude_ids[{position}]: {int(ids[position])} is not an item of pool {pool!r} "
                               f"(its items are 0..{size - 1}); {outside.size} of the {ids.size} ids are outside it")


class JobManager:
    """Jobs queued and run one at a time: in this process, or on a Ray cluster when ``ray`` is given.

    Args:
        state, registry, statistics: the server's.
        ray: run jobs on this Ray cluster instead of in this process.
        on_state_writable: told whether the state folder can be written (health listens).
        probe_interval: seconds between probes of the state folder.
        redact: strips the server's paths from a job's error, which clients read.
    """

    def __init__(self, state: Path, registry: Registry, statistics: StageTimes,
                 ray: RayEngineConfig | None = None, *, on_state_writable: Callable[[bool], None] | None = None,
                 probe_interval: float = 1.0, redact: Callable[[str], str] = lambda message: message) -> None:
        self.ray = ray
        self.redact = redact
        self.root = state / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.statistics = statistics
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="xal-jobs", daemon=True)
        self.monitor = StateMonitor(self.root, on_state_writable or (lambda writable: None), probe_interval)
        registry.pinned = self.pinned_model_files

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
                job.ranking, job.source_ids = job.files.load_ranking(job.items_total)
        self._worker.start()
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.stop()
        self._queue.put(None)

    def pinned_model_files(self) -> set[Path]:
        """Model files that unfinished jobs pinned (an upload clean-up keeps them)."""
        with self._lock:
            return {Path(j.pins.model_path) for j in self._jobs.values() if j.pins and j.state not in TERMINAL}

    # ------------------------------------------------------------------ requests
    def submit(self, spec: JobSpec) -> Job:
        model = self.registry.model(spec.model)
        pool = self.registry.pool(spec.pool).store
        if not 1 <= spec.k <= len(pool):
            raise invalid_argument(f"k: must be in [1, {len(pool)}] (the pool's size), got {spec.k}")
        _check_excluded(spec.exclude_ids, spec.pool, len(pool))
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
            job = Job(job_id, spec, directory, items_total=len(pool),
                      pins=job_pins.pin(self.registry, spec.model, spec.pool))
            try:
                with state_write():
                    (directory / "chunks").mkdir(parents=True)
                job.save()
            except StateUnwritable as error:
                self.monitor.probe()
                raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                   f"the server's state folder cannot be written ({error.reason}); "
                                   "no job can be recorded: retry later") from None
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
                self._save_quietly(job)
        return job

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run_one(self._jobs[job_id])
            except BaseException:  # noqa: BLE001 - whatever a job does, the worker lives on
                log.exception("job %s: unexpected error in the job worker", job_id)

    def _run_one(self, job: Job) -> None:
        if job.state != QUEUED or job.cancel_requested.is_set():
            return
        if not self.monitor.wait_until_writable():  # later jobs run once the state can be written
            return
        try:
            self._run(job)
        except StateUnwritable as error:
            job.state = FAILED
            job.error = (f"the server's state folder cannot be written ({error.reason}); the job stopped after "
                         f"{job.items_done} of {job.items_total} items: start it again once the folder is writable")
            log.error("job %s: %s", job.id, job.error)
            self.monitor.probe()  # health NOT_SERVING now, not at the next background probe
            if not self.monitor.wait_until_writable():
                return
        except RequestError as error:
            job.state, job.error = FAILED, self.redact(error.message)
        except Exception as error:  # the job fails, the server goes on
            log.exception("job %s failed", job.id)
            job.state, job.error = FAILED, self.redact(f"{type(error).__name__}: {error}")
        self._save_quietly(job)
        self.registry.collect_uploads()  # the job's pinned upload may be unreferenced now
        release_freed_memory()  # the job's peak (its batches, a runtime evicted while it ran) goes back

    def _save_quietly(self, job: Job) -> None:
        """Record the job's final state; if the folder is unwritable the state stays in memory."""
        try:
            job.save()
        except StateUnwritable as error:
            log.error("job %s: its state (%s) could not be recorded: %s", job.id, job.state, error.reason)
            self.monitor.probe()

    def _run(self, job: Job) -> None:
        if self.ray is not None:
            self._run_on_ray(job)
            return
        spec = job.spec
        inputs = job_pins.resolve(self.registry, spec.model, spec.pool, job.pins)
        store = inputs.store
        excluded_ids = torch.tensor(spec.exclude_ids, dtype=torch.int64)
        files = job.files
        start = files.finished()
        job.state, job.started = RUNNING, time.monotonic()
        job.items_done = min(start * store.chunk_size, len(store))
        job.save()
        resumed_done = job.items_done
        # the forward → score steps shared with the in-process scorer (identical numbers), the
        # kernel of one batch beside the forward pass of the next (``score_chunks``); non-finite
        # items come back flagged ``invalid`` and are reported per item below
        scored = score_chunks(
            inputs.runtime, store.chunks(start=start, verify=True), spec.config,
            kernel_threads=ThreadSplit().kernel_threads, skip=lambda chunk: isinstance(chunk, CorruptChunk),
            should_stop=job.cancel_requested.is_set,
            on_stage=lambda stage, seconds, items: self.statistics.record_stage(stage, seconds, items=items))
        try:
            for chunk, scores in scored:
                if scores is None:  # a chunk that failed its checksum: reported per item, skipped; the rest goes on
                    ids = list(range(chunk.rows.start, chunk.rows.stop))
                    reason = chunk.item_reason
                    log.warning("job %s: pool %r chunk %d %s; its %d items skipped", job.id, spec.pool, chunk.number,
                                chunk.reason, len(ids))
                    files.write_skipped(chunk.number, ids, reason)
                    job.add_item_errors([(i, reason) for i in ids])
                    job.items_done += len(ids)
                    job.save()
                    continue
                files.write_scores(chunk.number, scores, chunk.ids, torch.isin(scores.ids, excluded_ids))
                job.add_item_errors([(int(i), INVALID_REASON) for i in scores.ids[scores.invalid].tolist()])
                job.items_done += len(chunk.index)
                job.save()
        except ScoringStopped:
            job.state = CANCELLED
            return
        finally:
            scored.close()  # the scoring thread ends here, whatever happened
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
        from ..engines.ray import ScoringCancelled, score_pool_on_ray

        spec = job.spec
        inputs = job_pins.resolve(self.registry, spec.model, spec.pool, job.pins)
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
                inputs.pool_path, inputs.model_path, k=spec.k,
                scores_dir=job.directory / "scores", config=spec.config, engine=self.ray,
                exclude_ids=spec.exclude_ids, on_block=on_block, should_stop=job.cancel_requested.is_set,
                resume=True,
            )
        except ScoringCancelled:
            job.state = CANCELLED
            return
        errors = sorted(result.skipped_items + [(item, INVALID_REASON) for item in result.invalid_ids])
        job.item_errors = errors[:MAX_ITEM_ERRORS]  # in pool order, as the in-process worker lists them
        job.n_item_errors = result.n_skipped_items + result.n_invalid_items
        job.files.save_ranking(result.ranking, result.source_ids)
        job.ranking, job.source_ids = job.files.load_ranking(job.items_total)  # mapped from disk (files)
        job.state = SUCCEEDED
        log.info("job %s: %d items on Ray (%d workers, %d chunk(s) resumed from disk)", job.id, job.items_done,
                 len(result.workers), result.resumed_blocks)

    def _rank(self, job: Job) -> None:
        """The ranking and the item errors from the chunk files alone, so a resumed job ranks and
        reports exactly like an uninterrupted one. Memory: the top-k and a few chunks, whatever the
        pool (``rank_stored_pool`` reads the files again for rank fusion rather than keep them);
        the ranked items' source ids are looked up afterwards in the chunk files that hold them."""
        files = job.files
        errors: list[tuple[int, str]] = []  # the first MAX_ITEM_ERRORS, in pool order; all are counted
        n_errors = 0
        spans: list[tuple[int, int, int]] = []  # (chunk number, lowest id, highest id) of chunks with items

        def first_read():
            nonlocal n_errors
            for number, (batch, _, chunk_errors) in enumerate(files.read()):
                n_errors += len(chunk_errors)
                errors.extend(chunk_errors[: max(MAX_ITEM_ERRORS - len(errors), 0)])
                if batch is None or not len(batch.ids):
                    continue
                spans.append((number, int(batch.ids.min()), int(batch.ids.max())))
                yield batch

        def read_again():
            for batch, _, _ in files.read():
                if batch is not None and len(batch.ids):
                    yield batch

        reads = iter((first_read, read_again))
        ranking = rank_stored_pool(lambda: next(reads)(), job.spec.k, job.spec.config)
        job.item_errors, job.n_item_errors = errors, n_errors  # one step: watchers read them
        files.save_ranking(ranking, files.source_ids_of(ranking.selection.ids.numpy(), spans))
        job.ranking, job.source_ids = files.load_ranking(job.items_total)
