"""A job's memory does not grow with the pool (issue 29): its results stay in the chunk files.

* the ranking is rebuilt from the chunk files with a bounded top-k (``rank_stored_pool`` reads
  them twice for rank fusion rather than keep every batch), and the ranked items' source ids are
  looked up in the chunk files that hold them, not kept for every item;
* the ranking is written one column per ``.npy`` file and mapped from disk, so a finished job's
  ranking is paged from disk, after a restart too, and a ranking of an older server
  (``ranking.npz``) still reads;
* both give exactly the ranking ``rank_pool`` gives over the same batches.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.service import server_process
from xal_core.acquisition import BatchScores, PoolRanking, ScoringConfig, rank_pool, rank_stored_pool
from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.models import ExplainableModel, build_backbone, export
from xal_core.models.runtime import ThreadSplit, load
from xal_core.scoring import Selection
from xal_service.client import ScoringClient
from xal_service.jobs.files import ChunkFiles
from xal_service.jobs.manager import MAX_ITEM_ERRORS, JobManager

WEIGHTED = ScoringConfig(uncertainty="margin", weight=0.4, threshold=0.5)
RANK = ScoringConfig(uncertainty="margin", weight=0.4, threshold=0.5, fusion="rank")


def random_batch(start: int, size: int, generator: torch.Generator, config: ScoringConfig) -> BatchScores:
    """Scores as ``score_batch`` gives them: a few invalid items, a few unknown ROIs (NaN Dice)."""
    ids = torch.arange(start, start + size)
    u = torch.rand(size, generator=generator, dtype=torch.float32)
    dice = torch.rand(size, generator=generator, dtype=torch.float32)
    dice[torch.rand(size, generator=generator) < 0.1] = float("nan")
    invalid = torch.rand(size, generator=generator) < 0.05
    score = (config.weight * u + (1 - config.weight) * (1 - dice)).to(torch.float64)
    score = torch.where(torch.isnan(dice), u.to(torch.float64), score)
    score = torch.where(invalid, float("-inf"), score)
    if config.fusion == "rank":
        score = torch.full_like(score, float("nan"))
    probabilities = torch.rand(size, 3, generator=generator)
    real = lambda: torch.rand(size, generator=generator, dtype=torch.float32)  # noqa: E731
    return BatchScores(ids=ids, uncertainty=u, dice=dice, soft_dice=real(), roi_energy=real(), pointing_hit=real(),
                       predicted_class=probabilities.argmax(1), probabilities=probabilities, invalid=invalid,
                       excluded=torch.zeros(size, dtype=torch.bool), score=score)


def write_job_files(directory: Path, chunks: int, size: int, config: ScoringConfig, seed: int = 0) -> ChunkFiles:
    """A job folder with ``chunks`` chunk files (one of them skipped: a chunk that failed its checksum)."""
    files = ChunkFiles(directory)
    files.chunks.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    for number in range(chunks):
        if number == 1:
            files.write_skipped(number, np.arange(number * size, (number + 1) * size), "damaged")
            continue
        batch = random_batch(number * size, size, generator, config)
        excluded = torch.zeros(size, dtype=torch.bool)
        excluded[0] = True  # the first item of every chunk was asked to be left out
        files.write_scores(number, batch, [f"case-{int(i):06d}" for i in batch.ids], excluded)
    return files


def rank_job(directory: Path, k: int, config: ScoringConfig, items: int) -> SimpleNamespace:
    job = SimpleNamespace(files=ChunkFiles(directory), spec=SimpleNamespace(k=k, config=config), items_total=items,
                          item_errors=[], n_item_errors=0, ranking=None, source_ids=[])
    JobManager._rank(None, job)  # the method reads only the job
    return job


@pytest.mark.parametrize("config", [WEIGHTED, RANK], ids=["weighted", "rank"])
def test_a_job_ranks_from_its_files_as_rank_pool_does(tmp_path, config):
    files = write_job_files(tmp_path, chunks=6, size=50, config=config)
    job = rank_job(tmp_path, k=40, config=config, items=300)
    batches = [batch for batch, _, _ in files.read() if batch is not None]
    expected = rank_pool(batches, 40, config)
    assert torch.equal(job.ranking.selection.ids, expected.selection.ids)
    assert torch.equal(job.ranking.selection.scores, expected.selection.scores)
    for name, values in expected.columns.items():
        assert torch.allclose(job.ranking.columns[name].double(), values.double(), rtol=0, atol=0, equal_nan=True), name
    assert list(job.source_ids) == [f"case-{i:06d}" for i in expected.selection.ids.tolist()]
    all_errors = [error for _, _, errors in files.read() for error in errors]
    assert job.n_item_errors == len(all_errors) and job.item_errors == all_errors[:MAX_ITEM_ERRORS]
    assert [(i, "damaged") for i in range(50, 100)] == [error for error in all_errors if error[1] == "damaged"]


def test_rank_stored_pool_reads_twice_for_rank_fusion_only(tmp_path):
    generator = torch.Generator().manual_seed(1)
    for config, reads in ((WEIGHTED, 1), (RANK, 2)):
        batches = [random_batch(start, 30, generator, config) for start in range(0, 120, 30)]
        calls = []

        def read(batches=batches, calls=calls):
            calls.append(1)
            return iter(batches)

        ranking = rank_stored_pool(read, 25, config)
        expected = rank_pool(batches, 25, config)
        assert len(calls) == reads
        assert torch.equal(ranking.selection.ids, expected.selection.ids)
        assert (ranking.n_scored, ranking.n_invalid, ranking.n_excluded) == \
            (expected.n_scored, expected.n_invalid, expected.n_excluded)


def test_ranking_memory_does_not_grow_with_the_pool(tmp_path):
    """Python-heap peak of ranking a job's files (tracemalloc): 10× the items, about the same peak.
    Keeping every item's source id, as jobs did, costs ~150 B an item: +1.4 MB here."""
    peaks = []
    for chunks in (11, 101):
        folder = tmp_path / f"job{chunks}"
        write_job_files(folder, chunks=chunks, size=100, config=WEIGHTED)
        tracemalloc.start()
        rank_job(folder, k=20, config=WEIGHTED, items=chunks * 100)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] - peaks[0] < 300_000, peaks


