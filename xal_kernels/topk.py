"""Per-chunk top-k on the scores' own device, merged on the host by ``xal_core.scoring.TopK``.

A chunk of scores from the GPU is cut down to the items that can still make the selection — the
``k`` best eligible ones, every tie at the ``k``-th score included — before anything is copied to
the host, so the host-side merge sees ``O(k)`` items per chunk instead of the whole chunk. The
result, and ``TopK``'s counters and checks, are the same as pushing the whole chunk.
"""

from __future__ import annotations

import torch

from xal_core.scoring.topk import TopK

__all__ = ["push_chunk"]


def push_chunk(
    top: TopK,
    ids: torch.Tensor,
    scores: torch.Tensor,
    columns: dict[str, torch.Tensor] | None = None,
) -> None:
    """``top.push(ids, scores, columns)``, with the top-k pre-selection done where the tensors live.

    Args:
        top: the running selection.
        ids: int ``[n]`` unique item ids (any device).
        scores: float ``[n]`` (NaN = not eligible; see ``xal_core.scoring.fusion``).
        columns: optional per-item values carried with the selected items (see ``TopK.push``).
    """
    tensors = isinstance(ids, torch.Tensor) and isinstance(scores, torch.Tensor)
    if not tensors or ids.dim() != 1 or scores.shape != ids.shape or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        top.push(ids, scores, columns)  # TopK's own conversion, or its own error
        return
    if columns and any(not isinstance(v, torch.Tensor) or v.dim() < 1 or v.shape[0] != ids.shape[0] for v in columns.values()):
        top.push(ids, scores, columns)  # raises TopK's own error
        return
    if not scores.dtype.is_floating_point:
        scores = scores.to(torch.float64)
    ids = ids.to(device=scores.device)
    eligible = ~torch.isnan(scores)
    n_total = int(ids.numel())
    n_eligible = int(eligible.sum())
    eligible_ids = ids[eligible]
    held = top.result().ids.to(scores.device)
    if torch.unique(eligible_ids).numel() != n_eligible or bool(torch.isin(eligible_ids, held).any()):
        top.push(ids.cpu(), scores.cpu(), columns)  # raises TopK's own error, naming the id
        return
    keep = eligible
    if n_eligible > top.k:
        kth = torch.topk(scores[eligible], top.k).values[-1]
        keep = eligible & (scores >= kth)
    kept_ids, kept_scores = ids[keep].cpu(), scores[keep].cpu()
    kept_columns = None if columns is None else {name: value[keep.to(value.device)].cpu() for name, value in columns.items()}
    top.push(kept_ids, kept_scores, kept_columns)
    top.n_seen += n_total - int(kept_ids.numel())
    top.n_ineligible += n_total - n_eligible
