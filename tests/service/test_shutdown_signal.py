"""``xal serve`` stops on SIGTERM whichever of its threads the kernel hands the signal to.

A process-directed signal goes to any thread that does not block it; Python runs the handler only
when the main thread executes bytecode. The server's main thread used to wait without a timeout,
so a SIGTERM that landed on a gRPC or ONNX Runtime thread was never acted on (a fresh-clone run
saw ``stop()`` end in SIGKILL after 20 s). The test sends SIGTERM to one worker thread directly
(``tgkill``), which made the old server hang every time.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal

import pytest

from tests.service import server_process

SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


@pytest.mark.skipif(platform.system() != "Linux" or SYS_TGKILL is None,
                    reason="tgkill (a signal to one thread of another process) is a Linux system call")
def test_sigterm_landing_on_a_worker_thread_still_stops_the_server(tmp_path):
    server = server_process.start(tmp_path / "state")
    try:
        pid = server.process.pid
        workers = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        assert workers, "the server should run threads besides its main one"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(SYS_TGKILL, pid, workers[-1], signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        assert server.process.wait(timeout=15) == 0
    finally:
        server.stop()