def test_source_ids_are_read_from_the_chunks_that_hold_them(tmp_path, monkeypatch):
    files = write_job_files(tmp_path, chunks=8, size=10, config=WEIGHTED)
    spans = [(n, n * 10 + 1, n * 10 + 9) for n in range(8) if n != 1]
    opened = []
    load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **kw: (opened.append(Path(path).name), load(path, *a, **kw))[1])
    assert files.source_ids_of(np.array([75, 23, 71]), spans) == ["case-000075", "case-000023", "case-000071"]
    assert sorted(opened) == ["2.npz", "7.npz"]
    with pytest.raises(RuntimeError, match="in no chunk file"):
        files.source_ids_of(np.array([15]), spans)  # chunk 1 was skipped


def test_the_ranking_is_mapped_from_disk_and_older_rankings_still_read(tmp_path):
    ranking = PoolRanking(Selection(torch.tensor([4, 1, 7]), torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)),
                          {"dice": torch.tensor([0.1, 0.2, 0.3]), "probabilities": torch.rand(3, 2)}, 10)
    files = ChunkFiles(tmp_path)
    files.save_ranking(ranking, ["a", "bb", "ccc"])
    loaded, sources = files.load_ranking(10)
    assert isinstance(sources, np.memmap) and list(sources) == ["a", "bb", "ccc"]
    assert torch.equal(loaded.selection.ids, ranking.selection.ids)
    assert torch.equal(loaded.columns["probabilities"], ranking.columns["probabilities"])
    files.save_ranking(PoolRanking(Selection(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)),
                                   {"dice": torch.zeros(0)}, 10), [])  # replaced whole; an empty ranking
    empty, sources = files.load_ranking(10)
    assert empty.selection.ids.numel() == 0 and len(sources) == 0 and not (tmp_path / "ranking.tmp").exists()

    older = tmp_path / "older"
    older.mkdir()
    np.savez(older / "ranking.npz", ids=np.array([2, 0]), scores=np.array([0.5, 0.25]),
             source_ids=np.array(["x", "y"]), column_dice=np.array([0.5, 0.75], dtype=np.float32))
    old, old_sources = ChunkFiles(older).load_ranking(3)
    assert old.selection.ids.tolist() == [2, 0] and old_sources == ["x", "y"]
    assert old.columns["dice"].tolist() == [0.5, 0.75]


def test_the_runtime_takes_its_share_of_the_cores(tmp_path):
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("smallcnn", in_channels=1, num_classes=2)).eval()
    path = export(model, tmp_path / "m.onnx", "onnx", input_shape=(1, 16, 16), onnx_exporter="legacy").path
    assert load(path).threads == ThreadSplit().runtime()
    assert load(path, threads=3).threads == 3


def test_a_restarted_server_pages_a_finished_ranking_from_disk(tmp_path):
    ingest(open_dataset("synthetic", size=(32, 32), n=96, seed=5), tmp_path / "pool", chunk=16, workers=1)
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("smallcnn", in_channels=1, num_classes=2)).eval()
    export(model, tmp_path / "model.onnx", "onnx", input_shape=(1, 32, 32), onnx_exporter="legacy")
    roots = ("--model-root", str(tmp_path), "--pool-root", str(tmp_path))
    state = tmp_path / "state"
    server = server_process.start(state, *roots)
    try:
        with ScoringClient(server.target, timeout=120) as client:
            client.load_model("m", str(tmp_path / "model.onnx"))
            client.register_pool("p", str(tmp_path / "pool"))
            first = client.run_scoring_job("m", "p", k=30, page_size=7)
            rows = sum(len(page.items) for page in client.get_item_scores(first.job_id, page_size=10))
    finally:
        assert server.stop() == 0
    assert rows == 96 and len(first.items) == 30
    job_folder = state / "jobs" / first.job_id
    assert sorted(p.name for p in (job_folder / "ranking").iterdir())[:2] == ["column_dice.npy", "column_pointing_hit.npy"]
    server = server_process.start(state, *roots)
    try:
        with ScoringClient(server.target, timeout=120) as client:
            again = [item for page in client.get_ranking(first.job_id, page_size=4) for item in page.items]
    finally:
        assert server.stop() == 0
    assert [(i.id, i.source_id, i.score) for i in again] == [(i.id, i.source_id, i.score) for i in first.items]
