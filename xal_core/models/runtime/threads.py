"""How a CPU host's cores are shared while a model runtime and the alignment kernel run side by side.

A pool scorer (a service job, the loop's ``InProcessScorer``) runs ONNX Runtime on batch ``n + 1``
while the scoring side — the model's normalisation of the next batch, the alignment kernel and the
torch work of ``score_batch`` on the previous one — runs on one worker thread
(``xal_core.acquisition.pool_scoring.score_chunks``). Both hold no GIL, so they truly overlap, and
they compete for the same cores. :class:`ThreadSplit` is the one home of that split: the runtime's
intra-op threads (read by ``OnnxRuntime`` when its ``threads`` is not given) and the threads of
the scoring side.

Why this default (``bench/end_to_end.py``; docs/service.md, "Scoring beside the forward pass"):
the scoring side needs a small, fixed share of CPU per image — ~1.7 % of a ResNet-18's forward
pass at 224² (normalise ~3–5 ms in place, kernel and ``score_batch`` ~3.5 ms per 32 images on one thread,
against ~820 ms of forward CPU time) — so it gets one thread. Where that thread runs is the
trade-off. A core of its own costs the runtime ``1/C`` of the host; sharing the cores costs the
runtime the stalls of its parallel loops while the side thread preempts one of their threads,
which grow with ``C`` (the forward pass gets shorter, the side work does not). Measured on a 2-core
host, idle: ONNX Runtime on both cores with the side thread on top reached 0.96 of ONNX Runtime
alone on both cores (74.7 against 77.8 images/s), on one core 39.7 images/s — half. So below
:data:`DEDICATED_FROM` cores the runtime gets every core; from there on one core (``1/C`` ≤ 12.5 %)
is the cheaper price, and the runtime gets the others. The crossover is a model (``C·s ≈ 1/C`` for
a side share ``s`` of ~1.7 %), measured at 2 cores only; pass ``runtime_threads`` to choose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEDICATED_FROM", "ThreadSplit", "usable_cores"]

#: From this many usable cores on, the scoring side gets a core of its own (module docstring).
DEDICATED_FROM = 8


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadSplit:
    """The cores of a scorer that runs a model and the alignment kernel side by side.

    Attributes:
        kernel_threads: threads of the scoring side: the model's normalisation, the alignment
            kernel and the torch work of ``score_batch`` (uncertainty, fusion, softmax), run on the
            scorer's worker thread.
        runtime_threads: ONNX Runtime's intra-op threads on the CPU provider; ``None``: every usable
            core on hosts with fewer than :data:`DEDICATED_FROM` cores (the scoring side's thread
            shares them), every core but ``kernel_threads`` on larger ones.
    """

    kernel_threads: int = 1
    runtime_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("kernel_threads", "runtime_threads"):
            value = getattr(self, name)
            if value is None and name == "runtime_threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ThreadSplit.{name}: expected a positive integer, got {value!r}")

    def runtime(self, cores: int | None = None) -> int:
        """The runtime's intra-op threads on a host with ``cores`` usable cores (default: this one's)."""
        if self.runtime_threads is not None:
            return self.runtime_threads
        cores = usable_cores() if cores is None else cores
        if cores < DEDICATED_FROM:
            return cores
        return max(1, cores - self.kernel_threads)
