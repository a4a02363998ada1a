"""rank_items against a brute-force oracle: a stable sort of every returnable item."""

import numpy as np
import pytest

from tandem.retrieval.base import Candidates, IdSet
from tandem.retrieval.item_ranks import rank_items


def _oracle(scores, items, exclude):
    n = scores.shape[0]
    ok = np.isfinite(scores) & ~np.isin(np.arange(n), exclude)
    order = np.flatnonzero(ok)[np.lexsort((np.flatnonzero(ok), -scores[ok]))]
    place = {int(i): r for r, i in enumerate(order, 1)}
    ranks = np.array([place.get(int(i), 0) for i in items], dtype=np.int32)
    got = np.array([scores[i] if place.get(int(i)) else np.nan for i in items], dtype=np.float32)
    return got, ranks


@pytest.mark.parametrize("seed", range(12))
def test_ranks_match_a_stable_sort_of_the_catalog(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    levels = int(rng.integers(1, 6)) if seed % 2 else 10_000  # many ties, or almost none
    scores = (rng.integers(0, levels, n) - levels / 2).astype(np.float32)
    if seed % 3 == 0:
        scores = rng.standard_normal(n).astype(np.float32)
    scores[rng.integers(0, n, n // 10)] = -np.inf
    scores[rng.integers(0, n, n // 20)] = np.nan
    exclude = rng.integers(0, n, int(rng.integers(0, 20)))
    items = rng.integers(-3, n + 3, int(rng.integers(0, 300)))  # repeats and out-of-range ids too
    got, ranks = rank_items(scores, items, IdSet(exclude, n))
    want, want_ranks = _oracle(scores, items, exclude)
    assert got.dtype == np.float32 and ranks.dtype == np.int32
    np.testing.assert_array_equal(ranks, want_ranks)
    np.testing.assert_array_equal(got, want)  # NaN where not returned, compared as equal


def test_ranks_are_the_places_top_k_gives():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 3, 500).astype(np.float32)
    top = Candidates.top_k(scores, 500, "s", exclude=np.array([1, 2, 3]))
    _, ranks = rank_items(scores, top.items, IdSet(np.array([1, 2, 3]), 500))
    np.testing.assert_array_equal(ranks, np.arange(1, 501 - 3))


def test_nothing_returnable():
    got, ranks = rank_items(np.full(5, -np.inf, dtype=np.float32), np.array([0, 4]))
    assert np.isnan(got).all() and (ranks == 0).all()
    got, ranks = rank_items(np.ones(5, dtype=np.float32), np.zeros(0, dtype=np.int64))
    assert got.shape == ranks.shape == (0,)
