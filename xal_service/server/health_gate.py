"""The server's health status as one function of everything that makes it unable to serve.

Why one place: several conditions say NOT_SERVING — the server is still starting (models of an
earlier run reload), a model is loading, the state folder cannot be written (no job can record a
result), the server is shutting down — and they overlap: the end of one (a model loaded) must not
announce SERVING while another (the state folder is read-only) still holds. So each is a flag or
a count here, and the status is recomputed from all of them on every change.

The health service itself is the asyncio one (``grpc_health.v1.health.aio``): it answers on the
server's event loop, never behind the worker threads a slow or stalled call can hold.
"""

from __future__ import annotations

import asyncio
import threading

from grpc_health.v1 import health_pb2

__all__ = ["HealthGate"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthGate:
    """Publishes SERVING for ``names`` only while the server is ready, no model is loading and the
    state folder is writable. Every method may be called from any thread."""

    def __init__(self, servicer, loop: asyncio.AbstractEventLoop, names: tuple[str, ...]) -> None:
        self._servicer = servicer
        self._loop = loop
        self._names = names
        self._lock = threading.Lock()
        self._ready = False
        self._loading = 0
        self._state_writable = True
        self._published: int | None = None
        self._apply_lock: asyncio.Lock | None = None  # made on the loop

    def set_ready(self, ready: bool) -> None:
        with self._lock:
            self._ready = ready
        self._publish()

    def set_serving(self, serving: bool) -> None:
        """``False`` when a model starts loading, ``True`` when it is done (loads may overlap)."""
        with self._lock:
            self._loading = max(0, self._loading + (-1 if serving else 1))
        self._publish()

    def set_state_writable(self, writable: bool) -> None:
        with self._lock:
            self._state_writable = writable
        self._publish()

    @property
    def serving(self) -> bool:
        return self.status() == SERVING

    @property
    def loading(self) -> int:
        """Model loads in progress."""
        with self._lock:
            return self._loading

    def status(self) -> int:
        with self._lock:
            return SERVING if self._ready and not self._loading and self._state_writable else NOT_SERVING

    def _publish(self) -> None:
        asyncio.run_coroutine_threadsafe(self._apply(), self._loop)

    async def _apply(self) -> None:
        """Runs on the loop, one at a time: reads the status when it runs, so however the calls of
        several threads interleave, the last one published is the current status."""
        if self._apply_lock is None:
            self._apply_lock = asyncio.Lock()
        async with self._apply_lock:
            status = self.status()
            if status == self._published:
                return
            self._published = status
            for name in self._names:
                await self._servicer.set(name, status)

    async def shut_down(self) -> None:
        """NOT_SERVING for good (balancers drain); called on the event loop."""
        with self._lock:
            self._ready = False
        await self._servicer.enter_graceful_shutdown()
