"""Timing shared by the benchmarks: one warm-up call, then wall time per repeat.

On CUDA the device is synchronised around each call so that the time covers the work, not just
its launch. Benchmarks report medians of what this returns, never a single run.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def time_calls(fn: Callable[[], object], repeats: int, device: torch.device | str | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after one warm-up call (plans, caches, allocator)."""
    device = torch.device(device) if device is not None else None
    synchronize = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda *_: None)
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows. Results name it
    because the same benchmark's ratios differ between hosts (Intel and AMD sum and schedule
    differently): ``platform.processor()`` says only ``x86_64`` on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def paired_median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of ``numerators[i] / denominators[i]``: two things measured back to
    back in each round, compared within the round first, so that what a disturbed round does to
    both cancels (a ratio of two medians keeps it)."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))
