"""Throughput of the Ray engine on this host: 1 vs 2 local workers, against the in-process job path.

One synthetic pool store (``--items``, default 16 384 items of 32×32, chunks of 1 024) and an exported
ResNet-18 (ONNX Runtime, CPU) are scored by four providers, measured in the same run:

* ``in-process 1 thread`` — the service's job worker: ``PoolStore.chunks()`` → forward →
  ``score_batch`` → ``rank_pool``, ONNX Runtime on one intra-op thread (the baseline);
* ``in-process 2 threads`` — the same with one thread per core;
* ``ray 1 worker`` / ``ray 2 workers`` — ``score_pool_on_ray`` on a local cluster, one CPU and one
  runtime thread per scorer actor, per-item Parquet written, the top-k merged on the driver.

Each provider runs ``--repeats`` times (default 3); the table quotes medians. ``wall`` includes
starting the actors (imports and model load, several seconds here); ``steady`` counts the items
after the first block over the time from the first block to the last, which is what a pool of
millions sees. The per-item costs of read, forward, kernel, Parquet write and the driver's merge
(from the blocks' own timings) feed the throughput model in docs/distributed.md. All rankings are
checked to be identical. Run: ``python bench/distributed.py`` (``--quick``: 2 048 items, one
repeat). JSON: ``bench/results/distributed-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xal_core.acquisition import ScoringConfig, rank_pool, score_batch  # noqa: E402
from xal_core.data import open_dataset  # noqa: E402
from xal_core.data.ingest import ingest  # noqa: E402
from xal_core.data.pool_store import PoolStore  # noqa: E402
from xal_core.models import ExplainableModel, build_backbone, export  # noqa: E402
from xal_core.models.runtime import load  # noqa: E402

RESULTS = ROOT / "bench" / "results"
K = 570
CONFIG = ScoringConfig()


def build_assets(workdir: Path, items: int, size: int, chunk: int) -> tuple[Path, Path]:
    ingest(open_dataset("synthetic", size=(size, size), n=items, seed=0), workdir / "pool", chunk=chunk, workers=2)
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2)).eval()
    export(model, workdir / "model.onnx", "onnx", input_shape=(1, size, size), onnx_exporter="legacy")
    return workdir / "pool", workdir / "model.onnx"


def in_process(pool: Path, model: Path, threads: int) -> dict:
    """The job worker's loop, timed per stage (no chunk files: the ranking is all that is kept)."""
    torch.set_num_threads(threads)
    runtime = load(model, threads=threads)
    stages = {"read": 0.0, "forward": 0.0, "kernel": 0.0}
    started = time.perf_counter()

    def batches():
        mark = time.perf_counter()
        for chunk in PoolStore.open(pool).chunks():
            stages["read"] += time.perf_counter() - mark
            mark = time.perf_counter()
            outputs = runtime.run(runtime.metadata.normalise(chunk.images))
            stages["forward"] += time.perf_counter() - mark
            mark = time.perf_counter()
            scores = score_batch(chunk.index, *outputs, chunk.roi, CONFIG)
            stages["kernel"] += time.perf_counter() - mark
            yield scores
            mark = time.perf_counter()

    ranking = rank_pool(batches(), K, CONFIG)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "steady_rate": len(PoolStore.open(pool)) / wall, "stage_s": stages,
            "ids": ranking.selection.ids.tolist()}


