"""Search re-ranking the caller's candidates (``SearchRequest.candidate_item_ids``) on a tiny
shop, fast: only known given ids come back (unknown ones counted), filters and history apply,
every search source scores the given items itself, and a candidate list equal to what retrieval
finds gets exactly the answer a plain search gives."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.ranking.api import Filters, SearchRequest
from tandem.ranking.features import feature_names
from tandem.ranking.history import HistoryStore
from tandem.ranking.item_table import build_item_table, item_table_inputs
from tandem.ranking.pipeline import Pipeline, PipelineConfig
from tandem.ranking.ranker import Ranker, RankerConfig
from tandem.ranking.respond import CALLER_SOURCE
from tandem.retrieval.data import Catalog, Interactions, Item
from tandem.retrieval.registry import SOURCES, FitContext

N_ITEMS, N_USERS = 60, 40
# every source returns everything it would ever return, and fusion keeps it all: the plain
# search's candidates are then the complete set, which the equivalence test relies on
CONFIG = PipelineConfig(recommend_sources=("item_cf", "popularity"), search_sources=("lexical", "popularity"),
                        similar_sources=("item_cf",), per_source_k=N_ITEMS, fused_k=2 * N_ITEMS)
_WORDS = ("red", "lipstick", "serum", "shampoo", "brush", "cream", "matte", "vitamin", "nail", "mask")


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    rng = np.random.default_rng(8)
    catalog = Catalog.from_items(
        Item(f"i{i}", " ".join(rng.choice(_WORDS, 3)), brand=f"b{i % 5}", category=f"c{i % 4} > s{i % 2}",
             price=float(3 + i), tags=(str(rng.choice(_WORDS)),), in_stock=i % 7 != 0) for i in range(N_ITEMS))
    users, items, ts = [], [], []
    for u in range(N_USERS):
        start = int(rng.integers(0, N_ITEMS))
        for j in range(int(rng.integers(3, 9))):
            users.append(u)
            items.append((start + j + int(rng.integers(0, 2))) % N_ITEMS)
            ts.append(1_700_000_000 + 3600 * u + 60 * j)
    n = len(users)
    inter = Interactions([f"u{u}" for u in range(N_USERS)], np.array(users), np.array(items), np.array(ts),
                         np.full(n, 3), np.full(n, np.nan))
    ctx = FitContext(catalog, inter)
    sources = {name: SOURCES[name].fit(ctx) for name in ("popularity", "item_cf", "lexical")}
    table = build_item_table(catalog, inter, **item_table_inputs(sources))
    rankers = {"search": Ranker(feature_names(CONFIG.search_sources), RankerConfig(hidden=(8,), seed=3))}
    return Pipeline(catalog, sources, table, HistoryStore.from_interactions(inter), rankers, CONFIG, version="v1")


def _ids(response) -> list[str]:
    return [it.item_id for it in response.items]


def test_only_the_known_given_ids_come_back_in_tandems_order(pipeline):
    p = pipeline
    given = ("i5", "nope-1", "i12", "i3", "i40", "nope-2", "i12", "i33")  # i12 twice: counted once
    got = p.search(SearchRequest("red serum", k=10, explain=True, candidate_item_ids=given))
    assert got.unknown_candidates == 2 and got.bundle_version == "v1"
    assert sorted(_ids(got)) == ["i12", "i3", "i33", "i40", "i5"]  # k beyond the candidates: all of them
    scores = [it.score for it in got.items]
    assert scores == sorted(scores, reverse=True)
    for it in got.items:
        e = it.explanation
        assert e.sources[0].source == CALLER_SOURCE and e.sources[0].rank == given.index(it.item_id) + 1
        assert e.ranker_score == pytest.approx(it.score)
        assert {h.source for h in e.sources[1:]} <= {"lexical", "popularity"}
    assert {"lexical_seconds", "lexical_candidates", "popularity_candidates", "ranker_seconds"} <= set(p.stats)
    assert p.stats["popularity_candidates"] == 5.0
    top = p.search(SearchRequest("red serum", k=2, candidate_item_ids=given))
    assert _ids(top) == _ids(got)[:2] and top.unknown_candidates == 2


def test_each_source_scores_the_given_items_itself(pipeline):
    """The lexical hit of every returned item carries its BM25 score and catalog rank for the
    query, also for items far below what a plain search would retrieve."""
    p = pipeline
    lexical = p.sources["lexical"]
    bm25 = lexical.scores("red serum")
    matching = np.flatnonzero(bm25 > 0)
    worst = matching[np.argsort(bm25[matching], kind="stable")[:3]]  # the weakest matches
    given = tuple(p.catalog.item_ids[int(i)] for i in worst) + ("i0",)
    got = p.search(SearchRequest("red serum", k=10, explain=True, candidate_item_ids=given))
    assert sorted(_ids(got)) == sorted(set(given))
    for it in got.items:
        i = p.catalog.index[it.item_id]
        hits = {h.source: h for h in it.explanation.sources}
        if bm25[i] > 0:
            assert hits["lexical"].score == pytest.approx(float(bm25[i]), rel=1e-6)
            before = np.count_nonzero(bm25 > bm25[i]) + np.count_nonzero(bm25[:i] == bm25[i])
            assert hits["lexical"].rank == 1 + before  # ties: the lower index first
        else:
            assert "lexical" not in hits  # no term matches: found by no lexical search
        assert hits["popularity"].rank >= 1


def test_candidates_equal_to_retrievals_give_the_plain_answer(pipeline):
    """Same items, same per-source ranks and scores, hence the same features and ranker scores:
    the candidate path computes features the way retrieval's path does."""
    p = pipeline
    for user in (None, "u3", "u17"):
        req, _ = p.user_request(user, query="matte cream")
        fused = p.rank(req, "search", use_ranker=False).fused
        assert 0 < len(fused) < CONFIG.fused_k  # nothing cut: the complete candidate set
        given = tuple(p.catalog.item_ids[int(i)] for i in fused.items)
        plain = p.search(SearchRequest("matte cream", user_id=user, k=15, explain=True))
        mine = p.search(SearchRequest("matte cream", user_id=user, k=15, explain=True, candidate_item_ids=given))
        assert _ids(mine) == _ids(plain) and mine.unknown_candidates == 0
        assert [it.score for it in mine.items] == pytest.approx([it.score for it in plain.items], rel=1e-5)
        for a, b in zip(mine.items, plain.items, strict=True):
            assert a.explanation.sources[1:] == b.explanation.sources
            assert a.explanation.fused_score == pytest.approx(b.explanation.fused_score, rel=1e-6)


