"""Run ``xal serve`` as a real subprocess on 127.0.0.1 (port 0) for the service tests and benchmarks.

A thin wrapper over the product's launcher, :class:`xal_service.server.process.LocalServer`; the log goes
to ``state/stdout.log`` here, which the tests read.
"""

from __future__ import annotations

from pathlib import Path

from xal_service.server.process import LocalServer

ROOT = Path(__file__).resolve().parents[2]

ServerProcess = LocalServer  # .process, .port, .state, .target, .stop() -> exit code


def start(state: Path, *extra: str, timeout: float = 60.0) -> LocalServer:
    """Start the server and wait until it has written its bound port and serves."""
    return LocalServer.start(state, *extra, timeout=timeout, log_name="stdout.log", cwd=ROOT)
