"""The contract every candidate source honours (fit / retrieve / save / load, and the
capabilities its registry entry declares).

Each source runs on the same tiny generated catalog and interaction log (seeded), fitted through
its registry entry (``retrieval.registry.SOURCES[name].fit(context, config)``). To add a source,
register it, append a line to ``SOURCES`` here: ``(label, registry name, config)``, and say in
``PLANTED`` which planted signal it must find.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tandem.retrieval.base import (
    Candidates,
    CandidateSource,
    CatalogScorer,
    HistoryMemo,
    IdSet,
    ItemScorer,
    ItemSimilarity,
    ItemVectors,
    QueryEncoder,
    RetrievalRequest,
    UserEncoder,
)
from tandem.retrieval.data import Catalog, Interactions, Item
from tandem.retrieval.item_cf import ItemCFConfig
from tandem.retrieval.item_ranks import rank_items
from tandem.retrieval.popularity import PopularityConfig
from tandem.retrieval.registry import SOURCES as REGISTRY
from tandem.retrieval.registry import FitContext
from tandem.retrieval.two_tower import TwoTowerConfig

_TINY_TOWER = TwoTowerConfig(dim=16, layers=1, max_len=8, epochs=2, n_negatives=16)

SOURCES: list[tuple[str, str, Any] | Any] = [
    ("popularity", "popularity", None),
    ("popularity_trending", "popularity", PopularityConfig(half_life_days=7.0)),
    ("item_cf", "item_cf", None),
    ("item_cf_cosine", "item_cf", ItemCFConfig(similarity="cosine")),
    ("item_cf_jaccard", "item_cf", ItemCFConfig(similarity="jaccard")),
    ("user_cf", "user_cf", None),
    ("lexical", "lexical", None),
    # loads MiniLM: about 5 s on a shared 2-core container
    pytest.param("text", "text", None, marks=pytest.mark.slow),
    ("two_tower", "two_tower", _TINY_TOWER),
]

_IDS = [s.values[0] if hasattr(s, "values") else s[0] for s in SOURCES]
CAPABILITIES = (ItemVectors, UserEncoder, QueryEncoder, ItemSimilarity, HistoryMemo, CatalogScorer, ItemScorer)


def _fit(name: str, config: Any, catalog: Catalog, interactions: Interactions) -> CandidateSource:
    return REGISTRY[name].fit(FitContext(catalog, interactions), config)

#: Sources that still return a SimilarItems request's own item (label -> what to fix); the
#: xfail is strict, so the fix makes the test fail until the entry is removed.
SEED_ITEM_RETURNED: dict[str, str] = {}

#: Sources that cannot learn from an empty log refuse it with a clear error (label -> message).
EMPTY_LOG_REFUSED: dict[str, str] = {"two_tower": "nothing to learn"}

N_ITEMS, N_USERS = 40, 30
N_TRAINED = 34  # items N_TRAINED.. have no interactions (cold items)
_WORDS = ("red", "lipstick", "serum", "shampoo", "brush", "cream", "matte", "vitamin", "nail", "mask")


def _catalog() -> Catalog:
    rng = np.random.default_rng(7)
    return Catalog.from_items(
        Item(f"item{i}", " ".join(rng.choice(_WORDS, 3)), description=" ".join(rng.choice(_WORDS, 5)),
             brand=f"brand{i % 4}", category=f"cat{i % 3}", price=float(5 + i), tags=(str(rng.choice(_WORDS)),))
        for i in range(N_ITEMS))


def _interactions() -> Interactions:
    rng = np.random.default_rng(11)
    users, items, ts, events = [], [], [], []
    for u in range(N_USERS):
        n = int(rng.integers(3, 10))
        start = int(rng.integers(0, N_ITEMS))
        seq = [(start + j + int(rng.integers(0, 2))) % N_TRAINED for j in range(n)]
        t0 = 1_700_000_000 + int(rng.integers(0, 30 * 86_400))
        users += [u] * n
        items += seq
        ts += [t0 + 600 * j for j in range(n)]
        events += rng.integers(0, 5, n).tolist()
    return Interactions([f"user{u}" for u in range(N_USERS)], np.array(users), np.array(items), np.array(ts),
                        np.array(events), np.full(len(users), np.nan))


def _requests() -> list[RetrievalRequest]:
    return [
        RetrievalRequest(),
        RetrievalRequest(history=np.array([3, 4, 5]), history_ts=np.array([1, 2, 3]),
                         history_events=np.array([3, 3, 3], dtype=np.int8)),
        RetrievalRequest(history=np.array([10, 10, 11, 30])),
        RetrievalRequest(history=np.array([N_ITEMS - 1, N_ITEMS - 2])),  # items no one interacted with
        RetrievalRequest(item=N_ITEMS - 1),
        RetrievalRequest(item=7),
        RetrievalRequest(item=7, history=np.array([8, 9])),
        RetrievalRequest(query="red serum"),
        RetrievalRequest(query="red serum", history=np.array([0, 1, 2, 3, 4, 5])),
        RetrievalRequest(query=""),
        RetrievalRequest(query="qqqq zzzz"),
        RetrievalRequest(user_id="user3", history=np.arange(N_ITEMS - 2)),  # nearly everything seen
        RetrievalRequest(user_id="never-seen"),
    ]


@pytest.fixture(scope="module")
def data() -> tuple[Catalog, Interactions]:
    return _catalog(), _interactions()


def _check(c: Candidates, req: RetrievalRequest, k: int, name: str) -> None:
    assert isinstance(c, Candidates)
    assert c.items.dtype == np.int64 and c.scores.dtype == np.float32
    assert len(c) <= k
    assert c.source == name
    assert np.unique(c.items).size == len(c), "candidate ids are unique"
    if len(c):
        assert c.items.min() >= 0 and c.items.max() < N_ITEMS, "candidate ids are catalog indices"
        assert np.all(np.isfinite(c.scores))
        assert np.all(np.diff(c.scores) <= 0), "scores are non-increasing"
    assert not set(np.asarray(req.history).tolist()) & set(c.items.tolist()), "history is never returned"


def test_every_registered_source_runs_the_contract():
    assert {s.values[1] if hasattr(s, "values") else s[1] for s in SOURCES} == set(REGISTRY)
    assert set(PLANTED) == set(REGISTRY)


@pytest.mark.parametrize(("label", "name", "config"), SOURCES, ids=_IDS)
def test_contract(tmp_path, data, label, name, config):
    catalog, inter = data
    source = _fit(name, config, catalog, inter)
    assert isinstance(source, CandidateSource) and isinstance(source, REGISTRY[name].cls)
    assert source.name == name
    answers = {}
    for i, req in enumerate(_requests()):
        for k in (1, 5, 100):
            got = source.retrieve(req, k)
            _check(got, req, k, source.name)
            answers[i, k] = got
        np.testing.assert_array_equal(answers[i, 5].items, answers[i, 100].items[:5])
        assert len(source.retrieve(req, 0)) == 0
    assert any(len(a) for a in answers.values()), f"{label} never answered anything on the toy data"

    files = source.save(tmp_path / label)
    assert files and all(f.exists() for f in files)
    assert not [f for f in files if f.suffix in (".pkl", ".pickle", ".pt")]
    loaded = REGISTRY[name].load(tmp_path / label, catalog)
    assert loaded.name == source.name
    for (i, k), want in answers.items():
        got = loaded.retrieve(_requests()[i], k)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


@pytest.mark.parametrize(("label", "name", "config"), SOURCES, ids=_IDS)
def test_empty_training_log(data, label, name, config):
    catalog, inter = data
    if label in EMPTY_LOG_REFUSED:
        with pytest.raises(ValueError, match=EMPTY_LOG_REFUSED[label]):
            _fit(name, config, catalog, Interactions.empty(inter.user_ids))
        return
    source = _fit(name, config, catalog, Interactions.empty(inter.user_ids))
    for req in _requests():
        _check(source.retrieve(req, 5), req, 5, source.name)


def test_sources_that_learn_from_events_cannot_be_fitted_without_them(data):
    """A search-only shop (no events) keeps the sources that learn from the catalog (lexical,
    text) and skips the others, each with a reason for the build log and the manifest."""
    catalog, inter = data
    empty = FitContext(catalog, Interactions.empty(inter.user_ids))
    reasons = {name: entry.cannot_fit(empty) for name, entry in REGISTRY.items()}
    assert {name for name, why in reasons.items() if why} == {"popularity", "item_cf", "user_cf", "two_tower"}
    assert all("learns from events" in why for why in reasons.values() if why)
    assert all(entry.cannot_fit(FitContext(catalog, inter)) is None for entry in REGISTRY.values())


@pytest.mark.parametrize(("label", "name", "config"), SOURCES, ids=_IDS)
def test_similar_items_never_returns_the_seed(request, data, label, name, config):
    if label in SEED_ITEM_RETURNED:
        request.applymarker(pytest.mark.xfail(reason=SEED_ITEM_RETURNED[label], strict=True))
    catalog, inter = data
    source = _fit(name, config, catalog, inter)
    for item in (0, 7, N_ITEMS - 1):
        for history in (np.zeros(0, dtype=np.int64), np.array([1, 2])):
            got = source.retrieve(RetrievalRequest(item=item, history=history), N_ITEMS)
            assert item not in got.items.tolist()


def test_top_k_breaks_ties_by_item_index_as_rank_items_ranks():
    rng = np.random.default_rng(2)
    for _ in range(20):
        scores = rng.integers(0, 4, 300).astype(np.float32)  # many ties
        scores[rng.integers(0, 300, 30)] = -np.inf
        oracle = np.lexsort((np.arange(300), -scores))
        oracle = oracle[np.isfinite(scores[oracle])]
        for k in (1, 7, 100, 300):
            got = Candidates.top_k(scores, k, "s", exclude=np.array([5, 9]))
            want = oracle[~np.isin(oracle, [5, 9])][:k]
            np.testing.assert_array_equal(got.items, want)
            _, ranks = rank_items(scores, got.items, IdSet(np.array([5, 9]), 300))
            np.testing.assert_array_equal(ranks, np.arange(1, len(got) + 1))


def test_id_set_matches_isin_including_out_of_range_ids():
    from tandem.retrieval.base import IdSet

    rng = np.random.default_rng(0)
    members = np.concatenate([rng.integers(0, 50, 30), [-1, 50, 99]])  # out-of-range members are ignored
    ids = np.concatenate([rng.integers(-2, 60, 200), [-1, 50]])
    s = IdSet(members, 50)
    in_range = members[(members >= 0) & (members < 50)]
    assert s.size == np.unique(in_range).size
    want = np.isin(ids, in_range)
    np.testing.assert_array_equal(s.contains(ids), want)
    assert IdSet(np.zeros(0, np.int64), 50).contains(ids).sum() == 0
    assert s.contains(np.zeros((0,), np.int64)).shape == (0,)


def test_request_exclusion_is_history_and_item_built_once():
    req = RetrievalRequest(history=np.array([3, 7, 3, 99]), item=5)
    ex = req.excluded(10)
    assert req.excluded(10) is ex  # shared by every source of the request
    assert ex.contains(np.arange(12)).tolist() == [i in (3, 5, 7) for i in range(12)] and ex.size == 3
    assert RetrievalRequest(history=np.array([1])).excluded(4).size == 1


def _batch() -> list[RetrievalRequest]:
    return [r for r in _requests() if r.query is None]


@pytest.mark.parametrize(("label", "name", "config"), SOURCES, ids=_IDS)
def test_declared_capabilities_are_there_and_consistent(data, label, name, config):
    catalog, inter = data
    source = _fit(name, config, catalog, inter)
    has = {cap for cap in CAPABILITIES if isinstance(source, cap)}
    assert has == set(REGISTRY[name].capabilities), f"{label}: the registry declares what the source has"
    dim = None
    if isinstance(source, ItemVectors):
        vecs = source.encode_items()
        assert vecs.dtype == np.float32 and vecs.shape[0] == N_ITEMS and np.isfinite(vecs).all()
        dim = vecs.shape[1]
    if isinstance(source, UserEncoder):
        users = source.encode_users(_batch())
        assert users.dtype == np.float32 and users.shape == (len(_batch()), dim)
    if isinstance(source, QueryEncoder):
        assert source.encode_query("red serum").shape == (dim,)
    if isinstance(source, ItemSimilarity):
        assert source.similarity.shape == (N_ITEMS, N_ITEMS)
    if isinstance(source, HistoryMemo):
        req = RetrievalRequest(history=np.array([3, 4, 5]), memo={})
        kept = source.remember(req)
        assert req.memo and np.array_equal(source.remember(RetrievalRequest(history=np.array([3, 4, 5]))), kept)


@pytest.mark.parametrize(("label", "name", "config"), SOURCES, ids=_IDS)
def test_batch_equals_single(data, label, name, config):
    """Whatever a source computes for a batch of requests, each request gets alone too."""
    catalog, inter = data
    source = _fit(name, config, catalog, inter)
    batch = _batch()
    checked = 0
    if isinstance(source, UserEncoder):
        together = source.encode_users(batch)
        alone = np.stack([source.encode_users([r])[0] for r in batch])
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
        checked += 1
    if isinstance(source, CatalogScorer):
        together = source.score_all(batch)
        assert together.shape == (len(batch), N_ITEMS)
        alone = np.stack([source.score_all([r])[0] for r in batch])
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
        checked += 1
    # retrieving one request never depends on what was asked before it
    fresh = _fit(name, config, catalog, inter)
    for req in reversed(_requests()):
        got, want = source.retrieve(req, 10), fresh.retrieve(req, 10)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    assert checked == len({UserEncoder, CatalogScorer} & set(REGISTRY[name].capabilities))


@pytest.mark.parametrize(("label", "name", "config"), SOURCES, ids=_IDS)
def test_item_scores_are_what_retrieve_would_give(data, label, name, config):
    """An ItemScorer's scores and ranks for named items, checked against retrieving the whole
    catalog: a returned item has its retrieved score and its place in the retrieved list (where
    scores tie, a place among the tied ones: ranks break ties by item index, a source's list may
    not); an item retrieve never returns has NaN and rank 0."""
    catalog, inter = data
    source = _fit(name, config, catalog, inter)
    if not isinstance(source, ItemScorer):
        pytest.skip(f"{label} scores no named items")
    everything = np.arange(N_ITEMS, dtype=np.int64)
    for req in _requests():
        scores, ranks = source.score_items(req, everything[::-1])
        scores, ranks = scores[::-1], ranks[::-1]
        assert scores.dtype == np.float32 and ranks.dtype == np.int32 and scores.shape == ranks.shape == (N_ITEMS,)
        full = source.retrieve(req, N_ITEMS)
        returned = np.zeros(N_ITEMS, dtype=bool)
        returned[full.items] = True
        np.testing.assert_array_equal(np.isfinite(scores), returned, err_msg=f"{label}: {req}")
        np.testing.assert_array_equal(ranks == 0, ~returned)
        np.testing.assert_allclose(scores[full.items], full.scores, rtol=1e-5, atol=1e-6)
        mine = scores[full.items][:, None]
        higher = (full.scores[None, :] > mine + 1e-6).sum(axis=1)
        at_most = (full.scores[None, :] >= mine - 1e-6).sum(axis=1)
        got = ranks[full.items]
        assert np.all((higher + 1 <= got) & (got <= at_most)), f"{label}: {req}"
        np.testing.assert_array_equal(np.sort(got), np.arange(1, len(full) + 1))  # one place each
        few = np.array([3, 0, 3], dtype=np.int64)  # any order, repeats allowed
        np.testing.assert_array_equal(source.score_items(req, few)[1], ranks[few])


# -- planted signal ------------------------------------------------------------------------------
# Ten pairs of items (2j, 2j + 1) sharing their one distinctive word; every user of pair j saw
# the best seller, a random filler, then 2j, then 2j + 1. Item 2j + 1 is 2j's obvious neighbour.
_PAIR_WORDS = ("guitar", "espresso", "tennis", "puppy", "printer", "camera", "bicycle", "candle", "yoga", "chess")
_FILLER_WORDS = ("plain", "white", "simple", "basic", "small", "round", "flat", "soft")
_BEST_SELLER = 2 * len(_PAIR_WORDS)
_PLANTED_ITEMS = 2 * len(_PAIR_WORDS) + 12

#: What each source must find in the planted data (every registered source is listed):
#: "next" - after a history ending in 2j, item 2j + 1 is among the top 3; "similar" - for item
#: 2j, item 2j + 1 is among the top 3; "search" - the pair's word finds 2j and 2j + 1 first;
#: "popular" - with no history, the best seller comes first.
PLANTED: dict[str, tuple[str, ...]] = {
    "popularity": ("popular",),
    "item_cf": ("next", "similar"),
    "user_cf": ("next",),
    "lexical": ("search",),
    "text": ("next", "similar", "search"),
    # sixty users are too few for a neural model to learn the pairs within a unit test's budget
    # (20 epochs still missed them); tests/retrieval/test_two_tower.py checks that it learns a
    # planted successor pattern from 200 users
    "two_tower": (),
}


def _planted() -> tuple[Catalog, Interactions]:
    rng = np.random.default_rng(3)
    items = []
    for j, word in enumerate(_PAIR_WORDS):
        items += [Item(f"p{j}a", f"{word}", brand="b"), Item(f"p{j}b", f"{word} accessories", brand="b")]
    items.append(Item("best", "best seller gift card", brand="b"))
    items += [Item(f"f{i}", " ".join(rng.choice(_FILLER_WORDS, 2)), brand="b")
              for i in range(_PLANTED_ITEMS - len(items))]
    users, seq_items, ts = [], [], []
    u = 0
    for j in range(len(_PAIR_WORDS)):
        for _ in range(6):
            filler = int(rng.integers(_BEST_SELLER + 1, _PLANTED_ITEMS))
            for step, item in enumerate((_BEST_SELLER, filler, 2 * j, 2 * j + 1)):
                users.append(u)
                seq_items.append(item)
                ts.append(1_700_000_000 + 3600 * u + 60 * step)
            u += 1
    n = len(users)
    return (Catalog.from_items(items),
            Interactions([f"u{i}" for i in range(u)], np.array(users), np.array(seq_items), np.array(ts),
                         np.full(n, 3), np.full(n, np.nan)))


@pytest.mark.parametrize(("label", "name", "config"), [s for s in SOURCES if (s.values if hasattr(s, "values")
                                                                             else s)[0] in PLANTED], ids=list(PLANTED))
def test_planted_signal_is_found(label, name, config):
    catalog, inter = _planted()
    source = _fit(name, config, catalog, inter)
    pairs = range(len(_PAIR_WORDS))
    for signal in PLANTED[name]:
        if signal == "popular":
            assert source.retrieve(RetrievalRequest(), 1).items.tolist() == [_BEST_SELLER]
        for j in pairs:
            a, b = 2 * j, 2 * j + 1
            if signal == "next":
                t = int(inter.ts.max()) + 3600  # a new user, an hour after the last event
                req = RetrievalRequest(history=np.array([_BEST_SELLER, a]), history_ts=np.array([t, t + 120]),
                                       history_events=np.array([3, 3], dtype=np.int8))
                assert b in source.retrieve(req, 3).items.tolist(), f"{label}: after {a}, {b} (pair {j})"
            elif signal == "similar":
                assert b in source.retrieve(RetrievalRequest(item=a), 3).items.tolist(), f"{label}: like {a}, {b}"
            elif signal == "search":
                got = source.retrieve(RetrievalRequest(query=_PAIR_WORDS[j]), 2).items.tolist()
                assert sorted(got) == [a, b], f"{label}: {_PAIR_WORDS[j]!r} finds {got}"
