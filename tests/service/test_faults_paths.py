"""Issue 15, items 1, 6 and 10 (upload name): what a model file may be, where server-side paths may
point, and what an upload may do to the state folder. A real ``xal serve`` over a real socket."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest

from tests.service import server_process
from tests.service.faults import Assets, error_of, make_assets, place
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("assets"))


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_an_uploaded_torchscript_model_is_refused_unless_trusted(assets, tmp_path):
    """A TorchScript file is code (it read a root-only file and returned its bytes in a ranking):
    uploads are ONNX only, and nothing of a refused upload stays on disk."""
    state = tmp_path / "state"
    server = server_process.start(state)
    try:
        with ScoringClient(server.target, timeout=60) as client:
            code, details = error_of(lambda: client.upload_model("ts", assets.torchscript))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert "ONNX only" in details and "--trust-torchscript-uploads" in details
            assert [m.name for m in client.list_models().models] == []
            assert client.upload_model("onnx", assets.onnx).format == "onnx"
    finally:
        assert server.stop() == 0
    assert _files(state / "uploads") == []
    assert [name.endswith(".onnx") for name in _files(state / "models")] == [True]


def test_trusted_torchscript_uploads_and_server_side_torchscript_load(assets, tmp_path):
    state = tmp_path / "state"
    placed = place(assets, state)
    server = server_process.start(state, "--trust-torchscript-uploads")
    try:
        with ScoringClient(server.target, timeout=60) as client:
            assert client.upload_model("ts", assets.torchscript).format == "torchscript"
            assert client.load_model("local", str(placed.torchscript)).format == "torchscript"
    finally:
        assert server.stop() == 0


def test_server_side_paths_only_under_the_roots(assets, tmp_path):
    """Paths resolve (symlinks followed) under --model-root / --pool-root, default inside --state;
    outside, the answer is the same whether the path exists or not, and no answer names a server path."""
    state = tmp_path / "state"
    placed = place(assets, state)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(assets.onnx, outside / "model.onnx")
    shutil.copytree(assets.pool, outside / "pool")
    (state / "models" / "link.onnx").symlink_to(outside / "model.onnx")
    (state / "pools" / "link").symlink_to(outside / "pool")
    (state / "models" / "garbage.onnx").write_bytes(b"not a model")
    server = server_process.start(state)
    try:
        with ScoringClient(server.target, timeout=60) as client:
            assert client.load_model("inside", str(placed.onnx)).format == "onnx"
            assert client.load_model("relative", "model.onnx").format == "onnx"  # relative to the first root
            info = client.register_pool("p", str(placed.pool))
            assert info.size == 240 and info.path == "<pool-root>/pool"

            refusals = set()
            for path in (outside / "model.onnx", outside / "missing.onnx", state / "models" / "link.onnx",
                         state / "models" / ".." / ".." / "outside" / "model.onnx", Path("/etc/passwd"),
                         Path("/nonexistent/x.onnx"), "../../outside/model.onnx"):
                code, details = error_of(lambda path=path: client.load_model("x", str(path)))
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, details)
                refusals.add(details)
            for path in (outside / "pool", outside / "nothing", state / "pools" / "link", Path("/etc")):
                code, details = error_of(lambda path=path: client.register_pool("q", str(path)))
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, details)
                refusals.add(details)
            assert len(refusals) == 2, refusals  # one text for models, one for pools: nothing about existence
            code, details = error_of(lambda: client.load_model("g", str(state / "models" / "garbage.onnx")))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "<model-root>" in details
            code, details = error_of(lambda: client.register_pool("e", str(state / "pools")))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            for text in (*refusals, details):
                assert str(tmp_path) not in text and "/etc" not in text, text
            assert sorted(m.name for m in client.list_models().models) == ["inside", "relative"]
    finally:
        assert server.stop() == 0


def test_a_failed_reupload_never_replaces_the_working_model(assets, tmp_path):
    state = tmp_path / "state"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01" + os.urandom(4096))
    server = server_process.start(state)
    try:
        with ScoringClient(server.target, timeout=60) as client:
            client.upload_model("m", assets.onnx)
            code, _ = error_of(lambda: client.upload_model("m", bad))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert list(client.model_metadata("m").input_shape) == [1, 32, 32]
    finally:
        assert server.stop() == 0
    assert len(_files(state / "models")) == 1 and _files(state / "uploads") == []
    server = server_process.start(state)  # the working model comes back after a restart
    try:
        with ScoringClient(server.target, timeout=60) as client:
            assert [m.name for m in client.list_models().models] == ["m"]
    finally:
        assert server.stop() == 0


def test_the_upload_size_cap(assets, tmp_path):
    state = tmp_path / "state"
    server = server_process.start(state, "--max-model-bytes", "100000")
    try:
        with ScoringClient(server.target, timeout=60) as client:
            code, details = error_of(lambda: client.upload_model("big", assets.onnx))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-model-bytes" in details
            assert client.list_models().models == []
    finally:
        assert server.stop() == 0
    assert _files(state / "uploads") == [] and _files(state / "models") == []


def test_an_overlong_upload_name_is_invalid_argument(assets, tmp_path):
    server = server_process.start(tmp_path / "state")
    try:
        with ScoringClient(server.target, timeout=60) as client:
            for name in ("x" * 10_000, "y" * 256, ""):
                code, details = error_of(lambda name=name: client.upload_model(name, assets.onnx))
                assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("name:"), details
            request = iter([pb.LoadModelRequest(name="z" * 300, path="model.onnx")])
            code, _ = error_of(lambda: client._stub.LoadModel(request, timeout=30))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        assert server.stop() == 0
    assert _files(tmp_path / "state" / "uploads") == []
