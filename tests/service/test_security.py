"""Token auth, TLS, loopback-only default and graceful shutdown of a real server process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from tests.service import server_process
from xal_core.scoring import Roi
from xal_service.client import ScoringClient

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests-0123456789"


def _batch():
    generator = torch.Generator().manual_seed(0)
    roi = Roi.from_masks(torch.rand(2, 16, 16, generator=generator) > 0.5)
    return torch.randn(2, 3, generator=generator), torch.rand(2, 8, 4, 4, generator=generator), torch.rand(2, 8, generator=generator), roi


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_token_auth(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = server_process.start(tmp_path / "state", "--token-file", str(token_file))
    try:
        with ScoringClient(server.target) as anonymous:
            assert _code(lambda: anonymous.score_batch(*_batch())) == grpc.StatusCode.UNAUTHENTICATED
            assert _code(anonymous.statistics) == grpc.StatusCode.UNAUTHENTICATED
            assert anonymous.health() == "SERVING"  # probes need no credentials
        with ScoringClient(server.target, token=TOKEN[:-1] + "X") as wrong:
            assert _code(lambda: wrong.score_batch(*_batch())) == grpc.StatusCode.UNAUTHENTICATED
        with ScoringClient(server.target, token=TOKEN) as right:
            assert right.score_batch(*_batch())["dice"].shape == (2,)
            assert right.statistics().rpcs["ScoreBatch"].count == 1
    finally:
        assert server.stop() == 0


def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    server = server_process.start(tmp_path / "state", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        with ScoringClient(server.target, tls_ca=cert) as secure:
            assert secure.score_batch(*_batch())["soft_dice"].shape == (2,)
        with ScoringClient(server.target, timeout=5) as plaintext:
            assert _code(plaintext.statistics) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def test_remote_address_without_token_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "xal_cli.main", "serve", "--listen", "0.0.0.0:0", "--state", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "without --token-file" in done.stderr and "Traceback" not in done.stderr


def test_graceful_shutdown_on_sigterm(tmp_path):
    server = server_process.start(tmp_path / "state")
    with ScoringClient(server.target) as client:
        assert client.health() == "SERVING"
    assert server.stop() == 0
    log = (server.state / "stdout.log").read_text()
    assert "loopback only" in log and "shutting down" in log
