"""Incremental item-CF (retrieval/item_cf_live.py) against its oracle, a batch ``ItemCF.fit``."""

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Interactions, Item
from tandem.retrieval.item_cf import ItemCF, ItemCFConfig
from tandem.retrieval.item_cf_live import LiveEvent, LiveItemCF, live_supported

DAY = 86_400


def _catalog(n: int) -> Catalog:
    return Catalog.from_items(Item(f"i{k}", f"item {k}") for k in range(n))


def _events(seed: int, n_items: int = 40, n_users: int = 30, n_events: int = 500) -> list[tuple[str, int, int]]:
    """(user, item, ts) rows in file order: popular items, repeats and equal times included."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.7
    items = rng.choice(n_items, size=n_events, p=p / p.sum())
    users = rng.integers(0, n_users, size=n_events)
    ts = 1_700_000_000 + rng.integers(0, 30, size=n_events) * DAY // 3  # many equal times
    return [(f"u{u}", int(i), int(t)) for u, i, t in zip(users, items, ts, strict=True)]


def _interactions(rows: list[tuple[str, int, int]]) -> Interactions:
    user_ids: list[str] = []
    index: dict[str, int] = {}
    users = [index.setdefault(u, len(index)) for u, _, _ in rows]
    user_ids = list(index)
    n = len(rows)
    return Interactions(user_ids, np.array(users), np.array([i for _, i, _ in rows]),
                        np.array([t for _, _, t in rows]), np.full(n, 3), np.full(n, np.nan))


def _live(rows: list[tuple[str, int, int]]) -> list[LiveEvent]:
    return [LiveEvent(u, i, t) for u, i, t in rows]


def assert_same_rows(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    """Same neighbours in every row, values within 1e-6 (relative to the row's largest)."""
    a, b = a.tocsr(), b.tocsr()
    assert a.shape == b.shape
    for r in range(a.shape[0]):
        ca, cb = a.indices[a.indptr[r]:a.indptr[r + 1]], b.indices[b.indptr[r]:b.indptr[r + 1]]
        va, vb = a.data[a.indptr[r]:a.indptr[r + 1]], b.data[b.indptr[r]:b.indptr[r + 1]]
        oa, ob = np.argsort(ca), np.argsort(cb)
        assert ca[oa].tolist() == cb[ob].tolist(), f"row {r}: neighbours differ"
        scale = max(1.0, float(np.abs(vb).max()) if vb.size else 1.0)
        np.testing.assert_allclose(va[oa], vb[ob], rtol=1e-6, atol=1e-6 * scale, err_msg=f"row {r}")


CONFIGS = {
    "default": ItemCFConfig(),
    "few_neighbours": ItemCFConfig(n_neighbours=3, window=4),
    "row_normalise": ItemCFConfig(n_neighbours=5, row_normalise=True),
    "pop_exponent": ItemCFConfig(n_neighbours=4, pop_exponent=0.5),
    "half_life": ItemCFConfig(n_neighbours=6, half_life_days=3.0),
    "half_life_normalised": ItemCFConfig(n_neighbours=6, half_life_days=3.0, row_normalise=True),
    "forward_only": ItemCFConfig(n_neighbours=3, reverse_weight=0.0, window=2, pop_exponent=1.0),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("order", ["file", "time"])
def test_prefix_then_live_equals_batch_on_all(name, order):
    """Fit on 60% of the events, apply the rest live in batches: the matrix equals a batch fit on
    every event. ``file`` order sends many events dated before the user's newest (insertions in
    the middle of a sequence, earlier first times); ``time`` order mostly appends."""
    config = CONFIGS[name]
    rows = _events(seed=len(name))
    if order == "time":
        rows = sorted(rows, key=lambda r: r[2])
    catalog = _catalog(40)
    cut = int(len(rows) * 0.6)
    live_cf = ItemCF(config).fit(catalog, _interactions(rows[:cut]))
    live = LiveItemCF.for_interactions(live_cf, _interactions(rows[:cut]))
    for s in range(cut, len(rows), 37):
        live.record(_live(rows[s:s + 37]))
    batch = ItemCF(config).fit(catalog, _interactions(rows))
    assert live.stats()["rows_recomputed"] > 0
    assert batch.similarity.nnz > 0
    assert_same_rows(live_cf.similarity, batch.similarity)


def test_tiny_shop_prefix_then_live_equals_batch(tiny_shop):
    """The conftest shop, cleaned as a build cleans it: the first 70% of its events by time in the
    bundle, the rest applied live one RecordEvents-sized batch at a time."""
    from tandem.index_builder.cleaning import load_dataset

    clean = load_dataset(tiny_shop)
    inter = clean.interactions
    order = np.argsort(inter.ts, kind="stable")
    cut = int(len(order) * 0.7)
    head, tail = np.sort(order[:cut]), order[cut:]
    prefix = inter.select(head)
    source = ItemCF().fit(clean.catalog, prefix)
    before = source.similarity
    live = LiveItemCF.for_interactions(source, prefix)
    events = [LiveEvent(inter.user_ids[inter.users[r]], int(inter.items[r]), int(inter.ts[r])) for r in tail]
    for s in range(0, len(events), 50):
        live.record(events[s:s + 50])
    batch = ItemCF().fit(clean.catalog, inter.select(np.concatenate([head, tail])))
    assert (before != batch.similarity).nnz > 0  # the live part matters
    assert_same_rows(source.similarity, batch.similarity)


def test_new_pair_is_a_neighbour_after_the_batch():
    rows = [(f"u{u}", u % 5, 1000 + u) for u in range(20)]  # items 0..4 only
    catalog = _catalog(10)
    source = ItemCF().fit(catalog, _interactions(rows))
    assert 8 not in source.neighbours(7)[0]
    live = LiveItemCF.for_interactions(source, _interactions(rows))
    live.record([LiveEvent("new", 7, 5000), LiveEvent("new", 8, 5001)])
    items, scores = source.neighbours(7)
    assert items[0] == 8 and scores[0] == pytest.approx(1.0)
    got = source.retrieve(RetrievalRequest(item=7), 5)
    assert got.items[0] == 8
    reverse = source.neighbours(8)
    assert reverse[0][0] == 7 and reverse[1][0] == pytest.approx(ItemCFConfig().reverse_weight)


def test_bound_evicts_least_recent_users_and_equals_batch_of_the_kept():
    """At the cap the least recently active live users go (counted); item-CF then equals a batch
    fit over the base events plus the live events of the users still held. (The live events
    come user after user, so an evicted user does not come back.)"""
    config = ItemCFConfig(n_neighbours=5)
    rows = sorted(_events(seed=3), key=lambda r: r[2])
    catalog = _catalog(40)
    cut = 250
    base, rest = rows[:cut], rows[cut:]
    first = {u: k for k, (u, _, _) in reversed(list(enumerate(rest)))}
    rest.sort(key=lambda r: first[r[0]])  # stable: each user's events keep their order
    source = ItemCF(config).fit(catalog, _interactions(base))
    live = LiveItemCF.for_interactions(source, _interactions(base), max_entries=60)
    for s in range(0, len(rest), 10):
        live.record(_live(rest[s:s + 10]))
        assert live.entries <= 60 or len(live._live) == 1
    stats = live.stats()
    assert stats["evicted_users"] > 0 and stats["evicted_entries"] > 0
    assert stats["live_entries"] <= 60
    kept = set(live._live)
    assert kept and len(kept) < len({u for u, _, _ in rest})
    batch = ItemCF(config).fit(catalog, _interactions(base + [r for r in rest if r[0] in kept]))
    assert_same_rows(source.similarity, batch.similarity)
    # a smaller cap evicts at once; 0 forgets every live event: the bundle's matrix again
    live.resize(0)
    assert live.stats()["live_entries"] == 0
    assert_same_rows(source.similarity, ItemCF(config).fit(catalog, _interactions(base)).similarity)


def test_an_evicted_user_comes_back_from_the_base_sequence():
    """An evicted user's earlier live events are forgotten: their next event extends the bundle's
    sequence alone."""
    base = [("a", 0, 1), ("a", 1, 2), ("b", 5, 1)]
    catalog = _catalog(8)
    source = ItemCF().fit(catalog, _interactions(base))
    live = LiveItemCF.for_interactions(source, _interactions(base), max_entries=3)
    live.record([LiveEvent("a", 2, 3)])  # a: 0 1 2 (3 entries)
    assert 2 in source.neighbours(1)[0]
    live.record([LiveEvent("b", 6, 4)])  # b: 5 6 -> 5 entries: a is evicted
    assert live.stats()["evicted_users"] == 1
    assert 2 not in source.neighbours(1)[0]
    live.record([LiveEvent("a", 3, 5)])  # b evicted in turn; a = 0 1 3
    kept = base + [("a", 3, 5)]
    assert_same_rows(source.similarity, ItemCF().fit(catalog, _interactions(kept)).similarity)


def test_items_beyond_the_matrix_are_ignored_and_counted():
    rows = [("a", 0, 1), ("a", 1, 2), ("b", 1, 3), ("b", 2, 4)]
    source = ItemCF().fit(_catalog(3), _interactions(rows))
    before = source.similarity
    live = LiveItemCF.for_interactions(source, _interactions(rows))
    assert live.record([LiveEvent("a", 3, 5), LiveEvent("c", 99, 6), LiveEvent("c", -1, 6)]) == 0
    assert live.stats()["ignored_events"] == 3
    assert source.similarity is before  # nothing changed, nothing published


def test_cap_is_validated_and_other_similarities_are_refused():
    rows = [("a", 0, 1), ("a", 1, 2)]
    source = ItemCF().fit(_catalog(2), _interactions(rows))
    with pytest.raises(ValueError, match="item_cf_live_entries"):
        LiveItemCF.for_interactions(source, _interactions(rows), max_entries=-1)
    cosine = ItemCF(ItemCFConfig(similarity="cosine")).fit(_catalog(2), _interactions(rows))
    assert "transition" in live_supported(cosine.config)
    with pytest.raises(ValueError, match="cosine"):
        LiveItemCF.for_interactions(cosine, _interactions(rows))


def test_readers_never_see_a_matrix_change_under_them():
    """Concurrent SimilarItems/Recommend-style reads while batches are applied: every matrix a
    reader took stays exactly as it was (updates publish new matrices), every read is a valid
    csr, and the end state equals the batch fit."""
    config = ItemCFConfig(n_neighbours=8)
    rows = sorted(_events(seed=11, n_events=800), key=lambda r: r[2])
    catalog = _catalog(40)
    base, rest = rows[:300], rows[300:]
    source = ItemCF(config).fit(catalog, _interactions(base))
    live = LiveItemCF.for_interactions(source, _interactions(base))
    held: list[tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                sim = source.similarity
                if len(held) < 200:
                    held.append((sim, sim.indptr.copy(), sim.indices.copy(), sim.data.copy()))
                assert np.all(np.diff(sim.indptr) >= 0) and sim.indptr[-1] == sim.indices.size
                item = int(rng.integers(0, 40))
                items, scores = source.neighbours(item)
                assert np.all(np.diff(scores) <= 0)
                got = source.retrieve(RetrievalRequest(history=rng.integers(0, 40, size=5)), 10)
                assert np.all(np.diff(got.scores) <= 0)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        for s in range(0, len(rest), 5):
            live.record(_live(rest[s:s + 5]))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert len({id(h[0]) for h in held}) > 1  # the readers did see several versions
    for sim, indptr, indices, data in held:
        assert np.array_equal(sim.indptr, indptr) and np.array_equal(sim.indices, indices)
        assert np.array_equal(sim.data, data)
    assert_same_rows(source.similarity, ItemCF(config).fit(catalog, _interactions(rows)).similarity)
