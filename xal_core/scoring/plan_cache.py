"""An LRU cache for resampling plans bounded by the bytes it holds, not by the number of entries.

Why: a plan's size grows with the ROI frame it was built for (a few arrays of length ``H`` and
``W``, or ``W × w`` matrices on the separable path). ``functools.lru_cache(maxsize=64)`` bounds
the count only, so 64 requests with distinct huge frames could pin gigabytes for the life of a
server (the issue that brought this in measured +460 MB kept after one 20-million-pixel-wide
frame). Here each entry is weighed (the ``nbytes`` of the arrays and tensors it holds), the least
recently used entries go once the total passes ``max_bytes``, and a plan larger than the whole
budget is returned without being cached at all.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["byte_bounded_cache", "nbytes", "DEFAULT_PLAN_CACHE_BYTES"]

T = TypeVar("T")
DEFAULT_PLAN_CACHE_BYTES = 64 << 20
_KWARGS = object()  # separates positional from keyword arguments in a key


def nbytes(value: Any) -> int:
    """Bytes held by the arrays and tensors in ``value`` (dataclasses, tuples, lists, dicts walked)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


def byte_bounded_cache(max_bytes: int = DEFAULT_PLAN_CACHE_BYTES) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: memoise a function of hashable arguments, keeping at most ``max_bytes`` of results.

    The wrapper has ``cache_clear()`` and ``cache_bytes()`` (what it holds now). Thread-safe; two
    threads missing the same key may both compute it (plans are pure, either result is right)."""

    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        entries: OrderedDict[Hashable, tuple[T, int]] = OrderedDict()
        lock = threading.Lock()
        held = [0]

        @functools.wraps(function)
        def wrapper(*args: Hashable, **kwargs: Hashable) -> T:
            key = args + ((_KWARGS, *sorted(kwargs.items())) if kwargs else ())
            with lock:
                if key in entries:
                    entries.move_to_end(key)
                    return entries[key][0]
            value = function(*args, **kwargs)
            size = nbytes(value)
            if size > max_bytes:
                return value
            with lock:
                if key not in entries:
                    entries[key] = (value, size)
                    held[0] += size
                while held[0] > max_bytes:
                    _, (_, dropped) = entries.popitem(last=False)
                    held[0] -= dropped
            return value

        def cache_clear() -> None:
            with lock:
                entries.clear()
                held[0] = 0

        wrapper.cache_clear = cache_clear  # type: ignore[attr-defined]
        wrapper.cache_bytes = lambda: held[0]  # type: ignore[attr-defined]
        return wrapper

    return decorate
