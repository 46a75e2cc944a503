"""The stream counter that holds clients to ``ServiceLimits``' stream caps (the caps: ``config``).

Why the caps exist: every limit bounds something a small request could otherwise make the server
allocate or hold — a 293-byte ``ScoreBatch`` that declares a 20-million-pixel-wide ROI frame, an upload with no
end, a client holding hundreds of ``WatchJob`` streams. Each is refused up front with a status code
(``INVALID_ARGUMENT`` naming the field, ``RESOURCE_EXHAUSTED`` for counts and sizes) instead of
being discovered as memory pressure later.
"""

from __future__ import annotations

import threading
from collections import Counter

import grpc

from ..errors import RequestError

__all__ = ["StreamLimiter", "client_of"]


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
