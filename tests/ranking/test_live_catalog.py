"""Live catalog changes on a loaded tiny bundle (ranking.live_catalog): copy-on-write, order of
changes, and the two-tower item tower's content-only vector against the trained tower."""

import numpy as np
import pytest
import torch

from tandem.ranking.api import Filters, SearchRequest, SimilarRequest, UnknownItemError
from tandem.ranking.live_catalog import CatalogChange, apply_catalog_changes
from tandem.ranking.loader import load_engine
from tandem.retrieval.data import Item

pytestmark = pytest.mark.slow  # builds the tiny bundle (tests/conftest.py)


@pytest.fixture(scope="module")
def engine(tiny_bundles):
    return load_engine(tiny_bundles)


def _ids(resp):
    return [it.item_id for it in resp.items]


def test_the_old_pipeline_is_left_as_it_was(engine):
    n, query = engine.n_items, "Vortexian plasma comb"
    before = _ids(engine.search(SearchRequest(query=query, k=5)))
    new, counts = apply_catalog_changes(engine, [CatalogChange.upsert(Item("cow-1", query, in_stock=True))])
    assert counts == {"upserted": 1, "added": 1, "deleted": 0, "unknown": 0}
    assert new.n_items == n + 1 and engine.n_items == n and "cow-1" not in engine.catalog.index
    assert _ids(engine.search(SearchRequest(query=query, k=5))) == before
    assert _ids(new.search(SearchRequest(query=query, k=1))) == ["cow-1"]
    for name, source in engine.sources.items():  # every source of the old one still has n rows
        assert new.sources[name] is not source
    assert engine.sources["text"].vectors.shape[0] == n


def test_changes_apply_in_order_and_a_deleted_item_can_come_back(engine):
    a = Item("order-1", "Order test obsidian mug", in_stock=True)
    new, counts = apply_catalog_changes(engine, [CatalogChange.upsert(a), CatalogChange.delete("order-1"),
                                                 CatalogChange.delete("order-1")])
    assert counts == {"upserted": 1, "added": 1, "deleted": 1, "unknown": 1}
    assert "order-1" not in _ids(new.search(SearchRequest(query=a.title, k=20)))
    with pytest.raises(UnknownItemError):
        new.get_item("order-1")
    back, counts = apply_catalog_changes(new, [CatalogChange.upsert(a)])
    assert counts["added"] == 0 and back.n_items == new.n_items  # the same row again
    assert _ids(back.search(SearchRequest(query=a.title, k=1))) == ["order-1"]
    assert back.sources["text"] is new.sources["text"]  # same text: nothing re-encoded


def test_a_price_change_alone_keeps_text_vectors_and_reaches_filters(engine):
    i = 7
    item = engine.get_item(engine.catalog.item_ids[i])
    pricier = Item(item.item_id, item.title, item.description, item.category, item.brand, 9999.0, item.tags, False)
    new, _ = apply_catalog_changes(engine, [CatalogChange.upsert(pricier)])
    assert np.array_equal(new.sources["text"].vectors, engine.sources["text"].vectors)
    assert new.sources["lexical"] is engine.sources["lexical"]
    assert item.item_id not in _ids(new.search(SearchRequest(query=item.title, k=50, filters=Filters(price_max=100))))
    assert item.item_id not in _ids(new.search(SearchRequest(query=item.title, k=50,
                                                             filters=Filters(in_stock_only=True))))
    assert new.get_item(item.item_id).price == 9999.0


def test_the_content_vector_is_the_trained_item_tower_without_its_id_part(engine):
    """Oracle: the trained tower's own forward pass (``net.items(rows)``). Re-upserting a known item
    unchanged but for nothing gives its trained row back (id part kept); the same attributes under a
    new id give that row minus the id embedding (and with the text part of the twin's own text vector)."""
    tt = engine.sources["two_tower"]
    net = tt.net
    with torch.no_grad():
        trained = net.items(torch.arange(0, tt.n_items + 1))
    i = 11
    item = engine.get_item(engine.catalog.item_ids[i])
    twin = Item("twin-of-11", item.title, item.description, item.category, item.brand, item.price, item.tags)
    # a price change and back: the row is recomputed from its attributes
    other = Item(item.item_id, item.title, item.description, item.category, item.brand,
                 (item.price or 0) + 100.0, item.tags, item.in_stock)
    new, _ = apply_catalog_changes(engine, [CatalogChange.upsert(other), CatalogChange.upsert(item),
                                            CatalogChange.upsert(twin)])
    grown = new.sources["two_tower"]
    table = grown._table_cache
    j = new.catalog.index["twin-of-11"]
    with torch.no_grad():
        id_part = net.items.ids(torch.tensor([i + 1]))[0]
        assert torch.allclose(table[i + 1], trained[i + 1], atol=1e-5)
        # the twin's text is encoded on arrival, alone, where the build encoded item 11 in a batch:
        # with the int8 encoder (activations quantised per batch) the two vectors are close, not equal
        text_built = torch.from_numpy(np.ascontiguousarray(engine.sources["text"].vectors[i]))
        text_twin = torch.from_numpy(np.ascontiguousarray(new.sources["text"].vectors[j]))
        assert float(text_built @ text_twin) > 0.98
        proj = net.items.text_proj
        assert torch.allclose(table[j + 1], trained[i + 1] - id_part - proj(text_built) + proj(text_twin), atol=1e-5)
        expected = net.item_out(table[j + 1][None, :])[0].numpy()
    assert np.allclose(grown.encode_items()[j], expected, atol=1e-5)
    assert grown.encode_items().shape[0] == new.n_items
    # and it answers SimilarItems from that vector
    assert "twin-of-11" in _ids(new.similar_items(SimilarRequest(item_id=item.item_id, k=10)))


def test_an_engine_replaced_by_a_change_still_answers_a_history_holding_a_newer_item(engine):
    """The user histories are shared: a request that took the old engine just before a change (e.g.
    while it waited for a compute slot) may read a history with an event on an item only the new
    engine has. The old engine answers without it instead of failing."""
    from tandem.ranking.api import RecommendRequest
    from tandem.retrieval.data import Event

    new, _ = apply_catalog_changes(engine, [CatalogChange.upsert(Item("race-1", "Race condition opal comb"))])
    user = engine.histories.most_recent_users(1)[0]
    assert new.record_events([Event(user, "race-1", engine.table.now + 10)]) == 1
    old_answer = engine.recommend(RecommendRequest(user_id=user, k=10))
    assert "race-1" not in _ids(old_answer) and len(old_answer.items) == 10
    assert _ids(engine.search(SearchRequest(query="opal comb", user_id=user, k=5)))
    assert "race-1" not in _ids(new.recommend(RecommendRequest(user_id=user, k=10)))  # seen: excluded
