"""The build ships the search ranker only when it beats the fused order on held-out training queries
by more than the noise of so few queries (a paired bootstrap interval above zero)."""

import numpy as np

from tandem.index_builder.build import _search_ranker
from tandem.index_builder.config import load_config
from tandem.ranking.features import feature_names
from tandem.ranking.ranker import RankingLists


class _Sources:
    def available(self, kind):
        return ("lexical", "text")


def _lists(fused_knows: bool, n_lists: int = 60, m: int = 12, seed: int = 0) -> RankingLists:
    rng = np.random.default_rng(seed)
    names = feature_names(_Sources().available("search"))
    x = rng.normal(size=(n_lists, m, len(names))).astype(np.float32)
    y = np.zeros((n_lists, m), np.float32)
    best = rng.integers(0, m, n_lists)
    y[np.arange(n_lists), best] = 3.0
    # candidates arrive in fused order: the fused score falls along the list
    x[..., names.index("fused_score")] = np.linspace(1, 0, m)[None, :]
    if fused_knows:  # the relevant item is always first: nothing left to learn
        y[:] = 0
        y[:, 0] = 3.0
    else:  # the fused order knows nothing, but another feature marks the relevant item
        x[np.arange(n_lists), best, names.index("tag_overlap")] = 5.0
    return RankingLists(x, np.ones((n_lists, m), bool), y)


def _config():
    # enough small steps for the ranker to learn a marker feature on 48 lists
    return load_config(overrides={"ranker": {"epochs": 80, "patience": 80, "hidden": [16], "batch_lists": 8,
                                                 "epochs_per_1k_lists": 0}},
                       environ={})


def test_ranker_that_cannot_beat_the_fused_order_is_not_kept():
    _, decision = _search_ranker(_Sources(), _lists(fused_knows=True), _config())
    assert decision["trained"] and not decision["kept"]
    assert decision["fused_valid_ndcg@10"] == 1.0 and decision["valid_queries"] == 12


def test_ranker_that_finds_what_fusion_misses_is_kept():
    _, decision = _search_ranker(_Sources(), _lists(fused_knows=False), _config())
    assert decision["kept"] and decision["valid_ndcg@10"] > decision["fused_valid_ndcg@10"]
    gain = decision["gain_ndcg@10"]
    assert gain["interval"][0] > 0 and gain["lists"] == 12 and gain["level"] == 0.95


def _mostly_fused_lists(n_lists: int = 60, m: int = 12, seed: int = 0) -> RankingLists:
    """The fused order puts the relevant item first in all but every sixth list; a marker
    feature finds it everywhere, so a ranker that learns the marker gains on those few lists only."""
    rng = np.random.default_rng(seed)
    names = feature_names(_Sources().available("search"))
    x = rng.normal(size=(n_lists, m, len(names))).astype(np.float32)
    x[..., names.index("fused_score")] = np.linspace(1, 0, m)[None, :]
    best = np.zeros(n_lists, dtype=np.int64)
    wrong = np.arange(n_lists) % 6 == 0
    best[wrong] = rng.integers(1, m, int(wrong.sum()))
    y = np.zeros((n_lists, m), np.float32)
    y[np.arange(n_lists), best] = 3.0
    x[np.arange(n_lists), best, names.index("tag_overlap")] = 5.0
    return RankingLists(x, np.ones((n_lists, m), bool), y)


def test_a_gain_within_the_noise_is_not_shipped():
    _, decision = _search_ranker(_Sources(), _mostly_fused_lists(), _config())
    # better on the held-out queries (the old rule shipped it), but on one or two of twelve queries
    assert decision["valid_ndcg@10"] > decision["fused_valid_ndcg@10"]
    gain = decision["gain_ndcg@10"]
    assert gain["gain"] > 0 and gain["interval"][0] <= 0 < gain["interval"][1]
    assert not decision["kept"]
