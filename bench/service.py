"""Latency and throughput of the scoring service's inline ``ScoreBatch`` over a real socket.

A server subprocess (``xal serve`` on 127.0.0.1, port 0) and 1, 4 and 16 concurrent clients, each
sending batches of 64 items with 512×7×7 features and 224×224 bit-packed mask ROIs. Reported per
concurrency: p50/p99 latency, requests/s and items/s, next to the in-process scorer on the same
batch measured in the same run (the service's overhead is the difference). Peak server memory
(RSS) is read from ``/proc`` after the run. Job throughput on a pool needs the pool store and jobs,
which this server version does not have yet: the script says so instead of measuring something else.

Run: ``python bench/service.py`` (``--quick`` for a smoke run). JSON: ``bench/results/service-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.service import server_process  # noqa: E402 - the same launcher the tests use
from xal_core.acquisition import score_batch  # noqa: E402
from xal_core.scoring import Roi  # noqa: E402
from xal_service.client import ScoringClient  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def make_batch(items: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(items, 3, generator=generator)
    features = torch.rand(items, 512, 7, 7, generator=generator)
    weights = torch.randn(items, 512, generator=generator) / 512
    roi = Roi.from_masks(torch.rand(items, 224, 224, generator=generator) < 0.2)
    return logits, features, weights, roi


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_clients(target: str, batch, clients: int, requests: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()

    def worker():
        with ScoringClient(target, timeout=120) as client:
            client.score_batch(*batch)  # connect and warm up
            own = []
            for _ in range(requests):
                started = time.perf_counter()
                client.score_batch(*batch)
                own.append(time.perf_counter() - started)
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    items = len(batch[0])
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "requests_per_s": len(latencies) / wall,
        "items_per_s": len(latencies) * items / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "service-cpu.json")
    args = parser.parse_args()
    items, requests = (16, 5) if args.quick else (64, 40)
    batch = make_batch(items, seed=0)

    in_process = []
    score_batch(torch.arange(items), *batch)
    for _ in range(requests):
        started = time.perf_counter()
        score_batch(torch.arange(items), *batch)
        in_process.append(time.perf_counter() - started)
    baseline_ms = statistics.median(in_process) * 1e3

    with tempfile.TemporaryDirectory() as state:
        server = server_process.start(Path(state))
        try:
            rows = [run_clients(server.target, batch, clients, requests) for clients in (1, 4, 16)]
            rss = peak_rss_mb(server.process.pid)
        finally:
            server.stop()

    print(f"ScoreBatch: {items} items, 512×7×7 features, 224² packed masks; {torch.get_num_threads()} CPU threads")
    print(f"in-process score_batch (same batch, same run): median {baseline_ms:.1f} ms")
    header = f"{'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'items/s':>9} {'p50 / in-process':>17}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['clients']:>7} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['requests_per_s']:>8.1f} "
              f"{row['items_per_s']:>9.0f} {row['p50_ms'] / baseline_ms:>16.2f}×")
    print(f"peak server RSS: {rss:.0f} MB" if rss is not None else "peak server RSS: not readable here")
    print("job throughput on a 100 000-item pool: not measured — jobs over pool stores are not in this server version")
    record = {
        "benchmark": "service",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"processor": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "quick": args.quick,
        "batch": {"items": items, "features": [512, 7, 7], "roi": "packed masks 224x224"},
        "in_process_median_ms": baseline_ms,
        "score_batch": rows,
        "peak_server_rss_mb": rss,
        "jobs": "not measured: jobs over pool stores are not in this server version",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
