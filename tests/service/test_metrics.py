"""Prometheus metrics (``xal serve --metrics-listen``) scraped over HTTP from a real server process.

The counters must move by exactly the calls made, a refused call's status code included (at the
headers for want of the token, or by the servicer), and the endpoint follows the service's access
rule: the bearer token with one, loopback only without one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.service import server_process
from xal_core.data import open_dataset
from xal_core.data.ingest import ingest
from xal_core.models import ExplainableModel, build_backbone, export
from xal_core.scoring import Roi
from xal_service.client import ScoringClient
from xal_service.server.config import ServiceLimits
from xal_service.server.metrics import ServiceMetrics, method_label
from xal_service.server.statistics import Statistics
from xal_service.wire import scoring_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-tests-0123456789"


def _batch(items: int = 3):
    generator = torch.Generator().manual_seed(1)
    roi = Roi.from_masks(torch.rand(items, 16, 16, generator=generator) > 0.5)
    return (torch.randn(items, 3, generator=generator), torch.rand(items, 8, 4, 4, generator=generator),
            torch.rand(items, 8, generator=generator), roi)


def _scrape(port: int, authorization: str | None = f"Bearer {TOKEN}", path: str = "/metrics") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics-assets")
    ingest(open_dataset("synthetic", size=(32, 32), n=48, seed=3), root / "pool", chunk=16, workers=1)
    torch.manual_seed(0)
    model = ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=2)).eval()
    export(model, root / "model.onnx", "onnx", input_shape=(1, 32, 32), onnx_exporter="legacy")
    return root


def test_counters_move_by_exactly_the_calls_made(tmp_path, assets):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = server_process.start(tmp_path / "state", "--token-file", str(token_file), "--metrics-listen",
                                  "127.0.0.1:0", "--model-root", str(assets), "--pool-root", str(assets))
    try:
        port = server.metrics_port
        assert port
        status, text = _scrape(port)
        assert status == 200, text
        before = _samples(text)
        with ScoringClient(server.target, token=TOKEN) as client:
            assert client.score_batch(*_batch())["score"].shape == (3,)
            client.score_batch(*_batch())
            with pytest.raises(grpc.RpcError) as refused:
                client.score_batch(*_batch(), ids=torch.tensor([4, 4, 5]))  # an id twice
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            client.list_models()
            client.load_model("m", str(assets / "model.onnx"))
            with pytest.raises(grpc.RpcError):
                client.load_model("bad", str(assets / "missing.onnx"))
            client.register_pool("p", str(assets / "pool"))
            job = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=5)).job_id
            final = list(client.watch_job(job))[-1]
            assert final.state == pb.JOB_SUCCEEDED
        with ScoringClient(server.target) as anonymous:
            with pytest.raises(grpc.RpcError) as unauthenticated:
                anonymous.score_batch(*_batch())
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError):
                anonymous.list_pools()
            # a method the service does not have: counted under "other", not under its made-up name
            made_up = anonymous._channel.unary_unary("/xal.v1.Scoring/NoSuchMethod")
            with pytest.raises(grpc.RpcError):
                made_up(b"", timeout=10)
        status, text = _scrape(port)
        assert status == 200
        after = _samples(text)

        def moved(name: str, **labels) -> float:
            return _value(after, name, **labels) - _value(before, name, **labels)

        requests = "xal_rpc_requests_total"
        assert moved(requests, method="ScoreBatch", code="OK") == 2
        assert moved(requests, method="ScoreBatch", code="INVALID_ARGUMENT") == 1
        assert moved(requests, method="ScoreBatch", code="UNAUTHENTICATED") == 1
        assert moved(requests, method="ListModels", code="OK") == 1
        assert moved(requests, method="ListPools", code="UNAUTHENTICATED") == 1
        assert moved(requests, method="other", code="UNAUTHENTICATED") == 1
        assert moved(requests, method="LoadModel", code="OK") == 1
        assert moved(requests, method="LoadModel", code="NOT_FOUND") + moved(
            requests, method="LoadModel", code="INVALID_ARGUMENT") == 1
        assert moved(requests, method="StartScoring", code="OK") == 1
        assert moved(requests, method="WatchJob", code="OK") == 1
        assert not any(labels and dict(labels).get("method") == "NoSuchMethod" for _, labels in after)
        # every call the servicer handled is timed; a refusal at the headers is counted, not timed
        assert moved("xal_rpc_duration_seconds_count", method="ScoreBatch") == 3
        assert moved("xal_rpc_duration_seconds_bucket", method="ScoreBatch", le="+Inf") == 3
        assert moved("xal_rpc_items_total", method="ScoreBatch") == 6
        assert moved("xal_stage_runs_total", stage="ScoreBatch.score") == 2
        assert moved("xal_stage_items_total", stage="ScoreBatch.decode") == 6
        for stage in ("read", "forward", "kernel", "rank"):  # the job's stages, as Statistics records them
            assert moved("xal_stage_runs_total", stage=stage) >= 1, stage
            assert moved("xal_stage_seconds_total", stage=stage) > 0, stage
        assert moved("xal_stage_items_total", stage="rank") == 48
        assert _value(after, "xal_jobs", state="succeeded") == 1
        assert _value(after, "xal_jobs", state="running") == 0
        assert moved("xal_model_loads_total", result="loaded") == 1
        assert _value(after, "xal_models_loaded") == 1
        assert _value(after, "xal_score_batch_inflight") == 0
        assert _value(after, "xal_score_batch_inflight_limit") == ServiceLimits().max_inflight_batches
        assert _value(after, "xal_streams_open") == 0
        assert _value(after, "xal_serving") == 1
        assert _value(after, "process_resident_memory_bytes") > 0
        assert _value(after, "xal_process_peak_resident_memory_bytes") > 0
    finally:
        assert server.stop() == 0


def test_the_endpoint_needs_the_token_when_the_service_has_one(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = server_process.start(tmp_path / "state", "--token-file", str(token_file), "--metrics-listen", "127.0.0.1:0")
    try:
        port = server.metrics_port
        assert _scrape(port, authorization=None)[0] == 401
        assert _scrape(port, authorization=f"Bearer {TOKEN[:-1]}X")[0] == 401
        assert _scrape(port, authorization=f"Basic {TOKEN}")[0] == 401
        assert _scrape(port, authorization=TOKEN)[0] == 401
        for scheme in ("Bearer", "bearer", "BEARER"):
            status, text = _scrape(port, authorization=f"{scheme} {TOKEN}")
            assert status == 200 and "xal_rpc_requests_total" in text, scheme
        assert _scrape(port, path="/")[0] == 404
        assert _scrape(port, authorization=None, path="/")[0] == 401  # nothing said without the token
    finally:
        assert server.stop() == 0


def test_without_a_token_metrics_are_loopback_only(tmp_path):
    server = server_process.start(tmp_path / "state", "--metrics-listen", "127.0.0.1:0")
    try:
        status, text = _scrape(server.metrics_port, authorization=None)
        assert status == 200 and "xal_serving 1.0" in text
    finally:
        assert server.stop() == 0
    done = subprocess.run(
        [sys.executable, "-m", "xal_cli.main", "serve", "--listen", "127.0.0.1:0", "--state", str(tmp_path / "s2"),
         "--metrics-listen", "0.0.0.0:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "--metrics-listen" in done.stderr and "without --token-file" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stalled_scraper_holds_neither_the_endpoint_nor_the_service(tmp_path):
    import socket

    server = server_process.start(tmp_path / "state", "--metrics-listen", "127.0.0.1:0")
    stalled = [socket.create_connection(("127.0.0.1", server.metrics_port)) for _ in range(8)]
    try:
        for connection in stalled:
            connection.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finished
        started = time.monotonic()
        assert _scrape(server.metrics_port, authorization=None)[0] == 200
        with ScoringClient(server.target) as client:
            assert client.health() == "SERVING"
        assert time.monotonic() - started < 5
    finally:
        for connection in stalled:
            connection.close()
        assert server.stop() == 0


# --------------------------------------------------------------------------- the collector itself


class _Job:
    def __init__(self, job_id, state, done, total, rate):
        self.id, self.state, self.items_done, self.items_total, self.items_per_second = job_id, state, done, total, rate
        self.spec = type("Spec", (), {"model": "m", "pool": "p"})()


class _Jobs:
    def __init__(self, jobs):
        self._jobs = jobs

    def list(self):
        return list(self._jobs)


def test_job_gauges_follow_the_job_managers_state():
    statistics = Statistics()
    metrics = ServiceMetrics()
    servicer = type("Servicer", (), {"limits": ServiceLimits(max_inflight_batches=7), "batches_in_flight": 2,
                                     "model_loads": {"loaded": 3, "failed": 1},
                                     "streams": type("Streams", (), {"open_count": lambda self: 4})()})()
    health = type("Health", (), {"serving": False, "loading": 1})()
    registry = type("Registry", (), {"models": {"a": 1, "b": 2}})()
    jobs = [_Job("j1", "running", 300, 1000, 150.0), _Job("j2", "queued", 0, 50, 0.0),
            _Job("j3", "succeeded", 10, 10, 5.0), _Job("j4", "failed", 1, 10, 1.0)]
    metrics.attach(servicer=servicer, statistics=statistics, jobs=_Jobs(jobs), registry=registry, health=health)
    statistics.record_stage("forward", 1.5, items=64)
    statistics.record_stage("forward", 0.5, items=32)
    statistics.record_rpc("ScoreBatch", 0.02, failed=False, items=64)
    statistics.record_rpc("ScoreBatch", 0.0, failed=True, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    statistics.record_rpc("WatchJob", 3.0, failed=False, code=grpc.StatusCode.CANCELLED)
    from prometheus_client import generate_latest

    samples = _samples(generate_latest(metrics.registry).decode())
    assert _value(samples, "xal_job_items_per_second", job="j1", model="m", pool="p") == 150.0
    assert _value(samples, "xal_job_items_done", job="j1", model="m", pool="p") == 300
    assert _value(samples, "xal_job_items", job="j2", model="m", pool="p") == 50
    assert not any(dict(labels).get("job") in ("j3", "j4") for _, labels in samples)  # finished: no per-job series
    assert [_value(samples, "xal_jobs", state=s) for s in ("queued", "running", "succeeded", "failed", "cancelled")] \
        == [1, 1, 1, 1, 0]
    assert _value(samples, "xal_stage_seconds_total", stage="forward") == 2.0
    assert _value(samples, "xal_stage_items_total", stage="forward") == 96
    assert _value(samples, "xal_stage_runs_total", stage="forward") == 2
    assert _value(samples, "xal_rpc_requests_total", method="ScoreBatch", code="OK") == 1
    assert _value(samples, "xal_rpc_requests_total", method="ScoreBatch", code="RESOURCE_EXHAUSTED") == 1
    assert _value(samples, "xal_rpc_requests_total", method="WatchJob", code="CANCELLED") == 1
    assert _value(samples, "xal_rpc_items_total", method="ScoreBatch") == 64
    assert _value(samples, "xal_score_batch_inflight") == 2
    assert _value(samples, "xal_score_batch_inflight_limit") == 7
    assert _value(samples, "xal_streams_open") == 4
    assert _value(samples, "xal_serving") == 0
    assert _value(samples, "xal_models_loaded") == 2
    assert _value(samples, "xal_models_loading") == 1
    assert _value(samples, "xal_model_loads_total", result="failed") == 1


def test_method_labels_are_the_services_own_names():
    assert method_label("/xal.v1.Scoring/ScoreBatch") == "ScoreBatch"
    assert method_label("/xal.v1.Scoring/NoSuchMethod") == "other"
    assert method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") == "other"
    assert method_label("/" + "x" * 10_000) == "other"


def test_metrics_are_scraped_while_calls_run(tmp_path):
    """Scrapes during a burst of ScoreBatch calls: every scrape answers, and the last one counts every call."""
    server = server_process.start(tmp_path / "state", "--metrics-listen", "127.0.0.1:0")
    try:
        def calls():
            with ScoringClient(server.target) as client:
                for _ in range(10):
                    client.score_batch(*_batch())

        threads = [threading.Thread(target=calls) for _ in range(3)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            assert _scrape(server.metrics_port, authorization=None)[0] == 200
        for thread in threads:
            thread.join()
        samples = _samples(_scrape(server.metrics_port, authorization=None)[1])
        assert _value(samples, "xal_rpc_requests_total", method="ScoreBatch", code="OK") == 30
        assert _value(samples, "xal_score_batch_inflight") == 0
    finally:
        assert server.stop() == 0
