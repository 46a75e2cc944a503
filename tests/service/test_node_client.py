"""A client in a second language: ``examples/node`` (plain JavaScript on @grpc/grpc-js, the proto
loaded at run time, no generated code) against a real token-protected ``xal serve``, compared with
the Python client on the same server: the same scores (within 1e-6) and the same ranking.

Needs ``node`` and the example's npm packages (``make node-example``: ``npm ci`` in examples/node);
skipped, with the reason, where they are missing.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.service import server_process
from tests.service.faults import Assets, make_assets
from xal_core.acquisition import ScoringConfig
from xal_core.scoring import Roi
from xal_service.client import ScoringClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"
NODE = shutil.which("node")
TOKEN = "node-client-token-for-the-tests-0123456789"

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: examples/node needs Node.js >= 18")


@pytest.fixture(scope="module")
def installed():
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir() or \
            not (EXAMPLE / "node_modules" / "@grpc" / "proto-loader").is_dir():
        pytest.skip("examples/node has no node_modules: run `make node-example` (npm ci in examples/node)")


@pytest.fixture(scope="module")
def assets(installed, tmp_path_factory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("node-assets"))


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    running = server_process.start(root / "state", "--token-file", str(token_file),
                                   "--model-root", str(assets.onnx.parent), "--pool-root", str(assets.pool.parent))
    running.token_file = token_file
    yield running
    assert running.stop() == 0, (running.state / "stdout.log").read_text()


def _node(server, *args: str, token: bool = True) -> tuple[int, object, str]:
    credentials = ["--token-file", str(server.token_file)] if token else []
    command = [NODE, str(EXAMPLE / "example.js"), args[0], "--target", server.target, *credentials, *args[1:]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    output = done.stdout if done.returncode == 0 else done.stderr
    try:
        parsed = json.loads(output.strip().splitlines()[-1]) if output.strip() else None
    except json.JSONDecodeError:
        parsed = None
    return done.returncode, parsed, done.stderr


def _number(value) -> float:
    return float(value) if isinstance(value, str) else value  # "NaN", "Infinity", "-Infinity"


def _batches():
    """A mask batch (one unknown ROI) and a box batch (a clipped box, a known-empty and an unknown
    ROI), every value exact in float32 so that both clients send the same bytes."""
    generator = torch.Generator().manual_seed(2026)
    batch, channels, grid, frame = 6, 16, (5, 7), (28, 30)

    def outputs():
        logits = (3 * torch.randn(batch, 4, generator=generator)).float()
        features = (torch.rand(batch, channels, *grid, generator=generator) + 0.05).float()
        weights = torch.randn(batch, channels, generator=generator).float()
        return logits, features, weights

    known = [True] * (batch - 1) + [False]
    masks = torch.rand(batch, *frame, generator=generator) < 0.3
    boxes = [torch.tensor([[2.5, 3.0, 20.0, 22.5], [10.0, 1.0, 28.0, 12.0]]), torch.tensor([[0.0, 0.0, 14.5, 9.0]]),
             torch.tensor([[-4.0, 5.0, 12.0, 31.5]]), torch.tensor([[6.0, 6.0, 7.5, 8.0]]), torch.zeros(0, 4), None]
    return [
        (*outputs(), Roi.from_masks(masks, known=known), dict(uncertainty="margin", weight=0.3, threshold=0.4)),
        (*outputs(), Roi.from_boxes(boxes, size=frame), dict(fusion="rank", missing_roi="exclude")),
    ]


def _as_json(logits, features, weights, roi, parameters, ids) -> dict:
    wire = {"uncertainty": f"UNCERTAINTY_{parameters['uncertainty'].upper()}"} if "uncertainty" in parameters else {}
    for name in ("weight", "threshold"):
        if name in parameters:
            wire[name] = parameters[name]
    if "fusion" in parameters:
        wire["fusion"] = f"FUSION_{parameters['fusion'].upper()}"
    if "missing_roi" in parameters:
        wire["missing_roi"] = f"MISSING_ROI_{parameters['missing_roi'].upper()}"
    if roi.masks is not None:
        roi_json = {"masks": roi.masks.int().tolist(), "known": roi.known.tolist()}
    else:
        roi_json = {"height": roi.size[0], "width": roi.size[1], "boxes": [
            None if count < 0 else roi.boxes[b, :count].tolist() for b, count in enumerate(roi.counts.tolist())]}
    return {"ids": ids, "logits": logits.tolist(), "features": features.tolist(), "cam_weights": weights.tolist(),
            "roi": roi_json, "parameters": wire}


def test_the_node_client_scores_batches_as_the_python_client_does(server, tmp_path):
    batches = _batches()
    ids = [[1000 + i for i in range(6)], [7, 3, 11, 5, 2, 9]]
    request = tmp_path / "batches.json"
    request.write_text(json.dumps({"batches": [_as_json(*case, ids=i) for case, i in zip(batches, ids, strict=True)]}))
    code, result, stderr = _node(server, "score-batch", str(request))
    assert code == 0, stderr
    with ScoringClient(server.target, token=TOKEN, timeout=120) as python:
        for (logits, features, weights, roi, parameters), got, want_ids in zip(
                batches, result["batches"], ids, strict=True):
            want = python.score_batch(logits, features, weights, roi, ids=np.asarray(want_ids), **parameters)
            assert got["ids"] == want_ids == want["ids"].tolist()
            for name in ("score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit"):
                np.testing.assert_allclose([_number(v) for v in got[name]], want[name], rtol=0, atol=1e-6,
                                           equal_nan=True, err_msg=name)
            for name in ("predicted_class", "invalid", "excluded", "roi_clipped"):
                assert got[name] == want[name].tolist(), name
    mask_batch, box_batch = result["batches"]
    assert math.isnan(_number(mask_batch["dice"][5]))  # the unknown mask ROI
    assert box_batch["roi_clipped"] == [False, False, True, False, False, False]
    assert box_batch["excluded"][5] and math.isnan(_number(box_batch["score"][5]))  # unknown ROI, policy exclude


def test_the_node_client_runs_a_job_with_the_python_client_s_ranking(server, assets):
    """The model uploaded in 1 MiB chunks (a client stream), the pool registered by its server
    path, the job started, watched to its terminal status, its ranking paged."""
    exclude = [0, 1, 2, 40, 41]
    code, job, stderr = _node(server, "job", "--model", "m", "--upload", str(assets.onnx), "--pool", "p",
                              "--pool-path", str(assets.pool), "--k", "25", "--exclude", ",".join(map(str, exclude)),
                              "--uncertainty", "margin", "--weight", "0.4", "--threshold", "0.5")
    assert code == 0, stderr
    assert job["state"] == "JOB_SUCCEEDED" and job["ranked"] == 25 and job["ranking_note"] == "", job
    assert [item["rank"] for item in job["ranking"]] == list(range(1, 26))
    with ScoringClient(server.target, token=TOKEN, timeout=120) as python:
        assert [m.name for m in python.list_models().models] == ["m"]
        want = python.run_scoring_job("m", "p", k=25, exclude_ids=exclude,
                                      config=ScoringConfig(uncertainty="margin", weight=0.4, threshold=0.5))
    assert [item["id"] for item in job["ranking"]] == [item.id for item in want.items]
    assert [item["source_id"] for item in job["ranking"]] == [item.source_id for item in want.items]
    for name in ("score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit"):
        np.testing.assert_allclose([_number(item[name]) for item in job["ranking"]],
                                   [getattr(item, name) for item in want.items], rtol=0, atol=1e-6, err_msg=name)
    assert not set(exclude) & {item["id"] for item in job["ranking"]}


def test_the_node_client_without_the_token_is_refused(server, tmp_path):
    request = tmp_path / "batches.json"
    request.write_text(json.dumps({"batches": [_as_json(*_batches()[0], ids=[1, 2, 3, 4, 5, 6])]}))
    code, error, _ = _node(server, "score-batch", str(request), token=False)
    assert code == 2 and error["error"]["code"] == "UNAUTHENTICATED", error