def on_ray(pool: Path, model: Path, workers: int, scores_dir: Path) -> dict:
    from xal_service.engines.ray import RayEngineConfig, score_pool_on_ray

    arrivals: list[tuple[float, int]] = []
    started = time.perf_counter()
    result = score_pool_on_ray(pool, model, k=K, scores_dir=scores_dir, config=CONFIG,
                               engine=RayEngineConfig(workers=workers, cpus_per_worker=1.0, read_cpus=0.25),
                               on_block=lambda block: arrivals.append((time.perf_counter(), block.n_items)))
    wall = time.perf_counter() - started
    first = arrivals[0][0]
    stages = {name: sum(getattr(b, f"{name}_s") for b in result.blocks) for name in ("read", "forward", "kernel", "write")}
    stages["merge"] = result.merge_s
    return {"wall_s": wall, "startup_s": first - started, "merge_ms_per_block": result.merge_s / len(result.blocks) * 1e3,
            "steady_rate": sum(n for _, n in arrivals[1:]) / (arrivals[-1][0] - first), "stage_s": stages,
            "workers_seen": len(result.workers), "ids": result.ranking.selection.ids.tolist()}


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16_384)
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--chunk", type=int, default=1024, help="pool chunk = Ray block (default 1024, the store's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 048 items, one repeat (smoke run)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    items, repeats = (2_048, 1) if args.quick else (args.items, args.repeats)
    out = args.out or RESULTS / ("distributed-cpu-quick.json" if args.quick else "distributed-cpu.json")
    cores = os.cpu_count() or 1

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import logging

    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        pool, model = build_assets(workdir, items, args.size, args.chunk)
        # One logical CPU beyond the cores: the chunk reads' slot beside the actors (reads are ~1 % of the work).
        ray.init(num_cpus=cores + 1, include_dashboard=False, object_store_memory=500 * 1024**2,
                 logging_level="warning")
        providers = {
            "in-process 1 thread": lambda run: in_process(pool, model, 1),
            f"in-process {cores} threads": lambda run: in_process(pool, model, cores),
            "ray 1 worker": lambda run: on_ray(pool, model, 1, workdir / f"scores-1-{run}"),
            "ray 2 workers": lambda run: on_ray(pool, model, 2, workdir / f"scores-2-{run}"),
        }
        runs = {name: [] for name in providers}
        try:
            for run in range(repeats):  # interleaved, so a burst of load on the shared host hits every provider
                for name, provider in providers.items():
                    runs[name].append(provider(run))
                    print(f"  run {run + 1}/{repeats} {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
        finally:
            ray.shutdown()
        pool_disk = disk_bytes(pool)
        parquet = disk_bytes(workdir / "scores-1-0") / items

    reference = runs["in-process 1 thread"][0]["ids"]
    identical = all(r["ids"] == reference for rs in runs.values() for r in rs)
    rows = {}
    for name, rs in runs.items():
        def median(key: str, rs: list[dict] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        stage_names = rs[0]["stage_s"].keys()
        rows[name] = {
            "wall_s": median("wall_s"), "items_per_s_wall": items / median("wall_s"),
            "items_per_s_steady": median("steady_rate"),
            "startup_s": median("startup_s") if "startup_s" in rs[0] else 0.0,
            "merge_ms_per_block": median("merge_ms_per_block") if "merge_ms_per_block" in rs[0] else None,
            "per_item_us": {stage: statistics.median(r["stage_s"][stage] for r in rs) / items * 1e6
                            for stage in stage_names},
            "runs": [{k: v for k, v in r.items() if k != "ids"} for r in rs],
        }
    base = rows["in-process 1 thread"]["items_per_s_steady"]
    one = rows["ray 1 worker"]["items_per_s_steady"]
    print(f"\n{items:,} items of 1×{args.size}×{args.size}, chunks of {args.chunk}, ResNet-18 (ONNX Runtime CPU), "
          f"{cores} cores; medians of {repeats}")
    header = (f"{'provider':<22} {'wall s':>7} {'items/s (wall)':>15} {'items/s (steady)':>17} "
              f"{'vs in-process 1 thr':>20} {'vs ray 1 worker':>16}")
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(f"{name:<22} {row['wall_s']:>7.1f} {row['items_per_s_wall']:>15,.0f} {row['items_per_s_steady']:>17,.0f} "
              f"{row['items_per_s_steady'] / base:>19.2f}× {row['items_per_s_steady'] / one:>15.2f}×")
    print("\nper-item cost (µs, summed over workers), from the blocks' own timings:")
    for name, row in rows.items():
        print(f"  {name:<22} " + ", ".join(f"{stage} {us:,.1f}" for stage, us in row["per_item_us"].items()))
    print("startup (submit → first block), median: " + ", ".join(
        f"{name} {row['startup_s']:.1f} s" for name, row in rows.items() if name.startswith("ray")))
    print(f"driver merge per block (k = {K}, chunk {args.chunk}): " + ", ".join(
        f"{name} {row['merge_ms_per_block']:.2f} ms" for name, row in rows.items() if name.startswith("ray")))
    print(f"bytes per item: pool on disk {pool_disk / items:,.0f}; in flight (float16 image + packed ROI) "
          f"{2 * args.size * args.size + args.size * ((args.size + 7) // 8):,}; per-item Parquet {parquet:,.0f}")
    print(f"rankings identical across providers and runs: {'yes' if identical else 'NO'}")
    record = {
        "benchmark": "distributed",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"processor": platform.machine(), "cores": cores, "torch": torch.__version__,
                    "ray": ray.__version__},
        "quick": args.quick, "items": items, "image": [1, args.size, args.size], "chunk": args.chunk,
        "repeats": repeats, "k": K, "model": "resnet18 (ONNX Runtime, CPU)",
        "bytes_per_item": {"pool_disk": pool_disk / items, "in_flight": 2 * args.size * args.size
                           + args.size * ((args.size + 7) // 8), "parquet": parquet},
        "rankings_identical": identical, "providers": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    if not identical:
        sys.exit("rankings differ between providers")


if __name__ == "__main__":
    main()
