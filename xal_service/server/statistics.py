"""Cumulative counters per RPC and per job stage, as Triton's statistics extension reports them.

Every call is also handed, with its status code, to the listeners (``add_listener``): the
Prometheus exporter (``metrics``) counts codes and latencies from there, so a server without
``--metrics-listen`` pays nothing for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from ..wire import scoring_pb2 as pb

__all__ = ["RpcListener", "Statistics"]

RpcListener = Callable[[str, grpc.StatusCode, float, int], None]


@dataclass
class _Counter:
    count: int = 0
    failures: int = 0
    seconds: float = 0.0
    items: int = 0


class Statistics:
    """Thread-safe: every handler thread records into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rpcs: dict[str, _Counter] = {}
        self._stages: dict[str, _Counter] = {}
        self._started = time.monotonic()
        self._listeners: tuple[RpcListener, ...] = ()

    def add_listener(self, listener: RpcListener) -> None:
        """``listener(name, code, seconds, items)`` is called for every call recorded from now on,
        on the thread that records it."""
        self._listeners = (*self._listeners, listener)

    def record_rpc(self, name: str, seconds: float, *, failed: bool, items: int = 0,
                   code: grpc.StatusCode | None = None) -> None:
        """One call of RPC ``name``; ``code`` its status (default: OK, or UNKNOWN when ``failed``)."""
        self._record(self._rpcs, name, seconds, failed, items)
        if self._listeners:
            code = code if code is not None else (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
            for listener in self._listeners:
                listener(name, code, seconds, items)

    def record_stage(self, name: str, seconds: float, *, items: int = 0) -> None:
        self._record(self._stages, name, seconds, False, items)

    def _record(self, table: dict[str, _Counter], name: str, seconds: float, failed: bool, items: int) -> None:
        with self._lock:
            counter = table.setdefault(name, _Counter())
            counter.count += 1
            counter.failures += int(failed)
            counter.seconds += seconds
            counter.items += items

    def stage_totals(self) -> dict[str, tuple[int, float, int]]:
        """(count, seconds, items) of every stage so far."""
        with self._lock:
            return {name: (c.count, c.seconds, c.items) for name, c in self._stages.items()}

    def snapshot(self) -> pb.StatisticsResponse:
        with self._lock:
            convert = lambda table: {  # noqa: E731
                name: pb.Counter(count=c.count, failures=c.failures, seconds=c.seconds, items=c.items)
                for name, c in table.items()
            }
            return pb.StatisticsResponse(
                rpcs=convert(self._rpcs), stages=convert(self._stages), uptime_seconds=time.monotonic() - self._started
            )
