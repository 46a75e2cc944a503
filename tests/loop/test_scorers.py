"""Pool scorers: in process and through a real ``xal serve`` process, the same table to the last bit.

One pool store (256 synthetic 32×32 shortcut-benchmark images in 4 chunks; one image NaN on disk,
three ROIs made unknown), one exported ONNX model and one server for the whole module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from xal_core.acquisition import ScoringConfig
from xal_core.acquisition.strategies import make_strategy
from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.loop.scorers import EXTRA_COLUMNS, InProcessScorer, ScoredPool, ServiceScorer
from xal_core.models import ExplainableModel, build_backbone, export
from xal_service.client import ScoringClient
from xal_service.process import LocalServer

N = 256
NAN_IMAGE = 37
UNKNOWN_ROI = (5, 100, 201)
EXCLUDE = [0, 3, 50, 51, 200, 255]
CONFIG = ScoringConfig(uncertainty="margin", weight=0.4, threshold=0.5)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    ingest(open_dataset("synthetic", size=(32, 32), n=N, seed=11), root / "pool", chunk=64, workers=1)
    group = root / "pool" / "scoring"
    zarr.open_array(str(group / "images"), mode="r+")[NAN_IMAGE] = float("nan")
    known = zarr.open_array(str(group / "roi_known"), mode="r+")
    for item in UNKNOWN_ROI:
        known[item] = False
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2)).eval()
    export(model, root / "model.onnx", "onnx", input_shape=(1, 32, 32), onnx_exporter="legacy")
    return root


@pytest.fixture(scope="module")
def server(assets):
    with LocalServer.start(assets / "state") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with ScoringClient(server.target, timeout=120) as connected:
        yield connected


@pytest.fixture(scope="module")
def both(assets, client):
    """The same pool scored by both scorers (with progress recorded)."""
    pool, model = assets / "pool", assets / "model.onnx"
    progress: dict[str, list] = {"local": [], "service": []}
    with InProcessScorer(pool) as local:
        in_process = local.score(model, exclude=EXCLUDE, config=CONFIG, progress=lambda *p: progress["local"].append(p))
    with ServiceScorer(client, pool) as remote:
        service = remote.score(model, exclude=EXCLUDE, config=CONFIG, progress=lambda *p: progress["service"].append(p))
    return in_process, service, progress


def assert_same(a: ScoredPool, b: ScoredPool) -> None:
    np.testing.assert_array_equal(a.table.ids, b.table.ids)
    for name in ("probabilities", "dice", "soft_dice", "invalid"):
        left, right = getattr(a.table, name), getattr(b.table, name)
        assert left.dtype == right.dtype, name
        np.testing.assert_array_equal(left, right, err_msg=name)  # NaN == NaN here, nothing else is loose
    assert a.table.mc_probabilities is None and b.table.mc_probabilities is None
    assert a.table.embeddings is None and b.table.embeddings is None
    assert set(a.columns) == set(b.columns) == set(EXTRA_COLUMNS)
    for name in EXTRA_COLUMNS:
        np.testing.assert_array_equal(a.columns[name], b.columns[name], err_msg=name)
    assert a.source_ids == b.source_ids


def test_in_process_and_service_tables_are_identical(both):
    in_process, service, progress = both
    assert_same(in_process, service)
    table = in_process.table
    assert table.ids.tolist() == sorted(set(range(N)) - set(EXCLUDE))  # ascending, exclusions honoured
    assert table.probabilities.shape == (N - len(EXCLUDE), 2) and table.probabilities.dtype == np.float64
    assert table.invalid.tolist() == [i == NAN_IMAGE for i in table.ids]
    nan_dice = set(table.ids[np.isnan(table.dice)].tolist())
    assert nan_dice == {NAN_IMAGE, 5, 100, 201}  # unknown ROIs (200 is excluded) and the invalid item
    assert np.isfinite(table.probabilities[table.ids != NAN_IMAGE]).all()
    assert len(set(in_process.source_ids.values())) == len(table) and all(in_process.source_ids.values())
    assert progress["local"][-1] == (N, N) and len(progress["local"]) == 4
    assert progress["service"][-1] == (N, N)
    row = service.row(NAN_IMAGE)
    assert row["invalid"] and row["source_id"] == in_process.source_ids[NAN_IMAGE]
    with pytest.raises(KeyError):
        service.row(EXCLUDE[0])


def test_dual_strategy_acquires_the_same_items(both):
    in_process, service, _ = both
    picks = [make_strategy("dual").select(scored.table, 40, np.random.default_rng(0)) for scored in (in_process, service)]
    assert picks[0].ids.tolist() == picks[1].ids.tolist()
    assert len(picks[0].ids) == 40 and NAN_IMAGE not in picks[0].ids.tolist()
    assert not set(EXCLUDE) & set(picks[0].ids.tolist())
    stochastic = [make_strategy("dual", diversity="power").select(scored.table, 40, np.random.default_rng(1)) for scored in (in_process, service)]
    assert stochastic[0].ids.tolist() == stochastic[1].ids.tolist()


def test_service_scorer_reuses_model_pool_and_job(assets, client, both):
    _, first, _ = both
    jobs_before = len(client.list_jobs().jobs)
    with ServiceScorer(client, assets / "pool") as remote:  # a new scorer: e.g. a restarted learner
        again = remote.score(assets / "model.onnx", exclude=list(reversed(EXCLUDE)), config=CONFIG)
    assert_same(first, again)
    assert len(client.list_jobs().jobs) == jobs_before  # the idempotency key found the finished job
    assert len(client.list_models().models) == 1 and len(client.list_pools().pools) == 1
    name = client.list_models().models[0].name
    assert name.startswith("model-") and len(name) == len("model-") + 12


def test_a_new_labelled_set_is_a_new_job(assets, client, both):
    in_process, _, _ = both
    labelled = [*EXCLUDE, *in_process.table.ids[:10].tolist()]
    with InProcessScorer(assets / "pool") as local, ServiceScorer(client, assets / "pool") as remote:
        a = local.score(assets / "model.onnx", exclude=labelled, config=CONFIG)
        b = remote.score(assets / "model.onnx", exclude=labelled, config=CONFIG)
    assert_same(a, b)
    assert len(a) == N - len(labelled)


def test_everything_labelled_gives_an_empty_table(assets, client):
    with InProcessScorer(assets / "pool") as local, ServiceScorer(client, assets / "pool") as remote:
        tables = [scorer.score(assets / "model.onnx", exclude=range(N)).table for scorer in (local, remote)]
    assert [len(t) for t in tables] == [0, 0] and [t.probabilities.shape for t in tables] == [(0, 2), (0, 2)]


def test_bad_requests_are_clear_errors(assets, client):
    with InProcessScorer(assets / "pool") as local, ServiceScorer(client, assets / "pool") as remote:
        for scorer in (local, remote):
            with pytest.raises(ValueError, match="no such model file"):
                scorer.score(assets / "missing.onnx", exclude=[])
            with pytest.raises(ValueError, match=f"exclude: id {N} is not an item of the pool"):
                scorer.score(assets / "model.onnx", exclude=[1, N])


def test_a_failing_job_raises_with_the_job_error(assets, client):
    """A chunk that went bad on disk after ingest: the job fails, the scorer says why."""
    broken = assets / "broken-pool"
    shutil.copytree(assets / "pool", broken)
    chunk_files = sorted(p for p in (broken / "scoring" / "images").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunk_files) == 4
    chunk_files[2].write_bytes(b"not a compressed chunk")
    with ServiceScorer(client, broken) as remote, pytest.raises(RuntimeError, match=r"scoring job \w+ .* ended JOB_FAILED: \S"):
        remote.score(assets / "model.onnx", exclude=[], config=CONFIG)
    with InProcessScorer(broken) as local, pytest.raises(Exception):  # noqa: B017 - the codec's own error
        local.score(assets / "model.onnx", exclude=[], config=CONFIG)


def test_local_server_reports_a_failed_start(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with code 2 before serving(.|\n)*--tls-cert and --tls-key go together"):
        LocalServer.start(tmp_path / "state", "--tls-cert", str(tmp_path / "cert.pem"), timeout=60)
    assert (tmp_path / "state" / "server.log").is_file()


def test_local_server_target_and_stop(server, client):
    assert server.running() and server.target == f"127.0.0.1:{server.port}"
    assert client.health() == "SERVING"
    assert Path(server.log_path).name == "server.log"


def test_a_model_for_other_images_is_refused_by_both(assets, client):
    torch.manual_seed(1)
    other = assets / "model16.onnx"
    export(ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2)).eval(), other, "onnx",
           input_shape=(1, 16, 16), onnx_exporter="legacy")
    with InProcessScorer(assets / "pool") as local, ServiceScorer(client, assets / "pool") as remote:
        for scorer in (local, remote):
            with pytest.raises(ValueError, match=r"holds 1×32×32 images, model .* takes 1×16×16"):
                scorer.score(other, exclude=[])



def test_a_server_that_forgot_the_pool_is_set_up_again(assets, client, both):
    """As after a restart without its state: the scorer believes the pool registered, the server says NOT_FOUND."""
    _, first, _ = both
    with ServiceScorer(client, assets / "pool", pool_name="forgotten") as remote:
        remote._pool_registered = True
        again = remote.score(assets / "model.onnx", exclude=EXCLUDE, config=CONFIG)
    assert_same(first, again)
    assert "forgotten" in {p.name for p in client.list_pools().pools}
