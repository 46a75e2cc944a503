"""Building and running the gRPC server: asyncio, health, reflection, auth, TLS, limits, graceful shutdown.

Security defaults: the port is bound exclusively (gRPC's default ``SO_REUSEPORT`` is turned off, so
no second server can share it and take part of its connections); without a token file the server
binds to loopback only (unless the operator explicitly allows otherwise) and says so at start; with a token every RPC but health checks needs
``authorization: Bearer <token>``, and a call without it is refused as soon as its headers arrive.
Server-side paths in requests must lie under ``--model-root`` / ``--pool-root`` (default: inside
``--state``); uploaded models are ONNX only unless ``--trust-torchscript-uploads``. See
docs/security.md for the threat model.

The server is ``grpc.aio`` on an event loop of its own thread: health checks, the token check and
stream counting happen on the loop, and every blocking piece of work goes to a pool of worker
threads (``--workers``), so no number of stalled or slow calls can keep health or an
authenticated client from being answered. ``ScoreBatch`` is bytes in and bytes out on the loop:
its request is parsed, scored and its reply serialized on one worker thread (``servicer``).

``--metrics-listen`` serves Prometheus metrics over HTTP on threads of its own (``metrics``), under
the same rule as the service: loopback only without a token, the bearer token required with one.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import xal_kernels
from xal_core.access import is_loopback, read_token, split_listen

from ..jobs.manager import JobManager
from ..process_memory import keep_freed_memory, usable_cpus
from ..registry.registry import Registry
from ..registry.roots import PathRoots, Redactor
from .auth import TokenInterceptor
from .config import ServerConfig, ServiceLimits
from .event_loop import new_event_loop
from .handlers import SERVICE_NAME, method_handlers
from .health_gate import HealthGate
from .servicer import ScoringServicer
from .standard_services import HealthService, enable_reflection
from .statistics import Statistics

if TYPE_CHECKING:
    from .metrics import MetricsServer

__all__ = ["ServerConfig", "RunningServer", "start_server", "serve_forever"]

log = logging.getLogger("xal.service")


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthGate
    statistics: Statistics
    state: Path
    jobs: JobManager
    loop: asyncio.AbstractEventLoop
    loop_thread: threading.Thread
    workers: futures.ThreadPoolExecutor
    scoring_pool: futures.ThreadPoolExecutor | None = None
    metrics_server: MetricsServer | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.server_port if self.metrics_server is not None else None

    def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: NOT_SERVING first (so balancers drain), then finish in-flight calls.
        A running job stops where it is; its finished chunks are on disk and it resumes on restart."""
        self.jobs.stop()

        async def shut_down() -> None:
            await self.health.shut_down()
            await self.server.stop(grace)

        asyncio.run_coroutine_threadsafe(shut_down(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join()
        self.workers.shutdown(wait=True)
        if self.scoring_pool is not None:
            self.scoring_pool.shutdown(wait=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()


def _check(config: ServerConfig) -> tuple[str, str | None]:
    host, _ = split_listen(config.listen)
    token = read_token(config.token_file) if config.token_file else None
    if token is None and not is_loopback(host) and not config.allow_remote_without_token:
        raise ValueError(
            f"--listen {config.listen}: refusing to serve a non-loopback address without --token-file "
            "(pass --allow-remote-without-token to do it anyway)"
        )
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if config.metrics_listen is not None:
        from .metrics import check_metrics_listen

        check_metrics_listen(config.metrics_listen, token, config.allow_remote_without_token)
    return host, token


def _bind_problem(listen: str) -> str:
    """Why ``listen`` cannot be bound, found by binding a plain socket the way gRPC does."""
    host, port = split_listen(listen)
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"cannot resolve {host!r} ({error.strerror})"
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return (f"address already in use (another process listens on port {port}; stop it, or pick "
                            "another port, 0 for any free one)")
                return error.strerror or type(error).__name__
    return "gRPC refused the address (set GRPC_VERBOSITY=debug to see why)"


def _event_loop(kind: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = new_event_loop(kind)
    thread = threading.Thread(target=loop.run_forever, name="xal-grpc-loop", daemon=True)
    thread.start()
    return loop, thread


def start_server(config: ServerConfig) -> RunningServer:
    """Start serving on an event loop thread and return once the port is bound and health says SERVING."""
    host, token = _check(config)
    state = Path(config.state)
    state.mkdir(parents=True, exist_ok=True)
    if config.ray is not None:  # fail at start, not at the first job, when Ray is missing or unreachable
        from ..engines.ray import connect

        connect(config.ray.address)
    limits = config.limits
    model_roots = PathRoots("model", config.model_roots or (state / "models",), max_chars=limits.max_path_chars)
    pool_roots = PathRoots("pool", config.pool_roots or (state / "pools",), max_chars=limits.max_path_chars)
    redact = Redactor([*((r, model_roots.placeholder) for r in model_roots.roots),
                       *((r, pool_roots.placeholder) for r in pool_roots.roots), (state, "<state>")])

    metrics, metrics_server = None, None
    if config.metrics_listen is not None:  # bound first: a port in use fails here, before anything else starts
        from .metrics import ServiceMetrics, metrics_app, start_metrics_server

        metrics = ServiceMetrics()
        metrics_server = start_metrics_server(config.metrics_listen, metrics_app(metrics.registry, token),
                                              tls_cert=config.tls_cert, tls_key=config.tls_key)
    try:
        return _start(config, state, token, host, limits, model_roots, pool_roots, redact, metrics, metrics_server)
    except BaseException:
        if metrics_server is not None:
            metrics_server.stop()
        raise


def _start(config: ServerConfig, state: Path, token: str | None, host: str, limits: ServiceLimits,
           model_roots: PathRoots, pool_roots: PathRoots, redact: Redactor, metrics, metrics_server) -> RunningServer:
    """The rest of ``start_server``: the event loop, the workers and the gRPC server (the caller
    stops a metrics server it has already started if this fails)."""
    loop, loop_thread = _event_loop(config.event_loop)
    statistics = Statistics()
    registry = Registry(state, model_roots=model_roots, pool_roots=pool_roots,
                        trust_torchscript_uploads=config.trust_torchscript_uploads)
    workers = futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="xal-rpc")
    scoring_threads = config.scoring_threads or usable_cpus()
    scoring_pool = futures.ThreadPoolExecutor(max_workers=scoring_threads, thread_name_prefix="xal-score")

    async def build() -> tuple[grpc.aio.Server, HealthGate, int, JobManager, ScoringServicer]:
        limit = config.max_message_mb * 1024 * 1024
        refused = metrics.record_refused if metrics is not None else None
        server = grpc.aio.server(
            interceptors=[TokenInterceptor(token, on_refused=refused)] if token else [],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.max_concurrent_streams", 256),  # per connection, HTTP/2
                     # gRPC sets SO_REUSEPORT by default: a second server (without a token, say)
                     # could then bind this port too and be handed part of the new connections.
                     ("grpc.so_reuseport", 0)],
        )
        health_servicer = HealthService()
        gate = HealthGate(health_servicer, asyncio.get_running_loop(), ("", SERVICE_NAME))
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        jobs = JobManager(state, registry, statistics, ray=config.ray, on_state_writable=gate.set_state_writable,
                          redact=redact)
        servicer = ScoringServicer(statistics, registry, jobs, state, gate.set_serving, scoring_pool=scoring_pool,
                                   scoring_threads=scoring_threads, workers=workers, limits=limits, redact=redact)
        server.add_generic_rpc_handlers((method_handlers(servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
        try:
            if config.tls_cert:
                credentials = grpc.ssl_server_credentials(
                    [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
                port = server.add_secure_port(config.listen, credentials)
            else:
                port = server.add_insecure_port(config.listen)
        except RuntimeError:  # "Failed to bind to address ...": gRPC logs the reason, says none
            port = 0
        if port == 0:
            raise ValueError(f"--listen {config.listen}: could not bind: {_bind_problem(config.listen)}")
        await server.start()
        return server, gate, port, jobs, servicer

    try:
        server, gate, port, jobs, servicer = asyncio.run_coroutine_threadsafe(build(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
        workers.shutdown(wait=False)
        scoring_pool.shutdown(wait=False)
        raise
    if metrics is not None:
        metrics.attach(servicer=servicer, statistics=statistics, jobs=jobs, registry=registry, health=gate)
    registry.restore(log)  # models load while health says NOT_SERVING
    xal_kernels.warm_up()  # compile (or load) the CPU kernel now, not in the first ScoreBatch
    jobs.start_worker()    # unfinished jobs of an earlier run resume
    gate.set_ready(True)

    address = f"{host}:{port}"
    (state / "server.json").write_text(
        json.dumps(
            {"address": address, "port": port, "pid": os.getpid(), "tls": bool(config.tls_cert),
             "auth": token is not None, "started": time.time(), "event_loop": config.event_loop,
             "metrics_port": metrics_server.server_port if metrics_server is not None else None},
            indent=2,
        )
    )
    return RunningServer(server, port, gate, statistics, state, jobs, loop, loop_thread, workers, scoring_pool,
                         metrics_server)


def dedicate_process() -> list[str]:
    """Settings for a process that serves and does nothing else (``xal serve``); returns what it did.

    * torch runs single-threaded in every thread, unless ``OMP_NUM_THREADS`` says otherwise.
      Concurrency comes from the scoring threads (a batch split across them) and the handler
      threads instead. Intra-op threads make every small operation a fork-join of OpenMP threads
      that spin at a barrier: on a busy host, one descheduled thread stalls each of them for a
      scheduler time slice (a 64-item batch, 10 ms on one free core, measured at 0.7 s on two
      cores shared with one other busy process). A job's TorchScript forward pass on the CPU runs
      single-threaded too (ONNX Runtime keeps its own threads): set ``OMP_NUM_THREADS`` to trade.
    * glibc's malloc keeps freed memory while calls run, with its arenas capped at the usable
      CPUs, and gives it back once a round, when a model is evicted or a job ends
      (``xal_service.process_memory``, which says why and what was measured).
    """
    import torch

    done = []
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    done.append(f"torch intra-op threads {torch.get_num_threads()}")
    return done + keep_freed_memory()


def serve_forever(config: ServerConfig, announce=print) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    tuned = dedicate_process()
    running = start_server(config)
    # Everything made so far (torch, NumPy, gRPC, the models) lives as long as the process: frozen, it
    # leaves the collector's full passes, each of which walked ~190 000 objects with the GIL held
    # (130 ms measured on the busy 2-core VM of bench/service.py: a pause of every call in flight).
    gc.freeze()
    tuned.append("start-up objects out of the garbage collector's full passes")
    host = config.listen.rpartition(":")[0]
    scheme = "TLS" if config.tls_cert else "plaintext"
    auth = "bearer-token auth" if config.token_file else "NO auth"
    announce(f"xal serve: listening on {host}:{running.port} ({scheme}, {auth}); state in {running.state}")
    if config.ray is not None:
        announce(f"xal serve: scoring jobs run on Ray (address {config.ray.address}, {config.ray.workers} worker(s), "
                 f"{config.ray.gpus_per_worker:g} GPU each)")
    announce(f"xal serve: {'; '.join(tuned)}; {config.scoring_threads or usable_cpus()} scoring thread(s); "
             f"{config.event_loop} event loop")
    roots = running.jobs.registry
    announce(f"xal serve: server-side paths only under --model-root {', '.join(map(str, roots.model_roots.roots))} "
             f"and --pool-root {', '.join(map(str, roots.pool_roots.roots))}; uploaded models: "
             + ("ONNX or TorchScript (--trust-torchscript-uploads)" if config.trust_torchscript_uploads else "ONNX only"))
    if not config.token_file:
        announce("xal serve: no --token-file: " + ("loopback only" if is_loopback(host) else "REMOTE CLIENTS CAN CONNECT WITHOUT A TOKEN"))
    if running.metrics_server is not None:
        metrics_host = config.metrics_listen.rpartition(":")[0]
        announce(f"xal serve: Prometheus metrics on {'https' if config.tls_cert else 'http'}://{metrics_host}:"
                 f"{running.metrics_port}/metrics" + (" (bearer token required)" if config.token_file else ""))
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    # Poll, never an untimed wait: a process-directed SIGTERM may be delivered to any thread (gRPC's,
    # ONNX Runtime's), and Python runs the handler only when the main thread next executes bytecode,
    # which a main thread blocked in an untimed wait never does (the server then ignored SIGTERM).
    while not stopping.wait(timeout=0.2):
        pass
    announce("xal serve: shutting down (health NOT_SERVING, finishing in-flight calls)")
    running.stop()
