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

from tests.pool_edits import record_checksums
from xal_core.acquisition import ScoringConfig
from xal_core.acquisition.strategies import make_strategy
from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.loop.extras import McDropout, TableExtras, extras_for
from xal_core.loop.protocol import Protocol
from xal_core.loop.scorers import EXTRA_COLUMNS, InProcessScorer, ScoredPool
from xal_core.models import ExplainableModel, build_backbone, export
from xal_service.client import ScoringClient
from xal_service.client.loop_scorer import ServiceScorer
from xal_service.server.process import LocalServer

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
    record_checksums(root / "pool")  # the edited chunks are the pool's content now (the service verifies them)
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2)).eval()
    export(model, root / "model.onnx", "onnx", input_shape=(1, 32, 32), onnx_exporter="legacy")
    torch.save(model.linear.state_dict(), root / "head.pt")  # W, b for the MC-dropout passes
    return root


@pytest.fixture(scope="module")
def server(assets):
    roots = ("--model-root", str(assets), "--pool-root", str(assets))  # where the test's files are
    with LocalServer.start(assets / "state", *roots) as running:
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
    """A chunk that went bad on disk after ingest: the job skips its items and reports them; the
    scorer, which needs every unlabeled item scored, raises with the job's item error."""
    broken = assets / "broken-pool"
    shutil.copytree(assets / "pool", broken)
    chunk_files = sorted(p for p in (broken / "scoring" / "images").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunk_files) == 4
    chunk_files[2].write_bytes(b"not a compressed chunk")
    with ServiceScorer(client, broken) as remote, pytest.raises(
            RuntimeError, match=r"scoring job \w+: its item scores hold \d+ items.* pool chunk 2 unreadable.*: item skipped"):
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


# ---------------------------------------------------------------------- extra columns (k-center, BALD)
def head(assets) -> torch.nn.Linear:
    """The exported model's linear head (saved by the ``assets`` fixture)."""
    state = torch.load(assets / "head.pt")
    linear = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    linear.load_state_dict(state)
    return linear


def bald_extras(assets, round: int, **changes) -> TableExtras:
    protocol = Protocol(strategies=("bald",), **changes)
    return extras_for(protocol, "bald", 0, round, head(assets))


def test_extras_are_computed_only_when_asked(both):
    in_process, service, _ = both
    for scored in (in_process, service):
        assert scored.table.embeddings is None and scored.table.mc_probabilities is None


def test_embeddings_are_the_mean_of_the_exported_models_features(assets):
    from xal_core.data import PoolStore
    from xal_core.models.runtime import load

    with InProcessScorer(assets / "pool") as local:
        table = local.score(assets / "model.onnx", exclude=EXCLUDE, config=CONFIG,
                            extras=TableExtras(embeddings=True)).table
    runtime, store = load(assets / "model.onnx"), PoolStore.open(assets / "pool")
    means = {}
    for chunk in store.chunks():
        features = runtime.run(runtime.metadata.normalise(chunk.images))[1]
        assert features.ndim == 4
        means.update(zip(chunk.index.tolist(), features.double().mean(dim=(2, 3)).numpy(), strict=True))
    expected = np.stack([means[i] for i in table.ids.tolist()])
    assert table.embeddings.shape == (N - len(EXCLUDE), 512) and table.mc_probabilities is None
    np.testing.assert_allclose(table.embeddings, expected, rtol=1e-6, atol=1e-7)
    assert np.isnan(table.embeddings[table.ids == NAN_IMAGE]).all()
    assert np.isfinite(table.embeddings[table.ids != NAN_IMAGE]).all()


def test_mc_passes_are_distributions_seeded_by_seed_and_round(assets):
    with InProcessScorer(assets / "pool") as local:
        first = local.score(assets / "model.onnx", exclude=EXCLUDE, extras=bald_extras(assets, 1, mc_passes=7)).table
        again = local.score(assets / "model.onnx", exclude=EXCLUDE, extras=bald_extras(assets, 1, mc_passes=7)).table
        later = local.score(assets / "model.onnx", exclude=EXCLUDE, extras=bald_extras(assets, 2, mc_passes=7)).table
    mc = first.mc_probabilities
    assert mc.shape == (7, N - len(EXCLUDE), 2) and first.embeddings is None
    valid = first.ids != NAN_IMAGE
    np.testing.assert_allclose(mc[:, valid].sum(axis=2), 1.0, atol=1e-12)
    assert (mc[:, valid] >= 0).all() and np.isnan(mc[:, ~valid]).all()
    assert not np.allclose(mc[0, valid], mc[1, valid])  # the passes differ from one another
    np.testing.assert_array_equal(mc, again.mc_probabilities)  # same (seed, round): same masks
    assert not np.allclose(mc[:, valid], later.mc_probabilities[:, valid])  # another round: other masks
    bald = make_strategy("bald").scores(first)
    assert (bald[valid] > 0).all() and bald[~valid].tolist() == [-np.inf]


def test_without_dropout_every_pass_is_the_models_prediction(assets):
    linear = head(assets)
    extras = TableExtras(mc_dropout=McDropout.from_linear(linear, passes=3, p=0.0, seed=5))
    with InProcessScorer(assets / "pool") as local:
        table = local.score(assets / "model.onnx", exclude=EXCLUDE, extras=extras).table
    valid = table.ids != NAN_IMAGE
    for passed in table.mc_probabilities:
        np.testing.assert_allclose(passed[valid], table.probabilities[valid], atol=1e-6)


def test_both_scorers_give_the_same_extras(assets, client):
    extras = bald_extras(assets, 3, mc_passes=4, mc_dropout=0.3)
    extras = TableExtras(embeddings=True, mc_dropout=extras.mc_dropout)
    local_progress: list = []
    with InProcessScorer(assets / "pool") as local, ServiceScorer(client, assets / "pool") as remote:
        a = local.score(assets / "model.onnx", exclude=EXCLUDE, config=CONFIG, extras=extras)
        b = remote.score(assets / "model.onnx", exclude=EXCLUDE, config=CONFIG, extras=extras,
                         progress=lambda *p: local_progress.append(p))
        empty = remote.score(assets / "model.onnx", exclude=range(N), extras=extras).table
    for name in ("embeddings", "mc_probabilities"):
        np.testing.assert_array_equal(getattr(a.table, name), getattr(b.table, name), err_msg=name)
    assert a.table.mc_probabilities.shape == (4, N - len(EXCLUDE), 2)
    assert local_progress[-1] == (N, N)  # the service's job, then the pass here for the extras
    assert empty.embeddings.shape[0] == 0 and empty.mc_probabilities.shape == (4, 0, 2)
    picks = [make_strategy("bald", diversity="kcenter").select(s.table, 20) for s in (a, b)]
    assert picks[0].ids.tolist() == picks[1].ids.tolist() and len(picks[0]) == 20


def test_a_head_of_another_model_is_refused(assets):
    torch.manual_seed(7)
    other = torch.nn.Linear(512, 2)
    extras = TableExtras(mc_dropout=McDropout.from_linear(other, passes=2, p=0.5, seed=0))
    with InProcessScorer(assets / "pool") as local, pytest.raises(ValueError, match="do not reproduce the model's logits"):
        local.score(assets / "model.onnx", exclude=EXCLUDE, extras=extras)
