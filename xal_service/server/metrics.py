"""Prometheus metrics of the scoring service: ``xal serve --metrics-listen HOST:PORT`` serves ``/metrics``.

What is exported (docs/service.md, "Metrics", lists every name with a scrape configuration):

* every ``xal.v1.Scoring`` call, counted by method and status code (``xal_rpc_requests_total``),
  its latency (``xal_rpc_duration_seconds``, a histogram) and the items it scored or streamed
  (``xal_rpc_items_total``); calls refused at their headers for want of the token are counted too
  (``code="UNAUTHENTICATED"``), under their method's name when it is one of the service's and
  ``method="other"`` otherwise, so a client cannot make up label values;
* read at each scrape from the server's own objects: ``ScoreBatch`` calls in flight and open
  streams next to their caps, jobs by state and, per queued or running job, its items done, its
  size and its items/s (the job manager's public state), the stage times ``Statistics`` records
  (a job's read, forward, kernel and rank, ``ScoreBatch``'s decode, score and reply), models
  loaded and loading, model loads through ``LoadModel`` by outcome, whether health says SERVING,
  and the process's peak resident memory;
* prometheus_client's process collector (``process_resident_memory_bytes``,
  ``process_cpu_seconds_total``, open file descriptors...) and the Python GC collector.

Who may scrape: the rule of the service itself (``xal_core.access``). Without ``--token-file``,
``--metrics-listen`` must be a loopback address (unless ``--allow-remote-without-token``); with one,
every request needs ``Authorization: Bearer <token>`` (the scheme in any case, the token compared
in constant time), 401 otherwise. With ``--tls-cert``/``--tls-key`` the endpoint speaks HTTPS with
the same certificate. The HTTP server runs on threads of its own, one per connection with a 10 s
socket timeout, never on the gRPC event loop or its workers.
"""

from __future__ import annotations

import hmac
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from xal_core.access import is_loopback, split_listen

from .auth import bearer_credentials
from .handlers import METHODS, SERVICE_NAME

__all__ = ["ServiceMetrics", "MetricsServer", "check_metrics_listen", "method_label", "metrics_app",
           "start_metrics_server"]

#: latency buckets (seconds): a ScoreBatch takes milliseconds, a LoadModel seconds, a WatchJob the whole job
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                   1800.0)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
OTHER = "other"  # the method label of a refused call that names no method of the service
SOCKET_TIMEOUT = 10.0  # seconds an HTTP connection may sit idle (a stalled scraper holds one thread, not more)


def method_label(path: str) -> str:
    """``/xal.v1.Scoring/ScoreBatch`` → ``ScoreBatch``; any other path → ``other``."""
    service, _, method = path.lstrip("/").partition("/")
    return method if service == SERVICE_NAME and method in METHODS else OTHER


class ServiceMetrics:
    """The server's metrics in a registry of their own (never prometheus_client's global one).

    ``record_rpc`` is a ``Statistics`` listener; ``record_refused`` is called by the token
    interceptor; ``attach`` hands over the objects read at scrape time once the server has made them.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter("xal_rpc_requests", "xal.v1.Scoring calls by method and gRPC status code",
                                ["method", "code"], registry=self.registry)
        self.duration = Histogram("xal_rpc_duration_seconds",
                                  "Time from a call's start to its end (a stream: to its last message), by method",
                                  ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.items = Counter("xal_rpc_items", "Items scored (ScoreBatch) or streamed (GetRanking, GetItemScores)",
                             ["method"], registry=self.registry)
        for method in METHODS:  # every method's series exists from the start (rate() needs a first sample)
            self.requests.labels(method, grpc.StatusCode.OK.name)
            self.duration.labels(method)
        self._state = _ServerState()
        self.registry.register(self._state)

    def attach(self, *, servicer: Any, statistics: Any, jobs: Any, registry: Any, health: Any) -> None:
        """Read these at every scrape from now on, and count ``statistics``' calls."""
        self._state.attach(servicer, statistics, jobs, registry, health)
        statistics.add_listener(self.record_rpc)

    def record_rpc(self, name: str, code: grpc.StatusCode, seconds: float, items: int) -> None:
        method = name if name in METHODS else OTHER
        self.requests.labels(method, code.name).inc()
        self.duration.labels(method).observe(seconds)
        if items:
            self.items.labels(method).inc(items)

    def record_refused(self, path: str, code: grpc.StatusCode) -> None:
        """A call refused before any handler ran (no token): counted, not timed."""
        self.requests.labels(method_label(path), code.name).inc()


