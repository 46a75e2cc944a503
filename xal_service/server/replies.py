"""Reply messages built from the server's objects: model, pool and job descriptions, ranking pages.

Kept apart from the handlers so that what a client sees of a model, a pool or a job is defined in
one place (and never includes a server path: a pool is shown by its path under ``<pool-root>``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from ..wire import scoring_pb2 as pb

__all__ = ["job_status", "model_info", "pool_info", "ranking_length", "ranking_pages"]

_STATES = {"queued": pb.JOB_QUEUED, "running": pb.JOB_RUNNING, "succeeded": pb.JOB_SUCCEEDED,
           "failed": pb.JOB_FAILED, "cancelled": pb.JOB_CANCELLED}


def job_status(job) -> pb.JobStatus:
    rate = job.items_per_second
    remaining = max(job.items_total - job.items_done, 0)
    return pb.JobStatus(
        job_id=job.id, state=_STATES[job.state], items_done=job.items_done, items_total=job.items_total,
        items_per_second=rate, eta_seconds=remaining / rate if rate > 0 else 0.0, error=job.error,
        item_errors=[pb.ItemError(id=i, reason=r) for i, r in list(job.item_errors)], n_item_errors=job.n_item_errors,
        model=job.spec.model, pool=job.spec.pool, **ranking_length(job),
    )


def ranking_length(job) -> dict:
    """``ranked`` (items in the ranking of a succeeded job) and, when that is fewer than ``k``,
    ``ranking_note`` saying why: the items left out by ``exclude_ids``, and the rest, made
    ineligible by the missing-ROI policy or skipped with a damaged pool chunk (the item errors
    list those). Items with non-finite inputs are ranked (last), so they never shorten it."""
    ranking = job.ranking
    if job.state != "succeeded" or ranking is None:
        return {}
    ranked, k, total = int(ranking.selection.ids.numel()), job.spec.k, job.items_total
    if ranked >= k:
        return {"ranked": ranked}
    requested = len({i for i in job.spec.exclude_ids if 0 <= i < total})
    note = f"the ranking holds {ranked} of k = {k} items: of the pool's {total} items, {requested} left out by exclude_ids"
    others = total - requested - ranked
    if others > 0:
        note += (f", {others} by the missing-ROI policy (missing_roi EXCLUDE) or with pool chunks that failed their "
                 "checksum (item_errors)")
    return {"ranked": ranked, "ranking_note": note}


def model_info(model) -> pb.ModelInfo:
    meta = model.metadata
    strings = meta.to_strings()
    return pb.ModelInfo(
        name=model.name, format="torchscript" if model.runtime_kind.startswith("TorchScript") else "onnx",
        runtime=f"{model.runtime_kind}:{model.device}",
        class_names=list(meta.class_names), input_shape=[meta.channels, *meta.input_size],
        outputs=["logits", "features", "cam_weights"], target_layer=meta.target_layer, xal_version=meta.version,
        metadata=strings, ready=True,
    )


def pool_info(pool) -> pb.PoolInfo:
    store = pool.store
    manifest = store.manifest
    kinds = ["mask", "boxes"] if store.roi_format == "boxes" else ["mask"]
    preprocessing = {key: json.dumps(manifest[key]) for key in ("size", "channels", "classes", "preprocessing") if key in manifest}
    return pb.PoolInfo(name=pool.name, path=pool.display or pool.path.name, size=len(store), roi_kinds=kinds,
                       preprocessing=preprocessing)


def ranking_pages(job, size: int) -> list[pb.RankingPage]:
    """The job's ranking, best first, in pages of ``size`` items."""
    ranking, columns = job.ranking, job.ranking.columns
    pages, items = [], []
    for position, item in enumerate(ranking.selection.ids.tolist()):
        items.append(pb.RankedItem(
            id=item, rank=position + 1, score=float(ranking.selection.scores[position]),
            uncertainty=float(columns["uncertainty"][position]), dice=float(columns["dice"][position]),
            soft_dice=float(columns["soft_dice"][position]), roi_energy=float(columns["roi_energy"][position]),
            pointing_hit=float(columns["pointing_hit"][position]),
            predicted_class=int(columns["predicted_class"][position]),
            probabilities=columns["probabilities"][position].tolist(), source_id=job.source_ids[position],
        ))
        if len(items) == size:
            pages.append(pb.RankingPage(items=items))
            items = []
    if items:
        pages.append(pb.RankingPage(items=items))
    return pages


def item_score_pages(job, size: int) -> Iterator[pb.ItemScoresPage]:
    """The job's per-item scores in pool order, in pages of ``size`` items, read chunk by chunk
    (memory: a chunk and a page, whatever the pool)."""
    items: list[pb.ItemScore] = []
    for batch, source_ids in job.files.item_scores():
        probabilities = batch.probabilities.tolist()
        columns = {name: getattr(batch, name).tolist() for name in (
            "ids", "score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit", "predicted_class",
            "invalid", "excluded")}
        for row in range(len(columns["ids"])):
            items.append(pb.ItemScore(
                id=columns["ids"][row], source_id=str(source_ids[row]), score=columns["score"][row],
                uncertainty=columns["uncertainty"][row], dice=columns["dice"][row],
                soft_dice=columns["soft_dice"][row], roi_energy=columns["roi_energy"][row],
                pointing_hit=columns["pointing_hit"][row], predicted_class=columns["predicted_class"][row],
                probabilities=probabilities[row], invalid=columns["invalid"][row], excluded=columns["excluded"][row],
            ))
            if len(items) == size:
                yield pb.ItemScoresPage(items=items)
                items = []
    if items:
        yield pb.ItemScoresPage(items=items)
