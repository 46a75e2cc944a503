"""The ``xal.v1.Scoring`` service on the asyncio server: one coroutine per RPC, blocking work on threads.

Why asyncio: a call that has sent its headers but not its message, or a ``WatchJob`` stream on a
queued job, costs a coroutine here, not one of a fixed set of handler threads, so no number of
such calls can keep the token holder's calls or the health checks from being answered. The event
loop only parses, checks and dispatches; every piece of blocking work (scoring, model loading,
file I/O) runs on the ``workers`` executor, and streams are counted per client and in total
(``limits.StreamLimiter``).

Every handler runs through ``_handle``, which turns ``RequestError`` into its status code (the
message stripped of server paths by ``redact``), any other exception into INTERNAL for that call
only (the server goes on), and records the call in the statistics. Inline scoring (``ScoreBatch``)
is the one scoring function of ``xal_core`` behind the wire codec, so the service gives exactly the
library's numbers; jobs (``xal_service.jobs``) run the same function over registered pools with
loaded models (``xal_service.registry``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import torch

from xal_core.acquisition import BatchScores, rank_fusion, score_batch
from xal_core.scoring import NonFiniteInputWarning

from .. import codec
from ..errors import RequestError, invalid_argument
from ..jobs.manager import CANCELLED, FAILED, SUCCEEDED, TERMINAL, JobManager, JobSpec
from ..registry.registry import Registry, check_name
from ..registry.uploads import UploadWriter
from ..wire import scoring_pb2 as pb
from . import replies
from .config import ServiceLimits
from .handlers import MalformedRequest, tolerant
from .limits import StreamLimiter
from .request_caps import check_score_batch_sizes
from .statistics import Statistics

__all__ = ["ScoringServicer"]

log = logging.getLogger("xal.service")
Response = TypeVar("Response")
WATCH_INTERVAL = 0.1  # seconds between WatchJob's looks at a job


def _well_formed(request: Any) -> Any:
    if isinstance(request, MalformedRequest):
        raise invalid_argument(request.message())
    return request


class ScoringServicer:
    """The handlers. ``set_serving(False)`` / ``set_serving(True)`` bracket a model load (health
    says NOT_SERVING meanwhile); ``workers`` runs blocking work (default: the loop's executor)."""

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
        workers: Executor | None = None,
        limits: ServiceLimits = ServiceLimits(),
        redact: Callable[[str], str] = lambda message: message,
    ) -> None:
        self.statistics = statistics
        self.registry = registry
        self.jobs = jobs
        self.state = state
        self.set_serving = set_serving
        self.max_batch = max_batch
        self.scoring_pool = scoring_pool  # threads that score parts of inline batches (see _score)
        self.scoring_threads = scoring_threads
        self.workers = workers
        self.limits = limits
        self.redact = redact
        self.streams = StreamLimiter(limits.max_streams_per_client, limits.max_streams)
        self._batches_in_flight = 0  # touched on the event loop only
        self.model_loads = {"loaded": 0, "failed": 0}  # LoadModel calls that reached the load itself

    @property
    def batches_in_flight(self) -> int:
        """``ScoreBatch`` calls being scored or waiting for a thread now."""
        return self._batches_in_flight

    # ------------------------------------------------------------------ plumbing
    async def _run(self, function: Callable[..., Response], *args: Any) -> Response:
        """``function(*args)`` on a worker thread: the event loop never blocks."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, functools.partial(function, *args))

    async def _handle(
        self,
        name: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[], Awaitable[Response]],
        items: Callable[[Response], int] | None = None,
        *,
        stream: _StreamCall | None = None,
    ) -> Response:
        """``await work()``; a ``RequestError`` becomes its status code, anything else INTERNAL.
        With ``stream``, the stream records the call when it ends (its time is the whole stream's);
        a refusal here is its status code."""
        started = time.perf_counter()
        failed, n_items, code = True, 0, grpc.StatusCode.UNKNOWN
        try:
            response = await work()
            failed, code = False, grpc.StatusCode.OK
            n_items = items(response) if items is not None else 0
            return response
        except RequestError as error:
            code, message = error.code, self.redact(error.message)
        except Exception:  # a bug in the server: fail this call, keep serving
            log.exception("%s failed", name)
            code, message = grpc.StatusCode.INTERNAL, f"{name}: internal error (see the server log)"
        finally:
            if stream is not None:
                stream.code = code
            else:
                self.statistics.record_rpc(name, time.perf_counter() - started, failed=failed, items=n_items, code=code)
        await context.abort(code, message)

    def _stream_call(self, name: str) -> _StreamCall:
        return _StreamCall(self.statistics, name)

    def _sync(self, name: str, context, function: Callable[[], Response], items=None) -> Awaitable[Response]:
        return self._handle(name, context, lambda: self._run(function), items)

    async def _open_stream(self, name: str, context: grpc.aio.ServicerContext) -> str:
        """A stream slot for this client, or ``RESOURCE_EXHAUSTED`` (the call ends here)."""
        try:
            return self.streams.acquire(context.peer(), name)
        except RequestError as error:
            self.statistics.record_rpc(name, 0.0, failed=True, code=error.code)
            await context.abort(error.code, error.message)
            raise  # not reached: abort raises

    # ------------------------------------------------------------------ inline scoring
    async def ScoreBatch(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``request`` is the serialized ``ScoreBatchRequest`` and the reply a serialized
        ``ScoreBatchResponse`` (``handlers`` registers neither deserializer nor serializer): the
        event loop only counts the call and hands its bytes to a worker thread, which parses,
        checks, scores and serializes the reply in one go (``_score_batch``), one hop for the
        whole call. At most ``limits.max_inflight_batches`` are scored or wait for a thread; one
        more is refused at once."""
        cap = self.limits.max_inflight_batches
        if self._batches_in_flight >= cap:
            self.statistics.record_rpc("ScoreBatch", 0.0, failed=True, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{cap} ScoreBatch calls are already being scored or waiting "
                                "(--max-inflight-batches); retry shortly")
        self._batches_in_flight += 1
        try:
            reply, _ = await self._sync("ScoreBatch", context, lambda: self._score_batch(request), items=lambda r: r[1])
            return reply
        finally:
            self._batches_in_flight -= 1

    def _score_batch(self, request: bytes | pb.ScoreBatchRequest | codec.ScoreBatchWire) -> tuple[bytes, int]:
        """The serialized reply to ``request`` and its number of items. ``request``: the received
        bytes (parsed here, the feature maps left where they are: ``codec.parse_score_batch_request``),
        or a message already parsed."""
        started = time.perf_counter()
        features_data, request_bytes = None, None
        if isinstance(request, bytes | bytearray | memoryview):
            request_bytes = len(request)
            request = _parse_score_batch(request)
        request = _well_formed(request)
        if isinstance(request, codec.ScoreBatchWire):
            request, features_data = request.message, request.features_data
        if request_bytes is None:  # a message handed over parsed (upb's ByteSize serializes it: avoided above)
            request_bytes = request.ByteSize() + (len(features_data) if features_data is not None else 0)
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
        _check_unique(ids)
        if not request.HasField("roi"):
            raise invalid_argument("roi: missing: every ScoreBatch carries the B items' ROIs (masks or boxes; an "
                                   "item without one is marked unknown: masks.known false, or boxes.counts -1)")
        check_score_batch_sizes(request.roi, batch, tuple(features.shape[2:]), request_bytes, self.limits)
        roi = codec.decode_roi(request.roi, batch)
        clipped = codec.roi_clipped(roi)
        config = codec.decode_parameters(request.parameters)
        decoded = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteInputWarning)  # reported per item below
            try:
                scores = self._score(ids, logits, features, cam_weights, roi, config)
            except ValueError as error:
                raise invalid_argument(str(error)) from None
            score = scores.score
            if config.fusion == "rank":  # ranks relative to this batch (docs/service.md)
                score = rank_fusion(scores.uncertainty, scores.dice, scores.invalid, config).score
        scored = time.perf_counter()
        reply = codec.encode_score_batch_response(
            ids=_numpy(scores.ids, torch.int64), score=_numpy(score, torch.float64),
            uncertainty=_numpy(scores.uncertainty, torch.float32), dice=_numpy(scores.dice, torch.float32),
            soft_dice=_numpy(scores.soft_dice, torch.float32), roi_energy=_numpy(scores.roi_energy, torch.float32),
            pointing_hit=_numpy(scores.pointing_hit, torch.float32),
            predicted_class=_numpy(scores.predicted_class, torch.int64), invalid=_numpy(scores.invalid, torch.bool),
            excluded=_numpy(scores.excluded, torch.bool), roi_clipped=_numpy(clipped, torch.bool),
        )
        # Where a call's time goes inside the handler (the rest of a client's latency is gRPC, the
        # transport and the client itself): Statistics reports these next to the job stages.
        for stage, seconds in (("decode", decoded - started), ("score", scored - decoded), ("reply", time.perf_counter() - scored)):
            self.statistics.record_stage(f"ScoreBatch.{stage}", seconds, items=batch)
        return reply, batch

    def _score(self, ids, logits, features, cam_weights, roi, config) -> BatchScores:
        """``score_batch`` of the whole batch, split across the scoring threads while they have room.

        Every per-item score depends on that item alone, so the parts concatenate to exactly the
        scores of the whole batch. The scoring threads are shared by all calls, first come first
        served, so however many clients there are, no more parts run at once than there are
        threads. How a batch is scored depends on how many are in flight:

        * alone (one client): split across the threads, the first part (a batch too small to
          split: all of it) scored by this worker thread itself while the scoring threads take
          the others (a hand-off saved);
        * with others: split only as far as threads are left over (one per other batch in
          flight); with as many batches as threads, each is scored whole by one scoring thread,
          since parts would only add hand-offs and per-part costs (~0.4 ms per 64-item call).

        Splitting needs single-threaded torch (``xal serve`` sets it, see
        ``serve.dedicate_process``); with intra-op threads, torch parallelises each operation
        itself and the parts would only compete for the same cores.

        Feature maps the kernel must widen first (float16, bfloat16) are never scored inline: every
        part goes to the scoring threads. Measured in the server (``bench/service.py``, one
        client, medians of 3 interleaved runs; ``bench/results/service-cpu-fp16-split.json``):
        float16 scored 5.25 ms a call with an inline part against 4.37 ms with both parts on the
        scoring threads, while float32 went the other way (4.21 against 4.63 ms). The cause was not
        isolated: in a single process, without gRPC, the two splits score float16 alike. Measured
        again on uvloop (7 interleaved rounds, ``bench/results/service-cpu-ab-amd.json``): without
        this rule float16's one-client p50 is 7.5 % slower (5 of 7 rounds), float32 unchanged.
        """
        if self.scoring_pool is None or torch.get_num_threads() != 1:
            return score_batch(ids, logits, features, cam_weights, roi, config)
        batch = ids.shape[0]
        others = max(self._batches_in_flight - 1, 0)  # read off the loop: a hint, never a guarantee
        parts = max(1, min(self.scoring_threads - others, batch // MIN_ITEMS_PER_PART))
        bounds = [batch * i // parts for i in range(parts + 1)]
        pieces = [slice(start, end) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        widened = features.dtype in (torch.float16, torch.bfloat16)
        inline = pieces.pop(0) if others == 0 and not widened else None  # alone: this thread takes a part
        futures = [self.scoring_pool.submit(_score_part, ids[p], logits[p], features[p], cam_weights[p], roi[p], config)
                   for p in pieces]
        results = [] if inline is None else [
            score_batch(ids[inline], logits[inline], features[inline], cam_weights[inline], roi[inline], config)]
        results += [future.result() for future in futures]
        if len(results) == 1:
            return results[0]
        return BatchScores(**{
            field.name: torch.cat([getattr(r, field.name) for r in results]) for field in dataclasses.fields(BatchScores)
        })

    async def Statistics(self, request, context):
        return await self._sync("Statistics", context, lambda: (_well_formed(request), self.statistics.snapshot())[1])

    # ------------------------------------------------------------------ models
    async def LoadModel(self, request_iterator, context):
        client = await self._open_stream("LoadModel", context)
        try:
            return await self._handle("LoadModel", context, lambda: self._load_model(request_iterator))
        finally:
            self.streams.release(client)

    async def _load_model(self, request_iterator) -> pb.ModelInfo:
        """A server-side path (under ``--model-root``) or an upload (``uploads.UploadWriter``)."""
        name, given, writer = None, None, None
        try:
            position = 0
            async for message in request_iterator:
                message = _well_formed(message)
                position += 1
                if name is None:
                    name = message.name  # the first message's name is the model's
                elif message.name and message.name != name:
                    raise invalid_argument(
                        f"name: message {position} of the upload names {message.name!r}, the first named {name!r}; "
                        "later messages repeat the first one's name or leave it empty")
                source = message.WhichOneof("source")
                if source == "path":
                    given = message.path
                elif source == "chunk":
                    if writer is None:
                        check_name(name)  # before any file is made for it
                        writer = await self._run(UploadWriter, self.state, self.limits.max_model_bytes)
                    await self._run(writer.write, message.chunk)
            if given is not None and writer is not None:
                raise invalid_argument("source: give a server-side path or stream the file in chunks, not both")
            if given is None and writer is None:
                raise invalid_argument("source: give a server-side path or stream the file in chunks")
            check_name(name or "")
            if writer is not None:
                temporary, sha256 = await self._run(writer.finish)
                load = functools.partial(self.registry.add_upload, name, temporary, sha256)
            else:
                load = functools.partial(self.registry.load_model, name, self.registry.model_roots.resolve(given))
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        self.set_serving(False)  # NOT_SERVING while a model loads
        outcome = "failed"
        try:
            model = await self._run(load)
            outcome = "loaded"
        finally:
            self.set_serving(True)
            self.model_loads[outcome] += 1
        return replies.model_info(model)

    async def ListModels(self, request, context):
        return await self._sync("ListModels", context, lambda: (_well_formed(request), pb.ListModelsResponse(
            models=[replies.model_info(m) for m in list(self.registry.models.values())]))[1])

    async def ModelMetadata(self, request, context):
        return await self._sync("ModelMetadata", context,
                                lambda: replies.model_info(self.registry.model(_well_formed(request).name)))

    # ------------------------------------------------------------------ pools
    async def RegisterPool(self, request, context):
        def register():
            message = _well_formed(request)
            check_name(message.name)
            path = self.registry.pool_roots.resolve(message.path)
            return replies.pool_info(self.registry.register_pool(message.name, path))

        return await self._sync("RegisterPool", context, register)

    async def ListPools(self, request, context):
        return await self._sync("ListPools", context, lambda: (_well_formed(request), pb.ListPoolsResponse(
            pools=[replies.pool_info(p) for p in list(self.registry.pools.values())]))[1])

    async def DescribePool(self, request, context):
        return await self._sync("DescribePool", context,
                                lambda: replies.pool_info(self.registry.pool(_well_formed(request).name)))

    # ------------------------------------------------------------------ jobs
    async def StartScoring(self, request, context):
        def start():
            message = _well_formed(request)
            spec = JobSpec(
                model=message.model, pool=message.pool, config=codec.decode_parameters(message.parameters),
                k=int(message.k), exclude_ids=tuple(int(i) for i in message.exclude_ids),
                idempotency_key=message.idempotency_key,
            )
            return pb.StartScoringResponse(job_id=self.jobs.submit(spec).id)

        return await self._sync("StartScoring", context, start)

    async def WatchJob(self, request, context):
        """Statuses as they change, until (and including) the job's terminal one. The call's
        statistics count the whole stream: as long as the job takes, or until the client leaves."""
        client = await self._open_stream("WatchJob", context)
        call = self._stream_call("WatchJob")
        try:
            job = await self._handle("WatchJob", context, lambda: self._lookup(request), stream=call)
            call.ok = True
            last = None
            while True:
                # Read the state before the status: a job that turned terminal between the two
                # would otherwise end the stream without its final status ever being sent.
                finished = job.state in TERMINAL
                status = replies.job_status(job)
                if status != last:
                    yield status
                    last = status
                if finished:
                    return
                await asyncio.sleep(WATCH_INTERVAL)
        finally:
            call.done()
            self.streams.release(client)

    async def _lookup(self, request):
        return self.jobs.get(_well_formed(request).job_id)

    async def GetRanking(self, request, context):
        client = await self._open_stream("GetRanking", context)
        call = self._stream_call("GetRanking")
        try:
            def pages():
                message = _well_formed(request)
                job = self._finished_job(message.job_id)
                if message.page_size < 0:
                    raise invalid_argument(f"page_size: must be >= 0, got {message.page_size}")
                return replies.ranking_pages(job, message.page_size or 1000)

            made = await self._handle("GetRanking", context, lambda: self._run(pages), stream=call)
            call.ok = True
            for page in made:
                yield page
                call.items += len(page.items)
        finally:
            call.done()
            self.streams.release(client)

    async def GetItemScores(self, request, context):
        """Every item's scores in pool order; the pages are made chunk by chunk on a worker thread
        as the stream is read, so memory stays one chunk whatever the pool."""
        client = await self._open_stream("GetItemScores", context)
        call = self._stream_call("GetItemScores")
        try:
            def start():
                message = _well_formed(request)
                job = self._finished_job(message.job_id)
                if message.page_size < 0:
                    raise invalid_argument(f"page_size: must be >= 0, got {message.page_size}")
                return replies.item_score_pages(job, message.page_size or 1000)

            pages = await self._handle("GetItemScores", context, lambda: self._run(start), stream=call)
            call.ok = True
            while (page := await self._run(next, pages, None)) is not None:
                yield page
                call.items += len(page.items)
        finally:
            call.done()
            self.streams.release(client)

    def _finished_job(self, job_id: str):
        """The job, if it succeeded; FAILED_PRECONDITION saying what to do otherwise."""
        job = self.jobs.get(job_id)
        if job.state == SUCCEEDED and job.ranking is not None:
            return job
        if job.state == CANCELLED:
            why = "was cancelled: it has no ranking and never will (StartScoring a new job)"
        elif job.state == FAILED:
            why = "failed: it has no ranking (its JobStatus.error says why; StartScoring a new job)"
        else:
            why = f"is {job.state}: its results exist once it has succeeded (WatchJob until then)"
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"job {job_id} {why}")

    async def CancelJob(self, request, context):
        return await self._sync("CancelJob", context,
                                lambda: replies.job_status(self.jobs.cancel(_well_formed(request).job_id)))

    async def ListJobs(self, request, context):
        return await self._sync("ListJobs", context, lambda: (_well_formed(request), pb.ListJobsResponse(
            jobs=[replies.job_status(j) for j in self.jobs.list()]))[1])


class _StreamCall:
    """The statistics of one server-streaming call: from its start to the end of its stream (the
    client's reading included), failed when it was refused before its first message.

    Its status code: the refusal's (``_handle`` sets it), OK for a stream that ran to its end,
    CANCELLED for one the client left (the handler is cancelled or closed mid-stream), UNKNOWN for
    one an error ended (gRPC answers that)."""

    def __init__(self, statistics: Statistics, name: str) -> None:
        self.statistics, self.name = statistics, name
        self.started = time.perf_counter()
        self.ok = False
        self.items = 0
        self.code = grpc.StatusCode.OK

    def done(self) -> None:
        """Record the call; called in the handler's ``finally``, where ``sys.exc_info`` names what
        ended the stream early, if anything did."""
        code = self.code
        if self.ok:
            ended = sys.exc_info()[1]
            if isinstance(ended, asyncio.CancelledError | GeneratorExit):
                code = grpc.StatusCode.CANCELLED
            elif ended is not None and not isinstance(ended, grpc.aio.AbortError):
                code = grpc.StatusCode.UNKNOWN
        self.statistics.record_rpc(self.name, time.perf_counter() - self.started, failed=not self.ok, items=self.items,
                                   code=code)


_parse_score_batch = tolerant(codec.parse_score_batch_request, "ScoreBatchRequest")


def _numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``tensor`` as a NumPy array of ``dtype`` (no copy when it already is one)."""
    return tensor.detach().to(dtype).numpy()


def _check_unique(ids: torch.Tensor) -> None:
    """Refuse a batch that names one item twice (its scores could not be told apart by id)."""
    if ids.shape[0] < 2:
        return
    values = ids.numpy()
    order = np.argsort(values, kind="stable")
    repeated = np.flatnonzero(values[order][1:] == values[order][:-1])
    if repeated.size:
        first, second = sorted((int(order[repeated[0]]), int(order[repeated[0] + 1])))
        raise invalid_argument(f"ids: id {int(values[first])} appears twice, at positions {first} and {second}; "
                               "the ids of one batch must be distinct")


# A batch is split only into parts of at least this many items: below that, the fixed cost of a
# part (some 50 tensor operations) outweighs what a second core saves.
MIN_ITEMS_PER_PART = 16


def _score_part(ids, logits, features, cam_weights, roi, config) -> BatchScores:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteInputWarning)  # reported per item by the caller
        return score_batch(ids, logits, features, cam_weights, roi, config)
