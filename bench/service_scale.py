"""The server's memory against the pool's size: peak RSS of ``xal serve`` scoring pools of 100 k and 1 M items.

Per pool size, in this order: the pool is made with ``xal ingest synthetic`` (32×32, one channel,
chunks of 1 024; timed), a fresh server is started (``tests.service.server_process``, the tests'
launcher), the pool registered and a small model loaded (``smallcnn``, exported to ONNX); then a
scoring job with ``k = --k`` (watched to its end and its ranking paged with ``GetRanking``, as
``xal score`` does; timed), then every item's scores paged with ``GetItemScores`` (as the loop's
``ServiceScorer`` reads them; timed, the pages counted and dropped). The server's peak resident
memory (``VmHWM`` from ``/proc``) is read before the job, after it and after the item scores. The
requirement (issue 29): the peak at 1 M items within +10 % of the peak at 100 k.

Run: ``python bench/service_scale.py`` (100 k and 1 M; the 1 M pool takes ~2 GB on disk and most
of the run's time is its ingest); ``--quick`` for 2 000 and 20 000 items; ``--pools DIR`` keeps the
pools there and reuses one that is already there (its ingest time is then the recorded one, marked
``reused``). JSON: ``bench/results/service-scale.json`` (``-quick`` in quick mode), written after
every pool size, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import cpu_name  # noqa: E402 - bench/timing.py (scripts run with bench/ on sys.path)

from tests.service import server_process  # noqa: E402 - the same launcher the tests use
from xal_core.data.pool_store import PoolStore  # noqa: E402
from xal_core.models import ExplainableModel, build_backbone, export  # noqa: E402
from xal_service.client import ScoringClient  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SIZE = 32
INGEST_RECORD = "bench-ingest.json"


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` (now) and ``VmHWM`` (the peak so far) of process ``pid``, in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mb": values["VmRSS"], "peak_mb": values["VmHWM"]}


def make_pool(path: Path, items: int) -> dict:
    """The pool at ``path`` (``xal ingest synthetic``), reused when one of that size is there."""
    record = path / INGEST_RECORD
    if record.is_file() and (path / "manifest.json").is_file() and len(PoolStore.open(path)) == items:
        return {**json.loads(record.read_text()), "reused": True}
    if path.exists():
        shutil.rmtree(path)
    command = [sys.executable, "-m", "xal_cli.main", "ingest", "synthetic", "--size", str(SIZE), "--option",
               f"n={items}", "--option", "seed=3", "--out", str(path), "--workers", "2", "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    result = {"ingest_s": round(seconds, 1), "ingest_items_per_s": round(items / seconds, 1),
              "pool_bytes_on_disk": disk, "command": " ".join(["xal", *command[3:]])}
    record.write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "reused": False}


def export_model(path: Path) -> Path:
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("smallcnn", in_channels=1, num_classes=2)).eval()
    export(model, path, "onnx", input_shape=(1, SIZE, SIZE), onnx_exporter="legacy")
    return path


def measure(items: int, pools: Path, workdir: Path, model: Path, k: int) -> dict:
    pool = pools / f"pool-{items}"
    print(f"{items} items: ingest …", flush=True)
    ingest = make_pool(pool, items)
    print(f"  ingest {ingest['ingest_s']} s{' (reused)' if ingest['reused'] else ''}", flush=True)
    state = workdir / f"state-{items}"
    server = server_process.start(state, "--model-root", str(model.parent), "--pool-root", str(pools))
    try:
        with ScoringClient(server.target, timeout=24 * 3600) as client:
            client.register_pool("pool", str(pool))
            runtime = client.load_model("model", str(model)).runtime  # e.g. OnnxRuntime:cpu
            before = memory_mb(server.pid)
            started = time.perf_counter()
            result = client.run_scoring_job("model", "pool", k=k)
            job_s = time.perf_counter() - started
            after_job = memory_mb(server.pid)
            print(f"  job {job_s:.1f} s ({items / job_s:.0f} items/s); server peak {after_job['peak_mb']} MB", flush=True)
            started = time.perf_counter()
            rows = sum(len(page.items) for page in client.get_item_scores(result.job_id))
            item_scores_s = time.perf_counter() - started
            after_scores = memory_mb(server.pid)
            print(f"  GetItemScores {rows} rows in {item_scores_s:.1f} s; server peak {after_scores['peak_mb']} MB",
                  flush=True)
            stages = {name: {"seconds": round(stage.seconds, 2), "items": stage.items}
                      for name, stage in client.statistics().stages.items() if name in ("read", "forward", "kernel", "rank")}
    finally:
        server.stop()
    if rows != items:
        raise AssertionError(f"GetItemScores gave {rows} rows for a pool of {items}")
    return {"items": items, "k": k, "model_runtime": runtime, "ingest": ingest, "server_before_job": before,
            "server_after_job": after_job, "server_after_item_scores": after_scores, "job_s": round(job_s, 2), "job_items_per_s": round(items / job_s, 1),
            "ranked": len(result.items), "item_scores_s": round(item_scores_s, 2), "item_score_rows": rows,
            "job_stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--k", type=int, default=100, help="the job's ranking length (default 100)")
    parser.add_argument("--pools", type=Path, default=None, help="keep the pools here and reuse them")
    parser.add_argument("--quick", action="store_true", help="2 000 and 20 000 items")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.items = [2_000, 20_000]
    out = args.out or RESULTS / f"service-scale{'-quick' if args.quick else ''}.json"
    load_start = os.getloadavg()
    record = {
        "benchmark": "bench/service_scale.py", "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                 "processor": cpu_name(),
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "load_average_start": [round(v, 2) for v in load_start], "image": [1, SIZE, SIZE],
        "model": "smallcnn, ONNX (the server's runtime per size: model_runtime)", "sizes": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        pools = args.pools.resolve() if args.pools else workdir / "pools"
        pools.mkdir(parents=True, exist_ok=True)
        model = export_model(pools / "model.onnx")
        for items in args.items:
            record["sizes"].append(measure(items, pools, workdir, model, args.k))
            peaks = [size["server_after_item_scores"]["peak_mb"] for size in record["sizes"]]
            record["peak_largest_over_smallest"] = round(peaks[-1] / peaks[0], 3)
            record["within_10_percent"] = peaks[-1] <= 1.10 * peaks[0]
            record["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=2) + "\n")
    sizes = record["sizes"]
    print("server peak RSS: " + ", ".join(f"{s['items']} items {s['server_after_item_scores']['peak_mb']} MB"
                                           for s in sizes)
          + f"; largest / smallest = {record['peak_largest_over_smallest']:.3f} "
          f"({'within' if record['within_10_percent'] else 'NOT within'} +10 %); {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
