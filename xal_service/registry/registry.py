"""Loaded models and registered pools, by name, persisted under the state directory.

A restart reloads both from ``state/registry.json``, so jobs that resume after a crash find the
model and pool they were started with. Every model is known by the SHA-256 of its file and every
pool by the SHA-256 of its manifest: a job pins both (``xal_service.jobs.pins``), and a model whose
file changed under it is never silently reloaded as if it were the same model.

Policy (which paths a request may name, which uploads are accepted) is applied here for uploads
and on restore; the servicer resolves request paths through :attr:`Registry.model_roots` and
:attr:`Registry.pool_roots` before it calls :meth:`Registry.load_model` or
:meth:`Registry.register_pool`, which trust the path they are given (in-process callers and tests
use them directly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xal_core.data.pool_store import PoolStore

from ..errors import RequestError, invalid_argument, not_found
from ..process_memory import release_freed_memory
from .pool_checks import manifest_digest, open_checked_pool
from .roots import PathRoots
from .uploads import uploaded_models_dir

__all__ = ["LoadedModel", "RegisteredPool", "Registry", "check_name", "file_sha256"]

log = logging.getLogger("xal.service")
MAX_NAME_CHARS = 200


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class LoadedModel:
    """A model by name. Its runtime is kept in memory only while it is among the most recently used.

    Why: an ONNX Runtime session holds its weights and buffers for as long as it lives, and an
    active-learning run loads a new model every round; a server that kept every session would
    grow without bound. An evicted model is reloaded from its file on its next use, after checking
    that the file still has the content it was loaded with; ``metadata`` and the runtime's kind
    stay known without reloading.
    """

    def __init__(self, name: str, path: Path, runtime: object, loader, on_reload=None, *,
                 sha256: str = "", origin: str = "path") -> None:
        self.name, self.path = name, Path(path)
        self.sha256 = sha256
        self.origin = origin  # "path" (a server-side file) or "upload" (streamed, in state/models)
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
                    if self.sha256 and file_sha256(self.path) != self.sha256:
                        raise ValueError("its file changed since it was loaded")
                    self._runtime = self._loader(self.path)
                except (OSError, ValueError) as error:
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
    digest: str = ""  # SHA-256 of manifest.json
    display: str = ""  # the path as clients see it (<pool-root>/...)


def check_name(name: str, what: str = "name") -> None:
    """Refuse a model or pool name that is empty, too long or not file-safe (``INVALID_ARGUMENT``)."""
    if not name or len(name) > MAX_NAME_CHARS or any(c in name for c in "/\\\0"):
        shown = name if len(name) <= 60 else f"{name[:60]}… ({len(name)} characters)"
        raise invalid_argument(f"{what}: a name of 1-{MAX_NAME_CHARS} characters without '/', '\\\\' or NUL "
                               f"is required, got {shown!r}")


class Registry:
    """Models and pools by name. At most ``max_loaded`` model runtimes are held in memory (LRU).

    Args:
        state: the server's state folder (``registry.json``, ``models/`` for uploads).
        max_loaded: model runtimes kept in memory.
        model_roots, pool_roots: where server-side paths may point (default: ``state/models`` and
            ``state/pools``).
        trust_torchscript_uploads: accept uploaded TorchScript files (they are code).
        pinned: the model files unfinished jobs still need (kept when uploads are cleaned up).
    """

    def __init__(self, state: Path, *, max_loaded: int = 4, model_roots: PathRoots | None = None,
                 pool_roots: PathRoots | None = None, trust_torchscript_uploads: bool = False,
                 pinned: Callable[[], set[Path]] | None = None) -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded: must be >= 1, got {max_loaded}")
        self.state = Path(state)
        self.max_loaded = max_loaded
        self.model_roots = model_roots or PathRoots("model", [self.state / "models"])
        self.pool_roots = pool_roots or PathRoots("pool", [self.state / "pools"])
        self.trust_torchscript_uploads = trust_torchscript_uploads
        self.pinned = pinned or (lambda: set())
        self._lock = threading.Lock()
        self._uploads_lock = threading.Lock()
        self.models: dict[str, LoadedModel] = {}  # least recently used first
        self.pools: dict[str, RegisteredPool] = {}

    # ------------------------------------------------------------------ models
    def load_model(self, name: str, path: Path, *, origin: str = "path") -> LoadedModel:
        """Load ``path`` (trusted: already resolved under the roots) and bind it to ``name``."""
        check_name(name, "name")
        model = self._open(name, Path(path), origin)
        self._bind(model)
        return model

    def _open(self, name: str, path: Path, origin: str, sha256: str = "") -> LoadedModel:
        from xal_core.models.runtime import load  # ONNX Runtime / TorchScript only when a model is loaded

        try:
            sha256 = sha256 or file_sha256(path)
            runtime = load(path)
        except OSError as error:
            raise invalid_argument(f"path: {path.name}: cannot be read ({error.strerror or type(error).__name__})") from None
        except ValueError as error:
            raise invalid_argument(f"path: {error}") from None
        return LoadedModel(name, path, runtime, load, self._make_room, sha256=sha256, origin=origin)

    def _bind(self, model: LoadedModel) -> None:
        with self._lock:
            self.models.pop(model.name, None)
            self.models[model.name] = model
            self._evict()
            self._save()

    def add_upload(self, name: str, temporary: Path, sha256: str) -> LoadedModel:
        """Validate an uploaded file and, only if it loads, move it to ``state/models/<sha256>.<ext>``.

        The temporary file is gone afterwards either way, and the model the name was bound to
        before stays bound (and its file stays) unless this upload succeeds. A TorchScript file (a
        ZIP archive) is refused unless the server trusts TorchScript uploads: loading one runs
        its code."""
        try:
            check_name(name, "name")
            torchscript = zipfile.is_zipfile(temporary)
            if torchscript and not self.trust_torchscript_uploads:
                raise invalid_argument(
                    "chunk: the upload is a TorchScript archive; this server accepts uploaded models in ONNX only "
                    "(TorchScript is code: load it from a server-side path, or start the server with "
                    "--trust-torchscript-uploads)")
            target = uploaded_models_dir(self.state) / f"{sha256}.{'pt' if torchscript else 'onnx'}"
            with self._uploads_lock:  # no clean-up may run between the rename and the binding
                model = self._open_upload(name, temporary, sha256)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temporary, target)  # atomic: the final name only ever holds a validated file
                model.path = target
                self._bind(model)
                self._collect_uploads()
        finally:
            temporary.unlink(missing_ok=True)
        return model

    def _open_upload(self, name: str, temporary: Path, sha256: str) -> LoadedModel:
        """``_open`` of an uploaded file, its refusal naming the field the client sent (``chunk``)
        instead of the server's temporary file."""
        try:
            return self._open(name, temporary, "upload", sha256)
        except RequestError as error:
            reason = error.message.removeprefix("path: ")
            for spelling in sorted({str(temporary), str(temporary.absolute()), os.path.realpath(temporary)},
                                   key=len, reverse=True):
                reason = reason.replace(f"{spelling}: ", "").replace(spelling, "the upload")
            reason = reason.replace(temporary.name, "the upload")
            raise invalid_argument(f"chunk: the uploaded file is not a model this server can load: {reason}") from None

    def collect_uploads(self) -> None:
        """Delete uploaded model files that no model name and no unfinished job refers to."""
        with self._uploads_lock:
            self._collect_uploads()

    def _collect_uploads(self) -> None:
        folder = uploaded_models_dir(self.state)
        if not folder.is_dir():
            return
        with self._lock:
            keep = {m.path.resolve() for m in self.models.values() if m.origin == "upload"}
        keep |= {Path(p).resolve() for p in self.pinned()}
        for file in folder.iterdir():
            if file.suffix in (".onnx", ".pt") and len(file.stem) == 64 and file.resolve() not in keep:
                file.unlink(missing_ok=True)

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
        evicted = live[: max(0, len(live) - self.max_loaded)]
        for model in evicted:
            model.unload()
        if evicted:  # the session's memory is a hole in the heap now: give it back (process_memory)
            release_freed_memory()

    # ------------------------------------------------------------------ pools
    def register_pool(self, name: str, path: Path) -> RegisteredPool:
        """Register the pool at ``path`` (trusted: already resolved under the pool roots)."""
        check_name(name, "name")
        path = Path(path)
        try:
            store = open_checked_pool(path)
            digest = manifest_digest(path)
        except OSError as error:
            raise invalid_argument(f"path: cannot be read ({error.strerror or type(error).__name__})") from None
        except ValueError as error:
            raise invalid_argument(f"path: {self.pool_roots.display(path)}: {error}") from None
        pool = RegisteredPool(name, path, store, digest, self.pool_roots.display(path))
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
            "models": {n: {"path": str(m.path), "sha256": m.sha256, "origin": m.origin} for n, m in self.models.items()},
            "pools": {n: str(p.path) for n, p in self.pools.items()},
        }
        target = self.state / "registry.json"
        scratch = target.with_suffix(".tmp")
        scratch.write_text(json.dumps(record, indent=2))
        os.replace(scratch, target)

    def restore(self, log: logging.Logger = log) -> None:
        """Reload what a previous run registered, under today's roots and upload policy; an entry
        that no longer loads, or is no longer allowed, is logged and dropped."""
        target = self.state / "registry.json"
        if not target.is_file():
            return
        record = json.loads(target.read_text())
        for name, entry in record.get("models", {}).items():
            entry = entry if isinstance(entry, dict) else {"path": entry}  # registry.json of before the pins
            path = Path(os.path.realpath(entry["path"]))
            origin = entry.get("origin", "path")
            try:
                if origin == "upload":
                    if path.parent != uploaded_models_dir(self.state).resolve():
                        raise invalid_argument("an uploaded model outside state/models")
                    if zipfile.is_zipfile(path) and not self.trust_torchscript_uploads:
                        raise invalid_argument("an uploaded TorchScript file, and --trust-torchscript-uploads is off")
                elif not self.model_roots.contains(path):
                    raise invalid_argument("no longer under the model roots (--model-root)")
                self.load_model(name, path, origin=origin)  # hashed afresh: the file may have changed
            except RequestError as error:
                log.warning("model %s not restored: %s", name, error.message)
        for name, path in record.get("pools", {}).items():
            real = Path(os.path.realpath(path))
            try:
                if not self.pool_roots.contains(real):
                    raise invalid_argument("no longer under the pool roots (--pool-root)")
                self.register_pool(name, real)
            except RequestError as error:
                log.warning("pool %s not restored: %s", name, error.message)
