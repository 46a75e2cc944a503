"""Scoring on a real local Ray cluster: same ranking as in-process, a killed worker loses nothing.

One cluster for the module (``ray.init(num_cpus=2)``, no dashboard, a 200 MB object store, usage
statistics off; everything stays on this host): starting Ray and its actors costs seconds on a 2-core host, so the tests
share it. Every run uses a real Zarr pool store and a real exported ONNX model; the reference is
the in-process path (``PoolStore.chunks`` → ONNX Runtime → ``score_batch`` → ``rank_pool``), and
rankings must be equal exactly (ids, scores and reported columns).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip(
    "ray", reason="the `ray` extra is not installed (pip install 'xal-ml[ray]'; `make test` installs it with dev)"
)

from tests.service.faults import chunk_file  # noqa: E402
from xal_cli.main import main as xal  # noqa: E402
from xal_core.acquisition import ScoringConfig, rank_pool, score_batch  # noqa: E402
from xal_core.data import open_dataset  # noqa: E402
from xal_core.data.ingest import ingest  # noqa: E402
from xal_core.data.pool_store import PoolStore  # noqa: E402
from xal_core.models import ExplainableModel, build_backbone, export  # noqa: E402
from xal_core.models.runtime import load  # noqa: E402
from xal_service.engines.ray import RayEngineConfig, score_pool_on_ray  # noqa: E402

ITEMS, CHUNK, K = 240, 16, 25
CONFIG = ScoringConfig(uncertainty="margin", weight=0.4, threshold=0.5)
EXCLUDE = [3, 50, 51, 200]
# Two actors of half a CPU each leave a slot for the chunk reads on the 2-CPU cluster; the wiring
# tests use one actor (starting an actor, imports and model load, is most of a run's time here).
ENGINE = RayEngineConfig(address="auto", workers=2, cpus_per_worker=0.5, read_cpus=0.25)
ONE_WORKER = RayEngineConfig(address="auto", workers=1, cpus_per_worker=1.0, read_cpus=0.25)


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # another module's cluster would carry other settings
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, logging_level="warning")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-assets")
    ingest(open_dataset("synthetic", size=(32, 32), n=ITEMS, seed=7), root / "pool", chunk=CHUNK, workers=1)
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2)).eval()
    export(model, root / "model.onnx", "onnx", input_shape=(1, 32, 32), onnx_exporter="legacy")
    return root / "pool", root / "model.onnx"


def in_process_ranking(pool_path: Path, model_path: Path, k: int, exclude: list[int], config: ScoringConfig = CONFIG):
    """What the service's in-process job worker computes, with nothing from the Ray engine."""
    runtime = load(model_path)
    excluded = torch.tensor(exclude, dtype=torch.int64)

    def batches():
        for chunk in PoolStore.open(pool_path).chunks():
            scores = score_batch(chunk.index, *runtime.run(runtime.metadata.normalise(chunk.images)), chunk.roi, config)
            keep = ~torch.isin(scores.ids, excluded)
            yield type(scores)(**{name: getattr(scores, name)[keep] for name in scores.__dataclass_fields__})

    return rank_pool(batches(), k, config)


def assert_same_ranking(got, expected) -> None:
    assert got.selection.ids.tolist() == expected.selection.ids.tolist()
    assert torch.equal(got.selection.scores, expected.selection.scores)
    assert got.columns.keys() == expected.columns.keys()
    for name, values in expected.columns.items():
        assert torch.equal(got.columns[name], values), name
    assert (got.n_scored, got.n_invalid, got.n_excluded) == (expected.n_scored, expected.n_invalid, expected.n_excluded)


def parquet_ids(scores_dir: Path) -> np.ndarray:
    files = sorted(scores_dir.glob("items-*.parquet"))
    return np.sort(np.concatenate([pq.read_table(path, columns=["id"])["id"].to_numpy() for path in files]))


