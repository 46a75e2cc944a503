"""The Ray Data actor that scores pool blocks: the same steps as the in-process job worker.

Per block: ``score_chunk`` (the model's normalisation, runtime forward and ``score_batch``, the one
scoring function of docs/architecture.md ("The flow of data"): the very step the service's job worker runs per chunk), then the
block's per-item scores written as Parquet, then the block's own top-k sent back to the driver,
which merges them into the pool's top-k. The model is loaded once per actor
(``__init__``), not per block: loading an ONNX session costs as much as scoring thousands of items.

What goes back to the driver is small whatever the pool: at most ``k`` candidate rows (plus ties
at the k-th score) and one summary row per block, so the driver's memory does not grow with the
pool and the network carries scores, not images or feature maps.
"""

from __future__ import annotations

import os
import socket
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from xal_core.acquisition import BatchScores, ScoringConfig, score_chunk
from xal_core.data.pool_store import CorruptChunk
from xal_core.scoring import Roi, TopK

from .item_scores import write_item_scores

__all__ = ["BlockScorer", "CANDIDATE_COLUMNS", "SUMMARY_COLUMNS", "block_counts", "block_rows"]

# Columns of a candidate row (one of a block's top-k items) that the ranking reports.
CANDIDATE_COLUMNS = ("uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit", "predicted_class",
                     "probabilities")
# Columns of a block's summary row: its rows, counts, where it ran, what each stage cost, and why
# its items were skipped (a damaged chunk; "" when scored).
_SUMMARY_TYPES = {"n_items": np.int64, "n_scored": np.int64, "n_invalid": np.int64, "n_excluded": np.int64,
                  "n_invalid_items": np.int64, "worker_pid": np.int64, "node": object, "read_s": np.float64, "forward_s": np.float64,
                  "kernel_s": np.float64, "write_s": np.float64, "skipped": object}
SUMMARY_COLUMNS = tuple(_SUMMARY_TYPES)


class _Block(NamedTuple):
    """A block as ``score_chunk`` reads a pool chunk (``ChunkLike``)."""

    index: torch.Tensor  # int64 [b]
    images: torch.Tensor  # float32 [b, C, H, W], as stored
    roi: Roi


def _roi(batch: dict[str, np.ndarray], roi_format: str, size: tuple[int, int]) -> Roi:
    """The block's ROIs, decoded exactly as ``PoolStore.read_chunk`` decodes a chunk's."""
    known = torch.from_numpy(batch["roi_known"].astype(bool))
    if roi_format == "boxes":
        counts = torch.from_numpy(batch["roi_counts"].astype(np.int64))
        return Roi.from_padded_boxes(torch.from_numpy(_writable(batch["roi_boxes"])), counts, size=size)
    return Roi.from_packed_masks(torch.from_numpy(_writable(batch["roi_packed"])), size[1], known)


def _writable(array: np.ndarray) -> np.ndarray:
    """Ray hands tensor columns over as read-only views; torch wants memory it may write (copy if so)."""
    return np.require(array, requirements="W")


