"""Pool chunks through the model and the scoring function: the step every pool scorer repeats.

``score_chunk`` runs one chunk: normalise, forward pass, ``score_batch``. ``score_chunks`` runs a
stream of chunks with the same steps in a pipeline: the scoring of one batch (the alignment kernel
and the torch work around it) runs on a worker thread while the runtime computes the next batch;
both release the GIL. It is what a scoring job does (``xal_service.jobs``) and what the in-process
scorer of the loop does (``xal_core.loop.scorers``); the Ray workers run ``score_chunk`` per block.
All give the same numbers on the same pool and model: the pipeline cuts a chunk where the runtime
cuts it anyway (``max_batch``), and every score is per item.

The runtime is duck-typed — anything with ``.metadata.normalise(images)`` and
``.run(images) -> (logits, features, cam_weights)``, such as ``xal_core.models.runtime.load(path)`` —
so this module does not import the service.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from xal_core.scoring import NonFiniteInputWarning

from .batch_scoring import BatchScores, ScoringConfig, score_batch

__all__ = ["ChunkLike", "ModelRuntime", "ScoringStopped", "concat_scores", "keep_rows", "score_chunk", "score_chunks"]


class ModelRuntime(Protocol):
    """What ``score_chunk`` needs of a model runtime (``xal_core.models.runtime`` satisfies it)."""

    metadata: Any  # has ``normalise(images, out=None) -> images`` (``out``: a buffer to write into)

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


def concat_scores(parts: list[BatchScores]) -> BatchScores:
    """The rows of several ``BatchScores`` one after the other (one chunk's batches)."""
    if len(parts) == 1:
        return parts[0]
    return BatchScores(**{name: torch.cat([getattr(p, name) for p in parts]) for name in BatchScores.__dataclass_fields__})


class ScoringStopped(Exception):
    """``score_chunks`` stopped before a chunk because ``should_stop()`` said so (a cancelled job)."""


_END = object()  # the chunk stream is exhausted


@dataclass(eq=False)
class _Chunk:
    """A chunk in the pipeline: its batches' scoring (futures), in order."""

    chunk: Any
    skipped: bool
    parts: list[Future] = field(default_factory=list)
    forward_s: float = 0.0
    submitted: bool = False  # every batch's forward pass is done and its scoring submitted

    def ready(self) -> bool:
        return self.submitted and all(part.done() for part in self.parts)


def _torch_threads(threads: int) -> None:
    """This thread's torch intra-op threads (its own OpenMP setting; read first so that torch's
    lazy per-thread initialisation does not overwrite it later)."""
    torch.get_num_threads()
    torch.set_num_threads(threads)


def _thread(name: str, torch_threads: int) -> ThreadPoolExecutor:
    """One thread with ``torch_threads`` torch threads; the process's setting for threads started
    later is left as it was (``torch.set_num_threads`` also sets that)."""
    before = torch.get_num_threads()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_torch_threads,
                                  initargs=(torch_threads,))
    executor.submit(int).result()  # the initializer has run
    torch.set_num_threads(before)
    return executor


