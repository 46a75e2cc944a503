"""Scoring jobs end to end: a real pool store, a real exported model, a real server process.

The job's ranking must equal the in-process scorer's on the same pool and model, and a server
killed with SIGKILL mid-job must, once restarted, finish with exactly the same ranking.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
import torch

from tests.pool_edits import record_checksums
from tests.service import server_process
from xal_core.acquisition import ScoringConfig, rank_pool, score_batch
from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.data.pool_store import PoolStore
from xal_core.models import ExplainableModel, build_backbone, export
from xal_core.models.runtime import load
from xal_service.client import JobProgress, RankedItem, ScoringClient
from xal_service.wire import scoring_pb2 as pb

K = 25
PARAMETERS = pb.ScoringParameters(uncertainty=pb.UNCERTAINTY_MARGIN, weight=0.4, threshold=0.5)
CONFIG = ScoringConfig(uncertainty="margin", weight=0.4, threshold=0.5)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    dataset = open_dataset("synthetic", size=(32, 32), n=240, seed=7)
    ingest(dataset, root / "pool", chunk=16, workers=1)
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2)).eval()
    export(model, root / "model.onnx", "onnx", input_shape=(1, 32, 32), onnx_exporter="legacy")
    return root / "pool", root / "model.onnx"


def _roots(*folders: Path) -> list[str]:
    """``xal serve`` reads server-side paths only under its roots: the test's asset folders."""
    return [arg for folder in folders for arg in ("--model-root", str(folder), "--pool-root", str(folder))]


def in_process_ranking(pool_path: Path, model_path: Path, k: int, exclude: list[int]):
    runtime = load(model_path)
    store = PoolStore.open(pool_path)

    def batches():
        for chunk in store.chunks():
            outputs = runtime.run(runtime.metadata.normalise(chunk.images))
            scores = score_batch(chunk.index, *outputs, chunk.roi, CONFIG)
            keep = ~torch.isin(scores.ids, torch.tensor(exclude, dtype=torch.int64))
            yield type(scores)(**{name: getattr(scores, name)[keep] for name in scores.__dataclass_fields__})

    return rank_pool(batches(), k, CONFIG)


def in_process_scores(pool_path: Path, model_path: Path, exclude: list[int]):
    """Every item's scores in pool order, computed here, the exclusions left out."""
    runtime = load(model_path)
    batches = []
    for chunk in PoolStore.open(pool_path).chunks():
        scores = score_batch(chunk.index, *runtime.run(runtime.metadata.normalise(chunk.images)), chunk.roi, CONFIG)
        keep = ~torch.isin(scores.ids, torch.tensor(exclude, dtype=torch.int64))
        batches.append(type(scores)(**{name: getattr(scores, name)[keep] for name in scores.__dataclass_fields__}))
    return type(batches[0])(**{name: torch.cat([getattr(b, name) for b in batches])
                               for name in batches[0].__dataclass_fields__})


def _run_job(client: ScoringClient, **request) -> str:
    job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", parameters=PARAMETERS, **request)).job_id
    final = None
    for status in client.watch_job(job_id):
        final = status
    assert final is not None and final.state == pb.JOB_SUCCEEDED, final
    return job_id


def _ranking(client: ScoringClient, job_id: str, page_size: int = 7) -> list:
    return [item for page in client.get_ranking(job_id, page_size=page_size) for item in page.items]


