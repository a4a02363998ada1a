"""The assembled pipeline on a small synthetic shop, with popularity, item-CF and a tiny
two-tower model as sources and a trained ranker (the text tower is covered by the build test)."""


import numpy as np
import pytest

from tandem.index_builder.cleaning import load_dataset
from tandem.index_builder.splits import leave_last_out
from tandem.index_builder.synthetic import SyntheticConfig, generate
from tandem.ranking.api import Filters, RecommendRequest, SimilarRequest, UnknownItemError
from tandem.ranking.features import compute_features, feature_names
from tandem.ranking.history import HistoryStore
from tandem.ranking.item_table import build_item_table
from tandem.ranking.pipeline import Pipeline, PipelineConfig
from tandem.ranking.ranker import Ranker, RankerConfig, RankingLists
from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Event
from tandem.retrieval.item_cf import ItemCF
from tandem.retrieval.popularity import Popularity
from tandem.retrieval.two_tower import TwoTower, TwoTowerConfig

pytestmark = pytest.mark.slow  # the fixture trains a two-tower model and a ranker (~20 s)

CONFIG = PipelineConfig(recommend_sources=("two_tower", "item_cf", "popularity"), search_sources=("popularity",),
                        similar_sources=("item_cf", "two_tower"), per_source_k=50, fused_k=80)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop")
    generate(out, SyntheticConfig(items=400, users=300, seed=3, queries=20, events_per_user=20))
    clean = load_dataset(out)
    split = leave_last_out(clean.interactions)
    cat = clean.catalog
    sources = {
        "popularity": Popularity().fit(cat, split.train),
        "item_cf": ItemCF().fit(cat, split.train),
        "two_tower": TwoTower(TwoTowerConfig(dim=16, layers=1, max_len=10, epochs=3, n_negatives=64,
                                             use_text=False)).fit(cat, split.train),
    }
    table = build_item_table(cat, split.train, tt_vecs=sources["two_tower"].encode_items(),
                             cf=sources["item_cf"].similarity)
    hist = HistoryStore.from_interactions(clean.interactions)
    p = Pipeline(cat, sources, table, hist, None, CONFIG, version="t1")
    feats, labels = [], []
    for i in range(len(split.valid)):
        req = split.valid.request(i)
        fused = p.rank(req, "recommend", use_ranker=False).fused
        feats.append(compute_features(table, p.context(req, "recommend"), fused.items, fused.scores,
                                      fused.ranks, fused.source_scores))
        labels.append(np.isin(fused.items, split.valid.targets(i)).astype(np.float32))
    ranker = Ranker(feature_names(p.available("recommend")), RankerConfig(epochs=3, hidden=(16,)))
    ranker.fit(RankingLists.from_lists(feats, labels, 80))
    p = Pipeline(cat, sources, table, hist, {"recommend": ranker}, CONFIG, version="t1")
    return p, clean, split


def test_recommend_excludes_history_and_explains(shop):
    p, clean, _ = shop
    user = clean.interactions.user_ids[0]
    seen = set(p.catalog.item_ids[i] for i in p.histories.get(user).items)
    r = p.recommend(RecommendRequest(user_id=user, k=10, explain=True))
    ids = [it.item_id for it in r.items]
    assert len(ids) == 10 and len(set(ids)) == 10 and not seen & set(ids)
    assert r.bundle_version == "t1" and not r.cold_start
    assert [it.score for it in r.items] == sorted((it.score for it in r.items), reverse=True)
    e = r.items[0].explanation
    assert e is not None and e.sources and e.ranker_score == pytest.approx(r.items[0].score)
    assert all(h.source in CONFIG.recommend_sources and h.rank >= 1 for h in e.sources)


def test_recorded_purchase_changes_next_answer(shop):
    p, clean, _ = shop
    user = clean.interactions.user_ids[1]
    before = [it.item_id for it in p.recommend(RecommendRequest(user_id=user, k=10)).items]
    assert p.record_events([Event(user, before[0], int(p.table.now) + 60, "purchase")]) == 1
    after = [it.item_id for it in p.recommend(RecommendRequest(user_id=user, k=10)).items]
    assert before[0] not in after and before != after


def test_unknown_user_gets_cold_start_popularity(shop):
    p, _, _ = shop
    r = p.recommend(RecommendRequest(user_id="nobody-at-all", k=5, explain=True))
    assert r.cold_start and len(r.items) == 5
    top_pop = p.sources["popularity"].retrieve(RetrievalRequest(), 5).items
    # popularity's own order: the ranker (trained on users with a history) does not re-rank a cold start
    assert [it.item_id for it in r.items] == [p.catalog.item_ids[int(i)] for i in top_pop]
    assert all(it.explanation.ranker_score is None for it in r.items)


def test_filters_apply_after_ranking(shop):
    p, clean, _ = shop
    user = clean.interactions.user_ids[2]
    brand = next(b for b in p.catalog.brands if b)
    r = p.recommend(RecommendRequest(user_id=user, k=5, filters=Filters(brands=(brand,), in_stock_only=True)))
    assert r.items and all(p.get_item(it.item_id).brand == brand for it in r.items)
    capped = p.recommend(RecommendRequest(user_id=user, k=10, filters=Filters(max_per_category=1)))
    cats = [p.get_item(it.item_id).category for it in capped.items]
    assert len(cats) == len(set(cats))


