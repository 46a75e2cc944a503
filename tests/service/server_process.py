"""Run ``xal serve`` as a real subprocess on 127.0.0.1 (port 0) for the service tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    state: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start(state: Path, *extra: str, timeout: float = 60.0) -> ServerProcess:
    """Start the server and wait until it has written its bound port."""
    state.mkdir(parents=True, exist_ok=True)
    marker = state / "server.json"
    marker.unlink(missing_ok=True)
    log = open(state / "stdout.log", "w")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "xal_core.cli.main", "serve", "--listen", "127.0.0.1:0", "--state", str(state), *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"xal serve exited with {process.returncode}: {(state / 'stdout.log').read_text()}")
        if marker.exists():
            try:
                return ServerProcess(process, json.loads(marker.read_text())["port"], state)
            except (json.JSONDecodeError, KeyError):
                pass  # being written
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("xal serve did not start in time")