def test_filters_and_history_apply_and_nothing_is_added(pipeline):
    p = pipeline
    out_of_stock = ("i0", "i7", "i14")  # i % 7 == 0
    got = p.search(SearchRequest("red", k=5, filters=Filters(in_stock_only=True), candidate_item_ids=out_of_stock))
    assert got.items == () and got.unknown_candidates == 0  # no popularity backfill of other items
    given = tuple(f"i{i}" for i in range(20, 40))
    f = Filters(price_min=25.0, price_max=35.0, categories=("c1",), exclude_item_ids=("i29",))
    got = p.search(SearchRequest("red", k=20, filters=f, candidate_item_ids=given))
    want = {f"i{i}" for i in range(22, 33) if i % 4 == 1 and i != 29}  # price 3 + i in [25, 35]
    assert set(_ids(got)) == want
    capped = p.search(SearchRequest("red", k=20, filters=Filters(max_per_brand=1), candidate_item_ids=given))
    assert len(_ids(capped)) == 5  # five brands
    user = "u9"
    seen = [p.catalog.item_ids[int(i)] for i in p.histories.get(user).items]
    given = tuple(dict.fromkeys(seen)) + ("i1", "i2")
    got = p.search(SearchRequest("red", user_id=user, k=20, candidate_item_ids=given))
    assert set(_ids(got)) == {"i1", "i2"} - set(seen) and not set(seen) & set(_ids(got))


def test_all_unknown_and_no_ranker(pipeline):
    p = pipeline
    got = p.search(SearchRequest("red", k=3, candidate_item_ids=("x", "y", "z")))
    assert got.items == () and got.unknown_candidates == 3
    plain = Pipeline(p.catalog, p.sources, p.table, p.histories, {}, CONFIG)
    given = ("i4", "i8", "i15", "i16")
    got = plain.search(SearchRequest("red lipstick", k=4, explain=True, candidate_item_ids=given))
    assert sorted(_ids(got)) == sorted(given)
    fused = [it.explanation.fused_score for it in got.items]
    assert fused == sorted(fused, reverse=True) and all(it.explanation.ranker_score is None for it in got.items)
    assert [it.score for it in got.items] == fused  # without a ranker the fused order stands
