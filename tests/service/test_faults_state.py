"""Issue 15, item 4: the state folder becomes unwritable mid-job.

How the test makes it unwritable: these tests may run as root, for whom ``chmod`` does not stop a
write, and mounting a full or read-only filesystem needs privileges a test does not have. So the
job's folder is taken away from under it: ``state/jobs`` is renamed and a plain *file* put in its
place. Every write the server makes there then fails with a real ``OSError`` (ENOTDIR) from the
kernel, for root too — the same path through the server's code as EROFS or ENOSPC, since it
handles any ``OSError`` of a state write alike. Putting the folder back makes it writable again.

The job must fail with a clear reason, health must say NOT_SERVING while the state cannot be
written, a new job must be refused (UNAVAILABLE) rather than queued into nowhere, and once the
folder is back, health returns to SERVING and a new job runs to the end.
"""

from __future__ import annotations

import json

import grpc
import pytest

from tests.service import server_process
from tests.service.faults import ChunkGate, error_of, final_status, make_assets, place, wait_for
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def test_an_unwritable_state_fails_the_job_and_the_worker_lives_on(assets, tmp_path):
    state = tmp_path / "state"
    placed = place(assets, state)
    server = server_process.start(state)
    try:
        with ScoringClient(server.target, timeout=30) as client:
            client.load_model("m", str(placed.onnx))
            client.register_pool("p", str(placed.pool))
            gate = ChunkGate(placed.pool, 5)
            job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=10)).job_id
            chunks = state / "jobs" / job_id / "chunks"
            wait_for(lambda: all((chunks / f"{n}.npz").is_file() for n in range(5)), what="chunks 0-4")

            jobs, moved = state / "jobs", state / "jobs.moved"
            jobs.rename(moved)
            jobs.write_text("a file where the jobs folder was")
            gate.release()  # the job reads chunk 5, scores it, and cannot record it

            def job() -> pb.JobStatus:
                return next(j for j in client.list_jobs().jobs if j.job_id == job_id)

            wait_for(lambda: job().state == pb.JOB_FAILED, timeout=30, what="the job to fail")
            gate.restore()  # chunk 5 was read through the gate; the next job reads the file
            assert "state folder cannot be written" in job().error and "80 of 240 items" in job().error, job().error
            wait_for(lambda: client.health() == "NOT_SERVING", timeout=10, what="health NOT_SERVING")
            code, details = error_of(lambda: client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=10)))
            assert code == grpc.StatusCode.UNAVAILABLE and "state folder cannot be written" in details, details

            jobs.unlink()
            moved.rename(jobs)
            wait_for(lambda: client.health() == "SERVING", timeout=10, what="health SERVING again")
            again = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=10)).job_id
            final = final_status(client, again)
            assert final.state == pb.JOB_SUCCEEDED and final.items_done == 240, final
            record = json.loads((jobs / job_id / "job.json").read_text())  # recorded once the folder was back
            assert record["state"] == "failed" and "state folder" in record["error"]
    finally:
        assert server.stop() == 0
