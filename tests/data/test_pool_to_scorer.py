"""The pool store's chunks feed the scorer directly, and its ROIs survive the round trip exactly."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xal_cli.main import main
from xal_core.data import Item, PoolStore, PoolWriter, open_dataset
from xal_core.data.ingest import ingest
from xal_core.scoring import Roi, cam_alignment


def test_chunks_score_with_cam_alignment(tmp_path):
    data = open_dataset("synthetic", size=(32, 32), n=12, roi="boxes")
    ingest(data, tmp_path / "pool", chunk=5, workers=1)
    pool = PoolStore.open(tmp_path / "pool")
    assert pool.roi_format == "boxes"
    for chunk in pool.chunks():
        batch = len(chunk.ids)
        features = torch.rand(batch, 8, 4, 4, generator=torch.Generator().manual_seed(chunk.number))
        result = cam_alignment(features, torch.rand(batch, 8), chunk.roi)
        assert result.dice.shape == (batch,) and torch.isfinite(result.dice).all()


def test_unknown_roi_scores_nan(tmp_path):
    size = (16, 16)
    with PoolWriter(tmp_path / "pool", size=size, channels=1, classes=("a",), roi_format="mask", source={}) as w:
        w.add(Item("known", torch.rand(1, *size), torch.ones(size, dtype=torch.bool), 0))
        w.add(Item("unknown", torch.rand(1, *size), None, 0))
    chunk = next(PoolStore.open(tmp_path / "pool").chunks())
    dice = cam_alignment(torch.rand(2, 4, 4, 4), torch.rand(2, 4), chunk.roi).dice
    assert torch.isfinite(dice[0]) and torch.isnan(dice[1])


halves = st.integers(-6, 40).map(lambda v: v / 2)  # exact in float32: the filter below sees stored values
sizes = st.integers(0, 16).map(lambda v: v / 2)
boxes = st.lists(st.tuples(halves, halves, sizes, sizes), max_size=4)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.none(), boxes), min_size=1, max_size=6), st.integers(1, 4))
def test_box_and_mask_round_trip(tmp_path_factory, entries, chunk):
    size = (10, 17)  # W not a multiple of 8: padding bits must be ignored
    rois = []
    for entry in entries:
        if entry is None:
            rois.append(None)
            continue
        kept = [(x, y, x + w, y + h) for x, y, w, h in entry if x + w > 0 and y + h > 0 and x < 17 and y < 10]
        rois.append(torch.tensor(kept, dtype=torch.float32).reshape(-1, 4))
    folder = tmp_path_factory.mktemp("pool")
    with PoolWriter(folder / "pool", size=size, channels=1, classes=("a",), roi_format="boxes", source={},
                    chunk=chunk, max_boxes=4) as writer:
        for index, roi in enumerate(rois):
            writer.add(Item(f"i{index}", torch.zeros(1, *size), roi, 0))
    pool = PoolStore.open(folder / "pool")
    stored = [c.roi for c in pool.chunks(prefetch=1)]
    expected = Roi.from_boxes(rois, size=size)
    assert torch.equal(torch.cat([r.known for r in stored]), expected.known)
    assert torch.equal(torch.cat([r.to_masks() for r in stored]), expected.to_masks())
    packed = torch.cat([torch.from_numpy(pool.raw_chunk(n)["roi_packed"]) for n in range(pool.n_chunks)])
    masks = Roi.from_packed_masks(packed, size[1], torch.cat([r.known for r in stored])).to_masks()
    assert torch.equal(masks, expected.to_masks())


def test_progress_bar_shows_items_per_second(tmp_path, capsys):
    assert main(["ingest", "synthetic", "--out", str(tmp_path / "p"), "--size", "16", "--option", "n=3"]) == 0
    assert "items/s" in capsys.readouterr().err
