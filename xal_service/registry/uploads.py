"""Model files streamed to the server: a temporary file, a size cap, a content hash, then an atomic rename.

The bytes go to a private temporary file in ``state/uploads/`` (outside the model roots: a
half-written or not yet validated file can never be named by ``LoadModel``), counted against
``--max-model-bytes`` as they arrive. Only a file that loads as a model is renamed, atomically, to
its final name in ``state/models/`` — a name made of the model's name and its SHA-256, so a failed
or repeated upload under a name never overwrites the file a loaded model or a running job uses.
Anything else is deleted, so a rejected file never stays on disk.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import grpc

from ..errors import RequestError

__all__ = ["UploadWriter", "upload_dir", "uploaded_models_dir"]


def upload_dir(state: Path) -> Path:
    return state / "uploads"


def uploaded_models_dir(state: Path) -> Path:
    return state / "models"


class UploadWriter:
    """Receives one upload's chunks. ``finish`` gives the temporary file; ``discard`` removes it."""

    def __init__(self, state: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        folder = upload_dir(state)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{uuid.uuid4().hex}.part"
        self._handle = open(self.path, "xb")  # noqa: SIM115 - closed by finish/discard
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"chunk: the upload exceeds this server's model size limit of {self.max_bytes} bytes "
                               "(--max-model-bytes)")
        self._digest.update(chunk)
        self._handle.write(chunk)

    def finish(self) -> tuple[Path, str]:
        """The complete temporary file (flushed to disk) and its SHA-256."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        return self.path, self._digest.hexdigest()

    def discard(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)
