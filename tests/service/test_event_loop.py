"""The server's event loop: uvloop by default, the standard loop on request, the same answers on
both, and a clear error where uvloop is missing (``xal_service/server/event_loop.py``)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
import torch

from xal_core.scoring import Roi
from xal_service.client import ScoringClient
from xal_service.server.event_loop import DEFAULT_EVENT_LOOP, new_event_loop
from xal_service.server.serve import ServerConfig, start_server

uvloop = pytest.importorskip("uvloop", reason="uvloop is a dependency except on Windows")


def _batch():
    generator = torch.Generator().manual_seed(3)
    roi = Roi.from_masks(torch.rand(24, 16, 16, generator=generator) < 0.3)
    return (torch.randn(24, 3, generator=generator), torch.rand(24, 4, 4, 4, generator=generator),
            torch.randn(24, 4, generator=generator), roi)


def _scores(tmp_path, **config) -> tuple[dict, asyncio.AbstractEventLoop, dict]:
    server = start_server(ServerConfig(listen="127.0.0.1:0", state=tmp_path / "state", **config))
    try:
        with ScoringClient(f"127.0.0.1:{server.port}") as client:
            reply = client.score_batch(*_batch())
        return reply, server.loop, json.loads((tmp_path / "state" / "server.json").read_text())
    finally:
        server.stop()


def test_the_server_runs_on_uvloop_by_default_and_answers_as_on_the_standard_loop(tmp_path):
    assert DEFAULT_EVENT_LOOP == "uvloop"
    fast, fast_loop, fast_record = _scores(tmp_path / "default")
    plain, plain_loop, plain_record = _scores(tmp_path / "asyncio", event_loop="asyncio")
    assert isinstance(fast_loop, uvloop.Loop) and fast_record["event_loop"] == "uvloop"
    assert not isinstance(plain_loop, uvloop.Loop) and plain_record["event_loop"] == "asyncio"
    assert fast.keys() == plain.keys()
    for name in fast:
        assert torch.equal(torch.as_tensor(fast[name]), torch.as_tensor(plain[name])), name


def test_a_missing_uvloop_is_a_clear_error_before_anything_is_bound(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    with pytest.raises(ValueError, match=r"uvloop is not installed \(pip install uvloop.*--event-loop asyncio"):
        new_event_loop("uvloop")
    with pytest.raises(ValueError, match="uvloop is not installed"):
        start_server(ServerConfig(listen="127.0.0.1:0", state=tmp_path / "state", event_loop="uvloop"))
    assert not (tmp_path / "state" / "server.json").exists()


def test_an_unknown_loop_is_refused():
    with pytest.raises(ValueError, match=r"--event-loop 'tornado': expected one of uvloop, asyncio"):
        new_event_loop("tornado")