def test_ray_ranking_equals_the_in_process_ranking(cluster, assets, tmp_path):
    pool_path, model_path = assets
    blocks = []
    result = score_pool_on_ray(pool_path, model_path, k=K, scores_dir=tmp_path / "scores", config=CONFIG,
                               engine=ENGINE, exclude_ids=EXCLUDE, on_block=blocks.append)
    expected = in_process_ranking(pool_path, model_path, K, EXCLUDE)
    assert_same_ranking(result.ranking, expected)
    assert not set(EXCLUDE) & set(result.ranking.selection.ids.tolist())
    store = PoolStore.open(pool_path)
    sources = {int(i): s for chunk in store.chunks() for i, s in zip(chunk.index, chunk.ids, strict=True)}
    assert result.source_ids == [sources[i] for i in result.ranking.selection.ids.tolist()]
    # Progress: one report per pool chunk, every item once; per-item Parquet holds every item once.
    assert sorted((b.first, b.stop) for b in blocks) == [(s, min(s + CHUNK, ITEMS)) for s in range(0, ITEMS, CHUNK)]
    assert np.array_equal(parquet_ids(result.scores_dir), np.arange(ITEMS))
    table = pq.read_table(result.scores_dir / "items-000000000048-000000000064.parquet")
    assert table["requested_exclusion"].to_pylist() == [i in EXCLUDE for i in range(48, 64)]
    assert result.duplicates == 0 and not result.removed


