"""Score a pool on a Ray cluster with Ray Data: read → scorer actors → Parquet + merged top-k.

The pipeline is Ray Data's own, streaming (memory bounded by Ray's backpressure, not the pool):

    read_datasource(PoolStoreDatasource)            one read task and block per pool chunk
      .map_batches(BlockScorer, ActorPoolStrategy)  forward → score_batch → Parquet → block top-k
      .iter_batches()                               on the driver: BlockMerger → the pool's top-k

Fault tolerance is Ray's: the actor pool restarts an actor that died (``max_restarts=-1``) and
re-runs the blocks it held (``max_task_retries=-1``), which are Ray Data's defaults for actor pools
in the pinned release (passing them explicitly is deprecated there). Retried blocks rewrite the
same Parquet file, and the driver's tally proves every pool row was scored exactly once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xal_core.acquisition import PoolRanking, ScoringConfig, rank_pool
from xal_core.data.pool_store import PoolStore

from .config import RayEngineConfig, require_ray
from .item_scores import parse_range, read_item_file, read_item_scores, tidy
from .merge import BlockMerger, BlockReport
from .scorer import block_counts, block_rows

__all__ = ["RayScoringResult", "ScoringCancelled", "connect", "score_pool_on_ray"]

log = logging.getLogger("xal.ray")
MAX_ERRORS = 100


class ScoringCancelled(Exception):
    """The caller's ``should_stop`` said so; Ray stops the pipeline when the iterator is dropped."""


@dataclass
class RayScoringResult:
    """What a Ray scoring run produced.

    Attributes:
        ranking: the pool's top-k, identical to the in-process ``rank_pool`` result.
        source_ids: the ranked items' source ids, best first.
        scores_dir: the per-item Parquet files (``items-<first>-<stop>.parquet``).
        blocks: one report per block (rows, worker, per-stage seconds; ``resumed`` for blocks read
            back from an interrupted run's files).
        invalid_ids: up to 100 items with non-finite images or model outputs (ranked last);
            ``n_invalid_items`` counts them all.
        skipped_items: up to 100 ``(item, reason)`` of the items left out because their pool chunk
            failed its checksum or did not decode; ``n_skipped_items`` counts them all.
        duplicates: blocks Ray delivered more than once (counted once; normally 0).
        removed: Parquet files of abandoned attempts that were deleted.
        wall_s: seconds from submitting the pipeline to the merged ranking.
        merge_s: of which the driver spent merging block top-k's (its share of the per-item cost).
    """

    ranking: PoolRanking
    source_ids: list[str]
    scores_dir: Path
    blocks: list[BlockReport]
    invalid_ids: list[int] = field(default_factory=list)
    n_invalid_items: int = 0
    skipped_items: list[tuple[int, str]] = field(default_factory=list)
    n_skipped_items: int = 0
    duplicates: int = 0
    removed: list[Path] = field(default_factory=list)
    wall_s: float = 0.0
    merge_s: float = 0.0

    @property
    def workers(self) -> set[tuple[str, int]]:
        return {(block.node, block.worker_pid) for block in self.blocks if not block.resumed}

    @property
    def resumed_blocks(self) -> int:
        return sum(block.resumed for block in self.blocks)


def connect(address: str) -> None:
    """Join (``auto``, ``HOST:PORT``, ``ray://…``) or start (``local``) a cluster, once per process."""
    ray = require_ray()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the cluster
    if address == "local":  # a private single-node cluster for this process
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)


