"""``score_chunks``: the scoring of batch n beside the forward pass of batch n + 1 (issue 29).

It must give exactly ``score_chunk``'s scores chunk by chunk, in order; pass skipped chunks
through in place; stop when asked; end its threads whatever happens; not hold a chunk back while
the next one is being read; and leave torch's thread settings as it found them.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from xal_core.acquisition import ScoringConfig, score_batch
from xal_core.acquisition.pool_scoring import ScoringStopped, concat_scores, score_chunk, score_chunks
from xal_core.models.runtime import ThreadSplit
from xal_core.models.runtime.threads import DEDICATED_FROM
from xal_core.scoring import Roi

CONFIG = ScoringConfig(uncertainty="margin", weight=0.3, threshold=0.5)


class Chunk(NamedTuple):
    index: torch.Tensor
    images: torch.Tensor
    roi: Roi


class FakeRuntime:
    """Per-item outputs from the images (so any batching gives the same numbers); records the
    batch sizes it was run on."""

    def __init__(self, max_batch: int | None = None, fail_on_call: int | None = None) -> None:
        self.max_batch = max_batch
        self.fail_on_call = fail_on_call
        self.metadata = SimpleNamespace(normalise=self._normalise)
        self.calls: list[int] = []

    @staticmethod
    def _normalise(images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            return (images - 0.5) / 0.25
        return torch.sub(images, 0.5, out=out).div_(0.25)

    def run(self, images: torch.Tensor):
        self.calls.append(len(images))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("the runtime failed")
        pooled = F.avg_pool2d(images, 2)  # [b, 1, 4, 4]
        features = torch.cat([pooled.relu(), (pooled * 2 - 1).relu(), (-pooled).relu()], dim=1)
        weights = torch.tensor([1.0, 0.5, 0.25]).expand(len(images), 3).contiguous()
        logits = torch.stack([features.mean(dim=(1, 2, 3)), features[:, 1].mean(dim=(1, 2))], dim=1)
        return logits, features, weights


def make_chunks(sizes: list[int], seed: int = 0) -> list[Chunk]:
    generator = torch.Generator().manual_seed(seed)
    chunks, start = [], 0
    for size in sizes:
        images = torch.rand(size, 1, 8, 8, generator=generator)
        masks = torch.rand(size, 8, 8, generator=generator) < 0.4
        chunks.append(Chunk(torch.arange(start, start + size), images, Roi.from_masks(masks)))
        start += size
    return chunks


def equal(a, b) -> bool:
    return all(torch.equal(getattr(a, name), getattr(b, name)) or torch.allclose(
        getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True) for name in a.__dataclass_fields__)


def scoring_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("xal-score-")]


def test_scores_equal_score_chunk_chunk_by_chunk_in_order():
    chunks = make_chunks([20, 7, 16])
    chunks[1].images[3] = float("nan")  # an item with a non-finite image: flagged invalid, not raised
    runtime = FakeRuntime(max_batch=8)
    got = list(score_chunks(runtime, chunks, CONFIG, kernel_threads=1))
    assert [chunk for chunk, _ in got] == chunks
    for chunk, scores in got:
        assert equal(scores, score_chunk(FakeRuntime(), chunk, CONFIG))
    assert bool(got[1][1].invalid[3]) and int(got[1][1].invalid.sum()) == 1
    assert runtime.calls == [8, 8, 4, 7, 8, 8]  # cut where the runtime cuts a chunk (max_batch)
    assert not scoring_threads()


def test_a_runtime_without_max_batch_runs_whole_chunks():
    runtime = FakeRuntime()
    list(score_chunks(runtime, make_chunks([5, 9]), CONFIG, kernel_threads=2))
    assert runtime.calls == [5, 9]


def test_skipped_values_pass_through_in_place():
    chunks = make_chunks([6, 6])
    broken = object()
    got = list(score_chunks(FakeRuntime(max_batch=4), [chunks[0], broken, chunks[1]], CONFIG, kernel_threads=1,
                            skip=lambda value: value is broken))
    assert [chunk for chunk, _ in got] == [chunks[0], broken, chunks[1]]
    assert got[1][1] is None and got[0][1] is not None and got[2][1] is not None


def test_stages_and_outputs_are_reported_per_chunk_and_batch():
    chunks = make_chunks([10, 3])
    stages, seen = [], []
    list(score_chunks(FakeRuntime(max_batch=4), chunks, CONFIG, kernel_threads=1,
                      on_stage=lambda stage, seconds, items: stages.append((stage, items)),
                      on_outputs=lambda chunk, rows, outputs: seen.append((chunk.index[rows].tolist(), len(outputs[0])))))
    assert sorted(stages) == sorted([(s, n) for n in (10, 3) for s in ("read", "forward", "kernel")])
    assert [ids for ids, _ in seen] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12]]
    assert [n for _, n in seen] == [4, 4, 2, 3]


def test_should_stop_raises_and_ends_the_threads():
    chunks = make_chunks([4] * 6)
    done = []
    with pytest.raises(ScoringStopped):
        for chunk, _ in score_chunks(FakeRuntime(max_batch=2), chunks, CONFIG, kernel_threads=1,
                                     should_stop=lambda: len(done) >= 2):
            done.append(chunk)
    assert len(done) == 2
    time.sleep(0.05)  # the reader thread ends once its read is done
    assert not scoring_threads()


def test_a_failing_runtime_raises_and_ends_the_threads():
    with pytest.raises(RuntimeError, match="the runtime failed"):
        list(score_chunks(FakeRuntime(max_batch=2, fail_on_call=3), make_chunks([4, 4]), CONFIG, kernel_threads=1))
    time.sleep(0.05)
    assert not scoring_threads()


def test_a_slow_read_does_not_hold_back_the_chunk_before_it():
    chunks = make_chunks([4, 4])
    gate = threading.Event()

    def stream():
        yield chunks[0]
        gate.wait(30)  # the second chunk's read blocks until the first chunk came out
        yield chunks[1]

    timer = threading.Timer(20, gate.set)  # never leave the test hanging
    timer.start()
    try:
        scored = score_chunks(FakeRuntime(max_batch=2), stream(), CONFIG, kernel_threads=1)
        first, _ = next(scored)
        assert first is chunks[0] and not gate.is_set()
        gate.set()
        assert [chunk for chunk, _ in scored] == [chunks[1]]
    finally:
        timer.cancel()
        gate.set()


def test_torch_thread_settings_are_left_as_they_were():
    before = torch.get_num_threads()
    list(score_chunks(FakeRuntime(max_batch=2), make_chunks([4]), CONFIG, kernel_threads=1))
    assert torch.get_num_threads() == before
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [before]  # a thread started afterwards gets the process's setting, not the worker's


def test_kernel_threads_must_be_positive():
    with pytest.raises(ValueError, match="kernel_threads"):
        list(score_chunks(FakeRuntime(), make_chunks([2]), CONFIG, kernel_threads=0))


def test_score_batch_on_given_kernel_threads_gives_the_same_scores():
    generator = torch.Generator().manual_seed(3)
    features = torch.rand(40, 16, 7, 7, generator=generator)
    weights = torch.randn(40, 16, generator=generator)
    roi = Roi.from_masks(torch.rand(40, 56, 56, generator=generator) < 0.3)
    logits = torch.randn(40, 3, generator=generator)
    ids = torch.arange(40)
    default = score_batch(ids, logits, features, weights, roi, CONFIG)
    for threads in (1, 2):
        assert equal(score_batch(ids, logits, features, weights, roi, CONFIG, kernel_threads=threads), default)


def test_concat_scores_of_one_part_is_that_part():
    chunk = make_chunks([3])[0]
    scores = score_chunk(FakeRuntime(), chunk, CONFIG)
    assert concat_scores([scores]) is scores


def test_thread_split_defaults_and_checks():
    split = ThreadSplit()
    assert split.kernel_threads == 1 and split.runtime_threads is None
    # below DEDICATED_FROM cores the runtime takes them all (the side thread shares them), from there on one less
    assert [split.runtime(cores) for cores in (1, 2, DEDICATED_FROM - 1, DEDICATED_FROM, 16)] == \
        [1, 2, DEDICATED_FROM - 1, DEDICATED_FROM - 1, 15]
    assert ThreadSplit(kernel_threads=2).runtime(16) == 14
    assert ThreadSplit(runtime_threads=3).runtime(16) == 3
    for bad in ({"kernel_threads": 0}, {"runtime_threads": 0}, {"kernel_threads": True}, {"runtime_threads": 1.5}):
        with pytest.raises(ValueError, match="ThreadSplit"):
            ThreadSplit(**bad)
