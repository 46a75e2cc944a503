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


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    statistics: Statistics
    state: Path
    jobs: JobManager

    def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: NOT_SERVING first (so balancers drain), then finish in-flight calls.
        A running job stops where it is; its finished chunks are on disk and it resumes on restart."""
        self.health.enter_graceful_shutdown()
        self.jobs.stop()
        self.server.stop(grace).wait()


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
    pb_grpc.add_ScoringServicer_to_server(ScoringServicer(statistics, registry, jobs, state, set_serving), server)
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
    return RunningServer(server, port, health_servicer, statistics, state, jobs)


def serve_forever(config: ServerConfig, announce=print) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    running = start_server(config)
    host = config.listen.rpartition(":")[0]
    scheme = "TLS" if config.tls_cert else "plaintext"
    auth = "bearer-token auth" if config.token_file else "NO auth"
    announce(f"xal serve: listening on {host}:{running.port} ({scheme}, {auth}); state in {running.state}")
    if config.ray is not None:
        announce(f"xal serve: scoring jobs run on Ray (address {config.ray.address}, {config.ray.workers} worker(s), "
                 f"{config.ray.gpus_per_worker:g} GPU each)")
    if not config.token_file:
        announce("xal serve: no --token-file: " + ("loopback only" if _is_loopback(host) else "REMOTE CLIENTS CAN CONNECT WITHOUT A TOKEN"))
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    announce("xal serve: shutting down (health NOT_SERVING, finishing in-flight calls)")
    running.stop()
