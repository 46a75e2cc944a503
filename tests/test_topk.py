"""Streaming top-k: chunked selection equals one whole sort of the pool by (−score, ascending id)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xal_core.scoring import TopK, rank_order


def whole_sort(ids: list[int], scores: list[float], k: int) -> tuple[list[int], list[float]]:
    """The reference: every eligible (non-NaN) item, sorted by descending score then ascending id."""
    pool = sorted(((s, i) for i, s in zip(ids, scores, strict=True) if not math.isnan(s)), key=lambda t: (-t[0], t[1]))
    chosen = pool[:k]
    return [i for _, i in chosen], [s for s, _ in chosen]


def push_in_chunks(top: TopK, ids: np.ndarray, scores: np.ndarray, cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(ids)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        top.push(torch.from_numpy(ids[lo:hi]), torch.from_numpy(scores[lo:hi]))


def assert_selection(top: TopK, ids, scores, k, context=""):
    want_ids, want_scores = whole_sort(list(map(int, ids)), list(map(float, scores)), k)
    got = top.result()
    got_ids, got_scores = got.ids.tolist(), got.scores.tolist()
    if got_ids != want_ids:
        first = next((n for n, (a, b) in enumerate(zip(got_ids, want_ids, strict=False)) if a != b), min(len(got_ids), len(want_ids)))
        raise AssertionError(
            f"{context}: selection differs from the whole sort at rank {first} "
            f"(got {len(got_ids)} items, expected {len(want_ids)}):\n"
            f"  got      ids {got_ids[max(0, first - 2):first + 5]} scores {got_scores[max(0, first - 2):first + 5]}\n"
            f"  expected ids {want_ids[max(0, first - 2):first + 5]} scores {want_scores[max(0, first - 2):first + 5]}"
        )
    assert got_scores == want_scores, f"{context}: scores differ"
    assert got.ids.dtype == torch.int64 and got.scores.dtype == torch.float64


def random_pool(rng: np.random.Generator, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 3 - n)  # unique, unordered, some negative
    if kind == "continuous":
        scores = rng.random(n)
    elif kind == "ties":  # heavy ties: three values only
        scores = rng.choice([0.1, 0.5, 0.9], n)
    elif kind == "specials":  # ties plus NaN (ineligible) and -inf (invalid, ranks last)
        scores = rng.choice([0.2, 0.7, np.nan, -np.inf, 1.0], n, p=[0.3, 0.3, 0.15, 0.15, 0.1])
    else:
        raise ValueError(kind)
    return ids, scores.astype(np.float64)


@pytest.mark.parametrize("kind", ["continuous", "ties", "specials"])
@pytest.mark.parametrize("k", [1, 7, 50, 1000])
@pytest.mark.parametrize("n", [1, 40, 300])
def test_chunked_equals_whole_sort(kind, k, n, rng):
    ids, scores = random_pool(rng, n, kind)
    for _trial in range(5):
        cuts = sorted(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 12))), replace=False).tolist()) if n > 1 else []
        top = TopK(k)
        push_in_chunks(top, ids, scores, cuts)
        assert_selection(top, ids, scores, k, context=f"{kind} n={n} k={k} cuts={cuts}")
        assert top.n_seen == n
        assert top.n_ineligible == int(np.isnan(scores).sum())
        assert len(top) == min(k, int((~np.isnan(scores)).sum()))


def test_k_larger_than_pool_returns_everything_sorted(rng):
    ids, scores = random_pool(rng, 25, "ties")
    top = TopK(1000)
    push_in_chunks(top, ids, scores, [3, 4, 20])
    assert len(top) == 25
    assert_selection(top, ids, scores, 1000, context="k > pool")


def test_ties_break_by_ascending_id_across_chunks():
    top = TopK(4)
    top.push(torch.tensor([9, 4]), torch.tensor([0.5, 0.5]))
    top.push(torch.tensor([1, 7, 2]), torch.tensor([0.5, 0.5, 0.1]))
    top.push(torch.tensor([3]), torch.tensor([0.5]))
    assert top.result().ids.tolist() == [1, 3, 4, 7]


def test_nan_never_selected_and_minus_inf_last():
    top = TopK(10)
    top.push(torch.tensor([1, 2, 3]), torch.tensor([float("nan"), float("-inf"), 0.0]))
    top.push(torch.tensor([4, 5]), torch.tensor([-1e300, float("nan")], dtype=torch.float64))
    got = top.result()
    assert got.ids.tolist() == [3, 4, 2], got
    assert got.scores[-1] == float("-inf")
    assert top.n_ineligible == 2 and top.n_seen == 5


def test_only_nan_pool_selects_nothing():
    top = TopK(3)
    top.push(torch.arange(4), torch.full((4,), float("nan")))
    assert len(top) == 0 and top.result().ids.numel() == 0


def test_minus_inf_is_selected_when_k_allows_and_dropped_otherwise():
    top = TopK(2)
    top.push(torch.tensor([5, 6, 7]), torch.tensor([float("-inf"), 0.3, float("-inf")]))
    assert top.result().ids.tolist() == [6, 5]


def test_signed_zeros_tie():
    """-0.0 == 0.0: they tie and the lower id comes first."""
    top = TopK(4)
    top.push(torch.tensor([8, 3]), torch.tensor([0.0, -0.0], dtype=torch.float64))
    top.push(torch.tensor([1, 6]), torch.tensor([-0.0, 0.0], dtype=torch.float64))
    assert top.result().ids.tolist() == [1, 3, 6, 8]


def test_numpy_and_integer_inputs(rng):
    ids = np.array([10, 11, 12, 13], dtype=np.int32)
    scores = np.array([1, 3, 2, 3], dtype=np.int64)  # integer scores are accepted
    top = TopK(np.int64(3))
    top.push(ids, scores)
    assert top.result().ids.tolist() == [11, 13, 12]
    assert top.result().scores.tolist() == [3.0, 3.0, 2.0]


def test_result_is_a_copy():
    top = TopK(2)
    top.push(torch.tensor([1, 2]), torch.tensor([0.1, 0.2]))
    got = top.result()
    got.ids[0] = 99
    assert top.result().ids.tolist() == [2, 1]


def test_rank_order_matches_whole_sort(rng):
    ids, scores = random_pool(rng, 200, "ties")
    order = rank_order(torch.from_numpy(ids), torch.from_numpy(scores))
    want_ids, _ = whole_sort(ids.tolist(), scores.tolist(), 200)
    assert torch.from_numpy(ids)[order].tolist() == want_ids


def test_columns_follow_their_items(rng):
    ids, scores = random_pool(rng, 120, "specials")
    top = TopK(30)
    for lo in range(0, 120, 17):
        part = slice(lo, lo + 17)
        top.push(torch.from_numpy(ids[part]), torch.from_numpy(scores[part]), columns={"twice": torch.from_numpy(ids[part] * 2)})
    selected = top.result().ids
    assert torch.equal(top.selected_columns()["twice"], selected * 2)


# --------------------------------------------------------------------------- errors
def test_duplicate_ids_in_a_chunk_raise():
    top = TopK(3)
    with pytest.raises(ValueError, match="id 4"):
        top.push(torch.tensor([1, 4, 4]), torch.tensor([0.1, 0.2, 0.3]))


def test_duplicate_id_against_the_selection_raises():
    top = TopK(3)
    top.push(torch.tensor([1, 2]), torch.tensor([0.9, 0.8]))
    with pytest.raises(ValueError, match="id 2"):
        top.push(torch.tensor([5, 2]), torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3", None])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="k"):
        TopK(k)


@pytest.mark.parametrize(
    "ids,scores",
    [
        (torch.tensor([1, 2]), torch.tensor([0.1])),
        (torch.tensor([[1, 2]]), torch.tensor([[0.1, 0.2]])),
        (torch.tensor([1.0, 2.0]), torch.tensor([0.1, 0.2])),
        (torch.tensor([True, False]), torch.tensor([0.1, 0.2])),
    ],
    ids=["length", "rank2", "float-ids", "bool-ids"],
)
def test_bad_push_raises(ids, scores):
    with pytest.raises(ValueError, match="push"):
        TopK(2).push(ids, scores)
