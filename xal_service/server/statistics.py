"""Cumulative counters per RPC and per job stage, as Triton's statistics extension reports them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..wire import scoring_pb2 as pb

__all__ = ["Statistics"]


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

    def record_rpc(self, name: str, seconds: float, *, failed: bool, items: int = 0) -> None:
        self._record(self._rpcs, name, seconds, failed, items)

    def record_stage(self, name: str, seconds: float, *, items: int = 0) -> None:
        self._record(self._stages, name, seconds, False, items)

    def _record(self, table: dict[str, _Counter], name: str, seconds: float, failed: bool, items: int) -> None:
        with self._lock:
            counter = table.setdefault(name, _Counter())
            counter.count += 1
            counter.failures += int(failed)
            counter.seconds += seconds
            counter.items += items

    def snapshot(self) -> pb.StatisticsResponse:
        with self._lock:
            convert = lambda table: {  # noqa: E731
                name: pb.Counter(count=c.count, failures=c.failures, seconds=c.seconds, items=c.items)
                for name, c in table.items()
            }
            return pb.StatisticsResponse(
                rpcs=convert(self._rpcs), stages=convert(self._stages), uptime_seconds=time.monotonic() - self._started
            )
