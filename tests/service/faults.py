"""Shared pieces of the bad-input and fault tests (``test_faults_*.py``): assets, gates, probes.

Everything is real: a pool store written by ``ingest``, models exported by ``xal export``'s code,
``xal serve`` as a child process on a loopback socket. Assets are placed inside the server's
default roots (``STATE/models``, ``STATE/pools``) unless a test is about the roots themselves.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch

from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.models import ExplainableModel, build_backbone, export
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb

SIZE = 32
ITEMS = 240
CHUNK = 16  # 15 chunks


@dataclass(frozen=True)
class Assets:
    pool: Path
    onnx: Path
    other_onnx: Path  # a second model (different weights, same input)
    torchscript: Path


def make_assets(root: Path) -> Assets:
    ingest(open_dataset("synthetic", size=(SIZE, SIZE), n=ITEMS, seed=7), root / "pool", chunk=CHUNK, workers=1)
    paths = []
    for seed, name in ((0, "model.onnx"), (1, "other.onnx")):
        torch.manual_seed(seed)
        model = ExplainableModel(build_backbone("resnet10", in_channels=1, num_classes=2)).eval()
        export(model, root / name, "onnx", input_shape=(1, SIZE, SIZE), onnx_exporter="legacy")
        paths.append(root / name)
    export(model, root / "model.pt", "torchscript", input_shape=(1, SIZE, SIZE))
    return Assets(root / "pool", paths[0], paths[1], root / "model.pt")


def place(assets: Assets, state: Path) -> Assets:
    """Copies of the assets inside the default roots of a server on ``state``."""
    (state / "models").mkdir(parents=True, exist_ok=True)
    (state / "pools").mkdir(parents=True, exist_ok=True)
    shutil.copytree(assets.pool, state / "pools" / "pool")
    copies = [shutil.copy(path, state / "models" / path.name) for path in (assets.onnx, assets.other_onnx, assets.torchscript)]
    return Assets(state / "pools" / "pool", *map(Path, copies))


def error_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def final_status(client: ScoringClient, job_id: str) -> pb.JobStatus:
    statuses = list(client.watch_job(job_id))
    return statuses[-1]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def chunk_file(pool: Path, array: str, number: int) -> Path:
    """The zarr v3 file of chunk ``number`` of ``scoring/<array>`` (its other chunk indices are 0)."""
    folder = pool / "scoring" / array / "c" / str(number)
    if folder.is_file():
        return folder
    return next(p for p in sorted(folder.rglob("*")) if p.is_file() or p.is_fifo())


class ChunkGate:
    """Holds a job at a pool chunk without using CPU: the chunk's image file becomes a FIFO, so the
    job's read blocks until :meth:`release` writes the original bytes into it (the read then gets
    exactly the stored chunk) or :meth:`restore` puts the file back."""

    def __init__(self, pool: Path, number: int) -> None:
        self.path = chunk_file(pool, "images", number)
        self.data = self.path.read_bytes()
        self.path.unlink()
        os.mkfifo(self.path)

    def release(self) -> None:
        def feed() -> None:
            with open(self.path, "wb") as fifo:  # blocks until the job opens its end
                fifo.write(self.data)

        threading.Thread(target=feed, daemon=True).start()

    def restore(self) -> None:
        self.path.unlink()
        self.path.write_bytes(self.data)


def in_process_ranking(pool: Path, model: Path, k: int, config=None):
    """The ranking the library gives in this process: what a job must reproduce."""
    from xal_core.acquisition import ScoringConfig, rank_pool, score_chunk
    from xal_core.data.pool_store import PoolStore
    from xal_core.models.runtime import load

    runtime, store = load(model), PoolStore.open(pool)
    config = config or ScoringConfig()
    return rank_pool((score_chunk(runtime, chunk, config) for chunk in store.chunks()), k, config)


def ranking(client: ScoringClient, job_id: str) -> list:
    return [item for page in client.get_ranking(job_id, page_size=1000) for item in page.items]