def test_similar_items_and_unknown_item(shop):
    p, _, _ = shop
    item = p.catalog.item_ids[int(np.argmax(p.table.log_pop))]
    r = p.similar_items(SimilarRequest(item_id=item, k=5))
    assert r.items and item not in [it.item_id for it in r.items]
    with pytest.raises(UnknownItemError):
        p.similar_items(SimilarRequest(item_id="no-such-item"))
    with pytest.raises(UnknownItemError):
        p.get_item("no-such-item")


def test_rank_requests_matches_recommend_path(shop):
    p, _, split = shop
    reqs = split.test.requests(0, 5)
    top = p.rank_requests(reqs, 10)
    assert top.shape == (5, 10)
    for req, row in zip(reqs, top, strict=True):
        assert not np.isin(row[row >= 0], req.history).any()
        full = p.rank(req, "recommend").items
        assert row[row >= 0].tolist() == full[~np.isin(full, req.history)][:10].tolist()


def test_user_memos_change_nothing_but_the_work(shop):
    p, clean, _ = shop
    plain = p.with_config()
    plain.warm(0)  # nothing kept: every request computes the user's side afresh
    users = clean.interactions.user_ids[10:30]
    assert p.warm(5) == 5 and p.memos.capacity == 5
    for user in p.histories.most_recent_users(5):
        memo = p.memos._memos[user][1]
        assert "two_tower.user" in memo and "features.history" in memo
    tt = p.sources["two_tower"]

    def answer(pipe, user):
        tt._last_user = None  # the single-request cache would hide a stale memo
        r = pipe.recommend(RecommendRequest(user_id=user, k=10, explain=True))
        return [(it.item_id, round(it.score, 5)) for it in r.items]

    for user in users:
        assert answer(p, user) == answer(plain, user) == answer(p, user)  # the second p call hits the memo
    assert p.memos.hits >= len(users)
    # an event makes a new history version: the memo of the old one is not used again
    user = users[0]
    before = answer(p, user)
    p.record_events([Event(user, before[0][0], int(p.table.now) + 60, "purchase")])
    after = answer(p, user)
    assert after == answer(plain, user) and after != before
    p.warm(1000)


def test_stats_are_per_thread_and_per_request(shop):
    import threading

    from tandem.ranking.api import SearchRequest

    p, clean, _ = shop
    user = clean.interactions.user_ids[2]
    p.similar_items(SimilarRequest(item_id=p.catalog.item_ids[0], k=5))
    assert set(p.stats) >= {"item_cf_seconds", "two_tower_candidates"} and "popularity_seconds" not in p.stats
    p.search(SearchRequest(query="red", k=5))
    assert set(p.stats) == {"popularity_seconds", "popularity_candidates"}  # nothing left from the last call
    p.recommend(RecommendRequest(user_id=user, k=5))
    mine = dict(p.stats)
    assert {f"{s}_candidates" for s in CONFIG.recommend_sources} <= set(mine) and "ranker_seconds" in mine
    other: dict = {}
    t = threading.Thread(target=lambda: (p.search(SearchRequest(query="red", k=5)), other.update(p.stats)))
    t.start()
    t.join()
    assert set(other) == {"popularity_seconds", "popularity_candidates"} and p.stats == mine


def test_restrictive_filters_backfill_by_popularity_without_seen_items(shop):
    p, clean, _ = shop
    user = clean.interactions.user_ids[3]
    seen = {p.catalog.item_ids[i] for i in p.histories.get(user).items}
    brand = max((b for b in set(p.catalog.brands) if b), key=lambda b: sum(x == b for x in p.catalog.brands))
    of_brand = {p.catalog.item_ids[i] for i, b in enumerate(p.catalog.brands) if b == brand}
    r = p.recommend(RecommendRequest(user_id=user, k=len(of_brand), filters=Filters(brands=(brand,)), explain=True))
    ids = [it.item_id for it in r.items]
    assert len(ids) == len(set(ids)) == len(of_brand - seen)  # every unseen item of the brand, once
    assert set(ids) <= of_brand and not set(ids) & seen
    sources = [h.source for it in r.items for h in it.explanation.sources]
    assert "filter_backfill" in sources  # retrieval alone did not find them all
    assert [it.score for it in r.items] == sorted((it.score for it in r.items), reverse=True)


def test_a_variant_shares_the_models_histories_and_memos(shop):
    """An A/B experiment's arm: other settings, the ranker off, the same live user state."""
    p, clean, _ = shop
    v = p.variant({"recommend_sources": ("item_cf", "popularity"), "fusion_method": "weighted"}, use_ranker=False)
    assert v.histories is p.histories and v.memos is p.memos and v.sources is not None and p.rankers and not v.rankers
    assert v.config.fusion_method == "weighted" and p.config.fusion_method == "rrf" and v.version == p.version
    user = clean.interactions.user_ids[5]
    r = v.recommend(RecommendRequest(user_id=user, k=10, explain=True))
    assert r.items and all(it.explanation.ranker_score is None for it in r.items)
    assert {h.source for it in r.items for h in it.explanation.sources} <= {"item_cf", "popularity"}
    item = r.items[0].item_id
    p.record_events([Event(user, item, int(p.table.now) + 10, "purchase")])  # recorded into the serving engine
    assert item not in [it.item_id for it in v.recommend(RecommendRequest(user_id=user, k=10)).items]
    with pytest.raises(ValueError, match="the recommend ranker was trained on features"):
        p.variant({"recommend_sources": ("popularity",)})  # the ranker kept without the sources it learnt from
