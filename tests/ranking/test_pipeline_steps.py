"""The assembled pipeline on a tiny shop, fast: sources fitted through the registry, a ranker
(seeded, untrained: only the wiring is under test), and each request answered by the four steps
(retrieve -> featurize -> rerank -> respond) exactly as by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.ranking.api import Filters, RecommendRequest, SearchRequest, SimilarRequest
from tandem.ranking.features import feature_names
from tandem.ranking.history import HistoryStore
from tandem.ranking.item_table import build_item_table, item_table_inputs
from tandem.ranking.pipeline import Pipeline, PipelineConfig
from tandem.ranking.ranker import Ranker, RankerConfig
from tandem.ranking.rerank import rerank
from tandem.retrieval.data import Catalog, Interactions, Item
from tandem.retrieval.registry import SOURCES, FitContext

CONFIG = PipelineConfig(recommend_sources=("item_cf", "user_cf", "popularity"), search_sources=("lexical",),
                        similar_sources=("item_cf",), per_source_k=20, fused_k=25)
_WORDS = ("red", "lipstick", "serum", "shampoo", "brush", "cream", "matte", "vitamin", "nail", "mask")


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    rng = np.random.default_rng(4)
    n_items, n_users = 60, 40
    catalog = Catalog.from_items(
        Item(f"i{i}", " ".join(rng.choice(_WORDS, 3)), brand=f"b{i % 5}", category=f"c{i % 4}",
             price=float(3 + i), tags=(str(rng.choice(_WORDS)),), in_stock=i % 7 != 0) for i in range(n_items))
    users, items, ts = [], [], []
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        for j in range(int(rng.integers(3, 9))):
            users.append(u)
            items.append((start + j + int(rng.integers(0, 2))) % n_items)
            ts.append(1_700_000_000 + 3600 * u + 60 * j)
    n = len(users)
    inter = Interactions([f"u{u}" for u in range(n_users)], np.array(users), np.array(items), np.array(ts),
                         np.full(n, 3), np.full(n, np.nan))
    ctx = FitContext(catalog, inter)
    sources = {name: SOURCES[name].fit(ctx) for name in ("popularity", "item_cf", "user_cf", "lexical")}
    table = build_item_table(catalog, inter, **item_table_inputs(sources))
    rankers = {kind: Ranker(feature_names(CONFIG.sources_for(kind)), RankerConfig(hidden=(8,), seed=1))
               for kind in ("recommend", "search")}
    return Pipeline(catalog, sources, table, HistoryStore.from_interactions(inter), rankers, CONFIG, version="v1")


def _by_hand(p: Pipeline, req, kind: str, k: int, filters: Filters, exclude, cold: bool):
    stats: dict = {}
    _, fused = p.retriever.retrieve(req, kind, stats)
    ranker = None if kind == "recommend" and len(req.history) == 0 else p.rankers.get(kind)
    ranked = rerank(req, kind, fused, ranker, p.featurizer, stats)
    if ranker is not None:
        want = ranker.score(p.featurizer.features(p.featurizer.context(req, kind), fused))
        np.testing.assert_allclose(ranked.scores, np.sort(want)[::-1], rtol=1e-6)
    return p.responder.respond(ranked, filters, k, True, exclude, cold, p.rankers.get(kind), p.version)


def test_recommend_is_the_four_steps(pipeline):
    p = pipeline
    filters = Filters(in_stock_only=True, max_per_brand=2)
    for user in ("u0", "u7", "u23", "nobody"):
        got = p.recommend(RecommendRequest(user, k=8, filters=filters, explain=True))
        req, cold = p.user_request(user)
        assert got == _by_hand(p, req, "recommend", 8, filters, req.excluded(p.n_items), cold)
        assert len(got.items) == 8 and got.cold_start == (user == "nobody")
        assert all(p.get_item(it.item_id).in_stock for it in got.items)
        seen = {p.catalog.item_ids[i] for i in req.history}
        assert not seen & {it.item_id for it in got.items}
        if not cold:  # re-ranked: the ranker's scores, best first
            assert all(it.explanation.ranker_score == pytest.approx(it.score) for it in got.items)
    p.recommend(RecommendRequest("u0", k=8))
    assert {"item_cf_candidates", "user_cf_candidates", "popularity_candidates", "ranker_seconds"} <= set(p.stats)


def test_search_and_similar_are_the_four_steps(pipeline):
    p = pipeline
    got = p.search(SearchRequest("red serum", k=5, explain=True))
    req, _ = p.user_request(None, query="red serum")
    assert got == _by_hand(p, req, "search", 5, Filters(), None, False) and got.items
    assert all(h.source == "lexical" for it in got.items for h in it.explanation.sources)
    item = p.catalog.item_ids[3]
    sim = p.similar_items(SimilarRequest(item, k=5, explain=True))
    assert sim.items and item not in [it.item_id for it in sim.items]
    assert all(it.explanation.ranker_score is None for it in sim.items)  # no similar ranker: fused order


def test_rank_requests_equals_rank(pipeline):
    p = pipeline
    reqs = [p.user_request(u)[0] for u in ("u1", "u2", "u3")]
    top = p.rank_requests(reqs, 5)
    for req, row in zip(reqs, top, strict=True):
        items = p.rank(req, "recommend").items
        assert row.tolist() == items[~np.isin(items, req.history)][:5].tolist()
