"""The ``xal.v1.Scoring`` service: request handling, one method per RPC.

Every handler runs through ``_handle``, which turns ``RequestError`` into its status code, any other
exception into INTERNAL for that call only (the server goes on), and records the call in the
statistics. Inline scoring (``ScoreBatch``) is the one scoring function of ``xal_core`` behind the
wire codec, so the service gives exactly the library's numbers; jobs (``jobs.py``) run the same
function over registered pools with loaded models (``registry.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

import grpc
import torch

from xal_core.acquisition import BatchScores, score_batch
from xal_core.scoring import NonFiniteInputWarning, dual_score

from . import codec
from .errors import RequestError, invalid_argument
from .jobs import SUCCEEDED, TERMINAL, JobManager, JobSpec
from .registry import Registry
from .statistics import Statistics
from .wire import scoring_pb2 as pb
from .wire import scoring_pb2_grpc as pb_grpc

__all__ = ["ScoringServicer"]

log = logging.getLogger("xal.service")
Response = TypeVar("Response")

class ScoringServicer(pb_grpc.ScoringServicer):
    def __init__(
        self,
        statistics: Statistics,
        registry: Registry,
        jobs: JobManager,
        state: Path,
        set_serving: Callable[[bool], None],
        *,
        max_batch: int = 65_536,
        scoring_pool: Executor | None = None,
        scoring_threads: int = 1,
    ) -> None:
        self.statistics = statistics
        self.registry = registry
        self.jobs = jobs
        self.state = state
        self.set_serving = set_serving
        self.max_batch = max_batch
        self.scoring_pool = scoring_pool  # threads that score parts of inline batches (see _score)
        self.scoring_threads = scoring_threads

    # ------------------------------------------------------------------ plumbing
    def _handle(
        self,
        name: str,
        context: grpc.ServicerContext,
        work: Callable[[], Response],
        items: Callable[[Response], int] | None = None,
    ) -> Response:
        started = time.perf_counter()
        failed, n_items = True, 0
        try:
            response = work()
            failed = False
            n_items = items(response) if items is not None else 0
            return response
        except RequestError as error:
            context.abort(error.code, error.message)
        except Exception:  # a bug in the server: fail this call, keep serving
            log.exception("%s failed", name)
            context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error (see the server log)")
        finally:
            self.statistics.record_rpc(name, time.perf_counter() - started, failed=failed, items=n_items)

    # ------------------------------------------------------------------ inline scoring
    def ScoreBatch(
        self, request: pb.ScoreBatchRequest | codec.ScoreBatchWire, context: grpc.ServicerContext
    ) -> pb.ScoreBatchResponse:
        """``request`` is what ``codec.parse_score_batch_request`` (the deserializer ``server.py``
        registers) returns, or a plain message when the servicer is mounted with the generated one."""
        return self._handle("ScoreBatch", context, lambda: self._score_batch(request), items=lambda r: len(r.ids))

    def _score_batch(self, request: pb.ScoreBatchRequest | codec.ScoreBatchWire) -> pb.ScoreBatchResponse:
        started = time.perf_counter()
        features_data = None
        if isinstance(request, codec.ScoreBatchWire):
            request, features_data = request.message, request.features_data
        logits = codec.decode_tensor(request.logits, "logits", dtypes=codec.FLOATS, ndim=2)
        batch = logits.shape[0]
        if batch == 0:
            raise invalid_argument("logits.shape: the batch is empty")
        if batch > self.max_batch:
            raise invalid_argument(f"logits.shape: {batch} items exceed this server's batch limit of {self.max_batch}")
        features = codec.decode_tensor(request.features, "features", dtypes=codec.FLOATS, ndim=4, data=features_data)
        cam_weights = codec.decode_tensor(request.cam_weights, "cam_weights", dtypes=codec.FLOATS, ndim=2)
        if features.shape[0] != batch:
            raise invalid_argument(f"features.shape: {features.shape[0]} items, logits hold {batch}")
        if cam_weights.shape != (batch, features.shape[1]):
            raise invalid_argument(f"cam_weights.shape: expected [{batch}, {features.shape[1]}], got {list(cam_weights.shape)}")
        if logits.shape[1] < 2:
            raise invalid_argument(f"logits.shape: needs K >= 2 classes, got {logits.shape[1]}")
        ids = torch.tensor(list(request.ids), dtype=torch.int64) if request.ids else torch.arange(batch)
        if ids.shape[0] != batch:
            raise invalid_argument(f"ids: {ids.shape[0]} ids for {batch} items")
        roi = codec.decode_roi(request.roi, batch)
        config = codec.decode_strategy(request.strategy)
        decoded = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteInputWarning)  # reported per item below
            try:
                scores = self._score(ids, logits, features, cam_weights, roi, config)
            except ValueError as error:
                raise invalid_argument(str(error)) from None
            score = scores.score
            if config.fusion == "rank":
                fused = dual_score(
                    scores.uncertainty, 1.0 - scores.dice, weight=config.weight, method="rank",
                    missing_roi=config.missing_roi, invalid=scores.invalid,
                )
                score = fused.score
        scored = time.perf_counter()
        reply = pb.ScoreBatchResponse(
            ids=scores.ids.tolist(),
            score=score.tolist(),
            uncertainty=scores.uncertainty.tolist(),
            dice=scores.dice.tolist(),
            soft_dice=scores.soft_dice.tolist(),
            roi_energy=scores.roi_energy.tolist(),
            pointing_hit=scores.pointing_hit.tolist(),
            predicted_class=scores.predicted_class.tolist(),
            invalid=scores.invalid.tolist(),
            excluded=scores.excluded.tolist(),
            n_invalid=int(scores.invalid.sum()),
        )
        # Where a call's time goes inside the handler (the rest of a client's latency is gRPC, the
        # transport and the client itself): Statistics reports these next to the job stages.
        for stage, seconds in (("decode", decoded - started), ("score", scored - decoded), ("reply", time.perf_counter() - scored)):
            self.statistics.record_stage(f"ScoreBatch.{stage}", seconds, items=batch)
        return reply

    def _score(self, ids, logits, features, cam_weights, roi, config) -> BatchScores:
        """``score_batch`` of the whole batch, split across the scoring threads when there are any.

        Every per-item score depends on that item alone, so the parts concatenate to exactly the
        scores of the whole batch. The threads are shared by all calls: however many clients there
        are, no more than that many parts run at once. Splitting needs single-threaded torch
        (``xal serve`` sets it, see ``server.dedicate_process``); with intra-op threads, torch
        parallelises each operation itself and the parts would only compete for the same cores.
        """
        batch = ids.shape[0]
        parts = 1
        if self.scoring_pool is not None and torch.get_num_threads() == 1:
            parts = max(1, min(self.scoring_threads, batch // MIN_ITEMS_PER_PART))
        if parts == 1:
            return score_batch(ids, logits, features, cam_weights, roi, config)
        bounds = [batch * i // parts for i in range(parts + 1)]
        pieces = [slice(start, end) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        futures = [
            self.scoring_pool.submit(_score_part, ids[p], logits[p], features[p], cam_weights[p], roi[p], config)
            for p in pieces
        ]
        results = [future.result() for future in futures]
        return BatchScores(**{
            field.name: torch.cat([getattr(r, field.name) for r in results]) for field in dataclasses.fields(BatchScores)
        })

    def Statistics(self, request: pb.StatisticsRequest, context: grpc.ServicerContext) -> pb.StatisticsResponse:
        return self._handle("Statistics", context, self.statistics.snapshot)

    # ------------------------------------------------------------------ models
    def LoadModel(self, request_iterator, context):
        return self._handle("LoadModel", context, lambda: self._load_model(request_iterator))

    def _load_model(self, request_iterator) -> pb.ModelInfo:
        name, path, upload = "", None, None
        try:
            for message in request_iterator:
                name = name or message.name
                if message.WhichOneof("source") == "path":
                    path = Path(message.path)
                elif message.WhichOneof("source") == "chunk":
                    if upload is None:
                        _check_upload_name(name)
                        (self.state / "models").mkdir(exist_ok=True)
                        path = self.state / "models" / f"{name}.upload"
                        upload = open(path, "wb")  # noqa: SIM115 - closed below, after the stream
                    upload.write(message.chunk)
        finally:
            if upload is not None:
                upload.close()
        if path is None:
            raise invalid_argument("source: give a server-side path or stream the file in chunks")
        self.set_serving(False)  # NOT_SERVING while a model loads
        try:
            model = self.registry.load_model(name, path)
        finally:
            self.set_serving(True)
        return _model_info(model)

    def ListModels(self, request, context):
        return self._handle("ListModels", context, lambda: pb.ListModelsResponse(
            models=[_model_info(m) for m in list(self.registry.models.values())]))

    def ModelMetadata(self, request, context):
        return self._handle("ModelMetadata", context, lambda: _model_info(self.registry.model(request.name)))

    # ------------------------------------------------------------------ pools
    def RegisterPool(self, request, context):
        return self._handle("RegisterPool", context, lambda: _pool_info(self.registry.register_pool(request.name, Path(request.path))))

    def ListPools(self, request, context):
        return self._handle("ListPools", context, lambda: pb.ListPoolsResponse(
            pools=[_pool_info(p) for p in list(self.registry.pools.values())]))

    def DescribePool(self, request, context):
        return self._handle("DescribePool", context, lambda: _pool_info(self.registry.pool(request.name)))

    # ------------------------------------------------------------------ jobs
    def StartScoring(self, request, context):
        def start():
            spec = JobSpec(
                model=request.model, pool=request.pool, config=codec.decode_strategy(request.strategy),
                k=int(request.k), exclude_ids=tuple(int(i) for i in request.exclude_ids),
                idempotency_key=request.idempotency_key,
            )
            return pb.StartScoringResponse(job_id=self.jobs.submit(spec).id)

        return self._handle("StartScoring", context, start)

    def WatchJob(self, request, context):
        job = self._handle("WatchJob", context, lambda: self.jobs.get(request.job_id))
        last = None
        while context.is_active():
            # Read the state before the status: a job that turned terminal between the two would
            # otherwise end the stream without its final status ever being sent.
            finished = job.state in TERMINAL
            status = _job_status(job)
            if status != last:
                yield status
                last = status
            if finished:
                return
            time.sleep(0.1)

    def GetRanking(self, request, context):
        job = self._handle("GetRanking", context, lambda: self._finished_job(request.job_id))
        if request.page_size < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size: must be >= 0, got {request.page_size}")
        size = request.page_size or 1000
        ranking, columns = job.ranking, job.ranking.columns
        items = []
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
                yield pb.RankingPage(items=items)
                items = []
        if items:
            yield pb.RankingPage(items=items)

    def _finished_job(self, job_id: str):
        job = self.jobs.get(job_id)
        if job.state != SUCCEEDED or job.ranking is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"job {job_id}: no ranking yet (state {job.state})")
        return job

    def CancelJob(self, request, context):
        return self._handle("CancelJob", context, lambda: _job_status(self.jobs.cancel(request.job_id)))

    def ListJobs(self, request, context):
        return self._handle("ListJobs", context, lambda: pb.ListJobsResponse(jobs=[_job_status(j) for j in self.jobs.list()]))


# A batch is split only into parts of at least this many items: below that, the fixed cost of a
# part (some 50 tensor operations) outweighs what a second core saves.
MIN_ITEMS_PER_PART = 16


def _score_part(ids, logits, features, cam_weights, roi, config) -> BatchScores:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)  # reported per item by the caller
        return score_batch(ids, logits, features, cam_weights, roi, config)


_STATES = {"queued": pb.JOB_QUEUED, "running": pb.JOB_RUNNING, "succeeded": pb.JOB_SUCCEEDED,
           "failed": pb.JOB_FAILED, "cancelled": pb.JOB_CANCELLED}


def _check_upload_name(name: str) -> None:
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise invalid_argument(f"name: a plain file-safe name is required to upload a model, got {name!r}")


def _job_status(job) -> pb.JobStatus:
    rate = job.items_per_second
    remaining = max(job.items_total - job.items_done, 0)
    return pb.JobStatus(
        job_id=job.id, state=_STATES[job.state], items_done=job.items_done, items_total=job.items_total,
        items_per_second=rate, eta_seconds=remaining / rate if rate > 0 else 0.0, error=job.error,
        item_errors=[pb.ItemError(id=i, reason=r) for i, r in job.item_errors], n_item_errors=job.n_item_errors,
        model=job.spec.model, pool=job.spec.pool,
    )


def _model_info(model) -> pb.ModelInfo:
    meta = model.metadata
    strings = meta.to_strings()
    return pb.ModelInfo(
        name=model.name, format="torchscript" if model.runtime_kind.startswith("TorchScript") else "onnx",
        runtime=f"{model.runtime_kind}:{model.device}",
        class_names=list(meta.class_names), input_shape=[meta.channels, *meta.input_size],
        outputs=["logits", "features", "cam_weights"], target_layer=meta.target_layer, xal_version=meta.version,
        metadata=strings, ready=True,
    )


def _pool_info(pool) -> pb.PoolInfo:
    store = pool.store
    manifest = store.manifest
    kinds = ["mask", "boxes"] if store.roi_format == "boxes" else ["mask"]
    preprocessing = {key: json.dumps(manifest[key]) for key in ("size", "channels", "classes", "preprocessing") if key in manifest}
    return pb.PoolInfo(name=pool.name, path=str(pool.path), size=len(store), roi_kinds=kinds, preprocessing=preprocessing)
