"""The ``xal.v1.Scoring`` service: request handling, one method per RPC.

Every handler runs through ``_handle``, which turns ``RequestError`` into its status code, any other
exception into INTERNAL for that call only (the server goes on), and records the call in the
statistics. Inline scoring (``ScoreBatch``) is the one scoring function of ``xal_core`` behind the
wire codec, so the service gives exactly the library's numbers.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import TypeVar

import grpc
import torch

from xal_core.acquisition import score_batch
from xal_core.scoring import NonFiniteInputWarning, dual_score

from . import codec
from .errors import RequestError, invalid_argument, unimplemented
from .statistics import Statistics
from .wire import scoring_pb2 as pb
from .wire import scoring_pb2_grpc as pb_grpc

__all__ = ["ScoringServicer"]

log = logging.getLogger("xal.service")
Response = TypeVar("Response")

# Parts of the service that wait on other parts of xal. They answer UNIMPLEMENTED with the reason
# rather than pretending: a client can tell "not yet in this server" from "bad request".
_NEEDS_RUNTIMES = "model runtimes (ONNX Runtime / TorchScript loading) are not in this server version yet"
_NEEDS_POOLS = "pool stores (written by `xal ingest`) are not in this server version yet"
_NEEDS_JOBS = "scoring jobs over pools are not in this server version yet; score inline with ScoreBatch"


class ScoringServicer(pb_grpc.ScoringServicer):
    def __init__(self, statistics: Statistics, *, max_batch: int = 65_536) -> None:
        self.statistics = statistics
        self.max_batch = max_batch

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
    def ScoreBatch(self, request: pb.ScoreBatchRequest, context: grpc.ServicerContext) -> pb.ScoreBatchResponse:
        return self._handle("ScoreBatch", context, lambda: self._score_batch(request), items=lambda r: len(r.ids))

    def _score_batch(self, request: pb.ScoreBatchRequest) -> pb.ScoreBatchResponse:
        logits = codec.decode_tensor(request.logits, "logits", dtypes=codec.FLOATS, ndim=2)
        batch = logits.shape[0]
        if batch == 0:
            raise invalid_argument("logits.shape: the batch is empty")
        if batch > self.max_batch:
            raise invalid_argument(f"logits.shape: {batch} items exceed this server's batch limit of {self.max_batch}")
        features = codec.decode_tensor(request.features, "features", dtypes=codec.FLOATS, ndim=4)
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteInputWarning)  # reported per item below
            try:
                scores = score_batch(ids, logits, features, cam_weights, roi, config)
            except ValueError as error:
                raise invalid_argument(str(error)) from None
            score = scores.score
            if config.fusion == "rank":
                fused = dual_score(
                    scores.uncertainty, 1.0 - scores.dice, weight=config.weight, method="rank",
                    missing_roi=config.missing_roi, invalid=scores.invalid,
                )
                score = fused.score
        return pb.ScoreBatchResponse(
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

    def Statistics(self, request: pb.StatisticsRequest, context: grpc.ServicerContext) -> pb.StatisticsResponse:
        return self._handle("Statistics", context, self.statistics.snapshot)

    # ------------------------------------------------------------------ not in this version yet
    def _missing(self, name: str, reason: str, context: grpc.ServicerContext):
        def refuse():
            raise unimplemented(f"{name}: {reason}")

        return self._handle(name, context, refuse)

    def LoadModel(self, request_iterator, context):
        return self._missing("LoadModel", _NEEDS_RUNTIMES, context)

    def ListModels(self, request, context):
        return self._missing("ListModels", _NEEDS_RUNTIMES, context)

    def ModelMetadata(self, request, context):
        return self._missing("ModelMetadata", _NEEDS_RUNTIMES, context)

    def RegisterPool(self, request, context):
        return self._missing("RegisterPool", _NEEDS_POOLS, context)

    def ListPools(self, request, context):
        return self._missing("ListPools", _NEEDS_POOLS, context)

    def DescribePool(self, request, context):
        return self._missing("DescribePool", _NEEDS_POOLS, context)

    def StartScoring(self, request, context):
        return self._missing("StartScoring", _NEEDS_JOBS, context)

    def WatchJob(self, request, context):
        self._missing("WatchJob", _NEEDS_JOBS, context)
        yield from ()

    def GetRanking(self, request, context):
        self._missing("GetRanking", _NEEDS_JOBS, context)
        yield from ()

    def CancelJob(self, request, context):
        return self._missing("CancelJob", _NEEDS_JOBS, context)

    def ListJobs(self, request, context):
        return self._missing("ListJobs", _NEEDS_JOBS, context)