class BlockScorer:
    """Callable class for ``Dataset.map_batches`` with an ``ActorPoolStrategy``.

    Args:
        model_path: an exported xal model (ONNX or TorchScript) every node can read.
        config: the scoring strategy, as ``dataclasses.asdict(ScoringConfig)``.
        k: the size of the acquisition list (each block sends back its own top-``k``).
        scores_dir: where the per-item Parquet files go (shared by all nodes).
        roi_format, size: the pool's ROI format (``"mask"`` or ``"boxes"``) and ROI frame.
        chunk_size: the pool's rows per chunk (a block is one chunk; errors name the chunk).
        exclude_ids: items to score but leave out of the ranking (e.g. already labelled).
        threads: intra-op threads of the runtime (the CPUs Ray reserved for this actor).
    """

    def __init__(self, model_path: str, config: dict, k: int, scores_dir: str, roi_format: str,
                 size: tuple[int, int], exclude_ids: np.ndarray, chunk_size: int, threads: int = 1) -> None:
        from xal_core.models.runtime import load

        torch.set_num_threads(threads)
        # ONNX Runtime sizes its own thread pool (one per core unless told): tell it what Ray gave us.
        self.runtime = load(model_path) if zipfile.is_zipfile(model_path) else load(model_path, threads=threads)
        self.config = ScoringConfig(**config)
        self.k = int(k)
        self.scores_dir = Path(scores_dir)
        self.roi_format = roi_format
        self.size = (int(size[0]), int(size[1]))
        self.exclude_ids = np.asarray(exclude_ids, dtype=np.int64)
        self.chunk_size = int(chunk_size)
        self.classes = len(self.runtime.metadata.class_names)
        self.worker = (os.getpid(), socket.gethostname())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = _writable(np.asarray(batch["index"], dtype=np.int64))
        first, stop = int(ids[0]), int(ids[-1]) + 1
        if not np.array_equal(ids, np.arange(first, stop)):
            raise ValueError(f"pool block {first}..{stop - 1}: item ids are not the contiguous pool rows")
        if "skipped" in batch:  # the read task found the chunk damaged (``datasource.skipped_block``)
            return self._skipped(first, stop, str(batch["skipped"][0]), batch)
        try:
            roi = _roi(batch, self.roi_format, self.size)
        except ValueError as error:  # checksum fine, content not: as ``PoolStore.read_verified_chunk`` says it
            corrupt = CorruptChunk(first // self.chunk_size, slice(first, stop), f"does not decode ({error})")
            return self._skipped(first, stop, corrupt.item_reason, batch)
        block = _Block(torch.from_numpy(ids), torch.from_numpy(batch["images"].astype(np.float32)), roi)
        stage_s: dict[str, float] = {}
        scores = score_chunk(self.runtime, block, self.config, on_stage=stage_s.__setitem__)  # the job worker's step
        requested = np.isin(ids, self.exclude_ids)
        started = time.perf_counter()
        write_item_scores(self.scores_dir, scores, batch["source_id"], requested)
        write_s = time.perf_counter() - started
        summary = {
            **block_counts(scores, requested),
            "worker_pid": self.worker[0], "node": self.worker[1], "read_s": float(np.sum(batch["read_s"])),
            "forward_s": stage_s["forward"], "kernel_s": stage_s["kernel"], "write_s": write_s, "skipped": "",
        }
        return block_rows(first, stop, scores, batch["source_id"], ~requested, summary, self.k, self.config.fusion)

    def _skipped(self, first: int, stop: int, reason: str, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A damaged chunk's rows: no candidates, a summary that counts its items as done and says
        why they were skipped. No per-item file is written, so a resumed run reads the chunk again."""
        summary = {"n_items": stop - first, "n_scored": 0, "n_invalid": 0, "n_excluded": 0, "n_invalid_items": 0,
                   "worker_pid": self.worker[0], "node": self.worker[1], "read_s": float(np.sum(batch["read_s"])),
                   "forward_s": 0.0, "kernel_s": 0.0, "write_s": 0.0, "skipped": reason}
        return block_rows(first, stop, BatchScores.empty(self.classes), np.zeros(0, dtype=object),
                          np.zeros(0, dtype=bool), summary, self.k, self.config.fusion)


def block_counts(scores: BatchScores, requested: np.ndarray) -> dict[str, int]:
    """A block's tally as ``rank_pool`` counts it (over the items not asked to be left out), and its
    item errors (over all of them)."""
    ranked = ~requested
    return {
        "n_items": int(scores.ids.numel()), "n_scored": int(ranked.sum()),
        "n_invalid": int(scores.invalid.numpy()[ranked].sum()),
        "n_excluded": int(scores.excluded.numpy()[ranked].sum()),
        "n_invalid_items": int(scores.invalid.sum()),  # requested exclusions included: the job's item errors
    }


def block_rows(first: int, stop: int, scores: BatchScores, source_ids: np.ndarray, ranked: np.ndarray,
               summary: dict, k: int, fusion: str) -> dict[str, np.ndarray]:
    """The block's top-k candidate rows followed by its summary row, in one table (what an actor
    sends the driver, and what the driver rebuilds from a resumed block's Parquet file)."""
    keep = torch.from_numpy(np.asarray(ranked, dtype=bool))
    if fusion == "weighted":
        top = TopK(k)
        top.push(scores.ids[keep], scores.score[keep], {name: value[keep] for name, value in scores.columns().items()})
        chosen, columns = top.result(), top.selected_columns()
    else:  # rank fusion needs every item's U and M: the driver ranks from the Parquet files
        chosen = TopK(1).result()
        columns = {name: value[:0] for name, value in scores.columns().items()}
    n = int(chosen.ids.numel())
    width = scores.probabilities.shape[1]
    rows: dict[str, np.ndarray] = {
        "first": np.full(n + 1, first, dtype=np.int64), "stop": np.full(n + 1, stop, dtype=np.int64),
        "summary": np.array([False] * n + [True]),
        "id": np.append(chosen.ids.numpy(), -1), "score": np.append(chosen.scores.numpy(), np.nan),
        "source_id": np.append(np.asarray(source_ids, dtype=object)[chosen.ids.numpy() - first], "").astype(object),
    }
    for name in CANDIDATE_COLUMNS:
        value = columns[name].numpy()
        rows[name] = np.concatenate([value, np.zeros((1, width) if name == "probabilities" else 1, value.dtype)])
    for name, dtype in _SUMMARY_TYPES.items():
        rows[name] = np.full(n + 1, "", dtype=object) if dtype is object else np.zeros(n + 1, dtype=dtype)
        rows[name][-1] = summary[name]
    return rows
