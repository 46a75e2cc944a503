"""How the server process holds heap memory: keep it while calls run, give it back between rounds.

Two needs pull apart. While calls are in flight, memory handed back to the kernel has to be
faulted in again page by page by the next call (``keep_freed_memory``). But a long-lived server
loads a new model every round of an active-learning run, and what an evicted ONNX Runtime session
or a finished job leaves behind is freed in the middle of the heap: never trimmed, those holes
crept the server from 760 MB to 1 020 MB over 60 rounds of a 1 024-item pool, although the
registry keeps only four sessions. ``release_freed_memory`` after each eviction and each job
(once a round) holds the same run flat at 630–760 MB (``tests/service/test_faults_memory.py``).

glibc only; elsewhere both functions do nothing and say so.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

__all__ = ["keep_freed_memory", "release_freed_memory", "usable_cpus"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_THRESHOLD_CAP = 32 << 20  # glibc's largest mmap threshold


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _glibc(symbol: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(None), symbol)
    except (OSError, AttributeError):  # not glibc
        return None


def keep_freed_memory() -> list[str]:
    """Keep freed memory for reuse (no automatic trimming, no mmap below 32 MB) and cap the malloc
    arenas at the usable CPUs (at least 2). Returns what was done, for the start-up line.

    By default glibc hands large freed blocks back to the kernel, and the next request faults its
    megabytes in again (~2.6 µs per 4 KiB page on a 2-core VM: 12 ms for a 64-item ``ScoreBatch``
    whose feature maps are copied). And it gives threads up to 8 arenas per core; each thread that
    touches a job's buffers (made anew for every job) would leave its own peak behind.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return []
    done = []
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_CAP) and mallopt(_M_TRIM_THRESHOLD, -1):
        done.append("malloc keeps freed memory")
    arenas = max(2, usable_cpus())
    if "MALLOC_ARENA_MAX" not in os.environ and mallopt(_M_ARENA_MAX, arenas):
        done.append(f"{arenas} malloc arenas")
    return done


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the kernel (``malloc_trim(0)``: every arena, holes in the
    middle included). A few milliseconds; call it when a large owner has just gone (a model's
    session evicted, a job finished), not per call. Returns whether anything was given back."""
    trim = _glibc("malloc_trim")
    return bool(trim(0)) if trim is not None else False
