"""Pool store I/O: ingest and read throughput and peak memory at two pool sizes.

What is measured, each pool size in a fresh subprocess (so peak RSS belongs to that size alone):

* ``ingest`` — ``xal_core.data.ingest.ingest`` writing ``N`` items (64×64, one channel, mask ROIs)
  into a new Zarr pool: encode (float16, bit-packed ROIs, ids), compress, write, checksum. The
  source replays 512 pre-generated shortcut-benchmark images under fresh ids, so the number is the
  store's cost, not the generator's; the generator's own rate is reported beside it;
* ``read`` — streaming every chunk back as scorer input (float32 images + ``Roi``), with
  ``prefetch=2`` (xal's reader) against ``prefetch=0`` (the baseline: read on demand), in the same
  process on the same pool;
* ``peak_rss_mb`` — the subprocess's peak resident memory after everything; ``import_rss_mb`` is
  the resident memory after imports, before touching the pool. Flat peak across sizes = memory
  does not grow with the pool. Each size runs twice: with glibc's default allocator, and with
  ``MALLOC_ARENA_MAX=1``, which separates memory the pool code keeps from the fragmentation of
  glibc's per-thread arenas (the loader and prefetch threads each get one).

Run ``python bench/pool_io.py`` (10 000 and 100 000 items) or ``--quick`` (2 000 and 10 000).
Results go to ``bench/results/pool_io.json`` (``pool_io-quick.json``). Timings are not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FRAME = (64, 64)
CHUNK = 1024


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Replay:
    """``n`` items cycling through 512 pre-generated ones, each under its own id."""

    def __init__(self, n: int) -> None:
        from xal_core.data.shortcut import ShortcutBenchmark

        self.source = ShortcutBenchmark(FRAME, n=512, seed=0)
        started = time.perf_counter()
        self.cache = [self.source[i] for i in range(512)]
        self.generator_items_per_s = 512 / (time.perf_counter() - started)
        self.n, self.size, self.classes = n, self.source.size, self.source.classes
        self.roi_format, self.channels, self.skipped = "mask", 1, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        from xal_core.data import Item

        item = self.cache[index % 512]
        return Item(f"replay-{index:09d}", item.image, item.roi, item.label, {})

    def describe(self) -> dict:
        return {"kind": "replay", "size": list(self.size), "n": self.n}


def worker(n: int) -> dict:
    import torch

    from xal_core.data import PoolStore
    from xal_core.data.ingest import ingest

    import_rss = _rss_mb()
    source = _Replay(n)
    with tempfile.TemporaryDirectory() as folder:
        pool_path = Path(folder) / "pool"
        started = time.perf_counter()
        summary = ingest(source, pool_path, chunk=CHUNK, workers=2)
        ingest_s = time.perf_counter() - started
        disk = sum(p.stat().st_size for p in pool_path.rglob("*") if p.is_file())
        pool = PoolStore.open(pool_path)
        reads = {}
        for prefetch in (0, 2):
            started = time.perf_counter()
            total = 0.0
            for chunk in pool.chunks(prefetch=prefetch):
                total += float(chunk.images.sum()) + float(chunk.roi.masks.sum())  # touch the data
            reads[f"prefetch={prefetch}"] = n / (time.perf_counter() - started)
        assert summary.total == n and torch.isfinite(torch.tensor(total))
    return {
        "items": n,
        "ingest_items_per_s": n / ingest_s,
        "generator_items_per_s": source.generator_items_per_s,
        "read_items_per_s": reads,
        "read_speedup_prefetch": reads["prefetch=2"] / reads["prefetch=0"],
        "disk_mb": disk / 2**20,
        "disk_bytes_per_item": disk / n,
        "import_rss_mb": import_rss,
        "peak_rss_mb": _rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 000 and 10 000 items")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    sizes = (2_000, 10_000) if args.quick else (10_000, 100_000)
    rows = []
    for allocator, extra in (("glibc-default", {}), ("MALLOC_ARENA_MAX=1", {"MALLOC_ARENA_MAX": "1"})):
        for n in sizes:
            done = subprocess.run([sys.executable, __file__, "--worker", str(n)], check=True, capture_output=True,
                                  text=True, env={**os.environ, **extra})
            row = {"allocator": allocator, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{allocator:>18} {n:>8,} items  ingest {row['ingest_items_per_s']:>7,.0f} items/s  "
                  f"read {row['read_items_per_s']['prefetch=2']:>7,.0f} items/s "
                  f"(×{row['read_speedup_prefetch']:.2f} vs prefetch=0)  "
                  f"disk {row['disk_bytes_per_item']:,.0f} B/item  peak RSS {row['peak_rss_mb']:.0f} MB "
                  f"(after imports {row['import_rss_mb']:.0f} MB)")
    growth = {allocator: rows[i + len(sizes) - 1]["peak_rss_mb"] / rows[i]["peak_rss_mb"]
              for i, allocator in ((0, "glibc-default"), (len(sizes), "MALLOC_ARENA_MAX=1"))}
    for allocator, ratio in growth.items():
        print(f"peak RSS ratio {sizes[-1]:,} / {sizes[0]:,} items ({allocator}): {ratio:.2f}")
    result = {
        "benchmark": "pool_io",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"processor": platform.machine(), "python": platform.python_version()},
        "quick": args.quick,
        "frame": list(FRAME),
        "chunk": CHUNK,
        "sizes": rows,
        "peak_rss_ratio_largest_vs_smallest": growth,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "pool_io-quick.json" if args.quick else "pool_io.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
