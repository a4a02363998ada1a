import numpy as np
import pytest

from tandem.retrieval.metrics import (
    catalog_coverage,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    ranking_metrics,
    recall_at_k,
    top_k_excluding,
)

RANKED = np.array([[5, 3, 7, -1], [1, 2, 3, 4], [9, 8, 7, 6]])
ONE = np.array([7, 4, 0])  # user 0: hit at rank 3; user 1: hit at rank 4; user 2: miss


def test_one_target_per_user_by_hand():
    # k = 4. user 0: 1/log2(4) = 0.5; user 1: 1/log2(5) = 0.430677; user 2: 0
    assert recall_at_k(RANKED, ONE, 4) == pytest.approx(2 / 3)
    assert ndcg_at_k(RANKED, ONE, 4) == pytest.approx((0.5 + 0.4306766) / 3)
    assert mrr_at_k(RANKED, ONE, 4) == pytest.approx((1 / 3 + 1 / 4) / 3)
    assert hit_rate_at_k(RANKED, ONE, 4) == pytest.approx(2 / 3)
    # k = 3: only user 0's hit counts
    assert recall_at_k(RANKED, ONE, 3) == pytest.approx(1 / 3)
    assert ndcg_at_k(RANKED, ONE, 3) == pytest.approx(0.5 / 3)
    assert mrr_at_k(RANKED, ONE, 3) == pytest.approx(1 / 9)
    np.testing.assert_allclose(ndcg_at_k(RANKED, ONE, 4, per_user=True), [0.5, 0.4306766, 0.0], rtol=1e-6)
    # k beyond the ranked width: missing positions are misses
    assert hit_rate_at_k(RANKED, ONE, 10) == pytest.approx(2 / 3)


def test_csr_targets_by_hand():
    # user 0 targets {3, 9, 7} against [3, 1, 7, 2]: hits at ranks 1 and 3
    #   recall = 2/3; DCG = 1 + 1/log2(4) = 1.5; IDCG (3 targets) = 1 + 1/log2(3) + 1/log2(4) = 2.130930
    #   NDCG = 0.703918; MRR = 1
    # user 1 has no targets -> left out of every mean; user 2 target {5}, nothing ranked -> 0
    ranked = np.array([[3, 1, 7, 2], [1, 2, 3, 4], [-1, -1, -1, -1]])
    targets = (np.array([0, 3, 3, 4]), np.array([3, 9, 7, 5]))
    assert recall_at_k(ranked, targets, 4) == pytest.approx((2 / 3) / 2)
    assert ndcg_at_k(ranked, targets, 4) == pytest.approx(0.703918 / 2, rel=1e-5)
    assert mrr_at_k(ranked, targets, 4) == pytest.approx(0.5)
    assert hit_rate_at_k(ranked, targets, 4) == pytest.approx(0.5)
    per = recall_at_k(ranked, targets, 4, per_user=True)
    assert per[0] == pytest.approx(2 / 3) and np.isnan(per[1]) and per[2] == 0.0
    # IDCG at k=2 uses only two ideal ranks: 1 + 1/log2(3) = 1.630930; DCG@2 = 1 -> 0.613147
    assert ndcg_at_k(ranked[:1], (np.array([0, 3]), np.array([3, 9, 7])), 2) == pytest.approx(0.613147, rel=1e-5)


def test_graded_ndcg_by_hand():
    ranked = np.array([[3, 1, 7, 2], [0, 1, 2, 3]])
    targets = (np.array([0, 3, 4]), np.array([3, 9, 7, 2]))
    gains = np.array([3.0, 1.0, 2.0, 0.0])
    # user 0: DCG = (2^3-1)/log2(2) + (2^2-1)/log2(4) = 7 + 1.5 = 8.5
    #         IDCG = 7 + 3/log2(3) + 1/log2(4) = 9.392789 -> 0.904952
    # user 1: its only target has gain 0 -> ideal DCG 0 -> left out
    assert ndcg_at_k(ranked, targets, 4, gains=gains) == pytest.approx(0.904952, rel=1e-5)
    # at k = 1 the top item is the best target: 7 / 7
    assert ndcg_at_k(ranked, targets, 1, gains=gains) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="align"):
        ndcg_at_k(ranked, targets, 4, gains=gains[:3])


def test_ranking_metrics_and_coverage():
    out = ranking_metrics(RANKED, ONE, (4, 3), n_items=20, coverage_k=2)
    assert list(out) == ["recall@3", "ndcg@3", "mrr@3", "hit_rate@3", "recall@4", "ndcg@4", "mrr@4",
                         "hit_rate@4", "coverage@2"]
    assert out["ndcg@4"] == pytest.approx((0.5 + 0.4306766) / 3)
    assert out["coverage@2"] == pytest.approx(6 / 20)  # {5, 3, 1, 2, 9, 8}
    assert catalog_coverage(RANKED, 20) == pytest.approx(9 / 20)  # -1 is not an item
    with pytest.raises(ValueError, match="catalog has only"):
        catalog_coverage(RANKED, 5)


def test_input_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="twice"):
        recall_at_k(np.array([[1, 1, 2]]), np.array([1]), 3)
    with pytest.raises(ValueError, match="twice"):
        recall_at_k(np.array([[1, 2]]), (np.array([0, 2]), np.array([1, 1])), 2)
    with pytest.raises(ValueError, match="one item per user"):
        recall_at_k(RANKED, np.array([1, 2]), 2)
    assert np.isnan(recall_at_k(RANKED, (np.zeros(4, np.int64), np.zeros(0, np.int64)), 2))


def test_top_k_excluding_by_hand():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.3], [np.nan, 1, 1, 1, 1]], dtype=np.float32)
    exclude = (np.array([0, 1, 3]), np.array([1, 2, 2]))  # row 0: {1}; row 1: {2} (repeated)
    # row 0 without item 1: 0.9 (3), 0.5 (2), 0.3 (4); row 1: NaN is out, ties by lower index
    assert top_k_excluding(scores, exclude, 3).tolist() == [[3, 2, 4], [1, 3, 4]]
    assert top_k_excluding(scores, exclude, 5).tolist() == [[3, 2, 4, 0, -1], [1, 3, 4, -1, -1]]
    assert top_k_excluding(scores, exclude, 7)[:, 5:].tolist() == [[-1, -1], [-1, -1]]
    assert top_k_excluding(np.ones((1, 6)), None, 2).tolist() == [[0, 1]]


def test_top_k_excluding_matches_brute_force():
    rng = np.random.default_rng(3)
    u, n, k = 37, 50, 8
    scores = rng.integers(0, 6, (u, n)).astype(np.float32)  # many ties
    scores[rng.random((u, n)) < 0.05] = -np.inf
    lens = rng.integers(0, 20, u)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    items = rng.integers(0, n, indptr[-1])
    got = top_k_excluding(scores, (indptr, items), k, batch_size=5)
    for r in range(u):
        s = scores[r].copy()
        s[items[indptr[r]:indptr[r + 1]]] = -np.inf
        order = [int(i) for i in np.lexsort((np.arange(n), -s)) if np.isfinite(s[i])][:k]
        assert got[r].tolist() == order + [-1] * (k - len(order))