def test_job_ranking_equals_in_process_ranking(assets, tmp_path):
    pool_path, model_path = assets
    server = server_process.start(tmp_path / "state", *_roots(model_path.parent))
    try:
        with ScoringClient(server.target, timeout=120) as client:
            info = client.load_model("m", str(model_path))
            assert list(info.input_shape) == [1, 32, 32] and len(info.class_names) == 2
            assert client.register_pool("p", str(pool_path)).size == 240
            exclude = [3, 50, 51, 200]
            job_id = _run_job(client, k=K, exclude_ids=exclude, idempotency_key="once")
            items = _ranking(client, job_id)
            again = client.start_scoring(pb.StartScoringRequest(
                model="m", pool="p", parameters=PARAMETERS, k=K, exclude_ids=exclude, idempotency_key="once"))
            assert again.job_id == job_id  # idempotent retry
            # The domain level: the same job through run_scoring_job (same key: re-attached), plain rows.
            seen: list[JobProgress] = []
            result = client.run_scoring_job("m", "p", k=K, config=CONFIG, exclude_ids=exclude,
                                            idempotency_key="once", on_progress=seen.append, page_size=7)
            assert result.job_id == job_id and seen and seen[-1].state == "SUCCEEDED"
            assert seen[-1].items_done == seen[-1].items_total == 240 and result.items_done == 240
            assert all(isinstance(row, RankedItem) for row in result.items)
            assert [(row.id, row.rank, row.score, row.source_id) for row in result.items] == \
                [(i.id, i.rank, i.score, i.source_id) for i in items]
            # Every item's scores in pool order (GetItemScores), for callers whose own strategy ranks.
            rows = client.score_every_item("m", "p", config=CONFIG, exclude_ids=exclude, page_size=50)
            stages = client.statistics().stages
            assert {"read", "forward", "kernel", "rank"} <= set(stages)
    finally:
        assert server.stop() == 0
    expected = in_process_ranking(pool_path, model_path, K, exclude)
    assert [i.id for i in items] == expected.selection.ids.tolist()
    assert [i.rank for i in items] == list(range(1, K + 1))
    torch.testing.assert_close(torch.tensor([i.score for i in items], dtype=torch.float64), expected.selection.scores)
    assert not set(exclude) & {i.id for i in items}
    assert all(i.source_id for i in items)
    every = in_process_scores(pool_path, model_path, exclude)
    assert rows.ids.tolist() == every.ids.tolist() == [i for i in range(240) if i not in exclude]
    assert rows.probabilities.shape == (236, 2) and all(rows.source_ids) and not rows.invalid.any()
    for name in ("uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit", "probabilities"):
        torch.testing.assert_close(torch.from_numpy(getattr(rows, name)), getattr(every, name).float(),
                                   equal_nan=True, msg=name)
    assert rows.predicted_class.tolist() == every.predicted_class.tolist()
    torch.testing.assert_close(torch.from_numpy(rows.score), every.score.double(), equal_nan=True)
    for name in ("uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit"):  # every per-item column
        got = torch.tensor([getattr(i, name) for i in items], dtype=torch.float32)
        torch.testing.assert_close(got, expected.columns[name].float(), equal_nan=True, msg=name)


