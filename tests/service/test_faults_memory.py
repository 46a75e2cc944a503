"""Issue 15, item 9: a long-lived server does not grow with the rounds of an active-learning run.

What held the memory: every ONNX Runtime session kept its CPU arena at the peak of a whole pool
chunk (~1 GB for a ResNet-10 at 64² and 1 024 images), and the registry keeps up to four sessions;
glibc kept a malloc arena per job thread; and, once those were fixed, the holes that evicted
sessions and finished jobs left in the heap were never given back (trimming is off while calls
run), so the server crept from 760 to 1 020 MB over 60 rounds (``xal_service.process_memory``).
The full measurement (2 arms × 14 rounds over a 3 000-item pool) is ``bench/service_memory.py``;
this test runs the mechanism small: ten models, each loaded and run once over a 1 024-item pool,
as ten rounds would.

What it reads: the server's anonymous memory (``RssAnon``: the heap, not mapped files) right after
each ``LoadModel``. Once the registry is full every load evicts a session and the heap is trimmed
there, so the sample is what the server holds, not what the allocator happens to keep; total RSS
moved by ±10 % between runs with nothing growing, so it is printed, not judged.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from tests.service import server_process
from tests.service.faults import rss_mb
from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.models import ExplainableModel, build_backbone, export
from xal_core.models.runtime import load
from xal_service.client import ScoringClient
from xal_service.registry.registry import Registry
from xal_service.wire import scoring_pb2 as pb


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("resnet10", in_channels=1, num_classes=2)).eval()
    return export(model, root / "model.onnx", "onnx", input_shape=(1, 64, 64), onnx_exporter="legacy").path


def anonymous_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/PID/status")


def test_memory_levels_off_across_rounds(model_path, tmp_path):
    state = tmp_path / "state"
    ingest(open_dataset("synthetic", size=(64, 64), n=1024, seed=1), state / "pools" / "pool", workers=1)
    (state / "models").mkdir()
    resident = inspect.signature(Registry).parameters["max_loaded"].default
    server = server_process.start(state)
    held, rss = [], []
    try:
        with ScoringClient(server.target, timeout=300) as client:
            client.register_pool("p", str(state / "pools" / "pool"))
            for round_ in range(resident + 6):
                copy = state / "models" / f"round{round_}.onnx"  # a new file every round, as a run exports
                copy.write_bytes(model_path.read_bytes())
                client.load_model(f"m{round_}", str(copy))
                held.append(anonymous_mb(server.pid))
                job = client.start_scoring(pb.StartScoringRequest(model=f"m{round_}", pool="p", k=40)).job_id
                assert list(client.watch_job(job))[-1].state == pb.JOB_SUCCEEDED
                rss.append(rss_mb(server.pid))
    finally:
        assert server.stop() == 0
    print("heap after each LoadModel (MB):", [round(v) for v in held])
    print("RSS after each round (MB):", [round(v) for v in rss])
    # Measured on 20 rounds: with the trim, 322-351 MB from the fifth load on against 327 MB with
    # one model and no job run yet; without it, 615 MB at the fifth load, 723 MB at the twentieth.
    # Four resident sessions of this model are ~70 MB more than one.
    assert max(held[resident:]) <= 1.4 * held[0], held


def test_cpu_runs_are_split_and_put_back_together(model_path):
    runtime = load(model_path)
    assert runtime.max_batch == 64 and not runtime.session.get_session_options().enable_cpu_mem_arena
    images = torch.rand(150, 1, 64, 64)
    whole = runtime.run(images)
    parts = [load(model_path, max_batch=150).run(images[start:start + 50]) for start in (0, 50, 100)]
    for name, got in zip(("logits", "features", "cam_weights"), whole, strict=True):
        want = torch.cat([getattr(part, name) for part in parts])
        assert got.shape == want.shape and np.allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6), name
