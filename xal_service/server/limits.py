"""What one request, one client and one upload may cost the server, and the stream counter that enforces it.

Why: every limit here bounds something a small request could otherwise make the server allocate or
hold — a 293-byte ``ScoreBatch`` that declares a 20-million-pixel-wide ROI frame, an upload with no
end, a client holding hundreds of ``WatchJob`` streams. Each is refused up front with a status code
(``INVALID_ARGUMENT`` naming the field, ``RESOURCE_EXHAUSTED`` for counts and sizes) instead of
being discovered as memory pressure later.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import grpc

from ..errors import RequestError

__all__ = ["ServiceLimits", "StreamLimiter", "client_of"]


@dataclass(frozen=True)
class ServiceLimits:
    """Per-request, per-client and per-upload caps (``xal serve`` flags of the same names).

    Attributes:
        max_roi_side: largest ROI frame height and width (``--max-roi-side``, default 4096, i.e. a
            4096² frame): bounds the resampling plans a request can make the server build.
        max_roi_work_factor: a box ROI declares its frame without carrying it, so ``B × H × W`` (the
            pixels the scorer visits) may not exceed ``max(max_roi_work_floor, factor × request
            bytes)``; a mask ROI carries its pixels (8 per byte) and passes this by construction.
            The scorer also visits every box slot of every frame row, so the work counted is
            ``B × H × (W + M)``.
        max_roi_work_floor: see above (2^28 pixels, well under a second of scoring).
        max_boxes_per_image: box slots per image, ``M`` of ``roi.boxes.boxes [B, M, 4]``
            (``--max-boxes-per-image``, default 1024; pool stores hold 64 by default).
        max_grid_scratch: the scorer keeps the CAM grid's rows resampled to the frame's width
            (``h × W`` float64 values, and ``w × H`` on the separable path): at most this many.
        max_model_bytes: largest uploaded model file (``--max-model-bytes``).
        max_streams_per_client: concurrent streaming calls (``WatchJob``, ``GetRanking``, ``GetItemScores``,
            ``LoadModel``) from one client address (``--max-streams-per-client``).
        max_streams: concurrent streaming calls in total (``--max-streams``).
        max_inflight_batches: ``ScoreBatch`` calls being scored or waiting for a scoring thread
            (``--max-inflight-batches``). Each holds its request (up to the 64 MiB message cap)
            until it is scored, so without a cap a flood of calls queues unbounded memory behind
            the workers; one over it is refused with ``RESOURCE_EXHAUSTED`` at once.
        max_path_chars: longest server-side path or name a request may give.
    """

    max_roi_side: int = 4096
    max_roi_work_factor: int = 64
    max_roi_work_floor: int = 1 << 28
    max_boxes_per_image: int = 1024
    max_grid_scratch: int = 1 << 21
    max_model_bytes: int = 1 << 30
    max_streams_per_client: int = 16
    max_streams: int = 64
    max_inflight_batches: int = 32
    max_path_chars: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_roi_side", "max_boxes_per_image", "max_model_bytes", "max_streams_per_client", "max_streams",
                     "max_inflight_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")


def client_of(peer: str) -> str:
    """The client's address without its port: ``ipv4:10.0.0.7:51234`` → ``ipv4:10.0.0.7``.

    Streams are counted per address rather than per connection: a client that opens a new channel
    per call would otherwise never meet its cap."""
    if peer.startswith("unix:"):
        return peer
    head, _, tail = peer.rpartition(":")
    return head if head and tail.isdigit() else peer


class StreamLimiter:
    """Counts open streaming calls per client and in total; refuses one over either cap.

    Thread-safe (the counts are touched from the event loop, the slot is released wherever the
    call ends)."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def acquire(self, peer: str, method: str) -> str:
        """Take a slot for a stream of ``peer`` (``RESOURCE_EXHAUSTED`` over a cap); returns the
        client key to :meth:`release` it with."""
        client = client_of(peer)
        with self._lock:
            if sum(self._open.values()) >= self.total:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{method}: {self.total} streams are open on this server (--max-streams); retry later")
            if self._open[client] >= self.per_client:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{method}: this client already holds {self.per_client} open streams "
                                   "(--max-streams-per-client); close one first")
            self._open[client] += 1
        return client

    def open_count(self) -> int:
        """Streams open now, all clients together."""
        with self._lock:
            return sum(self._open.values())

    def release(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]
