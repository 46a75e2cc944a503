"""Run ``xal serve`` as a child process on this machine (127.0.0.1, a free port).

For programs that need a scoring service of their own — the active-learning loop with the service
scorer, ``make demo``, the tests and benchmarks:

>>> with LocalServer.start("xal-state") as server:               # doctest: +SKIP
...     with ScoringClient(server.target) as client:
...         client.health()
'SERVING'

``start`` returns once ``state/server.json`` names the bound port *and* the health service answers
``SERVING`` (models of an earlier run under the same state are loaded by then). The child's output
goes to ``state/server.log`` (appended, one header line per start); if it exits before it is ready,
``start`` raises ``RuntimeError`` with the tail of that log. ``stop`` sends SIGTERM (graceful
shutdown: health NOT_SERVING, in-flight calls finish, a running job resumes at the next start with
the same state) and SIGKILL after ``timeout`` seconds. A server still running when this interpreter
exits is stopped then.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["LocalServer"]

_RUNNING: weakref.WeakSet[LocalServer] = weakref.WeakSet()


class LocalServer:
    """A running ``xal serve`` child process. Create it with :meth:`start`.

    Attributes:
        process: the child (``subprocess.Popen``).
        port: the port it is bound to on 127.0.0.1.
        state: its ``--state`` directory.
        log_path: where its stdout and stderr go.
    """

    def __init__(self, process: subprocess.Popen, port: int, state: Path, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.state = state
        self.log_path = log_path
        _RUNNING.add(self)

    @property
    def target(self) -> str:
        """``host:port`` for :class:`~xal_service.client.ScoringClient`."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def metrics_port(self) -> int | None:
        """The port of its ``/metrics`` endpoint (``--metrics-listen``), None without one."""
        try:
            return json.loads((self.state / "server.json").read_text()).get("metrics_port")
        except (OSError, json.JSONDecodeError):
            return None

    @classmethod
    def start(
        cls,
        state_dir: str | Path,
        *extra_args: str,
        timeout: float = 60.0,
        log_name: str = "server.log",
        tls_ca: str | Path | None = None,
        python: str = sys.executable,
        cwd: str | Path | None = None,
    ) -> LocalServer:
        """Start ``python -m xal_cli.main serve --listen 127.0.0.1:0 --state STATE EXTRA...``.

        Args:
            state_dir: the server's state directory (created if missing); reusing one resumes its
                models, pools and unfinished jobs.
            extra_args: more ``xal serve`` options (``--token-file F``, ``--tls-cert C --tls-key K``,
                ``--max-message-mb N``); not ``--listen`` or ``--state``.
            timeout: seconds to wait until it serves.
            log_name: the log file's name inside ``state_dir``.
            tls_ca: the CA to trust for the readiness check of a TLS server (default: the
                ``--tls-cert`` file itself, right for a self-signed certificate).
            python: the interpreter that runs the server.
            cwd: the child's working directory (default: this process's).

        Raises:
            RuntimeError: the server exited, or was not serving after ``timeout`` seconds (then it
                is killed); the message ends with the tail of its log.
        """
        for option in ("--listen", "--state"):
            if option in extra_args:
                raise ValueError(f"extra_args: {option} is set by LocalServer.start")
        state = Path(state_dir).resolve()
        state.mkdir(parents=True, exist_ok=True)
        marker = state / "server.json"
        marker.unlink(missing_ok=True)
        log_path = state / log_name
        if tls_ca is None:
            tls_ca = _option(extra_args, "--tls-cert")
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"--- xal serve starting {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
            log.flush()
            offset = log.tell()
            process = subprocess.Popen(
                [python, "-m", "xal_cli.main", "serve", "--listen", "127.0.0.1:0", "--state", str(state), *extra_args],
                cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        port = None
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"xal serve exited with code {process.returncode} before serving; "
                        f"the end of {log_path}:\n{_tail(log_path, offset)}"
                    )
                if port is None:
                    port = _bound_port(marker, process.pid)
                if port is not None and _serving(f"127.0.0.1:{port}", tls_ca):
                    return cls(process, port, state, log_path)
                time.sleep(0.05)
            raise RuntimeError(
                f"xal serve was not serving after {timeout:g} s (killed); the end of {log_path}:\n{_tail(log_path, offset)}"
            )
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """Graceful shutdown (SIGTERM), SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _RUNNING.discard(self)
        return self.process.returncode

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalServer(target={self.target!r}, pid={self.pid}, state={str(self.state)!r})"


def _option(args: Sequence[str], name: str) -> str | None:
    for position, arg in enumerate(args):
        if arg == name and position + 1 < len(args):
            return args[position + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _bound_port(marker: Path, pid: int) -> int | None:
    """The port in ``server.json`` once the child (``pid``) has written it whole."""
    try:
        record = json.loads(marker.read_text())
        return int(record["port"]) if record.get("pid") == pid else None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # not there yet, or being written


def _serving(target: str, tls_ca: str | Path | None) -> bool:
    if tls_ca is not None:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes()))
    else:
        channel = grpc.insecure_channel(target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def _tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            text = handle.read()
    except OSError as error:
        return f"(cannot read the log: {error})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        server.stop(timeout=5.0)
