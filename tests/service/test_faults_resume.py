"""Issue 15, item 5: a job pins its model and pool by content; a resume never mixes two models.

The scenario of the issue: ``LoadModel`` re-binds the job's model name to another file mid-job,
the server is killed with SIGKILL and started again. The resumed job must score its remaining
chunks with the model it was started with (the pinned file is still there) — or, when that file
itself changed, fail saying so — never report SUCCEEDED on a mixture.
"""

from __future__ import annotations

import shutil
import signal

import pytest
import torch

from tests.service import server_process
from tests.service.faults import ChunkGate, final_status, in_process_ranking, make_assets, place, ranking, wait_for
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def _start_gated_job(state, placed, model_path):
    """A server with model "m" = ``model_path``, a job held at chunk 5 (0-4 done), then "m" re-bound."""
    server = server_process.start(state)
    with ScoringClient(server.target, timeout=30) as client:
        client.load_model("m", str(model_path))
        client.register_pool("p", str(placed.pool))
        gate = ChunkGate(placed.pool, 5)
        job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=240)).job_id
        chunks = state / "jobs" / job_id / "chunks"
        wait_for(lambda: all((chunks / f"{n}.npz").is_file() for n in range(5)), what="chunks 0-4")
        client.load_model("m", str(placed.other_onnx))  # the name now means another model
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    gate.restore()
    return job_id


def test_a_resumed_job_scores_with_the_model_it_pinned(assets, tmp_path):
    state = tmp_path / "state"
    placed = place(assets, state)
    job_id = _start_gated_job(state, placed, placed.onnx)
    server = server_process.start(state)
    try:
        with ScoringClient(server.target, timeout=60) as client:
            final = final_status(client, job_id)
            assert final.state == pb.JOB_SUCCEEDED and final.items_done == 240, final
            items = ranking(client, job_id)
    finally:
        assert server.stop() == 0
    expected = in_process_ranking(placed.pool, placed.onnx, 240)
    assert [i.id for i in items] == expected.selection.ids.tolist()
    torch.testing.assert_close(torch.tensor([i.score for i in items], dtype=torch.float64), expected.selection.scores)


def test_a_resumed_job_whose_pinned_model_changed_fails_saying_so(assets, tmp_path):
    state = tmp_path / "state"
    placed = place(assets, state)
    changing = state / "models" / "changing.onnx"
    shutil.copy(placed.onnx, changing)
    job_id = _start_gated_job(state, placed, changing)
    shutil.copy(placed.other_onnx, changing)  # the pinned file itself is rewritten while the server is down
    server = server_process.start(state)
    try:
        with ScoringClient(server.target, timeout=60) as client:
            final = final_status(client, job_id)
    finally:
        assert server.stop() == 0
    assert final.state == pb.JOB_FAILED, final
    assert "model 'm' changed since this job was submitted" in final.error, final.error