class _NormaliseBuffers:
    """Where ``score_chunks`` normalises batches: a ring of three reused tensors, not a fresh one each.

    A 32 × 224² batch is 19 MB; a new tensor that size is handed back to the OS when freed and its
    pages faulted in again by the next batch (measured: 8.8 ms a batch against 2.4 ms into a reused
    buffer). At most two normalised batches are alive at once — the one the runtime is running
    and the next — and a slot is taken on the calling thread in submission order, so the third
    slot is a margin: a slot is written again only after the batch that used it has been run.
    """

    SLOTS = 3

    def __init__(self, normalise: Callable[..., torch.Tensor]) -> None:
        self._normalise = normalise
        self._slots: list[torch.Tensor | None] = [None] * self.SLOTS
        self._next = 0

    def take(self, images: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The work that normalises ``images`` into the next slot (to run on the worker thread)."""
        slot = self._next
        self._next = (slot + 1) % self.SLOTS
        slots, normalise = self._slots, self._normalise

        def work() -> torch.Tensor:
            if not images.is_floating_point():
                return normalise(images)
            buffer = slots[slot]
            if (buffer is None or buffer.shape[1:] != images.shape[1:] or len(buffer) < len(images)
                    or buffer.dtype != images.dtype or buffer.device != images.device):
                buffer = slots[slot] = torch.empty((max(len(images), 1), *images.shape[1:]),
                                                   dtype=images.dtype, device=images.device)
            return normalise(images, out=buffer[:len(images)])

        return work


class _Reader:
    """Takes the next chunk from an iterator on a daemon thread, one request at a time.

    A daemon thread, not an executor's: a read that never returns (a pool file on a stalled mount)
    must not keep the process from exiting once the pipeline has been abandoned."""

    def __init__(self, pull: Callable[[], Any]) -> None:
        self._pull = pull
        self._requests: queue.SimpleQueue[Future | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="xal-score-read", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (future := self._requests.get()) is not None:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._pull())
            except BaseException as error:  # handed to the pipeline, which raises it
                future.set_exception(error)

    def next(self) -> Future:
        future: Future = Future()
        self._requests.put(future)
        return future

    def close(self) -> None:
        self._requests.put(None)


def score_chunks(
    runtime: ModelRuntime,
    chunks: Iterable[Any],
    config: ScoringConfig = ScoringConfig(),
    *,
    kernel_threads: int,
    skip: Callable[[Any], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_stage: Callable[[str, float, int], None] | None = None,
    on_outputs: Callable[[Any, slice, tuple], None] | None = None,
) -> Iterator[tuple[Any, BatchScores | None]]:
    """``score_chunk`` over a stream of chunks, the scoring of batch ``n`` beside the forward pass of
    batch ``n + 1``. Yields ``(chunk, scores)`` in the order of ``chunks``, each as soon as it is done.

    Threads: the calling thread runs the runtime (with the runtime's own intra-op threads); one
    worker thread, with ``kernel_threads`` torch threads, normalises the next batch's images and
    scores the previous batch (``score_batch``, the kernel on ``kernel_threads`` threads); one
    reader thread takes the next chunk from ``chunks`` while the current one runs, so that a slow
    read delays neither the forward pass nor the yield of the chunks before it. A chunk is cut
    into batches of ``runtime.max_batch`` items (where the runtime cuts it anyway, so its outputs
    are those of the whole chunk), or runs whole. At most two batches are being scored and one
    chunk is read ahead: memory is a few batches' feature maps and a chunk.

    Args:
        runtime, config: as for ``score_chunk``.
        chunks: ``ChunkLike`` values (and values ``skip`` picks out).
        kernel_threads: threads of the scoring side (``ThreadSplit.kernel_threads``).
        skip: values of ``chunks`` to pass through unscored, in order, with ``None`` as scores
            (a pool chunk that failed its checksum).
        should_stop: asked before every chunk is read and before its forward pass; True raises
            :class:`ScoringStopped` (the chunks already yielded stay done; those in flight are dropped).
        on_stage: called per chunk with ``("read" | "forward" | "kernel", seconds, items)``; the
            three overlap in wall time.
        on_outputs: called on the worker thread with ``(chunk, rows, (logits, features, cam_weights))``
            for every batch, in order (the loop's extra columns read the feature maps there).

    Items whose image or model outputs are not finite are flagged ``invalid``, as by ``score_chunk``.
    """
    if isinstance(kernel_threads, bool) or not isinstance(kernel_threads, int) or kernel_threads < 1:
        raise ValueError(f"kernel_threads: expected a positive integer, got {kernel_threads!r}")
    step = getattr(runtime, "max_batch", None)
    buffers = _NormaliseBuffers(runtime.metadata.normalise)
    iterator = iter(chunks)

    def pull() -> tuple[Any, float]:
        started = time.perf_counter()
        chunk = next(iterator, _END)
        return chunk, time.perf_counter() - started

    def cut(chunk: Any) -> list[slice]:
        items = len(chunk.index)
        size = step or items
        return [slice(start, min(start + size, items)) for start in range(0, items, size)]

    def score(entry: _Chunk, rows: slice, outputs: tuple) -> tuple[BatchScores, float]:
        started = time.perf_counter()
        chunk = entry.chunk
        if on_outputs is not None:
            on_outputs(chunk, rows, outputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteInputWarning)  # flagged per item in ``invalid``
            scores = score_batch(chunk.index[rows], *outputs, chunk.roi[rows], config, kernel_threads=kernel_threads)
        return scores, time.perf_counter() - started

    def finish(entry: _Chunk) -> tuple[Any, BatchScores | None]:
        if entry.skipped:
            return entry.chunk, None
        results = [part.result() for part in entry.parts]
        if on_stage is not None:
            items = len(entry.chunk.index)
            on_stage("forward", entry.forward_s, items)
            on_stage("kernel", sum(seconds for _, seconds in results), items)
        return entry.chunk, concat_scores([scores for scores, _ in results])

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise ScoringStopped

    worker = _thread("xal-score-kernel", kernel_threads)
    reader = _Reader(pull)
    queue: deque[_Chunk] = deque()  # chunks not yet yielded, in order
    scoring: deque[Future] = deque()  # batches being scored (bounds the feature maps held)
    try:
        check_stop()
        reading: Future = reader.next()
        carried: tuple[Any, Future] | None = None  # the next chunk's first batch, normalised ahead
        while True:
            while not reading.done():  # yield what is done while the next chunk is being read
                while queue and queue[0].ready():
                    yield finish(queue.popleft())
                waiting = [part for part in (queue[0].parts if queue else ()) if not part.done()]
                wait([reading, *waiting], return_when=FIRST_COMPLETED)
            chunk, read_s = reading.result()
            if chunk is _END:
                break
            check_stop()
            if skip is not None and skip(chunk):
                queue.append(_Chunk(chunk, skipped=True, submitted=True))
                reading = reader.next()
                continue
            if on_stage is not None:
                on_stage("read", read_s, len(chunk.index))
            entry = _Chunk(chunk, skipped=False)
            queue.append(entry)
            batches = cut(chunk)
            if carried is not None and carried[0] is chunk:
                prepared = carried[1]
            else:
                prepared = worker.submit(buffers.take(chunk.images[batches[0]]))
            carried = None
            reading = reader.next()  # one chunk ahead
            for number, rows in enumerate(batches):
                images = prepared
                if number + 1 < len(batches):
                    prepared = worker.submit(buffers.take(chunk.images[batches[number + 1]]))
                elif reading.done() and reading.exception() is None:
                    upcoming = reading.result()[0]
                    if upcoming is not _END and not (skip is not None and skip(upcoming)):
                        carried = (upcoming, worker.submit(buffers.take(upcoming.images[cut(upcoming)[0]])))
                started = time.perf_counter()
                outputs = runtime.run(images.result())
                entry.forward_s += time.perf_counter() - started
                while len(scoring) >= 2:
                    scoring.popleft().result()
                while scoring and scoring[0].done():
                    scoring.popleft()
                part = worker.submit(score, entry, rows, tuple(outputs))
                scoring.append(part)
                entry.parts.append(part)
                entry.submitted = number + 1 == len(batches)
                while queue and queue[0].ready():
                    yield finish(queue.popleft())
        while queue:
            yield finish(queue.popleft())
    finally:
        for entry in queue:
            for part in entry.parts:
                part.cancel()
        worker.shutdown(wait=True)
        reader.close()  # a read in progress ends on its own