class _ServerState(Collector):
    """Gauges and counters read from the server's objects when Prometheus scrapes."""

    def __init__(self) -> None:
        self._parts: tuple | None = None

    def attach(self, servicer, statistics, jobs, registry, health) -> None:
        self._parts = (servicer, statistics, jobs, registry, health)

    def describe(self) -> Iterable:
        return ()  # the families depend on the server's state: described at collect time only

    def collect(self) -> Iterable:
        peak = _peak_rss_bytes()
        if peak is not None:
            yield GaugeMetricFamily("xal_process_peak_resident_memory_bytes",
                                    "Peak resident memory of the server process (VmHWM)", value=peak)
        if self._parts is None:
            return
        servicer, statistics, jobs, registry, health = self._parts
        limits = servicer.limits
        yield GaugeMetricFamily("xal_score_batch_inflight", "ScoreBatch calls being scored or waiting for a thread",
                                value=servicer.batches_in_flight)
        yield GaugeMetricFamily("xal_score_batch_inflight_limit", "--max-inflight-batches",
                                value=limits.max_inflight_batches)
        yield GaugeMetricFamily("xal_streams_open", "Open streaming calls (WatchJob, GetRanking, GetItemScores, "
                                "LoadModel)", value=servicer.streams.open_count())
        yield GaugeMetricFamily("xal_streams_limit", "--max-streams", value=limits.max_streams)
        yield GaugeMetricFamily("xal_serving", "1 while health says SERVING, 0 otherwise",
                                value=1.0 if health.serving else 0.0)

        models = GaugeMetricFamily("xal_models_loaded", "Models loaded and ready", value=len(registry.models))
        loading = GaugeMetricFamily("xal_models_loading", "Model loads in progress", value=health.loading)
        loads = CounterMetricFamily("xal_model_loads", "Model loads through LoadModel by outcome", labels=["result"])
        for result, count in servicer.model_loads.items():
            loads.add_metric([result], count)
        yield from (models, loading, loads)

        listed = jobs.list()
        states = GaugeMetricFamily("xal_jobs", "Scoring jobs this server knows, by state", labels=["state"])
        for state in JOB_STATES:
            states.add_metric([state], sum(1 for job in listed if job.state == state))
        yield states
        labels = ["job", "model", "pool"]
        rate = GaugeMetricFamily("xal_job_items_per_second", "Items/s of each queued or running job since it started",
                                 labels=labels)
        done = GaugeMetricFamily("xal_job_items_done", "Items scored so far by each queued or running job",
                                 labels=labels)
        size = GaugeMetricFamily("xal_job_items", "Items in the pool of each queued or running job", labels=labels)
        for job in listed:
            if job.state in ("queued", "running"):
                key = [job.id, job.spec.model, job.spec.pool]
                rate.add_metric(key, job.items_per_second)
                done.add_metric(key, job.items_done)
                size.add_metric(key, job.items_total)
        yield from (rate, done, size)

        seconds = CounterMetricFamily("xal_stage_seconds", "Time spent in each stage: a job's read, forward, kernel "
                                      "and rank; ScoreBatch's decode, score and reply", labels=["stage"])
        items = CounterMetricFamily("xal_stage_items", "Items through each stage", labels=["stage"])
        runs = CounterMetricFamily("xal_stage_runs", "Times each stage ran (a block of a job, a ScoreBatch call)",
                                   labels=["stage"])
        for stage, (count, total, n_items) in sorted(statistics.stage_totals().items()):
            seconds.add_metric([stage], total)
            items.add_metric([stage], n_items)
            runs.add_metric([stage], count)
        yield from (seconds, items, runs)


def _peak_rss_bytes() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------- HTTP


def check_metrics_listen(listen: str, token: str | None, allow_remote_without_token: bool) -> str:
    """The host of ``--metrics-listen``; ``ValueError`` for a non-loopback one without a token."""
    try:
        host, _ = split_listen(listen)
    except ValueError:
        raise ValueError(f"--metrics-listen: expected HOST:PORT, got {listen!r}") from None
    if token is None and not is_loopback(host) and not allow_remote_without_token:
        raise ValueError(f"--metrics-listen {listen}: refusing to serve metrics on a non-loopback address without "
                         "--token-file (pass --allow-remote-without-token to do it anyway)")
    return host


def metrics_app(registry: CollectorRegistry, token: str | None) -> Callable:
    """The WSGI app: ``/metrics`` (with the bearer token when there is one), 404 elsewhere."""
    exposition = make_wsgi_app(registry)
    expected = token.encode("utf-8") if token is not None else None

    def app(environ, start_response):
        if expected is not None:
            presented = bearer_credentials(environ.get("HTTP_AUTHORIZATION", ""))
            if not hmac.compare_digest(presented.encode("utf-8", "replace"), expected):
                start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                    ("WWW-Authenticate", 'Bearer realm="xal metrics"')])
                return [b"missing or wrong 'Authorization: Bearer <token>' header\n"]
        if environ.get("PATH_INFO", "/") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"metrics are at /metrics\n"]
        return exposition(environ, start_response)

    return app


class _Handler(WSGIRequestHandler):
    timeout = SOCKET_TIMEOUT  # StreamRequestHandler sets it on the connection

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()  # here, on this connection's thread, under its timeout

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # no line per scrape in the server's log


class MetricsServer(ThreadingMixIn, WSGIServer):
    """The ``/metrics`` HTTP server: a thread per connection (daemon threads), quiet on errors."""

    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        """``HTTPServer.server_bind`` without its ``socket.getfqdn`` (a reverse DNS lookup, which can
        take seconds where no resolver answers)."""
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port
        self.setup_environ()

    def handle_error(self, request, client_address) -> None:
        pass  # a scraper that hung up or spoke no TLS: its connection ends, the server goes on

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="xal-metrics", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def start_metrics_server(listen: str, app: Callable, *, tls_cert: Path | None = None,
                         tls_key: Path | None = None) -> MetricsServer:
    """Bind ``listen`` and serve ``app`` on a thread of its own; ``ValueError`` naming the flag when
    the address cannot be bound."""
    host, port = split_listen(listen)
    host = host.strip("[]")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as error:
        raise ValueError(f"--metrics-listen {listen}: cannot resolve {host!r} ({error.strerror})") from None
    server_class = type("MetricsServer", (MetricsServer,), {"address_family": family})
    try:
        server = server_class((host, port), _Handler)
    except OSError as error:
        raise ValueError(f"--metrics-listen {listen}: could not bind: {error.strerror or error}") from None
    server.set_app(app)
    if tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls_cert), str(tls_key))
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.start()
    return server

