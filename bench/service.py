"""Latency and throughput of the scoring service's inline ``ScoreBatch`` over a real socket.

A server subprocess (``xal serve`` on 127.0.0.1, port 0) and 1, 4 and 16 concurrent clients, each
sending batches of 64 items with 512×7×7 float32 features and 224×224 bit-packed mask ROIs, 600
calls per concurrency level (``--calls``) so that a p99 rests on hundreds of latencies. Reported
per concurrency: p50/p99 latency, requests/s and items/s, next to the in-process scorer on the same
batch measured in the same run (the service's overhead is the difference). For one client, where
the time of a call goes: the client's encoding (timed here), the server's handler split into decode,
score and reply (the server's own ``Statistics`` stages, means over the same calls), and the rest —
gRPC, the loopback transport of the ~7 MB request, the client's decoding — as the difference from
the mean latency. One more 1-client row sends the features as float16 (half the bytes; the scores
then are those of the rounded features): an option a caller has, not the benchmark's input.

Then a scoring job on a synthetic pool (``--pool-items``, default 100 000, 32×32 images, an exported
ResNet-18 in ONNX Runtime): items/s and the server's peak memory (RSS, from ``/proc``), which must
not grow with the pool because the job streams it chunk by chunk (``--pool-items 10000`` vs 100000
shows it).

The host's load average is recorded at the start and the end: latencies on a shared machine are
only comparable at a similar load. Each row also gives the server's CPU time per call (``/proc``):
on a shared host it moves far less with other processes' load than a latency, so an A/B of two
servers can be read from it when the latencies are lost in the noise. Run: ``python
bench/service.py`` (``--quick`` for a smoke run).

A/B against another commit or setting: ``bench/service_ab.py`` runs this script for each side in
interleaved rounds and takes medians of the per-round ratios. ``--event-loop asyncio`` runs the
servers on the standard loop instead of uvloop (how the loops were compared).
JSON: ``bench/results/service-cpu.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import cpu_name  # noqa: E402 - bench/timing.py (scripts run with bench/ on sys.path)

from tests.service import server_process  # noqa: E402 - the same launcher the tests use
from xal_core.acquisition import score_batch  # noqa: E402
from xal_core.data import open_dataset  # noqa: E402
from xal_core.data.ingest import ingest  # noqa: E402
from xal_core.models import ExplainableModel, build_backbone, export  # noqa: E402
from xal_core.scoring import Roi  # noqa: E402
from xal_service import codec  # noqa: E402
from xal_service.client import JobProgress, ScoringClient, ScoringJobFailed  # noqa: E402
from xal_service.server.event_loop import DEFAULT_EVENT_LOOP, EVENT_LOOPS  # noqa: E402

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


def handler_stats(client: ScoringClient) -> dict[str, tuple[int, float]]:
    """(count, seconds) of the ScoreBatch handler and of its stages, as the server counts them."""
    reply = client.statistics()
    out = {name: (c.count, c.seconds) for name, c in reply.stages.items() if name.startswith("ScoreBatch.")}
    rpc = reply.rpcs.get("ScoreBatch")
    out["ScoreBatch"] = (rpc.count, rpc.seconds) if rpc is not None else (0, 0.0)
    return out


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def run_clients(target: str, batch, clients: int, requests: int, server_pid: int | None = None) -> dict:
    """``clients`` threads, each with its own channel, send ``requests`` calls after one warm-up call.
    With ``server_pid``, the server's CPU time per call is reported too: on a shared host it moves
    far less with the load of other processes than a latency does."""
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

    with ScoringClient(target, timeout=120) as observer:
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        before = handler_stats(observer)
        cpu_before = cpu_seconds(server_pid)
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(server_pid)
        after = handler_stats(observer)
    # Means per call over this run's calls (the warm-up calls included: they are the same work).
    server_ms = {}
    for name, (count, seconds) in after.items():
        calls = count - before.get(name, (0, 0.0))[0]
        if calls:
            server_ms[name.removeprefix("ScoreBatch.") if "." in name else "handler"] = (
                (seconds - before.get(name, (0, 0.0))[1]) / calls * 1e3)
    items = len(batch[0])
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "mean_ms": float(np.mean(latencies) * 1e3),
        "requests_per_s": len(latencies) / wall,
        "items_per_s": len(latencies) * items / wall,
        "server_mean_ms": server_ms,
        # the warm-up calls included: the same work
        "server_cpu_ms_per_call": ((cpu_after - cpu_before) / (clients * (requests + 1)) * 1e3
                                   if cpu_before is not None and cpu_after is not None else None),
    }


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def breakdown(row: dict, encode_ms: float) -> dict:
    """Where the mean 1-client call goes (ms): encode (client, in-process median), the server handler's
    stages (its own means), and the rest of the mean latency (gRPC, transport, client decoding)."""
    server = row["server_mean_ms"]
    stages = {"client encode": encode_ms}
    stages.update({f"server {name}": server[name] for name in ("decode", "score", "reply") if name in server})
    stages["gRPC + transport + client decode"] = row["mean_ms"] - encode_ms - server.get("handler", 0.0)
    return stages


def run_job(pool_items: int, workdir: Path, server_args: tuple[str, ...] = ()) -> dict:
    """Ingest a synthetic pool, export a model, and time one scoring job on a fresh server."""
    started = time.perf_counter()
    ingest(open_dataset("synthetic", size=(32, 32), n=pool_items, seed=0), workdir / "pool", chunk=1024)
    ingest_s = time.perf_counter() - started
    model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2)).eval()
    export(model, workdir / "model.onnx", "onnx", input_shape=(1, 32, 32))
    server = server_process.start(workdir / "state", "--model-root", str(workdir), "--pool-root", str(workdir), *server_args)
    try:
        with ScoringClient(server.target, timeout=3600) as client:
            client.load_model("m", str(workdir / "model.onnx"))
            client.register_pool("p", str(workdir / "pool"))
            rss_idle = peak_rss_mb(server.process.pid)
            last: list[tuple[float, str]] = []  # (when, state) of the job's latest status

            def progress(status: JobProgress) -> None:
                last[:] = [(time.perf_counter(), status.state)]

            started = time.perf_counter()
            with contextlib.suppress(ScoringJobFailed):  # a failed job is reported by its final state below
                client.run_scoring_job("m", "p", k=570, on_progress=progress)
            ended, state = last[0] if last else (time.perf_counter(), "UNKNOWN")
            seconds = ended - started  # to the job's final status: the ranking read after it is not timed
            stages = {name: {"seconds": c.seconds, "items": c.items} for name, c in client.statistics().stages.items()}
            rss = peak_rss_mb(server.process.pid)
    finally:
        server.stop()
    return {
        "pool_items": pool_items, "image": [1, 32, 32], "model": "resnet18 (ONNX Runtime, CPU)",
        "state": state, "seconds": seconds, "items_per_s": pool_items / seconds,
        "ingest_seconds": ingest_s, "stages": stages, "peak_server_rss_mb": rss, "server_rss_before_job_mb": rss_idle,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pool-items", type=int, default=100_000, help="items in the job's pool (default 100000)")
    parser.add_argument("--out", type=Path, default=RESULTS / "service-cpu.json")
    parser.add_argument("--calls", type=int, default=600,
                        help="ScoreBatch calls per concurrency level, shared by its clients (default 600: "
                             "a p99 from at least 600 latencies, not from the few worst of a handful)")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default=None,
                        help=f"the servers' event loop (xal serve --event-loop; default: its own, {DEFAULT_EVENT_LOOP})")
    args = parser.parse_args()
    server_args = ("--event-loop", args.event_loop) if args.event_loop else ()
    items, requests = (16, 5) if args.quick else (64, 40)
    calls = 16 if args.quick else args.calls
    batch = make_batch(items, seed=0)
    load_start = os.getloadavg()

    ids = torch.arange(items)
    baseline_ms = median_ms(lambda: score_batch(ids, *batch), requests)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what `xal serve` runs (server.dedicate_process), for comparison
    single_thread_ms = median_ms(lambda: score_batch(ids, *batch), requests)
    torch.set_num_threads(threads)
    strategy = codec.encode_parameters()
    encode_ms = median_ms(lambda: codec.encode_score_batch_request(*batch, strategy), requests)
    request_mb = len(codec.encode_score_batch_request(*batch, strategy)) / 1e6
    half = (batch[0], batch[1].half(), batch[2], batch[3])
    half_encode_ms = median_ms(lambda: codec.encode_score_batch_request(*half, strategy), requests)

    with tempfile.TemporaryDirectory() as state:
        server = server_process.start(Path(state), *server_args)
        try:
            pid = server.process.pid
            rows = [run_clients(server.target, batch, clients, max(1, calls // clients), pid) for clients in (1, 4, 16)]
            half_row = run_clients(server.target, half, 1, calls, pid)
            rss = peak_rss_mb(server.process.pid)
        finally:
            server.stop()
    load_after_service = os.getloadavg()
    pool_items = 2_000 if args.quick else args.pool_items
    with tempfile.TemporaryDirectory() as workdir:
        job = run_job(pool_items, Path(workdir), server_args)
    stages = breakdown(rows[0], encode_ms)
    half_stages = breakdown(half_row, half_encode_ms)

    print(f"ScoreBatch: {items} items, 512×7×7 float32 features, 224² packed masks ({request_mb:.1f} MB a request); "
          f"{threads} CPU threads; load average {load_start[0]:.2f} at the start, {load_after_service[0]:.2f} after")
    print(f"in-process score_batch (same batch, same run): median {baseline_ms:.1f} ms, "
          f"{single_thread_ms:.1f} ms with torch single-threaded (as in the server)")
    header = (f"{'clients':>7} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'items/s':>9} {'p50 / in-process':>17}"
              f" {'server CPU ms/call':>19}")
    print(header)
    print("-" * len(header))
    for row in rows:
        cpu = row["server_cpu_ms_per_call"]
        print(f"{row['clients']:>7} {row['requests']:>6} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['requests_per_s']:>8.1f} "
              f"{row['items_per_s']:>9.0f} {row['p50_ms'] / baseline_ms:>16.2f}× {cpu if cpu is None else round(cpu, 2):>19}")
    print(f"{'1, fp16':>7} {half_row['requests']:>6} {half_row['p50_ms']:>8.1f} {half_row['p99_ms']:>8.1f} {half_row['requests_per_s']:>8.1f} "
          f"{half_row['items_per_s']:>9.0f} {half_row['p50_ms'] / baseline_ms:>16.2f}×   (features sent as float16)")
    print(f"1 client, mean {rows[0]['mean_ms']:.1f} ms a call: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(f"1 client, fp16 features, mean {half_row['mean_ms']:.1f} ms: " + ", ".join(f"{k} {v:.1f}" for k, v in half_stages.items()))
    print(f"peak server RSS (ScoreBatch runs): {rss:.0f} MB" if rss is not None else "peak server RSS: not readable here")
    stage_text = ", ".join(f"{name} {v['seconds']:.1f} s" for name, v in job["stages"].items())
    print(f"job on a {job['pool_items']:,}-item pool ({job['model']}, 32×32): {job['state']}, {job['seconds']:.1f} s, "
          f"{job['items_per_s']:,.0f} items/s; stages: {stage_text}; peak server RSS {job['peak_server_rss_mb']:.0f} MB "
          f"({job['server_rss_before_job_mb']:.0f} MB before the job)")
    record = {
        "benchmark": "service",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"processor": cpu_name(), "threads": threads, "torch": torch.__version__},
        "server_event_loop": args.event_loop or DEFAULT_EVENT_LOOP,
        "load_average": {"start": load_start, "after_score_batch_runs": load_after_service, "end": os.getloadavg()},
        "quick": args.quick,
        "batch": {"items": items, "features": [512, 7, 7], "roi": "packed masks 224x224", "request_mb": request_mb, "calls_per_concurrency": calls},
        "in_process_median_ms": baseline_ms,
        "in_process_single_thread_median_ms": single_thread_ms,
        "client_encode_median_ms": encode_ms,
        "score_batch": rows,
        "one_client_breakdown_ms": stages,
        "score_batch_fp16_features": {**half_row, "breakdown_ms": half_stages},
        "peak_server_rss_mb": rss,
        "job": job,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
