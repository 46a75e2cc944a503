"""One pool chunk through the model and the scoring function: the step every pool scorer repeats.

``score_chunk`` is what a scoring job does per chunk (``xal_service.jobs``) and what the in-process
scorer of the loop does (``xal_core.loop.scorers``), so both give the same numbers on the same pool
and model. The runtime is duck-typed — anything with ``.metadata.normalise(images)`` and
``.run(images) -> (logits, features, cam_weights)``, such as ``xal_core.models.runtime.load(path)`` —
so this module does not import the service.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch

from xal_core.scoring import NonFiniteInputWarning

from .batch_scoring import BatchScores, ScoringConfig, score_batch

__all__ = ["ChunkLike", "ModelRuntime", "keep_rows", "score_chunk"]


class ModelRuntime(Protocol):
    """What ``score_chunk`` needs of a model runtime (``xal_core.models.runtime`` satisfies it)."""

    metadata: Any  # has ``normalise(images) -> images``

    def run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class ChunkLike(Protocol):
    """What ``score_chunk`` reads of a chunk (``xal_core.data.PoolChunk`` satisfies it)."""

    index: torch.Tensor  # int64 [b], the item ids
    images: torch.Tensor  # float [b, C, H, W], as stored (values in [0, 1])
    roi: Any  # xal_core.scoring.Roi


def score_chunk(
    runtime: ModelRuntime,
    chunk: ChunkLike,
    config: ScoringConfig = ScoringConfig(),
    *,
    on_stage: Callable[[str, float], None] | None = None,
) -> BatchScores:
    """Normalise the chunk's images, run the model, score every item.

    Items whose image or model outputs are not finite are flagged ``invalid`` (score ``-inf``)
    rather than warned about: the caller reports them per item.

    Args:
        runtime: the model (see :class:`ModelRuntime`).
        chunk: one pool chunk (see :class:`ChunkLike`).
        config: the dual-score parameters.
        on_stage: called with ``("forward", seconds)`` then ``("kernel", seconds)`` (statistics).
    """
    started = time.perf_counter()
    images = runtime.metadata.normalise(chunk.images)
    logits, features, cam_weights = runtime.run(images)
    if on_stage is not None:
        on_stage("forward", time.perf_counter() - started)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)  # flagged per item in ``invalid``
        scores = score_batch(chunk.index, logits, features, cam_weights, chunk.roi, config)
    if on_stage is not None:
        on_stage("kernel", time.perf_counter() - started)
    return scores


def keep_rows(scores: BatchScores, keep: torch.Tensor) -> BatchScores:
    """The rows of ``scores`` where the bool mask ``keep`` is True (e.g. dropping labelled items)."""
    return BatchScores(**{name: getattr(scores, name)[keep] for name in scores.__dataclass_fields__})
