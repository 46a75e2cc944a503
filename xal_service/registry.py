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


@dataclass
class LoadedModel:
    name: str
    path: Path
    runtime: object  # xal_service.runtime.Runtime


@dataclass
class RegisteredPool:
    name: str
    path: Path
    store: PoolStore


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > 200 or any(c in name for c in "/\\\0"):
        raise invalid_argument(f"{what}: a name of 1-200 characters without '/', '\\\\' or NUL is required, got {name!r}")


class Registry:
    def __init__(self, state: Path) -> None:
        self.state = state
        self._lock = threading.Lock()
        self.models: dict[str, LoadedModel] = {}
        self.pools: dict[str, RegisteredPool] = {}

    # ------------------------------------------------------------------ models
    def load_model(self, name: str, path: Path) -> LoadedModel:
        from xal_service.runtime import load  # ONNX Runtime / TorchScript only when a model is loaded

        _check_name(name, "name")
        try:
            runtime = load(path)
        except ValueError as error:
            raise invalid_argument(f"path: {error}") from None
        model = LoadedModel(name, Path(path), runtime)
        with self._lock:
            self.models[name] = model
            self._save()
        return model

    def model(self, name: str) -> LoadedModel:
        with self._lock:
            if name not in self.models:
                raise not_found(f"model {name!r} is not loaded (LoadModel first)")
            return self.models[name]

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
