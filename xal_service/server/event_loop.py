"""The server's event loop: uvloop where it is installed (the default), the standard asyncio loop on request.

Why uvloop: on ``grpc.aio`` the event loop thread does more than dispatch. gRPC's transport reads
and writes run on it (``recv``/``sendmsg`` under its callbacks), so does the copy of every received
message into Python bytes, and so do the futures and callbacks of each call's hop to a worker
thread and back. All of that queues on one thread. uvloop's loop (libuv, its callbacks in C)
runs the same work with less interpreter overhead. Measured on the 2-core AMD EPYC host, 5
interleaved rounds of ``bench/service.py`` with the study processes stopped (``bench/results/service-cpu-uvloop-vs-asyncio-vs-threaded.json``;
medians of per-round ratios, single rounds spread ±15 %): against the standard loop, items/s
+1 % / +3 % / +11 % at 1 / 4 / 16 clients, one-client p99 −9 %, float16 p50 −10 %; against the
threaded server the service replaced, p50 −7 % / +3 % / −10 % and items/s +8 % / −1 % / +9 %
(on the standard loop: items/s −3.5 % / −4.2 % / +4.2 %).

Nothing else changes: the server code is the same coroutines on either loop, and the whole service
suite runs on the default.

Import it without gRPC: ``xal serve``'s argument parser reads the choices from here.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["DEFAULT_EVENT_LOOP", "EVENT_LOOPS", "new_event_loop"]

EVENT_LOOPS = ("uvloop", "asyncio")
#: uvloop is a dependency except on Windows, which it does not support.
DEFAULT_EVENT_LOOP = "asyncio" if sys.platform == "win32" else "uvloop"


def new_event_loop(kind: str = DEFAULT_EVENT_LOOP) -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind`` (one of ``EVENT_LOOPS``); ``ValueError`` naming the way out when
    uvloop is asked for and not installed."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind != "uvloop":
        raise ValueError(f"--event-loop {kind!r}: expected one of {', '.join(EVENT_LOOPS)}")
    try:
        import uvloop
    except ImportError as error:
        raise ValueError("--event-loop uvloop: uvloop is not installed (pip install uvloop; it does not run on "
                         "Windows); --event-loop asyncio runs the standard loop") from error
    return uvloop.new_event_loop()