def score_pool_on_ray(
    pool_path: str | Path,
    model_path: str | Path,
    *,
    k: int,
    scores_dir: str | Path,
    config: ScoringConfig = ScoringConfig(),
    engine: RayEngineConfig = RayEngineConfig(),
    exclude_ids: Sequence[int] = (),
    on_block: Callable[[BlockReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> RayScoringResult:
    """Rank a pool store with an exported model on Ray; every node must see both paths and ``scores_dir``.

    Args:
        k: the acquisition list's size, in ``[1, len(pool)]``.
        scores_dir: where the per-item Parquet files go; earlier ``items-*.parquet`` there are replaced,
            unless ``resume``.
        exclude_ids: items scored (and written) but left out of the ranking, e.g. the labelled ones.
        on_block: called on the driver for every block as it is merged (progress bars, job status).
        should_stop: polled once per merged block; True raises ``ScoringCancelled``.
        resume: continue an interrupted run of the *same* request (model, pool, config, k,
            exclusions) in ``scores_dir``: every pool chunk whose Parquet file is there and whole is
            read back instead of scored again (files are written atomically, so one that exists is
            whole); only the other chunks go to Ray. The ranking is the uninterrupted run's.
    """
    ray = require_ray()
    store = PoolStore.open(pool_path)
    if not 1 <= k <= len(store):
        raise ValueError(f"k: must be in [1, {len(store)}] (the pool's size), got {k}")
    _check_model(Path(model_path), store)
    scores_dir = Path(scores_dir).resolve()
    scores_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    merger = BlockMerger(k, len(store))
    excluded = np.asarray(sorted(set(exclude_ids)), dtype=np.int64)
    finished = _finished_chunks(scores_dir, store) if resume else {}
    for number, path in sorted(finished.items()):
        scores, source_ids, requested = read_item_file(path)
        if not np.array_equal(requested, np.isin(scores.ids.numpy(), excluded)):
            del finished[number]  # written for other exclusions: not this request's, score it again
            continue
        first = number * store.chunk_size
        summary = {**block_counts(scores, requested), "worker_pid": 0, "node": "", "read_s": 0.0,
                   "forward_s": 0.0, "kernel_s": 0.0, "write_s": 0.0, "skipped": ""}
        rows = block_rows(first, first + len(source_ids), scores, source_ids, ~requested, summary, k, config.fusion)
        for report in merger.add(rows, resumed=True):
            if on_block is not None:
                on_block(report)
    for stale in (path for path in scores_dir.iterdir() if parse_range(path) and path not in finished.values()):
        stale.unlink()
    remaining = [number for number in range(store.n_chunks) if number not in finished]
    if finished:
        log.info("resumed %d of %d chunk(s) from %s", len(finished), store.n_chunks, scores_dir)
    merge_s = 0.0
    if remaining:
        connect(engine.address)
        _check_resources(ray.cluster_resources(), engine)
        merge_s = _score_on_ray(ray, store, remaining, Path(model_path), scores_dir, config, engine, k, excluded,
                                merger, on_block, should_stop)
    merger.check_complete()
    removed = tidy(scores_dir, set(merger.blocks))
    if removed:
        log.info("removed %d per-item file(s) of abandoned attempts", len(removed))
    if config.fusion == "weighted":
        ranking, source_ids = merger.ranking()
    else:
        ranking = rank_pool((scores for scores, _ in read_item_scores(scores_dir)), k, config)
        source_ids = _source_ids(scores_dir, ranking.selection.ids.tolist())
    invalid, n_invalid = _invalid_items(scores_dir) if merger.n_invalid_items else ([], 0)
    skipped = [(item, block.skipped) for block in merger.skipped for item in range(block.first, block.stop)]
    for block in merger.skipped:
        log.warning("pool %s rows %d..%d: %s", store.path, block.first, block.stop - 1, block.skipped)
    return RayScoringResult(
        ranking=ranking, source_ids=source_ids, scores_dir=scores_dir,
        blocks=sorted(merger.blocks.values(), key=lambda block: block.first), invalid_ids=invalid,
        n_invalid_items=n_invalid, skipped_items=skipped[:MAX_ERRORS], n_skipped_items=len(skipped),
        duplicates=merger.duplicates, removed=removed,
        wall_s=time.perf_counter() - started, merge_s=merge_s,
    )


def _finished_chunks(scores_dir: Path, store: PoolStore) -> dict[int, Path]:
    """The pool chunks whose per-item file an earlier attempt finished (its range is the chunk's)."""
    finished = {}
    for path in scores_dir.iterdir():
        span = parse_range(path)
        if span is None or span[0] % store.chunk_size:
            continue
        number = span[0] // store.chunk_size
        if number < store.n_chunks and span[1] == min(span[0] + store.chunk_size, len(store)):
            finished[number] = path
    return finished


def _score_on_ray(ray, store: PoolStore, chunks: list[int], model_path: Path, scores_dir: Path,
                  config: ScoringConfig, engine: RayEngineConfig, k: int, excluded: np.ndarray,
                  merger: BlockMerger, on_block, should_stop) -> float:
    """Run the pipeline over ``chunks`` and fold its output into ``merger``; returns the merge seconds."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from .datasource import PoolStoreDatasource
    from .scorer import BlockScorer

    # override_num_blocks = the chunk count: asked for more blocks than read tasks, Ray Data would
    # split every chunk into pieces, and the scorer would no longer see the in-process batches.
    dataset = ray.data.read_datasource(PoolStoreDatasource(store.path, chunks), num_cpus=engine.read_cpus,
                                       compute=TaskPoolStrategy(size=engine.concurrent_reads),
                                       override_num_blocks=len(chunks))
    context = dataset.context  # the dataset's own copy: settings here touch no other Ray Data user
    context.enable_progress_bars = False  # progress goes through on_block (WatchJob, the CLI's bar)
    context.print_on_execution_start = False
    chunk_bytes = 2 * store.chunk_size * int(store.manifest.get("channels", 1)) * store.size[0] * store.size[1]
    context.target_max_block_size = max(context.target_max_block_size or 0, 2 * chunk_bytes)  # a chunk stays whole
    scored = dataset.map_batches(
        BlockScorer,
        fn_constructor_kwargs={
            "model_path": str(Path(model_path).resolve()), "config": dataclasses.asdict(config), "k": k,
            "scores_dir": str(scores_dir), "roi_format": store.roi_format, "size": store.size,
            "exclude_ids": excluded, "chunk_size": store.chunk_size,
            "threads": engine.threads_per_worker,
        },
        compute=ActorPoolStrategy(size=engine.workers),
        num_cpus=engine.cpus_per_worker,
        num_gpus=engine.gpus_per_worker,
        batch_size=None,  # one batch per block = per pool chunk, as the in-process worker scores them
        batch_format="numpy",
    )
    merge_s = 0.0
    for rows in scored.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        merge_started = time.perf_counter()
        reports = merger.add(rows)
        merge_s += time.perf_counter() - merge_started
        for report in reports:
            if on_block is not None:
                on_block(report)
        if should_stop is not None and should_stop():
            raise ScoringCancelled(f"stopped after {merger.items_done} of {len(store)} items")
    return merge_s


def _check_resources(resources: dict[str, float], engine: RayEngineConfig) -> None:
    """Refuse a layout the cluster cannot hold: Ray Data would wait for resources forever.

    The read tasks need CPU slots beside the actors' (``read_cpus`` each): with every slot held by
    an actor no chunk is ever read.
    """
    cpus = engine.workers * engine.cpus_per_worker + engine.read_cpus
    gpus = engine.workers * engine.gpus_per_worker
    if resources.get("CPU", 0.0) < cpus or resources.get("GPU", 0.0) < gpus:
        raise ValueError(
            f"the Ray cluster has {resources.get('CPU', 0.0):g} CPU and {resources.get('GPU', 0.0):g} GPU; "
            f"{engine.workers} worker(s) × ({engine.cpus_per_worker:g} CPU, {engine.gpus_per_worker:g} GPU) plus "
            f"{engine.read_cpus:g} CPU for reads need {cpus:g} CPU and {gpus:g} GPU: fewer workers or smaller shares"
        )


def _check_model(model_path: Path, store: PoolStore) -> None:
    """Fail on the driver, naming both, before any actor loads a model that cannot read the pool."""
    from xal_core.models.runtime import load

    metadata = load(model_path).metadata
    expected = (metadata.channels, *metadata.input_size)
    found = (int(store.manifest.get("channels", expected[0])), *store.size)
    if found != expected:
        raise ValueError(f"{store.path} holds {found[0]}×{found[1]}×{found[2]} images, {model_path} takes "
                         f"{expected[0]}×{expected[1]}×{expected[2]}")


def _source_ids(scores_dir: Path, ids: list[int]) -> list[str]:
    wanted = set(ids)
    found: dict[int, str] = {}
    for scores, sources in read_item_scores(scores_dir, keep_requested=True):
        for item, source in zip(scores.ids.tolist(), sources.tolist(), strict=True):
            if item in wanted:
                found[item] = source
    return [found[item] for item in ids]


def _invalid_items(scores_dir: Path) -> tuple[list[int], int]:
    listed: list[int] = []
    count = 0
    for scores, _ in read_item_scores(scores_dir, keep_requested=True):
        bad = scores.ids[scores.invalid].tolist()
        count += len(bad)
        listed.extend(bad[: MAX_ERRORS - len(listed)])
    return listed, count
