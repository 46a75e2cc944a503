"""Issue 15, items 7 and 10 (manifest): a damaged pool store never gives silent wrong answers.

Chunk files deleted or damaged after ``RegisterPool`` (an image chunk that zarr would read as
zeros, an ids chunk that would give empty source ids, ROI bytes flipped): the job verifies every
chunk against the manifest's checksum as it reads it, reports the bad chunks' items one by one,
skips them, and ranks the rest exactly as an intact pool ranks them. ``RegisterPool`` itself
checks the manifest field by field and that every chunk is there.
"""

from __future__ import annotations

import json
import shutil

import grpc
import pytest
import torch

from tests.service import server_process
from tests.service.faults import (
    CHUNK,
    chunk_file,
    error_of,
    final_status,
    in_process_ranking,
    make_assets,
    place,
    ranking,
)
from xal_service.client import ScoringClient
from xal_service.wire import scoring_pb2 as pb

DAMAGED = {3: "images", 7: "ids", 11: "roi_packed"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


def test_damaged_chunks_are_reported_per_item_and_the_rest_is_ranked(assets, tmp_path):
    state = tmp_path / "state"
    placed = place(assets, state)
    server = server_process.start(state)
    try:
        with ScoringClient(server.target, timeout=60) as client:
            client.load_model("m", str(placed.onnx))
            client.register_pool("p", str(placed.pool))
            chunk_file(placed.pool, "images", 3).unlink()
            chunk_file(placed.pool, "ids", 7).unlink()
            roi = chunk_file(placed.pool, "roi_packed", 11)
            data = bytearray(roi.read_bytes())
            for position in range(len(data) // 2, len(data) // 2 + 8):
                data[position] ^= 0xFF
            roi.write_bytes(bytes(data))
            job_id = client.start_scoring(pb.StartScoringRequest(model="m", pool="p", k=240)).job_id
            final = final_status(client, job_id)
            items = ranking(client, job_id)
    finally:
        assert server.stop() == 0
    skipped = [i for number in sorted(DAMAGED) for i in range(number * CHUNK, (number + 1) * CHUNK)]
    assert final.state == pb.JOB_SUCCEEDED, final
    assert final.n_item_errors == len(skipped) == 48
    assert [e.id for e in final.item_errors] == skipped
    for error in final.item_errors:
        assert f"pool chunk {error.id // CHUNK} " in error.reason and error.reason.endswith("item skipped"), error
    expected = in_process_ranking(assets.pool, assets.onnx, 240)  # the intact pool
    keep = [n for n, i in enumerate(expected.selection.ids.tolist()) if i not in set(skipped)]
    assert [i.id for i in items] == [expected.selection.ids.tolist()[n] for n in keep]
    torch.testing.assert_close(torch.tensor([i.score for i in items], dtype=torch.float64),
                               expected.selection.scores[keep])
    assert all(i.source_id for i in items)


def test_register_pool_checks_the_manifest_and_every_chunk(assets, tmp_path):
    state = tmp_path / "state"
    pools = state / "pools"
    pools.mkdir(parents=True)

    def variant(name: str, edit) -> str:
        shutil.copytree(assets.pool, pools / name)
        edit(pools / name)
        return str(pools / name)

    def manifest(edit):
        def apply(pool):
            record = json.loads((pool / "manifest.json").read_text())
            (pool / "manifest.json").write_text(edit(record))
        return apply

    cases = {
        variant("missing-chunk", lambda pool: chunk_file(pool, "images", 2).unlink()): "chunk 2 is missing",
        variant("missing-ids", lambda pool: chunk_file(pool, "ids", 0).unlink()): "scoring/ids/c/0/0",
        variant("json-list", manifest(lambda record: "[1, 2, 3]")): "manifest.json: expected a JSON object",
        variant("not-json", manifest(lambda record: "{")): "manifest.json: not JSON",
        variant("no-checksums", manifest(lambda record: json.dumps({**record, "checksums": []}))): "checksums:",
        variant("bad-size", manifest(lambda record: json.dumps({**record, "size": "big"}))): "size:",
        variant("bad-count", manifest(lambda record: json.dumps({**record, "count": 10**6}))): "checksums:",
    }
    server = server_process.start(state)
    try:
        with ScoringClient(server.target, timeout=60) as client:
            for path, expected in cases.items():
                code, details = error_of(lambda path=path: client.register_pool("p", path))
                assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in details, (path, code, details)
                assert str(tmp_path) not in details
            assert client.list_pools().pools == []
    finally:
        assert server.stop() == 0
