"""Under the ``anatomy`` or ``none`` ROI source no expert ROI of an unlabelled item reaches a scorer.

Three pools of the same items: ``anatomy`` (the scorer reads each item's organ prior), ``as-expert``
(an expert pool whose "expert ROI" *is* that prior) and ``expert`` (the real expert ROIs). Whatever
scores them — in process, or a real ``xal serve`` over gRPC (the Ray engine: tests/distributed) — the
anatomy pool's per-item Dice equals the as-expert pool's to the last bit and differs from the expert
pool's; under ``none`` every item's misalignment is unknown. And the empty-ROI leak of the oracle
setting, stated: with the expert source a "no finding" item (known-empty ROI) always has Dice 0,
so misalignment 1 reveals its label; with anatomy it does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xal_core.acquisition import ScoringConfig
from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.data.item import Item
from xal_core.loop.scorers import InProcessScorer
from xal_core.models import ExplainableModel, build_backbone, export
from xal_service.client import ScoringClient
from xal_service.client.loop_scorer import ServiceScorer
from xal_service.server.process import LocalServer

N = 96
CONFIG = ScoringConfig(uncertainty="entropy", weight=0.5, threshold=0.5)


class PriorAsExpert:
    """The benchmark with each item's expert ROI replaced by its prior (what the scorer should see)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        item = self.dataset[index]
        return Item(item.id, item.image, item.prior, item.label, item.meta, prior=item.prior)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("roi-sources")
    data = open_dataset("synthetic", size=(32, 32), n=N, seed=5, classes=2)
    ingest(data, root / "anatomy", chunk=32, workers=1, roi_source="anatomy")
    ingest(data, root / "none", chunk=32, workers=1, roi_source="none")
    ingest(data, root / "expert", chunk=32, workers=1, roi_source="expert")
    ingest(PriorAsExpert(data), root / "as-expert", chunk=32, workers=1, roi_source="expert")
    torch.manual_seed(0)  # smallcnn: a 4×4 CAM at 32² (a ResNet's 1×1 grid is flat everywhere)
    model = ExplainableModel(build_backbone("smallcnn", in_channels=1, num_classes=2, smallcnn_width=8)).eval()
    export(model, root / "model.onnx", "onnx", input_shape=(1, 32, 32), onnx_exporter="legacy")
    return root, np.array([item.label for item in data])


def _dice_in_process(pool) -> np.ndarray:
    with InProcessScorer(pool) as scorer:
        scored = scorer.score(pool.parent / "model.onnx", exclude=[], config=CONFIG)
    assert scored.table.ids.tolist() == list(range(N))
    return scored.table.dice


def _dice_service(client, pool) -> np.ndarray:
    with ServiceScorer(client, pool) as scorer:
        scored = scorer.score(pool.parent / "model.onnx", exclude=[], config=CONFIG)
    assert scored.table.ids.tolist() == list(range(N))
    return scored.table.dice


@pytest.fixture(scope="module")
def client(pools):
    root, _ = pools
    with LocalServer.start(root / "state", "--model-root", str(root), "--pool-root", str(root)) as server, \
            ScoringClient(server.target, timeout=120) as connected:
        yield connected


@pytest.mark.parametrize("engine", ["in-process", "service"])
def test_the_scorer_reads_the_prior_never_the_expert_roi(pools, client, engine):
    root, _ = pools
    dice_of = _dice_in_process if engine == "in-process" else (lambda pool: _dice_service(client, pool))
    anatomy, as_expert, expert = (dice_of(root / name) for name in ("anatomy", "as-expert", "expert"))
    np.testing.assert_array_equal(anatomy, as_expert)
    assert np.mean(anatomy != expert) > 0.9, "the anatomy pool scored like the expert pool"
    none = dice_of(root / "none")
    assert np.isnan(none).all(), "a pool without ROIs for the scorer must leave misalignment unknown"


def test_known_empty_expert_rois_reveal_the_label_and_anatomy_does_not(pools):
    """The oracle setting's leak, measured: on the shortcut benchmark every item has a lesion, so
    "no finding" items are made by emptying the expert ROI of half of them."""
    root, _ = pools
    data = open_dataset("synthetic", size=(32, 32), n=N, seed=5, classes=2)

    class NoFindingHalf(PriorAsExpert):
        def __getitem__(self, index: int) -> Item:
            item = self.dataset[index]
            roi = torch.zeros_like(item.roi) if index % 2 else item.roi
            return Item(item.id, item.image, roi, index % 2, item.meta, prior=item.prior)

    ingest(NoFindingHalf(data), root / "leak-expert", chunk=32, workers=1, roi_source="expert")
    ingest(NoFindingHalf(data), root / "leak-anatomy", chunk=32, workers=1, roi_source="anatomy")
    negative = np.arange(N) % 2 == 1
    expert = 1 - _dice_in_process(root / "leak-expert")
    anatomy = 1 - _dice_in_process(root / "leak-anatomy")
    assert (expert[negative] == 1).all(), "a known-empty ROI gives misalignment 1 (unless the map is flat)"
    assert (expert[~negative] < 1).mean() > 0.3
    # With anatomy, misalignment tells nothing of the label: both halves share one distribution.
    assert not (anatomy[negative] == 1).all()
    assert abs(anatomy[negative].mean() - anatomy[~negative].mean()) < 0.1
