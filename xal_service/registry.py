"""Loaded models and registered pools, by name, persisted under the state directory.

A restart reloads both from ``state/registry.json``, so jobs that resume after a crash find the
model and pool they were started with.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from xal_core.data.pool_store import PoolStore

from .errors import RequestError, invalid_argument, not_found

__all__ = ["LoadedModel", "RegisteredPool", "Registry"]


class LoadedModel:
    """A model by name. Its runtime is kept in memory only while it is among the most recently used.

    Why: an ONNX Runtime session keeps its memory arena (hundreds of MB for a batch of a thousand
    images) for as long as it lives, and an active-learning run loads a new model every round; a
    server that kept every session would grow without bound. An evicted model is reloaded from its
    file on its next use; ``metadata`` and the runtime's kind stay known without reloading.
    """

    def __init__(self, name: str, path: Path, runtime: object, loader, on_reload=None) -> None:
        self.name, self.path = name, Path(path)
        self._runtime: object | None = runtime
        self._loader = loader
        self._on_reload = on_reload
        self._lock = threading.Lock()
        self.metadata = runtime.metadata  # type: ignore[attr-defined]
        self.runtime_kind = type(runtime).__name__
        self.device = getattr(runtime, "device", "cpu")

    @property
    def loaded(self) -> bool:
        return self._runtime is not None

    @property
    def runtime(self) -> object:
        reloaded = False
        with self._lock:
            if self._runtime is None:
                try:
                    self._runtime = self._loader(self.path)
                except ValueError as error:
                    raise invalid_argument(f"model {self.name!r} was unloaded to save memory and cannot be "
                                           f"reloaded ({error}); LoadModel it again") from None
                reloaded = True
            runtime = self._runtime
        if reloaded and self._on_reload is not None:
            self._on_reload()  # another model makes room
        return runtime

    def unload(self) -> None:
        with self._lock:
            self._runtime = None


@dataclass
class RegisteredPool:
    name: str
    path: Path
    store: PoolStore


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > 200 or any(c in name for c in "/\\\0"):
        raise invalid_argument(f"{what}: a name of 1-200 characters without '/', '\\\\' or NUL is required, got {name!r}")


class Registry:
    """Models and pools by name. At most ``max_loaded`` model runtimes are held in memory (LRU)."""

    def __init__(self, state: Path, *, max_loaded: int = 4) -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded: must be >= 1, got {max_loaded}")
        self.state = state
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self.models: dict[str, LoadedModel] = {}  # least recently used first
        self.pools: dict[str, RegisteredPool] = {}

    # ------------------------------------------------------------------ models
    def load_model(self, name: str, path: Path) -> LoadedModel:
        from xal_service.runtime import load  # ONNX Runtime / TorchScript only when a model is loaded

        _check_name(name, "name")
        try:
            runtime = load(path)
        except ValueError as error:
            raise invalid_argument(f"path: {error}") from None
        model = LoadedModel(name, Path(path), runtime, load, self._make_room)
        with self._lock:
            self.models.pop(name, None)
            self.models[name] = model
            self._evict()
            self._save()
        return model

    def model(self, name: str) -> LoadedModel:
        """The model, marked as just used (a job or a call is about to run it)."""
        with self._lock:
            if name not in self.models:
                raise not_found(f"model {name!r} is not loaded (LoadModel first)")
            model = self.models.pop(name)
            self.models[name] = model
            self._evict()
            return model

    def _make_room(self) -> None:
        with self._lock:
            self._evict()

    def _evict(self) -> None:
        """Unload the runtimes of all but the ``max_loaded`` most recently used models."""
        live = [m for m in self.models.values() if m.loaded]
        for model in live[: max(0, len(live) - self.max_loaded)]:
            model.unload()

    # ------------------------------------------------------------------ pools
    def register_pool(self, name: str, path: Path) -> RegisteredPool:
        _check_name(name, "name")
        try:
            store = PoolStore.open(path)
        except ValueError as error:
            raise invalid_argument(f"path: {error}") from None
        pool = RegisteredPool(name, Path(path), store)
        with self._lock:
            self.pools[name] = pool
            self._save()
        return pool

    def pool(self, name: str) -> RegisteredPool:
        with self._lock:
            if name not in self.pools:
                raise not_found(f"pool {name!r} is not registered (RegisterPool first)")
            return self.pools[name]

    # ------------------------------------------------------------------ persistence
    def _save(self) -> None:
        record = {
            "models": {n: str(m.path) for n, m in self.models.items()},
            "pools": {n: str(p.path) for n, p in self.pools.items()},
        }
        target = self.state / "registry.json"
        scratch = target.with_suffix(".tmp")
        scratch.write_text(json.dumps(record, indent=2))
        os.replace(scratch, target)

    def restore(self, log) -> None:
        """Reload what a previous run registered; an entry that no longer loads is logged and dropped."""
        target = self.state / "registry.json"
        if not target.is_file():
            return
        record = json.loads(target.read_text())
        for name, path in record.get("models", {}).items():
            try:
                self.load_model(name, Path(path))
            except RequestError as error:
                log.warning("model %s not restored: %s", name, error.message)
        for name, path in record.get("pools", {}).items():
            try:
                self.register_pool(name, Path(path))
            except RequestError as error:
                log.warning("pool %s not restored: %s", name, error.message)
