"""A job's files: one ``chunks/<n>.npz`` per finished pool chunk, and the ranking (``ranking/``).

Why files per chunk: a chunk is the unit of resume. Each is written under a temporary name and
renamed, so it is either wholly recorded or not at all, and the ranking and the per-item errors
are rebuilt from the files alone — an interrupted and an uninterrupted job give the same answer.
A chunk that failed its checksum is recorded too, as a file with no scores and the ids it skipped,
so a resumed job does not read it again and still reports its items.

Why the server's memory does not grow with the pool: the per-item results stay in the chunk
files, in columns (one array per score), and are read back a chunk at a time (``read``,
``item_scores``). The ranking is one ``.npy`` file per column in ``ranking/``, which the job maps
into memory (``load_ranking``) rather than reads: pages of ``GetRanking`` come from disk, and a
server that holds many finished jobs holds none of their rankings on its heap. The source ids of
the ranked items are looked up in the few chunk files that can hold them (``source_ids_of``), not
kept for every item while the job ranks. Jobs written before ``ranking/`` existed have a
``ranking.npz``, read as before.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from xal_core.acquisition import BatchScores, PoolRanking
from xal_core.scoring import Selection

from .state_probe import state_write

__all__ = ["ChunkFiles", "INVALID_REASON"]

BATCH_FIELDS = [f.name for f in dataclasses.fields(BatchScores)]
INVALID_REASON = "non-finite image or model outputs: ranked last"


class ChunkFiles:
    """The ``chunks/`` folder and ``ranking.npz`` of the job in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.chunks = directory / "chunks"

    def finished(self) -> int:
        """How many chunks, from 0 on, are recorded (a job resumes after them)."""
        done = 0
        while (self.chunks / f"{done}.npz").is_file():
            done += 1
        return done

    def _write(self, number: int, arrays: dict[str, np.ndarray]) -> None:
        target = self.chunks / f"{number}.npz"
        scratch = target.with_name(f"{number}.tmp.npz")
        with state_write():
            np.savez(scratch, **arrays)
            os.replace(scratch, target)

    def write_scores(self, number: int, scores: BatchScores, source_ids: list[str], excluded: torch.Tensor) -> None:
        arrays = {name: getattr(scores, name).numpy() for name in BATCH_FIELDS}
        arrays["requested_exclusion"] = excluded.numpy()
        arrays["source_ids"] = np.asarray(source_ids, dtype=np.str_)
        self._write(number, arrays)

    def write_skipped(self, number: int, ids: np.ndarray, reason: str) -> None:
        self._write(number, {"skipped_ids": np.asarray(ids, dtype=np.int64), "skipped_reason": np.asarray(reason)})

    def read(self) -> Iterator[tuple[BatchScores | None, np.ndarray, list[tuple[int, str]]]]:
        """Per recorded chunk: its kept scores (None for a skipped chunk), their source ids, and
        the chunk's item errors ``(id, reason)``."""
        for number in range(self.finished()):
            with np.load(self.chunks / f"{number}.npz") as data:
                if "skipped_ids" in data.files:
                    reason = str(data["skipped_reason"])
                    yield None, np.zeros(0, dtype=np.str_), [(int(i), reason) for i in data["skipped_ids"]]
                    continue
                errors = [(int(i), INVALID_REASON) for i in data["ids"][data["invalid"]]]
                keep = ~data["requested_exclusion"]
                batch = BatchScores(**{name: torch.from_numpy(data[name][keep]) for name in BATCH_FIELDS})
                yield batch, data["source_ids"][keep], errors

    def item_scores(self) -> Iterator[tuple[BatchScores, np.ndarray]]:
        """A finished job's per-item scores, chunk by chunk in pool order, with their source ids:
        requested exclusions and skipped chunks left out. The in-process worker's chunk files, or
        the Ray engine's per-item Parquet files (``scores/``) for a job that ran on Ray."""
        ray_scores = self.directory / "scores"  # only the Ray engine writes it (jobs.py, _run_on_ray)
        if ray_scores.is_dir():
            from ..engines.ray.item_scores import read_item_scores  # pyarrow: only jobs that ran on Ray

            yield from read_item_scores(ray_scores)
            return
        for batch, source_ids, _ in self.read():
            if batch is not None and len(batch.ids):
                yield batch, source_ids

    def source_ids_of(self, ids: np.ndarray, spans: Sequence[tuple[int, int, int]]) -> list[str]:
        """The source ids of items ``ids``, in that order, from the chunk files that can hold them.

        ``spans``: ``(chunk number, lowest id, highest id)`` of the chunks with scored items, as
        ``read`` gave them; only chunks whose span holds one of ``ids`` are opened (at most one per
        item, so a ranking of k items reads at most k chunk files).
        """
        wanted = np.asarray(ids, dtype=np.int64)
        if not wanted.size:
            return []
        found: dict[int, str] = {}
        for number, low, high in spans:
            inside = wanted[(wanted >= low) & (wanted <= high)]
            if not inside.size:
                continue
            with np.load(self.chunks / f"{number}.npz") as data:
                chunk_ids = data["ids"]
                rows = np.flatnonzero(np.isin(chunk_ids, inside))
                sources = data["source_ids"][rows]
                found.update(zip(chunk_ids[rows].tolist(), sources.tolist(), strict=True))
        missing = [int(i) for i in wanted.tolist() if int(i) not in found]
        if missing:
            raise RuntimeError(f"ranked items {missing[:5]} are in no chunk file of {self.directory}")
        return [found[int(i)] for i in wanted.tolist()]

    def save_ranking(self, ranking: PoolRanking, source_ids: Sequence[str]) -> None:
        """``ranking/``: one ``.npy`` per column (``load_ranking`` maps them), replaced whole."""
        arrays = {"ids": ranking.selection.ids.numpy(), "scores": ranking.selection.scores.numpy(),
                  "source_ids": np.asarray(list(source_ids), dtype=np.str_)}
        arrays.update({f"column_{name}": value.numpy() for name, value in ranking.columns.items()})
        target, scratch = self.directory / "ranking", self.directory / "ranking.tmp"
        with state_write():
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            for name, value in arrays.items():
                np.save(scratch / f"{name}.npy", value)
            shutil.rmtree(target, ignore_errors=True)  # a job re-ranked after a restart replaces it
            os.replace(scratch, target)

    def load_ranking(self, items_total: int) -> tuple[PoolRanking, Sequence[str]]:
        """The ranking and its items' source ids (best first), mapped from disk: what is not read
        is not in memory. A job of an older server: its ``ranking.npz``, read."""
        folder = self.directory / "ranking"
        if not folder.is_dir():
            with np.load(self.directory / "ranking.npz") as data:
                arrays = {key: data[key] for key in data.files}
        else:
            arrays = {path.stem: _mapped(path) for path in folder.glob("*.npy")}
        columns = {key[len("column_"):]: torch.from_numpy(value) for key, value in arrays.items()
                   if key.startswith("column_")}
        selection = Selection(torch.from_numpy(arrays["ids"]), torch.from_numpy(arrays["scores"]))
        source_ids = arrays["source_ids"]
        return PoolRanking(selection, columns, items_total), (source_ids if folder.is_dir() else source_ids.tolist())


def _mapped(path: Path) -> np.ndarray:
    """A ``.npy`` file mapped copy-on-write (nothing read until used; torch takes it without a
    copy and without warning, as the array is writable to this process only)."""
    value = np.load(path, mmap_mode="c")
    return np.array(value) if value.size == 0 else value
