import numpy as np
import pytest

from tandem.ranking.api import Filters
from tandem.ranking.filters import FilterIndex, apply_filters
from tandem.ranking.history import HistoryStore, UserMemos
from tandem.retrieval.data import Catalog, Event, Interactions


def _catalog():
    return Catalog(
        item_ids=["a", "b", "c", "d", "e"],
        titles=list("abcde"),
        descriptions=[""] * 5,
        categories=["Shoes > Run", "Shoes > Run", "Shoes", "Hats", "Shoes > Runner"],
        brands=["x", "x", "y", "y", "z"],
        prices=np.array([10, 20, np.nan, 5, 30], dtype=np.float32),
        tags=[()] * 5,
        in_stock=np.array([1, 0, 1, 1, 1], bool),
    )


def test_each_filter():
    idx = FilterIndex(_catalog())
    ranked = np.arange(5)
    pick = lambda f, **kw: ranked[apply_filters(idx, ranked, f, 10, **kw)].tolist()  # noqa: E731
    assert pick(Filters(in_stock_only=True)) == [0, 2, 3, 4]
    assert pick(Filters(price_min=10, price_max=20)) == [0, 1]  # c has no price
    assert pick(Filters(brands=("y",))) == [2, 3]
    # "Shoes > Run" matches itself and children, not "Shoes > Runner"
    assert pick(Filters(categories=("Shoes > Run",))) == [0, 1]
    assert pick(Filters(categories=("Shoes",))) == [0, 1, 2, 4]
    assert pick(Filters(exclude_item_ids=("a", "zz"))) == [1, 2, 3, 4]
    assert pick(Filters(), exclude=np.array([1, 3])) == [0, 2, 4]
    assert pick(Filters(max_per_brand=1)) == [0, 2, 4]
    assert ranked[apply_filters(idx, ranked, Filters(), 2)].tolist() == [0, 1]


def test_history_store_live_events_and_roundtrip(tmp_path):
    cat = _catalog()
    inter = Interactions(["u1", "u2"], [0, 0, 1], [1, 0, 3], [20, 10, 5], [3, 3, 0], [np.nan] * 3)
    store = HistoryStore.from_interactions(inter, max_len=3)
    assert store.get("u1").items.tolist() == [0, 1]
    assert len(store.get("nobody")) == 0 and not store.knows("nobody")
    assert store.record([Event("u1", "e", 30), Event("u1", "unknown", 31), Event("new", "c", 1)], cat) == 2
    assert store.get("u1").items.tolist() == [0, 1, 4]
    store.record([Event("u1", "d", 40, "view")], cat)
    h = store.get("u1")
    assert h.items.tolist() == [1, 4, 3] and h.events.tolist() == [3, 3, 0]  # max_len 3 keeps newest
    assert store.knows("new") and store.n_users == 3
    store.save(tmp_path)
    again = HistoryStore.load(tmp_path)
    assert again.get("u1").items.tolist() == [0, 1] and again.get("u2").items.tolist() == [3]


def test_history_versions_change_with_each_recorded_event_and_recency_order():
    cat = _catalog()
    inter = Interactions(["u1", "u2", "u3"], [0, 1, 1, 2], [0, 1, 2, 3], [20, 10, 50, 30], [3] * 4, [np.nan] * 4)
    store = HistoryStore.from_interactions(inter)
    none_hist, none_version = store.get_versioned(None)
    assert store.get_versioned("u1")[1] == 0 and len(none_hist) == 0 and none_version == 0
    store.record([Event("u1", "e", 60)], cat)
    h, v1 = store.get_versioned("u1")
    assert h.items.tolist() == [0, 4] and v1 > 0 and store.get_versioned("u2")[1] == 0
    store.record([Event("u1", "unknown-item", 61)], cat)  # not applied: the history is unchanged
    assert store.get_versioned("u1")[1] == v1
    store.record([Event("u1", "d", 70)], cat)
    assert store.get_versioned("u1")[1] > v1
    assert store.most_recent_users(10) == ["u1", "u2", "u3"] and store.most_recent_users(1) == ["u1"]


def test_user_memos_are_per_version_and_bounded():
    memos = UserMemos(capacity=2)
    a = memos.get("a", 0)
    a["x"] = 1
    assert memos.get("a", 0) is a and memos.hits == 1
    assert memos.get("a", 1) == {}  # a newer history starts afresh
    memos.get("b", 0)
    memos.get("a", 1)  # a is now the most recently asked
    memos.get("c", 0)  # drops b, the least recently asked
    assert len(memos) == 2 and memos.get("a", 1) is not None and memos.misses == 4
    memos.resize(1)
    assert list(memos._memos) == ["a"]  # the most recently asked stays
    assert UserMemos(capacity=0).get("a", 0) is None
    with pytest.raises(ValueError, match="capacity"):
        UserMemos(capacity=-1)


def test_live_history_is_capped_per_user_and_keeps_the_newest_by_time():
    cat = _catalog()
    rng = np.random.default_rng(3)
    store = HistoryStore.from_interactions(Interactions(["u1"], [0], [0], [5], [3], [np.nan]), max_len=50)
    assert store.live_max == 50
    ts = rng.permutation(5_000) + 100  # arrival order unrelated to time; the newest come first half the time
    ts[:300] = np.arange(10_000, 10_300)[::-1]  # the 300 newest arrive first, newest of all first
    events = [Event("u1", "abcde"[k % 5], int(t), "view") for k, t in enumerate(ts)]
    for start in range(0, len(events), 7):
        store.record(events[start:start + 7], cat)
        assert store.live_count("u1") < 2 * store.live_max  # memory stays bounded
    oracle = sorted(range(len(events)), key=lambda k: events[k].ts)[-50:]  # the newest 50 by time
    h = store.get("u1")
    assert h.ts.tolist() == [events[k].ts for k in oracle]
    assert h.items.tolist() == [cat.index[events[k].item_id] for k in oracle]
    small = HistoryStore.from_interactions(Interactions(["u1"], [0], [0], [5], [3], [np.nan]), max_len=50,
                                           live_max=10)
    small.record(events, cat)
    assert small.live_count("u1") < 20 and small.get("u1").ts.tolist()[-10:] == [events[k].ts for k in oracle[-10:]]
    with pytest.raises(ValueError, match="live_max must be >= 1"):
        HistoryStore.from_interactions(Interactions(["u1"], [0], [0], [5], [3], [np.nan]), live_max=0)
