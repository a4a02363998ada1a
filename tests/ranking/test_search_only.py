"""A pipeline whose sources learnt nothing from events (a search-only bundle) answers Search and
refuses a Recommend it has nothing to go on for, with a message saying what helps. Lexical only,
so no text model is loaded (the served search-only bundle, text included: tests/e2e/test_search_only.py)."""

import numpy as np
import pytest

from tandem.ranking.api import CannotAnswerError, RecommendRequest, SearchRequest, SimilarRequest
from tandem.ranking.history import HistoryStore
from tandem.ranking.item_table import build_item_table
from tandem.ranking.pipeline import Pipeline, PipelineConfig
from tandem.retrieval.data import Catalog, Event, Interactions, Item
from tandem.retrieval.lexical import Lexical
from tandem.retrieval.popularity import Popularity

_WORDS = ("red", "lipstick", "serum", "shampoo", "brush", "cream", "matte", "vitamin", "nail", "mask")
CONFIG = PipelineConfig(recommend_sources=("lexical", "popularity"), search_sources=("lexical",),
                        similar_sources=("lexical",), per_source_k=20, fused_k=20)


def _catalog() -> Catalog:
    rng = np.random.default_rng(3)
    return Catalog.from_items(Item(f"item{i}", " ".join(rng.choice(_WORDS, 3))) for i in range(30))


def _pipeline(catalog: Catalog, interactions: Interactions, sources: dict, config=CONFIG) -> Pipeline:
    table = build_item_table(catalog, interactions)
    return Pipeline(catalog, sources, table, HistoryStore.from_interactions(interactions), None, config,
                    version="v1")


@pytest.fixture
def search_only() -> Pipeline:
    catalog = _catalog()
    empty = Interactions.empty()
    return _pipeline(catalog, empty, {"lexical": Lexical().fit(catalog, empty)})


def test_search_only_pipeline_searches_and_refuses_a_cold_recommend(search_only):
    assert search_only.search_only and search_only.describe()["search_only"]
    hits = search_only.search(SearchRequest(query="red serum", k=5))
    assert len(hits.items) == 5
    for request in (RecommendRequest(user_id="new-user"), RecommendRequest(user_id=None)):
        with pytest.raises(CannotAnswerError, match=r"^search-only bundle v1 \(built without events: .*\) cannot "
                                                    r"recommend to a user without history; send the session's "
                                                    r"events as context, record events for the user"):
            search_only.recommend(request)


def test_a_user_with_history_is_answered_by_the_configured_sources(search_only):
    # lexical has nothing to say about a history, but the request is answered, not refused
    assert search_only.record_events([Event("shopper", "item3", 1_700_000_000, "view")]) == 1
    assert search_only.recommend(RecommendRequest(user_id="shopper")).bundle_version == "v1"
    context = (Event("other", "item4", 1_700_000_000, "view"),)
    search_only.recommend(RecommendRequest(user_id="other", context=context))


def test_no_configured_recommend_source_is_refused_even_with_a_history():
    catalog = _catalog()
    empty = Interactions.empty()
    p = _pipeline(catalog, empty, {"lexical": Lexical().fit(catalog, empty)},
                  PipelineConfig(recommend_sources=("popularity",), search_sources=("lexical",),
                                 similar_sources=("lexical",)))
    context = (Event("u", "item4", 1_700_000_000, "view"),)
    with pytest.raises(CannotAnswerError, match=r"has none of pipeline.recommend_sources \(popularity\)"):
        p.recommend(RecommendRequest(user_id="u", context=context))
    assert len(p.similar_items(SimilarRequest(item_id="item4", k=3)).items) <= 3


def test_a_bundle_with_a_behavioural_source_still_answers_a_cold_recommend():
    catalog = _catalog()
    events = Interactions(["u0", "u1"], np.array([0, 1, 1]), np.array([2, 2, 5]),
                          np.array([1_700_000_000, 1_700_000_010, 1_700_000_020]), np.zeros(3, np.int8),
                          np.full(3, np.nan))
    p = _pipeline(catalog, events, {"lexical": Lexical().fit(catalog, events),
                                    "popularity": Popularity().fit(catalog, events)})
    assert not p.search_only
    answer = p.recommend(RecommendRequest(user_id="new-user", k=2))
    assert answer.cold_start and [i.item_id for i in answer.items] == ["item2", "item5"]