def test_an_interrupted_run_resumes_from_its_finished_chunks(cluster, assets, tmp_path):
    """A run stopped part-way (its driver gone, as when ``xal serve`` is killed) leaves whole files
    for the chunks it finished: ``resume`` reads those back, scores only the others, and ranks as an
    uninterrupted run does. A file written for other exclusions, and a half-written temporary one,
    are not taken for finished work."""
    pool_path, model_path = assets
    scores = tmp_path / "scores"
    first = score_pool_on_ray(pool_path, model_path, k=K, scores_dir=scores, config=CONFIG, engine=ENGINE,
                              exclude_ids=EXCLUDE)
    files = sorted(scores.glob("items-*.parquet"))
    kept = {path.name: path.stat().st_mtime_ns for path in files[:6]}
    for path in files[6:]:
        path.unlink()  # chunks 6.. never finished
    (scores / ".items-000000000096-000000000112.parquet.123.tmp").write_bytes(b"half a file")
    resumed = score_pool_on_ray(pool_path, model_path, k=K, scores_dir=scores, config=CONFIG, engine=ENGINE,
                                exclude_ids=EXCLUDE, resume=True)
    assert_same_ranking(resumed.ranking, first.ranking)
    assert resumed.source_ids == first.source_ids
    assert [b.resumed for b in resumed.blocks] == [True] * 6 + [False] * (len(files) - 6)
    assert {path.name: path.stat().st_mtime_ns for path in sorted(scores.glob("items-*.parquet"))[:6]} == kept
    assert np.array_equal(parquet_ids(scores), np.arange(ITEMS)) and not list(scores.glob(".*.tmp"))
    # Other exclusions (none): the chunks that held an excluded item were written for another
    # request and are scored again; the others hold the same numbers and are read back.
    other = score_pool_on_ray(pool_path, model_path, k=K, scores_dir=scores, config=CONFIG, engine=ENGINE,
                              resume=True)
    touched = {item // CHUNK for item in EXCLUDE}
    assert [b.resumed for b in other.blocks] == [b.first // CHUNK not in touched for b in other.blocks]
    assert_same_ranking(other.ranking, in_process_ranking(pool_path, model_path, K, []))


def test_damaged_chunks_are_skipped_per_item_and_the_rest_is_ranked(cluster, assets, tmp_path):
    """Issue 15, item 7 on the Ray engine: a chunk file deleted or damaged after ingest (an image
    chunk zarr would read as zeros, an ids chunk read as empty ids, flipped ROI bytes) is caught by
    the read task's checksum check. Its items are reported one by one with the in-process worker's
    reason and left out; the rest ranks exactly as the in-process path ranks it. Before, the read
    task took the raw chunk unverified and scored blank images as if they were real."""
    pool_path, model_path = assets
    pool = tmp_path / "pool"
    shutil.copytree(pool_path, pool)
    chunk_file(pool, "images", 3).unlink()
    chunk_file(pool, "ids", 7).unlink()
    roi = chunk_file(pool, "roi_packed", 11)
    data = bytearray(roi.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 8])
    roi.write_bytes(bytes(data))
    damaged = (3, 7, 11)
    skipped = [item for number in damaged for item in range(number * CHUNK, (number + 1) * CHUNK)]

    result = score_pool_on_ray(pool, model_path, k=K, scores_dir=tmp_path / "scores", config=CONFIG,
                               engine=ONE_WORKER, exclude_ids=EXCLUDE)

    assert result.n_skipped_items == len(skipped) == 48
    assert [item for item, _ in result.skipped_items] == skipped
    for item, reason in result.skipped_items:
        assert reason.startswith(f"pool chunk {item // CHUNK} ") and reason.endswith("item skipped"), reason
    assert [b.first // CHUNK for b in result.blocks if b.skipped] == list(damaged)
    assert_same_ranking(result.ranking, in_process_ranking(pool_path, model_path, K, EXCLUDE + skipped))
    assert np.array_equal(parquet_ids(result.scores_dir), np.setdiff1d(np.arange(ITEMS), skipped))


def test_a_killed_worker_changes_nothing(cluster, assets, tmp_path):
    pool_path, model_path = assets
    killed: list[int] = []
    after_kill: list = []

    def kill_first_worker(block) -> None:
        if killed:
            after_kill.append(block)
            return
        os.kill(block.worker_pid, signal.SIGKILL)  # mid-run: 14 of 15 chunks still to come
        killed.append(block.worker_pid)

    result = score_pool_on_ray(pool_path, model_path, k=K, scores_dir=tmp_path / "scores", config=CONFIG,
                               engine=ENGINE, on_block=kill_first_worker)
    assert killed and after_kill, "the kill should have happened part-way through the run"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # the actor process really is gone
    assert_same_ranking(result.ranking, in_process_ranking(pool_path, model_path, K, []))
    assert sum(b.n_items for b in result.blocks) == ITEMS
    assert np.array_equal(parquet_ids(result.scores_dir), np.arange(ITEMS))  # every item exactly once
    assert not list(result.scores_dir.glob(".*.tmp"))


def test_service_job_on_ray_reports_progress_through_watch_job(cluster, assets, tmp_path):
    from xal_service.client import ScoringClient
    from xal_service.server.serve import ServerConfig, start_server
    from xal_service.wire import scoring_pb2 as pb

    pool_path, model_path = assets
    server = start_server(ServerConfig(listen="127.0.0.1:0", state=tmp_path / "state", ray=ONE_WORKER,
                                       model_roots=(model_path.parent,), pool_roots=(pool_path.parent,)))
    try:
        with ScoringClient(f"127.0.0.1:{server.port}", timeout=300) as client:
            client.load_model("m", str(model_path))
            client.register_pool("p", str(pool_path))
            parameters = pb.ScoringParameters(uncertainty=pb.UNCERTAINTY_MARGIN, weight=0.4, threshold=0.5)
            job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", parameters=parameters, k=K,
                                                                 exclude_ids=EXCLUDE)).job_id
            seen = [(status.state, status.items_done) for status in client.watch_job(job_id)]
            items = [item for page in client.get_ranking(job_id) for item in page.items]
            every = [item.id for page in client.get_item_scores(job_id, page_size=50) for item in page.items]
            stages = client.statistics().stages
    finally:
        server.stop()
    assert every == [i for i in range(ITEMS) if i not in EXCLUDE]  # the per-item stream reads the Parquet files
    assert seen[-1] == (pb.JOB_SUCCEEDED, ITEMS)
    assert any(0 < done < ITEMS for _, done in seen), f"no intermediate progress in {seen}"
    assert [done for _, done in seen] == sorted(done for _, done in seen)
    expected = in_process_ranking(pool_path, model_path, K, EXCLUDE)
    assert [item.id for item in items] == expected.selection.ids.tolist()
    assert torch.equal(torch.tensor([item.score for item in items], dtype=torch.float64), expected.selection.scores)
    assert {"read", "forward", "kernel"} <= set(stages)
    assert len(list((tmp_path / "state" / "jobs" / job_id / "scores").glob("items-*.parquet"))) == ITEMS // CHUNK