def test_killed_server_resumes_the_job_with_the_same_ranking(assets, tmp_path):
    pool_path, model_path = assets
    state = tmp_path / "state"
    server = server_process.start(state, *_roots(model_path.parent))
    with ScoringClient(server.target, timeout=120) as client:
        client.load_model("m", str(model_path))
        client.register_pool("p", str(pool_path))
        job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", parameters=PARAMETERS, k=K)).job_id
        chunks = state / "jobs" / job_id / "chunks"
        deadline = time.monotonic() + 120
        while len(list(chunks.glob("*.npz"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    server.process.send_signal(signal.SIGKILL)  # mid-job, no chance to clean up
    server.process.wait()
    finished_before = len(list(chunks.glob("[0-9]*.npz")))
    assert 3 <= finished_before < 15, "the job should have been interrupted part-way"

    server = server_process.start(state, *_roots(model_path.parent))  # same state: registry and job come back
    try:
        with ScoringClient(server.target, timeout=120) as client:
            final = None
            for status in client.watch_job(job_id):
                final = status
            assert final.state == pb.JOB_SUCCEEDED and final.items_done == 240
            items = _ranking(client, job_id, page_size=1000)
    finally:
        assert server.stop() == 0
    expected = in_process_ranking(pool_path, model_path, K, [])
    assert [i.id for i in items] == expected.selection.ids.tolist()
    assert "resumed from disk" in (state / "stdout.log").read_text()


def test_job_errors_are_status_codes(assets, tmp_path):
    pool_path, model_path = assets
    server = server_process.start(tmp_path / "state", *_roots(model_path.parent))
    try:
        with ScoringClient(server.target, timeout=60) as client:
            def code(call):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                return caught.value.code(), caught.value.details()

            assert code(lambda: client.model_metadata("nope"))[0] == grpc.StatusCode.NOT_FOUND
            assert code(lambda: client.cancel_job("nope"))[0] == grpc.StatusCode.NOT_FOUND
            assert code(lambda: client.register_pool("p", str(tmp_path)))[0] == grpc.StatusCode.INVALID_ARGUMENT
            assert code(lambda: client.load_model("m", str(tmp_path / "missing.onnx")))[0] == grpc.StatusCode.INVALID_ARGUMENT
            request = pb.StartScoringRequest(model="m", pool="p", parameters=PARAMETERS, k=K)
            assert code(lambda: client.start_scoring(request))[0] == grpc.StatusCode.NOT_FOUND
            assert code(lambda: list(client.get_item_scores("nope")))[0] == grpc.StatusCode.NOT_FOUND
            client.load_model("m", str(model_path))
            client.register_pool("p", str(pool_path))
            for bad_k in (0, 10_000):
                status, details = code(lambda bad_k=bad_k: client.start_scoring(
                    pb.StartScoringRequest(model="m", pool="p", parameters=PARAMETERS, k=bad_k)))
                assert status == grpc.StatusCode.INVALID_ARGUMENT and "k:" in details
            status, details = code(lambda: client.start_scoring(pb.StartScoringRequest(
                model="m", pool="p", parameters=pb.ScoringParameters(weight=2.0), k=K)))
            assert status == grpc.StatusCode.INVALID_ARGUMENT and "parameters.weight" in details
            assert client.health() == "SERVING"
            uploaded = client.upload_model("streamed", model_path, chunk_mb=1)
            assert uploaded.name == "streamed" and list(uploaded.input_shape) == [1, 32, 32]
            assert code(lambda: client.upload_model("../evil", model_path))[0] == grpc.StatusCode.INVALID_ARGUMENT
            assert sorted(m.name for m in client.list_models().models) == ["m", "streamed"]
            client.model_metadata("streamed")
            assert [m.name for m in client.list_models().models if m.name == "m"] == ["m"]
            assert [p.name for p in client.list_pools().pools] == ["p"]
    finally:
        assert server.stop() == 0


def test_cli_score_writes_the_ranking(assets, tmp_path):
    import csv
    import subprocess
    import sys

    pool_path, model_path = assets
    server = server_process.start(tmp_path / "state", *_roots(model_path.parent))
    try:
        exclude = tmp_path / "labelled.txt"
        exclude.write_text("0\n1\n2\n")
        done = subprocess.run(
            [sys.executable, "-m", "xal_cli.main", "score", "--server", server.target, "--model", "m",
             "--model-path", str(model_path), "--pool", "p", "--pool-path", str(pool_path), "--k", "12",
             "--preset", "dual", "--uncertainty", "margin", "--weight", "0.4", "--exclude", str(exclude),
             "--out", str(tmp_path / "ranking.csv")],
            capture_output=True, text=True, timeout=300, cwd=server_process.ROOT,
        )
        assert done.returncode == 0, done.stderr
        rows = list(csv.DictReader((tmp_path / "ranking.csv").read_text().splitlines()))
        bad = subprocess.run(
            [sys.executable, "-m", "xal_cli.main", "score", "--server", server.target, "--model", "nope",
             "--pool", "p", "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=300,
            cwd=server_process.ROOT,
        )
    finally:
        assert server.stop() == 0
    expected = in_process_ranking(pool_path, model_path, 12, [0, 1, 2])
    assert [int(r["id"]) for r in rows] == expected.selection.ids.tolist()
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    assert [float(r["pointing_hit"]) for r in rows] == expected.columns["pointing_hit"].tolist()
    assert bad.returncode == 2 and "NOT_FOUND" in bad.stderr and "Traceback" not in bad.stderr


def test_cancel_a_queued_job(assets, tmp_path):
    """Jobs run one at a time, so the last of three just submitted is still queued when cancelled."""
    pool_path, model_path = assets
    server = server_process.start(tmp_path / "state", *_roots(model_path.parent))
    try:
        with ScoringClient(server.target, timeout=120) as client:
            client.load_model("m", str(model_path))
            client.register_pool("p", str(pool_path))
            jobs = [client.start_scoring(pb.StartScoringRequest(model="m", pool="p", parameters=PARAMETERS, k=K)).job_id
                    for _ in range(3)]
            assert client.cancel_job(jobs[2]).state == pb.JOB_CANCELLED
            final = {job: list(client.watch_job(job))[-1].state for job in jobs}
            assert final == {jobs[0]: pb.JOB_SUCCEEDED, jobs[1]: pb.JOB_SUCCEEDED, jobs[2]: pb.JOB_CANCELLED}
            with pytest.raises(grpc.RpcError) as caught:
                list(client.get_ranking(jobs[2]))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            states = {j.job_id: j.state for j in client.list_jobs().jobs}
            assert states[jobs[2]] == pb.JOB_CANCELLED
    finally:
        assert server.stop() == 0


def test_bad_item_is_reported_and_the_job_goes_on(assets, tmp_path):
    """An image that went bad on disk (NaN) ranks last, is listed in the job's errors, and the rest is scored."""
    import shutil

    import zarr

    pool_path, model_path = assets
    broken = tmp_path / "pool"
    shutil.copytree(pool_path, broken)
    images = zarr.open_array(str(broken / "scoring" / "images"), mode="r+")
    images[37] = float("nan")
    # ... with its chunk's checksum recorded again: a pool that holds the NaN consistently. (A NaN
    # written behind the manifest's back is a damaged chunk, skipped whole: test_faults_pool.py.)
    record_checksums(broken)
    server = server_process.start(tmp_path / "state", *_roots(model_path.parent, broken.parent))
    try:
        with ScoringClient(server.target, timeout=120) as client:
            client.load_model("m", str(model_path))
            client.register_pool("p", str(broken))
            job_id = _run_job(client, k=240)
            final = client.list_jobs().jobs[0]
            items = _ranking(client, job_id, page_size=1000)
    finally:
        assert server.stop() == 0
    assert final.n_item_errors == 1 and final.item_errors[0].id == 37 and "non-finite" in final.item_errors[0].reason
    assert items[-1].id == 37 and items[-1].score == float("-inf")
    assert len(items) == 240 and all(i.score > float("-inf") for i in items[:-1])
