"""The build ships the search ranker only when it beats the fused order on held-out training queries."""

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
    return load_config(overrides={"ranker": {"epochs": 15, "patience": 15, "hidden": [16]}}, environ={})


def test_ranker_that_cannot_beat_the_fused_order_is_not_kept():
    _, decision = _search_ranker(_Sources(), _lists(fused_knows=True), _config())
    assert decision["trained"] and not decision["kept"]
    assert decision["fused_valid_ndcg@10"] == 1.0 and decision["valid_queries"] == 12


def test_ranker_that_finds_what_fusion_misses_is_kept():
    _, decision = _search_ranker(_Sources(), _lists(fused_knows=False), _config())
    assert decision["kept"] and decision["valid_ndcg@10"] > decision["fused_valid_ndcg@10"]
