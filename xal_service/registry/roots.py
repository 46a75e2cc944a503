"""Where server-side paths in requests may point, and keeping server paths out of error messages.

Why: ``LoadModel`` and ``RegisterPool`` accept a path on the server's disk. A token holder could
otherwise name any file the server can read (a TorchScript file is code; an ONNX Runtime error
quotes what it read), and the difference between "no such file" and "not a model" would map the
server's disk for them. So a path must resolve, symlinks followed, under one of the roots the
operator named (``--model-root``, ``--pool-root``; by default folders inside ``--state``), and a
path outside them gets one answer whether or not it exists. Answers never carry an absolute path
of the server: the roots and the state folder are shown as ``<model-root>``, ``<pool-root>``,
``<state>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import invalid_argument

__all__ = ["PathRoots", "Redactor"]


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


class PathRoots:
    """The folders one kind of server-side path (``model`` or ``pool``) may resolve into.

    Args:
        kind: ``"model"`` or ``"pool"`` (named in messages and in the flag ``--{kind}-root``).
        roots: the folders; created if missing, then resolved (symlinks followed) once.
        max_chars: the longest path a request may give.
    """

    def __init__(self, kind: str, roots: Sequence[str | Path], *, max_chars: int = 4096) -> None:
        if not roots:
            raise ValueError(f"--{kind}-root: at least one folder is required")
        self.kind = kind
        self.max_chars = max_chars
        resolved = []
        for root in roots:
            Path(root).mkdir(parents=True, exist_ok=True)
            resolved.append(_real(root))
        self.roots: tuple[Path, ...] = tuple(resolved)

    @property
    def placeholder(self) -> str:
        return f"<{self.kind}-root>"

    def resolve(self, given: str, field: str = "path") -> Path:
        """The real path of ``given`` if it lies under a root, else ``INVALID_ARGUMENT``.

        A relative path is taken relative to the first root. The real path (every symlink
        followed, ``..`` removed) is what is checked and what the caller must open, so a link
        inside a root that points outside is refused like the outside path itself. The refusal
        is the same text whether the path exists or not."""
        if not given:
            raise invalid_argument(f"{field}: empty")
        if len(given) > self.max_chars or "\0" in given:
            raise invalid_argument(f"{field}: a path of at most {self.max_chars} characters without NUL is required")
        candidate = Path(given)
        if not candidate.is_absolute():
            candidate = self.roots[0] / candidate
        real = _real(candidate)
        if not self.contains(real):
            raise invalid_argument(
                f"{field}: not under this server's {self.kind} roots; the server reads {self.kind} files only "
                f"from the folders its operator named with --{self.kind}-root"
            )
        return real

    def contains(self, real: Path) -> bool:
        """Whether the already-resolved ``real`` lies in (or is) one of the roots."""
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def display(self, real: Path) -> str:
        """``<model-root>/sub/file.onnx`` for a path under a root; the bare name otherwise."""
        for root in self.roots:
            if real == root or real.is_relative_to(root):
                relative = real.relative_to(root).as_posix()
                return self.placeholder if relative == "." else f"{self.placeholder}/{relative}"
        return real.name


class Redactor:
    """Replaces the server's own absolute paths in a message by placeholders.

    Applied to every error a client sees: library errors (ONNX Runtime, zarr, the OS) quote the
    paths they were given, and those are the server's business."""

    def __init__(self, named: Iterable[tuple[str | Path, str]]) -> None:
        pairs: dict[str, str] = {}
        for path, placeholder in named:
            for variant in {str(Path(path).absolute()), str(_real(path))}:  # absolute forms only
                if variant != "/":
                    pairs.setdefault(variant, placeholder)
        self._pairs = sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)  # longest first

    def __call__(self, message: str) -> str:
        for path, placeholder in self._pairs:
            message = message.replace(path, placeholder)
        return message
