"""``ScoringClient``: a typed Python client of the ``xal.v1.Scoring`` service.

Two levels: one method per RPC (protobuf in and out, for tools that speak the wire), and the
domain level, ``run_scoring_job``, which takes a ``ScoringConfig`` and returns ranked rows and job
progress as plain Python (``job_results``): what the loop and the CLI use.

Retries on UNAVAILABLE are gRPC's own (a service-config retry policy with exponential back-off), so
they apply to every method alike; every call carries a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xal_core.acquisition.batch_scoring import ScoringConfig
from xal_core.scoring import Roi
from xal_core.scoring.parameters import (
    DEFAULT_FUSION,
    DEFAULT_MISSING_ROI,
    DEFAULT_THRESHOLD,
    DEFAULT_UNCERTAINTY,
    DEFAULT_WEIGHT,
)

from .. import codec
from ..wire import scoring_pb2 as pb
from ..wire import scoring_pb2_grpc as pb_grpc
from .job_results import ItemScoreRows, JobProgress, RankedItem, ScoringJobFailed, ScoringJobResult, job_state

__all__ = ["ItemScoreRows", "JobProgress", "RankedItem", "ScoringClient", "ScoringJobFailed", "ScoringJobResult"]

_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": "xal.v1.Scoring"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def _serialized(request: bytes | pb.ScoreBatchRequest) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


class ScoringClient:
    """Connects to ``target`` (``host:port``).

    Args:
        token: bearer token, sent as ``authorization: Bearer <token>``.
        tls_ca: PEM file of the CA that signed the server's certificate; None = plaintext.
        timeout: default deadline of each call, in seconds.
        max_message_mb: largest message this client sends or accepts.

    Example (with ``xal serve`` running on port 50051):
        >>> client = ScoringClient("127.0.0.1:50051")              # doctest: +SKIP
        >>> scores = client.score_batch(logits, features, cam_weights, roi)  # doctest: +SKIP
        >>> scores["dice"]                                        # doctest: +SKIP
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        timeout: float = 30.0,
        max_message_mb: int = 64,
    ) -> None:
        limit = max_message_mb * 1024 * 1024
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(_RETRY_POLICY)),
        ]
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.ScoringStub(self._channel)
        # ScoreBatch sends requests serialized by codec.encode_score_batch_request (the feature maps
        # copied once, not through protobuf): the same bytes on the wire as the generated stub's.
        self._score_batch = self._channel.unary_unary(
            "/xal.v1.Scoring/ScoreBatch",
            request_serializer=_serialized,
            response_deserializer=pb.ScoreBatchResponse.FromString,
            _registered_method=True,
        )
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ScoringClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None = None):
        return method(request, timeout=timeout or self.timeout, metadata=self._metadata)

    # ------------------------------------------------------------------ inline scoring
    def score_batch(
        self,
        logits: torch.Tensor | np.ndarray,
        features: torch.Tensor | np.ndarray,
        cam_weights: torch.Tensor | np.ndarray,
        roi: Roi,
        *,
        ids: torch.Tensor | np.ndarray | None = None,
        uncertainty: str = DEFAULT_UNCERTAINTY,
        weight: float = DEFAULT_WEIGHT,
        threshold: float = DEFAULT_THRESHOLD,
        fusion: str = DEFAULT_FUSION,
        missing_roi: str = DEFAULT_MISSING_ROI,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Score a batch remotely: the same numbers as ``xal_core.scoring`` on the same inputs.

        Returns NumPy arrays ``ids, score, uncertainty, dice, soft_dice, roi_energy, pointing_hit,
        predicted_class, invalid, excluded, roi_clipped`` (the last: a box of the item's ROI reached
        past the frame and was clipped to it).
        """
        request = codec.encode_score_batch_request(
            logits, features, cam_weights, roi, codec.encode_parameters(uncertainty, weight, threshold, fusion, missing_roi),
            ids=ids,
        )
        reply = self._call(self._score_batch, request, timeout)
        floats = ("uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit")
        out = {name: np.asarray(getattr(reply, name), dtype=np.float32) for name in floats}
        out["score"] = np.asarray(reply.score, dtype=np.float64)
        out["ids"] = np.asarray(reply.ids, dtype=np.int64)
        out["predicted_class"] = np.asarray(reply.predicted_class, dtype=np.int64)
        out["invalid"] = np.asarray(reply.invalid, dtype=bool)
        out["excluded"] = np.asarray(reply.excluded, dtype=bool)
        out["roi_clipped"] = np.asarray(reply.roi_clipped, dtype=bool)
        return out

    # ------------------------------------------------------------------ every other RPC
    def statistics(self) -> pb.StatisticsResponse:
        return self._call(self._stub.Statistics, pb.StatisticsRequest())

    def health(self, service: str = "") -> str:
        """``"SERVING"``, ``"NOT_SERVING"``, ... for ``service`` ("" = the whole server)."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def load_model(self, name: str, path: str) -> pb.ModelInfo:
        """Load a model file that the *server* can read."""
        return self._stub.LoadModel(iter([pb.LoadModelRequest(name=name, path=path)]), timeout=self.timeout, metadata=self._metadata)

    def upload_model(self, name: str, local_path: str | Path, chunk_mb: int = 1) -> pb.ModelInfo:
        """Stream a local model file to the server in chunks (for servers that cannot see your disk)."""
        size = chunk_mb * 1024 * 1024

        def messages():
            with open(local_path, "rb") as handle:
                while block := handle.read(size):
                    yield pb.LoadModelRequest(name=name, chunk=block)

        return self._stub.LoadModel(messages(), timeout=self.timeout, metadata=self._metadata)

    def list_models(self) -> pb.ListModelsResponse:
        return self._call(self._stub.ListModels, pb.ListModelsRequest())

    def model_metadata(self, name: str) -> pb.ModelInfo:
        return self._call(self._stub.ModelMetadata, pb.ModelMetadataRequest(name=name))

    def register_pool(self, name: str, path: str) -> pb.PoolInfo:
        return self._call(self._stub.RegisterPool, pb.RegisterPoolRequest(name=name, path=path))

    def list_pools(self) -> pb.ListPoolsResponse:
        return self._call(self._stub.ListPools, pb.ListPoolsRequest())

    def describe_pool(self, name: str) -> pb.PoolInfo:
        return self._call(self._stub.DescribePool, pb.DescribePoolRequest(name=name))

    def start_scoring(self, request: pb.StartScoringRequest) -> pb.StartScoringResponse:
        return self._call(self._stub.StartScoring, request)

    def watch_job(self, job_id: str):
        return self._stub.WatchJob(pb.JobRef(job_id=job_id), metadata=self._metadata)

    def get_ranking(self, job_id: str, page_size: int = 1000):
        return self._stub.GetRanking(pb.GetRankingRequest(job_id=job_id, page_size=page_size), metadata=self._metadata)

    def get_item_scores(self, job_id: str, page_size: int = 1000):
        return self._stub.GetItemScores(pb.GetItemScoresRequest(job_id=job_id, page_size=page_size),
                                        metadata=self._metadata)

    def cancel_job(self, job_id: str) -> pb.JobStatus:
        return self._call(self._stub.CancelJob, pb.JobRef(job_id=job_id))

    # ------------------------------------------------------------------ domain level
    def run_scoring_job(
        self,
        model: str,
        pool: str,
        *,
        k: int,
        config: ScoringConfig = ScoringConfig(),
        exclude_ids: Sequence[int] = (),
        idempotency_key: str = "",
        on_progress: Callable[[JobProgress], None] | None = None,
        page_size: int = 1000,
    ) -> ScoringJobResult:
        """Score a registered pool with a loaded model: start the job, watch it to its end, page its
        ranking. The one home of that sequence with :meth:`score_every_item` (``xal score`` uses this one).

        Args:
            k: the ranking's length.
            config: the scoring parameters (``xal_core.acquisition.ScoringConfig``).
            exclude_ids: items scored but left out of the ranking (e.g. already labelled).
            idempotency_key: a retried call with the same key re-attaches to the same job.
            on_progress: called with every status the job reports.

        Raises:
            ScoringJobFailed: the job ended FAILED or CANCELLED; grpc.RpcError for a refused call.
        """
        final = self._run_job(model, pool, k, config, exclude_ids, idempotency_key, on_progress)
        items = [RankedItem.from_wire(item) for page in self.get_ranking(final.job_id, page_size=page_size)
                 for item in page.items]
        return ScoringJobResult.from_wire(final, items)

    def score_every_item(
        self,
        model: str,
        pool: str,
        *,
        config: ScoringConfig = ScoringConfig(),
        exclude_ids: Sequence[int] = (),
        idempotency_key: str = "",
        on_progress: Callable[[JobProgress], None] | None = None,
        page_size: int = 1000,
    ) -> ItemScoreRows:
        """Score a registered pool and read back every item's scores in pool order
        (``GetItemScores``), for a caller whose own strategy ranks (the loop's ``ServiceScorer``):
        no ranking of the whole pool is made only to be sorted back. Same arguments and errors as
        :meth:`run_scoring_job` (the job keeps a top-1 ranking, which nobody reads)."""
        final = self._run_job(model, pool, 1, config, exclude_ids, idempotency_key, on_progress)
        classes = len(self.model_metadata(model).class_names)
        return ItemScoreRows.from_wire(final, self.get_item_scores(final.job_id, page_size=page_size), classes)

    def _run_job(self, model: str, pool: str, k: int, config: ScoringConfig, exclude_ids: Sequence[int],
                 idempotency_key: str, on_progress: Callable[[JobProgress], None] | None) -> pb.JobStatus:
        """Start a job and watch it to its end: its final status, or ``ScoringJobFailed``."""
        request = pb.StartScoringRequest(
            model=model, pool=pool, k=k, exclude_ids=list(exclude_ids), idempotency_key=idempotency_key,
            parameters=codec.encode_parameters(config.uncertainty, config.weight, config.threshold, config.fusion,
                                               config.missing_roi),
        )
        job_id = self.start_scoring(request).job_id
        final = None
        for status in self.watch_job(job_id):
            final = status
            if on_progress is not None:
                on_progress(JobProgress.from_wire(status))
        if final is None or final.state != pb.JOB_SUCCEEDED:
            raise ScoringJobFailed(job_id, job_state(final) if final is not None else "UNKNOWN",
                                   final.error if final is not None else "the status stream ended early")
        return final

    def list_jobs(self) -> pb.ListJobsResponse:
        return self._call(self._stub.ListJobs, pb.ListJobsRequest())
