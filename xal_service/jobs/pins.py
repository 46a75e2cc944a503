"""What a job pins when it is submitted — its model file and pool by content hash — and checks when it runs.

Why: a job names its model and pool, and a name can be re-bound (``LoadModel`` under the same
name) while the job is queued or half done; a job resumed after a restart must not score its
remaining chunks with whatever the name means then and report one ranking made by two models. So
the job records the file (real path and SHA-256) and the pool (path and the SHA-256 of its
manifest, which lists every chunk's checksum). When it runs — first time or resumed — it uses the
registered model if that is still the pinned content, else the pinned file if it still has that
content (an uploaded file is kept while a job pins it); otherwise it fails, saying which input
changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xal_core.data.pool_store import PoolStore

from ..errors import RequestError, invalid_argument
from ..registry.pool_checks import manifest_digest, open_checked_pool
from ..registry.registry import Registry, file_sha256

__all__ = ["Pins", "PinnedInputs", "pin", "resolve"]


@dataclass(frozen=True)
class Pins:
    model_path: str
    model_sha256: str
    pool_path: str
    pool_digest: str

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, record: dict | None) -> Pins | None:
        return cls(**record) if record else None


@dataclass(frozen=True)
class PinnedInputs:
    runtime: object
    store: PoolStore
    model_path: Path
    pool_path: Path


def pin(registry: Registry, model_name: str, pool_name: str) -> Pins:
    model, pool = registry.model(model_name), registry.pool(pool_name)
    return Pins(str(model.path), model.sha256, str(pool.path), pool.digest)


def _changed(what: str, name: str) -> RequestError:
    return invalid_argument(
        f"{what} {name!r} changed since this job was submitted (the content it pinned is no longer there); "
        "start a new job"
    )


def resolve(registry: Registry, model_name: str, pool_name: str, pins: Pins | None) -> PinnedInputs:
    """The runtime and pool store with exactly the pinned content, or ``INVALID_ARGUMENT`` saying
    which changed. Jobs of an older server (no pins) use the registered names as they are."""
    from xal_core.models.runtime import load

    registered = registry.models.get(model_name)
    if pins is None or (registered is not None and registered.sha256 == pins.model_sha256):
        model = registry.model(model_name)
        runtime, model_path = model.runtime, model.path
    else:
        model_path = Path(pins.model_path)
        try:
            same = file_sha256(model_path) == pins.model_sha256
        except OSError:
            same = False
        if not same:
            raise _changed("model", model_name)
        try:
            runtime = load(model_path)  # this job's own copy, dropped when it ends
        except ValueError:
            raise _changed("model", model_name) from None
    pool = registry.pools.get(pool_name)
    if pins is None or (pool is not None and pool.digest == pins.pool_digest):
        pool = registry.pool(pool_name)
        return PinnedInputs(runtime, pool.store, model_path, pool.path)
    pool_path = Path(pins.pool_path)
    try:
        if manifest_digest(pool_path) != pins.pool_digest:
            raise _changed("pool", pool_name)
        store = open_checked_pool(pool_path)
    except (OSError, ValueError):
        raise _changed("pool", pool_name) from None
    return PinnedInputs(runtime, store, model_path, pool_path)
