"""Whether the server's state folder can be written right now, watched and reported to health.

Why: jobs record every finished chunk under ``state/jobs``, and that folder can stop being
writable (read-only remount, full disk, a folder replaced) while the server runs. A failed state
write raises :class:`StateUnwritable`; the job that hit it fails with that reason, health turns
NOT_SERVING, and the worker waits here — probing with a small real write — until the folder is
writable again before it takes the next job, so later jobs neither die nor sit QUEUED behind a
server that says SERVING. A background probe notices the condition even when no job runs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["StateUnwritable", "StateMonitor", "state_write"]

log = logging.getLogger("xal.service")


class StateUnwritable(OSError):
    """A write under the state folder failed; ``reason`` is the OS's words for it."""

    def __init__(self, error: OSError) -> None:
        reason = os.strerror(error.errno) if error.errno else type(error).__name__
        super().__init__(error.errno, reason)
        self.reason = reason


class state_write:  # noqa: N801 - used as a context manager, named like one
    """``with state_write(): ...`` turns any ``OSError`` inside into :class:`StateUnwritable`."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, OSError) and not isinstance(error, StateUnwritable):
            raise StateUnwritable(error) from error


class StateMonitor:
    """Probes ``folder`` with a one-byte write; tells ``on_change(writable)`` what it finds.

    Args:
        folder: where jobs write (``state/jobs``).
        on_change: called with the result of every probe (health ignores repeats).
        interval: seconds between background probes, and between retries while waiting.
    """

    def __init__(self, folder: Path, on_change: Callable[[bool], None], interval: float = 1.0) -> None:
        self.folder = folder
        self.on_change = on_change
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="xal-state-probe", daemon=True)
        self._probe_path = folder / f".write-probe-{os.getpid()}"

    def probe(self) -> bool:
        """One real write, flushed, then removed; the result is reported to ``on_change``."""
        try:
            with open(self._probe_path, "wb") as handle:
                handle.write(b"\0")
                handle.flush()
                os.fsync(handle.fileno())
            self._probe_path.unlink()
            writable = True
        except OSError:
            writable = False
        self.on_change(writable)
        return writable

    def wait_until_writable(self) -> bool:
        """Block until a probe succeeds (True) or the monitor is stopped (False)."""
        while not self._stop.is_set():
            if self.probe():
                return True
            self._stop.wait(self.interval)
        return False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        was = True
        while not self._stop.wait(self.interval):
            now = self.probe()
            if now != was:
                log.warning("state folder %s", "writable again" if now else "cannot be written: health NOT_SERVING")
                was = now