def test_killed_ray_server_resumes_its_job_from_the_finished_chunks(cluster, assets, tmp_path):
    """``xal serve --engine ray`` SIGKILLed mid-job, then started again on the same state: the job
    completes, reads back the chunks the first process finished instead of scoring them again, and
    ranks as the in-process path does."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the service launcher
    from service import server_process

    from xal_service.client import ScoringClient
    from xal_service.wire import scoring_pb2 as pb

    pool_path, model_path = assets
    state = tmp_path / "state"
    flags = ("--engine", "ray", "--ray-address", "auto", "--ray-workers", "1",
             "--model-root", str(model_path.parent), "--pool-root", str(pool_path.parent))
    server = server_process.start(state, *flags, timeout=120)
    parameters = pb.ScoringParameters(uncertainty=pb.UNCERTAINTY_MARGIN, weight=0.4, threshold=0.5)
    with ScoringClient(server.target, timeout=120) as client:
        client.load_model("m", str(model_path))
        client.register_pool("p", str(pool_path))
        job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", parameters=parameters, k=K,
                                                             exclude_ids=EXCLUDE)).job_id
        scores = state / "jobs" / job_id / "scores"
        deadline = time.monotonic() + 300  # the actor's start (imports, model load) is slow on a busy 2-core host
        while len(list(scores.glob("items-*.parquet"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    server.process.send_signal(signal.SIGKILL)  # the Ray driver dies mid-job; Ray reclaims its actors
    server.process.wait()
    finished = {path.name: path.stat().st_mtime_ns for path in scores.glob("items-*.parquet")}
    assert 3 <= len(finished) < ITEMS // CHUNK, "the job should have been interrupted part-way"

    server = server_process.start(state, *flags, timeout=120)
    try:
        with ScoringClient(server.target, timeout=300) as client:
            final = None
            for status in client.watch_job(job_id):
                final = status
            assert final.state == pb.JOB_SUCCEEDED and final.items_done == ITEMS
            items = [item for page in client.get_ranking(job_id) for item in page.items]
    finally:
        assert server.stop() == 0
    expected = in_process_ranking(pool_path, model_path, K, EXCLUDE)
    assert [item.id for item in items] == expected.selection.ids.tolist()
    assert torch.equal(torch.tensor([item.score for item in items], dtype=torch.float64), expected.selection.scores)
    assert {name: (scores / name).stat().st_mtime_ns for name in finished} == finished  # not rewritten
    assert np.array_equal(parquet_ids(scores), np.arange(ITEMS))
    # An actor of the killed driver may finish one more chunk before Ray reaps it: at least these.
    resumed = re.search(r"(\d+) chunk\(s\) resumed from disk", (state / "stdout.log").read_text())
    assert resumed and len(finished) <= int(resumed.group(1)) < ITEMS // CHUNK


def test_xal_score_engine_ray_with_rank_fusion(cluster, assets, tmp_path):
    pool_path, model_path = assets
    out = tmp_path / "ranking.csv"
    started = time.monotonic()
    code = xal(["score", "--engine", "ray", "--ray-address", "auto", "--ray-workers", "1", "--model-path", str(model_path), "--pool-path", str(pool_path), "--k", str(K),
                "--preset", "dual", "--uncertainty", "margin", "--weight", "0.4", "--fusion", "rank",
                "--out", str(out)])
    assert code == 0, f"xal score failed after {time.monotonic() - started:.0f} s"
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = in_process_ranking(pool_path, model_path, K, [], ScoringConfig(uncertainty="margin", weight=0.4,
                                                                               fusion="rank"))
    assert [int(row["id"]) for row in rows] == expected.selection.ids.tolist()
    assert [int(row["rank"]) for row in rows] == list(range(1, K + 1))
    np.testing.assert_allclose([float(row["score"]) for row in rows], expected.selection.scores.numpy(), rtol=1e-5)
    assert np.array_equal(parquet_ids(Path(f"{out}.scores")), np.arange(ITEMS))


def test_bad_layouts_fail_before_any_actor_starts(cluster, assets, tmp_path):
    pool_path, model_path = assets
    with pytest.raises(ValueError, match="need 4.25 CPU"):
        score_pool_on_ray(pool_path, model_path, k=K, scores_dir=tmp_path / "s", engine=RayEngineConfig(workers=4))
    with pytest.raises(ValueError, match="GPU"):
        score_pool_on_ray(pool_path, model_path, k=K, scores_dir=tmp_path / "s",
                          engine=RayEngineConfig(workers=1, cpus_per_worker=0.5, gpus_per_worker=1))
    with pytest.raises(ValueError, match=r"k: must be in \[1, 240\]"):
        score_pool_on_ray(pool_path, model_path, k=0, scores_dir=tmp_path / "s", engine=ENGINE)
    assert xal(["score", "--engine", "ray", "--pool-path", str(pool_path), "--out", str(tmp_path / "x.csv")]) == 2


def test_ray_reads_the_anatomy_prior_never_the_expert_roi(cluster, tmp_path):
    """The Ray engine reads what every scorer reads (``scoring/``): under the ``anatomy`` ROI source
    the items' priors, scored to the last bit like an expert pool whose ROIs are those priors, and
    unlike the real expert pool (tests/loop/test_roi_source_scorers.py does in process and service)."""
    from xal_core.data.item import Item

    data = open_dataset("synthetic", size=(32, 32), n=64, seed=5)

    class PriorAsExpert:
        def __getattr__(self, name):
            return getattr(data, name)

        def __len__(self):
            return len(data)

        def __getitem__(self, index):
            item = data[index]
            return Item(item.id, item.image, item.prior, item.label, item.meta, prior=item.prior)

    ingest(data, tmp_path / "anatomy", chunk=16, workers=1, roi_source="anatomy")
    ingest(PriorAsExpert(), tmp_path / "as-expert", chunk=16, workers=1)
    ingest(data, tmp_path / "expert", chunk=16, workers=1)
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("smallcnn", in_channels=1, num_classes=2, smallcnn_width=8)).eval()
    export(model, tmp_path / "model.onnx", "onnx", input_shape=(1, 32, 32), onnx_exporter="legacy")

    def dice(pool: str) -> np.ndarray:
        result = score_pool_on_ray(tmp_path / pool, tmp_path / "model.onnx", k=8, scores_dir=tmp_path / f"s-{pool}",
                                   config=CONFIG, engine=ONE_WORKER)
        parts = [pq.read_table(path, columns=["id", "dice"]) for path in sorted(result.scores_dir.glob("items-*.parquet"))]
        ids = np.concatenate([p["id"].to_numpy() for p in parts])
        values = np.concatenate([p["dice"].to_numpy() for p in parts])
        return values[np.argsort(ids)]

    anatomy, as_expert = dice("anatomy"), dice("as-expert")
    np.testing.assert_array_equal(anatomy, as_expert)
    expert = in_process_ranking(tmp_path / "expert", tmp_path / "model.onnx", 64, [])  # every item, in process
    by_id = dict(zip(expert.selection.ids.tolist(), expert.columns["dice"].tolist(), strict=True))
    assert np.mean(anatomy != np.array([by_id[i] for i in range(64)])) > 0.9
