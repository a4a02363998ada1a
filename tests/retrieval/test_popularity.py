import json

import numpy as np
import pytest

from tandem.retrieval.base import CandidateSource, RetrievalRequest
from tandem.retrieval.data import EVENT_CODE, Catalog, Interactions, Item
from tandem.retrieval.popularity import Popularity, PopularityConfig

DAY = 86_400


def _catalog(n=5):
    return Catalog.from_items(Item(str(i), f"item {i}") for i in range(n))


def _log():
    # item 2: purchase at day 0 and day 10; item 0: three views at day 10; item 1: click at day 10;
    # item 4: cart at day 0; item 3: nothing
    rows = [(0, 2, 0, "purchase"), (1, 2, 10, "purchase"), (0, 0, 10, "view"), (1, 0, 10, "view"),
            (2, 0, 10, "view"), (2, 1, 10, "click"), (1, 4, 0, "cart")]
    u, i, d, e = zip(*rows, strict=True)
    return Interactions(["a", "b", "c"], np.array(u), np.array(i), np.array(d) * DAY + 1_700_000_000,
                        np.array([EVENT_CODE[x] for x in e]), np.full(len(rows), np.nan))


def test_event_weighted_counts_and_retrieve():
    pop = Popularity().fit(_catalog(), _log())
    assert isinstance(pop, CandidateSource) and pop.name == "popularity"
    # weights view .25, click .5, cart .75, purchase 1
    np.testing.assert_allclose(pop.scores, [0.75, 0.5, 2.0, 0.0, 0.75])
    c = pop.retrieve(RetrievalRequest(history=np.array([2])), 3)
    assert c.items.tolist() == [0, 4, 1]  # 0 and 4 tie at 0.75: lower index first; 2 is in the history
    np.testing.assert_allclose(c.scores, [0.75, 0.75, 0.5])
    assert c.source == "popularity" and c.items.dtype == np.int64
    assert pop.retrieve(RetrievalRequest(history=np.array([0, 1, 2, 3])), 10).items.tolist() == [4]
    assert len(pop.retrieve(RetrievalRequest(), 0)) == 0


def test_half_life_and_window():
    # half life 10 days, newest event at day 10: the day-0 events count half
    pop = Popularity(PopularityConfig(half_life_days=10)).fit(_catalog(), _log())
    np.testing.assert_allclose(pop.scores, [0.75, 0.5, 1.0 * 0.5 + 1.0, 0.0, 0.75 * 0.5])
    assert pop.retrieve(RetrievalRequest(), 2).items.tolist() == [2, 0]
    pop = Popularity(PopularityConfig(window_days=5)).fit(_catalog(), _log())
    np.testing.assert_allclose(pop.scores, [0.75, 0.5, 1.0, 0.0, 0.0])
    pop = Popularity(PopularityConfig(event_weights=(1, 1, 1, 1, 1))).fit(_catalog(), _log())
    np.testing.assert_allclose(pop.scores, [3, 1, 2, 0, 1])


def test_score_all_shape_and_rows():
    pop = Popularity().fit(_catalog(), _log())
    s = pop.score_all([RetrievalRequest(), RetrievalRequest(history=np.array([1]))])
    assert s.shape == (2, 5) and s.dtype == np.float32 and s.flags.writeable
    np.testing.assert_array_equal(s[1], pop.scores)


def test_save_load_roundtrip(tmp_path):
    pop = Popularity(PopularityConfig(half_life_days=3.5, event_weights=(0, 0, 0, 1, 1))).fit(_catalog(), _log())
    files = pop.save(tmp_path)
    assert sorted(f.name for f in files) == ["popularity.json", "popularity_scores.npy"]
    back = Popularity.load(tmp_path, _catalog())
    assert back.config == pop.config and back.newest_ts == pop.newest_ts
    np.testing.assert_array_equal(back.scores, pop.scores)
    with pytest.raises(ValueError, match="same bundle"):
        Popularity.load(tmp_path, _catalog(6))
    meta = json.loads((tmp_path / "popularity.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "popularity.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="upgrade"):
        Popularity.load(tmp_path, _catalog())


@pytest.mark.parametrize("kw,field", [(dict(half_life_days=0), "half_life_days"),
                                      (dict(window_days=-1.0), "window_days"),
                                      (dict(event_weights=(1, 1)), "event_weights"),
                                      (dict(event_weights=(1, 1, -1, 1, 1)), "event_weights")])
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        PopularityConfig(**kw)


def test_errors():
    with pytest.raises(RuntimeError, match="fit"):
        Popularity().retrieve(RetrievalRequest(), 3)
    with pytest.raises(ValueError, match="catalog"):
        Popularity().fit(_catalog(3), _log())


def test_retrieve_skips_repeated_history_and_follows_refitted_scores():
    pop = Popularity().fit(_catalog(), _log())
    # history repeats item 2 and holds 0: the next best are 4 (tie with 0, lower index wins) and 1
    got = pop.retrieve(RetrievalRequest(history=np.array([2, 2, 2, 0])), 2)
    assert got.items.tolist() == [4, 1]
    pop.scores = np.array([0.0, 0.0, 0.0, 5.0, 1.0], np.float32)  # refitted: the cached order must follow
    assert pop.retrieve(RetrievalRequest(), 2).items.tolist() == [3, 4]
