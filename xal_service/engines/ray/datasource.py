"""The pool store as a Ray dataset: one read task, and one block, per pool chunk.

Blocks follow pool chunks so that a scorer sees the same batches as the in-process job worker
(``store.chunks()``) and a ranking is bit-identical across engines. Images travel as the stored
float16 (half the bytes of the float32 the model takes: the network between a storage node and a
GPU node is the first bottleneck of a large cluster) and ROIs as the stored bit-packed masks or
padded boxes; the scorer decodes them where it runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from xal_core.data.pool_store import CorruptChunk, PoolStore

__all__ = ["PoolStoreDatasource", "read_block", "skipped_block"]


def read_block(path: str, number: int):
    """Chunk ``number`` of the pool at ``path`` as an Arrow block (runs inside a Ray read task).

    Columns: ``index`` int64, ``source_id`` str, ``images`` float16 ``[C, H, W]``, ``roi_known``
    bool, ``roi_packed`` uint8 ``[H, ⌈W/8⌉]`` (+ ``roi_boxes``, ``roi_counts`` for box pools), and
    ``read_s``: the read's wall time spread evenly over the rows, so that summing it over any
    slice of the block gives that slice's share (Ray may slice a block it finds too large).

    A chunk that fails its checksum (a file missing or damaged after ingest) becomes a
    :func:`skipped_block`: its items are reported one by one and left out, the rest of the pool
    is scored, exactly as the in-process job worker does.
    """
    started = time.perf_counter()
    store = PoolStore.open(path)
    try:
        raw = store.verified_raw_chunk(number)  # the in-process job worker's check, on the node that reads
    except CorruptChunk as error:
        return skipped_block(error, time.perf_counter() - started)
    columns = {
        "index": raw["index"].astype(np.int64),
        "source_id": np.array([bytes(row).rstrip(b"\0").decode("utf-8") for row in raw["ids"]], dtype=object),
        **{name: values for name, values in raw.items() if name not in ("index", "ids")},
    }
    rows = len(columns["index"])
    columns["read_s"] = np.full(rows, (time.perf_counter() - started) / max(rows, 1))
    return BlockAccessor.batch_to_block(columns)


def skipped_block(error: CorruptChunk, read_s: float):
    """The block of a chunk that cannot be trusted: its rows' ``index``, the ``skipped`` reason
    each item reports (:attr:`CorruptChunk.item_reason`) and ``read_s``; no images, no ROIs."""
    index = np.arange(error.rows.start, error.rows.stop, dtype=np.int64)
    rows = len(index)
    return BlockAccessor.batch_to_block({
        "index": index, "skipped": np.full(rows, error.item_reason, dtype=object),
        "read_s": np.full(rows, read_s / max(rows, 1)),
    })


class PoolStoreDatasource(Datasource):
    """Read a pool store written by ``xal ingest``; every node must see ``path`` (shared FS)."""

    def __init__(self, path: str | Path, chunks: list[int] | None = None) -> None:
        """``chunks``: the chunk numbers to read (default all; a resumed run skips finished ones)."""
        super().__init__()
        self.path = str(Path(path).resolve())
        store = PoolStore.open(self.path)  # not kept: the datasource is pickled, a Zarr handle need not be
        self.count, self.chunk_size, self.n_chunks = len(store), store.chunk_size, store.n_chunks
        self.chunks = list(range(self.n_chunks)) if chunks is None else sorted(int(c) for c in chunks)
        channels, (height, width) = int(store.manifest.get("channels", 1)), store.size
        self.item_bytes = channels * height * width * 2 + height * ((width + 7) // 8) + 8 + 64

    def _rows(self, number: int) -> int:
        return min(self.chunk_size, self.count - number * self.chunk_size)

    def estimate_inmemory_data_size(self) -> int:
        return sum(self._rows(number) for number in self.chunks) * self.item_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        """One task per pool chunk, whatever ``parallelism`` asks: the chunk is the unit of work."""
        tasks = []
        for number in self.chunks:
            rows = self._rows(number)
            metadata = BlockMetadata(num_rows=rows, size_bytes=rows * self.item_bytes, input_files=None,
                                     exec_stats=None)
            read = lambda path=self.path, number=number: [read_block(path, number)]  # noqa: E731
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "PoolStore"
