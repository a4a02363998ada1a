import numpy as np
import pytest
import scipy.sparse as sp

from tandem.ranking.features import compute_features, feature_names
from tandem.ranking.item_table import build_item_table
from tandem.ranking.request_context import RequestContext, request_context
from tandem.retrieval.data import Catalog, Interactions, Item
from tandem.retrieval.sparse import rows_values
from tests.ranking.reference_features import reference_features


def _catalog():
    return Catalog(
        item_ids=["a", "b", "c", "d"],
        titles=["red shoe", "blue shoe", "green hat", "phone"],
        descriptions=[""] * 4,
        categories=["Fashion > Shoes", "Fashion > Shoes", "Fashion > Hats", "Tech > Phones"],
        brands=["acme", "acme", "hatco", ""],
        prices=np.array([10.0, 20.0, np.nan, 400.0]),
        tags=[("red",), ("blue",), ("green", "red"), ()],
        in_stock=np.ones(4, bool),
    )


def test_feature_values_by_hand():
    cat = _catalog()
    inter = Interactions(["u"], [0, 0, 0], [0, 0, 1], [100, 200, 86400 * 2 + 100], [3, 3, 3], [np.nan] * 3)
    cf = sp.csr_matrix(np.array([[0, 0.5, 0.2, 0], [0.1, 0, 0.9, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32))
    table = build_item_table(cat, inter, cf=cf)
    assert table.log_pop.tolist() == np.log1p([2, 1, 0, 0]).astype(np.float32).tolist()
    assert table.first_seen.tolist() == [100, 86400 * 2 + 100, -1, -1]
    ctx = request_context(table, np.array([0, 1]))
    items = np.array([2, 3])
    ranks = np.array([[1, 0], [0, 2]], np.int32)  # two sources
    scores = np.array([[0.9, np.nan], [np.nan, 0.4]], np.float32)
    x = compute_features(table, ctx, items, np.array([0.5, 0.3], np.float32), ranks, scores)
    names = feature_names(["s1", "s2"])
    assert x.shape == (2, len(names))
    f = dict(zip(names, x[0], strict=True))
    g = dict(zip(names, x[1], strict=True))
    assert f["s1_found"] == 1 and f["s1_rank_inv"] == 1.0 and f["s2_found"] == 0 and f["s2_score"] == 0
    assert g["s2_rank_inv"] == np.float32(1 / np.log2(3))
    # cf: last item is b (1); cf[b, c] = 0.9, cf[c, b] = 0 (reverse)
    assert f["cf_last"] == np.float32(0.9) and f["cf_reverse_last"] == 0
    # leaf affinity of c (Fashion > Hats) to history [Shoes, Shoes] = 0; top-level Fashion = 1
    assert f["leaf_affinity"] == 0 and f["top_affinity"] == 1 and g["top_affinity"] == 0
    assert f["brand_affinity"] == 0  # hatco not in history
    # tags of c: green, red; history tags red (a), blue (b): overlap 1 over 2 recent items
    assert f["tag_overlap"] == 0.5
    # c has no price: gap 0, has_price 0; d: log(400) - median(log 10, log 20)
    assert f["has_price"] == 0 and g["has_price"] == 1
    assert np.isclose(g["price_gap"], np.log(400) - np.median(np.log([10.0, 20.0])), atol=1e-5)
    assert f["log_history_len"] == np.float32(np.log1p(2)) and f["is_search"] == 0


def test_empty_history_gives_finite_features():
    cat = _catalog()
    table = build_item_table(cat, Interactions.empty(), text_vecs=np.eye(4, dtype=np.float32))
    ctx = request_context(table, np.zeros(0, np.int64), query_vec=np.array([0, 0, 1, 0], np.float32), is_search=True)
    x = compute_features(table, ctx, np.array([0, 2]), np.array([1.0, 0.5], np.float32),
                         np.array([[1, 2]], np.int32), np.array([[1.0, 0.5]], np.float32))
    f = dict(zip(feature_names(["lexical"]), x[1], strict=True))
    assert np.isfinite(x).all() and f["text_query"] == 1.0 and f["is_search"] == 1


def test_item_table_sorts_cf_indices_for_lookups():
    # a csr with unsorted indices within a row: the table must sort it, or lookups miss entries
    cf = sp.csr_matrix((np.array([0.3, 0.7], np.float32), np.array([3, 1]), np.array([0, 2, 2, 2, 2])), shape=(4, 4))
    assert not cf.has_sorted_indices
    table = build_item_table(_catalog(), Interactions.empty(), cf=cf)
    assert rows_values(table.cf, np.array([0]), np.array([1, 3, 2])).tolist() == [[np.float32(0.7), np.float32(0.3), 0.0]]


def test_reverse_cf_feature_is_the_same_without_the_transposed_copy(monkeypatch):
    import tandem.ranking.item_table as item_table

    rng = np.random.default_rng(5)
    cat = Catalog.from_items(Item(f"i{i}", f"item {i}", tags=(f"t{i % 4}",)) for i in range(30))
    cf = sp.random(30, 30, density=0.3, format="csr", random_state=2, dtype=np.float32)
    items = rng.choice(30, 12, replace=False)
    args = (items, np.linspace(1, 0, 12).astype(np.float32), np.ones((1, 12), np.int32), np.ones((1, 12), np.float32))
    with_t = build_item_table(cat, Interactions.empty(), cf=cf.copy())
    assert with_t.cf_t is not None
    monkeypatch.setattr(item_table, "CF_TRANSPOSE_MAX_NNZ", 0)
    without = build_item_table(cat, Interactions.empty(), cf=cf.copy())
    assert without.cf_t is None
    history = np.array([3, 17, 8, 3, 25, 11])
    a = compute_features(with_t, request_context(with_t, history), *args)
    b = compute_features(without, request_context(without, history), *args)
    np.testing.assert_array_equal(a, b)
    names = feature_names(["s"])
    dense = cf.toarray()
    np.testing.assert_allclose(a[:, names.index("cf_reverse_last")], dense[items, 11], rtol=1e-6)
    np.testing.assert_allclose(a[:, names.index("cf_last")], dense[11, items], rtol=1e-6)
    recent = history[-5:]
    weights = 0.5 ** (np.arange(4, -1, -1) / 3.0)
    np.testing.assert_allclose(a[:, names.index("cf_recent")], (weights / weights.sum()) @ dense[recent][:, items],
                               rtol=1e-5)


def test_history_summary_is_kept_in_the_memo_and_changes_nothing():
    cat = _catalog()
    inter = Interactions(["u"], [0, 0], [0, 1], [100, 200], [3, 3], [np.nan] * 2)
    cf = sp.csr_matrix(np.array([[0, 0.5, 0.2, 0], [0.1, 0, 0.9, 0], [0, 0, 0, 0], [0, 0.3, 0, 0]], np.float32))
    table = build_item_table(cat, inter, cf=cf)
    history, items = np.array([3, 0, 1]), np.array([2, 1, 0])
    args = (items, np.array([0.5, 0.3, 0.1], np.float32), np.ones((1, 3), np.int32), np.ones((1, 3), np.float32))
    memo: dict = {}
    first = request_context(table, history, memo=memo)
    again = request_context(table, history, memo=memo)
    assert again.summary is first.summary is memo["features.history"]
    bare = RequestContext(history=history, user_vec=None, query_vec=None, now=table.now, is_search=False)
    np.testing.assert_array_equal(compute_features(table, first, *args), compute_features(table, bare, *args))


def _random_shop(rng, n=60, n_tags=9, with_vectors=True, weighted_tags=False):
    cats = ["A > x", "A > y", "B > z", "C", ""]
    items = [Item(f"i{i}", f"item {i}", category=cats[i % 5], brand=("b1", "b2", "b3", "")[i % 4],
                  price=None if i % 7 == 0 else float(rng.uniform(1, 100)),
                  tags=tuple(f"t{j}" for j in rng.choice(n_tags, i % 4, replace=False))) for i in range(n)]
    cat = Catalog.from_items(items)
    users = rng.integers(0, 5, 300)
    inter = Interactions([f"u{u}" for u in range(5)], users, rng.integers(0, n, 300), np.sort(rng.integers(0, 10**7, 300)),
                         np.full(300, 3), np.full(300, np.nan))
    cf = sp.random(n, n, density=0.2, format="csr", random_state=int(rng.integers(1 << 30)), dtype=np.float32)
    table = build_item_table(cat, inter, cf=cf,
                             tt_vecs=rng.normal(size=(n, 8)).astype(np.float32) if with_vectors else None,
                             text_vecs=rng.normal(size=(n, 16)).astype(np.float32) if with_vectors else None)
    if weighted_tags:  # tag weights other than 1 (the csr allows them)
        table.tag_sets.data = rng.uniform(0.5, 2.0, table.tag_sets.nnz).astype(np.float32)
    return table


@pytest.mark.parametrize("seed", range(6))
def test_compiled_features_equal_the_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    table = _random_shop(rng, with_vectors=seed % 3 != 2, weighted_tags=seed % 2 == 1)
    n = table.n_items
    for trial in range(8):
        m = int(rng.integers(1, 40))
        items = rng.choice(n, m, replace=False)
        if trial == 7:
            items = np.concatenate([items, items[:3]])  # duplicate candidates take the searched path
            m = items.shape[0]
        n_src = int(rng.integers(1, 4))
        ranks = np.where(rng.random((n_src, m)) < 0.6, rng.integers(1, 300, (n_src, m)), 0).astype(np.int32)
        source_scores = np.where(ranks > 0, rng.normal(size=(n_src, m)), np.nan).astype(np.float32)
        source_scores[0, 0] = np.inf if ranks[0, 0] else source_scores[0, 0]  # non-finite scores read 0
        fused = rng.random(m).astype(np.float32)
        if trial % 2:
            fused = np.sort(fused)[::-1].copy()  # fusion's own order
        history = rng.choice(n, int(rng.integers(0, 12)), replace=True) if trial != 3 else np.zeros(0, np.int64)
        vecs = table.tt_vecs is not None
        ctx = request_context(table, history, user_vec=rng.normal(size=8).astype(np.float32) if vecs else None,
                              query_vec=rng.normal(size=16).astype(np.float32) if vecs and trial % 3 == 0 else None,
                              now=int(table.now + rng.integers(-10**6, 10**7)), is_search=trial % 3 == 0)
        args = (items, fused, ranks, source_scores)
        got = compute_features(table, ctx, *args)
        want = reference_features(table, ctx, *args)
        assert got.shape == want.shape == (m, len(feature_names(["s"] * n_src)))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
        assert np.isfinite(got).all()
    # the scratch tables went back clean: a second identical call gives identical features
    np.testing.assert_array_equal(compute_features(table, ctx, *args), got)
    with table.positions.borrow() as t:
        assert (t == -1).all()
    with table.affinity_values.borrow() as a, table.tag_values.borrow() as b:
        assert not a.any() and not b.any()


def test_compute_features_rejects_inconsistent_inputs():
    table = _random_shop(np.random.default_rng(0))
    ctx = request_context(table, np.array([1, 2]), user_vec=np.ones(8, np.float32))
    ok = (np.array([3, 4]), np.array([1.0, 0.5], np.float32), np.ones((1, 2), np.int32), np.ones((1, 2), np.float32))
    with pytest.raises(IndexError, match="catalog indices"):
        compute_features(table, ctx, np.array([3, table.n_items]), *ok[1:])
    with pytest.raises(IndexError, match="catalog indices"):
        compute_features(table, ctx, np.array([-1, 3]), *ok[1:])
    with pytest.raises(ValueError, match="ranks"):
        compute_features(table, ctx, ok[0], ok[1], np.ones((1, 3), np.int32), ok[3])
    bad = request_context(table, np.array([1, 2]), user_vec=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="user_vec"):
        compute_features(table, bad, *ok)
    assert compute_features(table, ctx, np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((1, 0), np.int32),
                            np.zeros((1, 0), np.float32)).shape == (0, len(feature_names(["s"])))


def test_affinity_features_by_hand():
    rng = np.random.default_rng(7)
    cats = ["A > x", "A > y", "B > z", ""]
    cat = Catalog.from_items(Item(f"i{i}", f"item {i}", category=cats[i % 4], brand=("b1", "b2", "")[i % 3],
                                  tags=tuple(f"t{j}" for j in range(i % 5))) for i in range(40))
    inter = Interactions(["u"], np.zeros(6), [1, 5, 9, 2, 4, 11], np.arange(6) * 100, [3] * 6, [np.nan] * 6)
    table = build_item_table(cat, inter)
    items = rng.choice(40, 15, replace=False)
    args = (items, np.linspace(1, 0, 15).astype(np.float32), np.ones((1, 15), np.int32),
            np.ones((1, 15), np.float32))
    history = np.array([1, 5, 9, 2, 4, 11, 3])
    got = compute_features(table, request_context(table, history), *args)
    names = feature_names(["s"])
    leaf = [cats[i % 4] for i in history]
    want = [leaf.count(cats[i % 4]) / sum(1 for c in leaf if c) if cats[i % 4] else 0.0 for i in items]
    np.testing.assert_allclose(got[:, names.index("leaf_affinity")], want, rtol=1e-6)
