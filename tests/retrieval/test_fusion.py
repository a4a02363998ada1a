"""fuse(): hand values, provenance, quotas, and a brute-force dictionary oracle on random lists."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.retrieval.base import Candidates
from tandem.retrieval.fusion import FusionConfig, fuse


def C(items, scores, source):
    return Candidates(np.array(items, np.int64), np.array(scores, np.float32), source)


def test_rrf_hand_values_and_provenance():
    a = C([1, 2, 3], [0.9, 0.8, 0.1], "a")
    b = C([3, 4], [5.0, 4.0], "b")
    f = fuse([a, b, C([], [], "empty")], k=10, config=FusionConfig(rrf_k=1))
    # item 3: 1/(1+3) + 1/(1+1) = 0.75; item 1: 1/2; items 2 and 4: 1/3 (tie -> lower id first)
    assert f.items.tolist() == [3, 1, 2, 4]
    np.testing.assert_allclose(f.scores, [0.75, 0.5, 1 / 3, 1 / 3], rtol=1e-6)
    assert f.sources == ("a", "b", "empty")
    assert f.ranks.dtype == np.int32 and f.source_scores.dtype == np.float32 and f.items.dtype == np.int64
    assert f.ranks.tolist() == [[3, 1, 2, 0], [1, 0, 0, 2], [0, 0, 0, 0]]
    assert f.source_scores[1, 0] == 5.0 and np.isnan(f.source_scores[0, 3])


def test_weighted_normalises_each_list():
    a = C([1, 2], [10.0, 0.0], "a")
    b = C([2, 3], [1.0, 0.5], "b")
    f = fuse([a, b], k=2, config=FusionConfig(method="weighted", weights={"a": 1.0, "b": 2.0}))
    # a: 1 -> 1, 2 -> 0; b: 2 -> 1, 3 -> 0  =>  1: 1, 2: 0 + 2 = 2, 3: 0
    assert f.items.tolist() == [2, 1] and f.scores.tolist() == [2.0, 1.0]
    # a constant list normalises to 1, whatever its scale
    g = fuse([C([7, 8], [-3.0, -3.0], "x")], k=5, config=FusionConfig(method="weighted"))
    assert g.scores.tolist() == [1.0, 1.0]


def test_quota_guarantees_a_place():
    strong = C(list(range(10)), np.linspace(1, 0, 10), "strong")
    weak = C([99, 98], [1.0, 0.9], "weak")
    plain = fuse([strong, strong, weak], k=3, config=FusionConfig())
    assert 99 not in plain.items.tolist()
    q = fuse([strong, strong, weak], k=3, config=FusionConfig(quotas={"weak": 2}))
    assert sorted(q.items.tolist()) == [0, 98, 99] and len(q) == 3
    assert np.all(np.diff(q.scores) <= 0), "quota items keep their fused-score place"
    # guaranteed items beyond k: the best of them by fused score
    over = fuse([strong, weak], k=2, config=FusionConfig(quotas={"strong": 3, "weak": 2}))
    assert over.items.tolist() == [0, 99]


def test_duplicate_item_in_a_list_counts_once():
    f = fuse([C([5, 6, 5], [3.0, 2.0, 1.0], "a")], k=5, config=FusionConfig(rrf_k=1))
    assert f.items.tolist() == [5, 6] and f.ranks.tolist() == [[1, 2]]
    np.testing.assert_allclose(f.scores, [0.5, 1 / 3], rtol=1e-6)


def test_empty_and_bad_config():
    f = fuse([C([], [], "a")], k=5)
    assert len(f) == 0 and f.ranks.shape == (1, 0)
    assert len(fuse([], k=5)) == 0
    assert len(fuse([C([1], [1.0], "a")], k=0)) == 0
    with pytest.raises(ValueError, match="method"):
        FusionConfig(method="max")
    with pytest.raises(ValueError, match="weights"):
        FusionConfig(weights={"a": -1.0})
    with pytest.raises(ValueError, match="quotas"):
        FusionConfig(quotas={"a": 1.5})
    for bad in ("60", 0, float("nan"), True):
        with pytest.raises(ValueError, match="rrf_k"):
            FusionConfig(rrf_k=bad)
    # numpy numbers (e.g. from a tuner) are accepted and stored as plain Python numbers
    cfg = FusionConfig(rrf_k=np.int64(10), weights={"a": np.float32(0.5)}, quotas={"a": np.int64(2)})
    assert cfg.rrf_k == 10.0 and type(cfg.weights["a"]) is float and type(cfg.quotas["a"]) is int


def _oracle(lists, k, config):
    """Dictionary fusion, one item at a time."""
    fused, best = {}, {}
    for c in lists:
        w = config.weights.get(c.source, 1.0)
        s = c.scores.astype(np.float64)
        lo, hi = (s.min(), s.max()) if len(s) else (0.0, 0.0)
        for r, (item, score) in enumerate(zip(c.items.tolist(), s, strict=True), start=1):
            norm = 1.0 if hi == lo else (score - lo) / (hi - lo)
            fused[item] = fused.get(item, 0.0) + (w / (config.rrf_k + r) if config.method == "rrf" else w * norm)
            best[item] = min(best.get(item, r), r)
    order = sorted(fused, key=lambda i: (-fused[i], best[i], i))
    must = [i for c in lists for i in c.items[: config.quotas.get(c.source, 0)].tolist()]
    must = [i for i in order if i in set(must)][:k]
    rest = [i for i in order if i not in set(must)][: k - len(must)]
    chosen = set(must) | set(rest)
    return [i for i in order if i in chosen], fused


@pytest.mark.parametrize("method", ["rrf", "weighted"])
@pytest.mark.parametrize("seed", range(5))
def test_matches_dictionary_oracle(method, seed):
    rng = np.random.default_rng(seed)
    lists = []
    for s in range(rng.integers(1, 5)):
        n = int(rng.integers(0, 30))
        items = rng.choice(60, n, replace=False)
        lists.append(C(items, np.sort(rng.normal(size=n))[::-1], f"s{s}"))
    config = FusionConfig(method=method, rrf_k=float(rng.integers(1, 80)),
                          weights={"s0": 2.0, "s1": 0.5}, quotas={"s1": int(rng.integers(0, 6))})
    k = int(rng.integers(1, 40))
    f = fuse(lists, k, config)
    want, scores = _oracle(lists, k, config)
    assert f.items.tolist() == want
    np.testing.assert_allclose(f.scores, [scores[i] for i in want], rtol=1e-5, atol=1e-7)
    for s, c in enumerate(lists):
        pos = {item: r for r, item in enumerate(c.items.tolist(), start=1)}
        assert f.ranks[s].tolist() == [pos.get(i, 0) for i in want]
        raw = dict(zip(c.items.tolist(), c.scores.tolist(), strict=True))
        np.testing.assert_array_equal(f.source_scores[s], np.array([raw.get(i, np.nan) for i in want], np.float32))
