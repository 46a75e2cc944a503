"""Building and running the gRPC server: health, reflection, auth, TLS, limits, graceful shutdown.

Security defaults: without a token file the server binds to loopback only (unless the operator
explicitly allows otherwise) and says so at start; with a token every RPC but health checks needs
``authorization: Bearer <token>``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import xal_kernels

from . import codec
from .auth import TokenInterceptor, read_token
from .engines.ray.config import RayEngineConfig
from .jobs import JobManager
from .registry import Registry
from .servicer import ScoringServicer
from .statistics import Statistics
from .wire import scoring_pb2 as pb
from .wire import scoring_pb2_grpc as pb_grpc

__all__ = ["ServerConfig", "RunningServer", "start_server", "serve_forever"]

log = logging.getLogger("xal.service")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Scoring"].full_name


@dataclass(frozen=True)
class ServerConfig:
    """How to run the server.

    Attributes:
        listen: ``host:port``; port 0 picks a free one (written to ``state/server.json``).
        state: directory for the server's state (created if missing).
        token_file: file holding the bearer token; None = no auth (loopback only, see below).
        allow_remote_without_token: bind a non-loopback address without a token anyway.
        tls_cert, tls_key: PEM files to serve TLS.
        max_message_mb: largest request/response; larger ones get RESOURCE_EXHAUSTED.
        workers: handler threads (inline calls run concurrently on them).
        ray: run scoring jobs on this Ray cluster (``xal_service.engines.ray``) instead of the
            server's own job thread; None (the default) keeps them in-process.
        scoring_threads: threads that score inline ``ScoreBatch`` batches, shared by all calls (a
            batch is split across them when torch runs single-threaded, as under ``xal serve``);
            0 (the default) = one per CPU this process may run on.
    """

    listen: str = "127.0.0.1:50051"
    state: Path = Path("xal-state")
    token_file: Path | None = None
    allow_remote_without_token: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_mb: int = 64
    workers: int = 16
    ray: RayEngineConfig | None = None
    scoring_threads: int = 0


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    statistics: Statistics
    state: Path
    jobs: JobManager
    scoring_pool: futures.ThreadPoolExecutor | None = None

    def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: NOT_SERVING first (so balancers drain), then finish in-flight calls.
        A running job stops where it is; its finished chunks are on disk and it resumes on restart."""
        self.health.enter_graceful_shutdown()
        self.jobs.stop()
        self.server.stop(grace).wait()
        if self.scoring_pool is not None:
            self.scoring_pool.shutdown(wait=True)


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(config: ServerConfig) -> RunningServer:
    """Start serving in background threads and return once the port is bound."""
    host, _, port_text = config.listen.rpartition(":")
    if not host or not port_text.isdigit():
        raise ValueError(f"--listen: expected HOST:PORT, got {config.listen!r}")
    token = read_token(config.token_file) if config.token_file else None
    if token is None and not _is_loopback(host) and not config.allow_remote_without_token:
        raise ValueError(
            f"--listen {config.listen}: refusing to serve a non-loopback address without --token-file "
            "(pass --allow-remote-without-token to do it anyway)"
        )
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    state = Path(config.state)
    state.mkdir(parents=True, exist_ok=True)
    if config.ray is not None:  # fail at start, not at the first job, when Ray is missing or unreachable
        from .engines.ray import connect

        connect(config.ray.address)

    limit = config.max_message_mb * 1024 * 1024
    statistics = Statistics()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="xal-rpc"),
        interceptors=[TokenInterceptor(token)] if token else [],
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    registry = Registry(state)

    def set_serving(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        health_servicer.set(SERVICE_NAME, status)

    jobs = JobManager(state, registry, statistics, ray=config.ray)
    scoring_threads = config.scoring_threads or _usable_cpus()
    scoring_pool = futures.ThreadPoolExecutor(max_workers=scoring_threads, thread_name_prefix="xal-score")
    servicer = ScoringServicer(
        statistics, registry, jobs, state, set_serving, scoring_pool=scoring_pool, scoring_threads=scoring_threads
    )
    pb_grpc.add_ScoringServicer_to_server(servicer, server)
    # ScoreBatch carries megabytes of feature maps: its deserializer keeps them out of protobuf (a
    # view of the received bytes, see codec). Registered methods are looked up by exact name, and a
    # later registration of the same name replaces the generated one.
    server.add_registered_method_handlers(SERVICE_NAME, {
        "ScoreBatch": grpc.unary_unary_rpc_method_handler(
            servicer.ScoreBatch,
            request_deserializer=codec.parse_score_batch_request,
            response_serializer=pb.ScoreBatchResponse.SerializeToString,
        ),
    })
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    if config.tls_cert:
        credentials = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
        port = server.add_secure_port(config.listen, credentials)
    else:
        port = server.add_insecure_port(config.listen)
    if port == 0:
        raise ValueError(f"--listen {config.listen}: could not bind")
    server.start()
    registry.restore(log)  # models load while health says NOT_SERVING
    xal_kernels.warm_up()  # compile (or load) the CPU kernel now, not in the first ScoreBatch
    jobs.start_worker()    # unfinished jobs of an earlier run resume
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    address = f"{host}:{port}"
    (state / "server.json").write_text(
        json.dumps(
            {"address": address, "port": port, "pid": os.getpid(), "tls": bool(config.tls_cert),
             "auth": token is not None, "started": time.time()},
            indent=2,
        )
    )
    return RunningServer(server, port, health_servicer, statistics, state, jobs, scoring_pool)


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def dedicate_process() -> list[str]:
    """Settings for a process that serves and does nothing else (``xal serve``); returns what it did.

    * torch runs single-threaded in every thread, unless ``OMP_NUM_THREADS`` says otherwise.
      Concurrency comes from the scoring threads (a batch split across them) and the handler
      threads instead. Intra-op threads make every small operation a fork-join of OpenMP threads
      that spin at a barrier: on a busy host, one descheduled thread stalls each of them for a
      scheduler time slice (a 64-item batch, 10 ms on one free core, measured at 0.7 s on two
      cores shared with one other busy process). A job's TorchScript forward pass on the CPU runs
      single-threaded too (ONNX Runtime keeps its own threads): set ``OMP_NUM_THREADS`` to trade.
    * glibc's malloc keeps freed memory for reuse (no trimming, no mmap below 32 MB). By default
      it hands large freed blocks back to the kernel, and the next request faults its megabytes in
      again page by page: ~2.6 µs per 4 KiB page on the 2-core VM of bench/service.py, where a
      64-item ``ScoreBatch`` took ~4 700 faults (12 ms) before the codec and the scoring path
      stopped copying the feature maps; it takes almost none now, and this keeps it so when many
      calls are in flight at once. The price is that the server keeps its peak memory.
    """
    import torch

    done = []
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    done.append(f"torch intra-op threads {torch.get_num_threads()}")
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return done
    if mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, -1):  # 32 MB is glibc's cap; -1: never trim
        done.append("malloc keeps freed memory")
    return done


def serve_forever(config: ServerConfig, announce=print) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    tuned = dedicate_process()
    running = start_server(config)
    host = config.listen.rpartition(":")[0]
    scheme = "TLS" if config.tls_cert else "plaintext"
    auth = "bearer-token auth" if config.token_file else "NO auth"
    announce(f"xal serve: listening on {host}:{running.port} ({scheme}, {auth}); state in {running.state}")
    if config.ray is not None:
        announce(f"xal serve: scoring jobs run on Ray (address {config.ray.address}, {config.ray.workers} worker(s), "
                 f"{config.ray.gpus_per_worker:g} GPU each)")
    announce(f"xal serve: {'; '.join(tuned)}; {config.scoring_threads or _usable_cpus()} scoring thread(s)")
    if not config.token_file:
        announce("xal serve: no --token-file: " + ("loopback only" if _is_loopback(host) else "REMOTE CLIENTS CAN CONNECT WITHOUT A TOKEN"))
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    announce("xal serve: shutting down (health NOT_SERVING, finishing in-flight calls)")
    running.stop()
